"""The embedded servers the stack and the tests rely on start, answer and persist, lock their
doors, run from a private clone as root, and die with their parent."""

import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis

from procfleet import embedded, private_root
from procfleet.embedded import PASSWORD_FILE
from tests.support.processes import descendants, wait_gone

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


async def test_valkey_answers_and_keeps_data_across_restart_with_aof(own_valkey):
    server = own_valkey()
    client = aioredis.from_url(server.url)
    await client.xadd("procfleet:test", {"k": "v"})
    # appendfsync everysec: a clean shutdown flushes the AOF, so the entry survives.
    await client.aclose()
    server.stop()
    server.start()
    client = aioredis.from_url(server.url)
    assert await client.xlen("procfleet:test") == 1
    assert (await client.config_get("appendonly"))["appendonly"] == "yes"
    await client.aclose()


async def test_postgres_answers_sql(fresh_database):
    url = await fresh_database()
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT 40 + 2") == 42
    finally:
        await conn.close()


# -- locks (issue 12 item 6) -------------------------------------------------------------------

def _private_tree(root: Path) -> list[str]:
    """Paths under ``root`` (itself included) that another user could read or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        # Sockets (PostgreSQL's) obey their directory's mode, not their own.
        regular = stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)
        if regular and info.st_mode & 0o077:
            found.append(f"{path} {stat.S_IMODE(info.st_mode):o}")
    return found


def _readable_by_nobody(path: Path) -> bool:
    """Whether the unprivileged user ``nobody`` can read ``path`` (run ``cat`` as nobody)."""
    result = subprocess.run(["cat", str(path)], user="nobody", group="nogroup",
                            extra_groups=[], capture_output=True)
    return result.returncode == 0


async def test_valkey_refuses_clients_without_its_password(own_valkey):
    server = own_valkey()
    anonymous = aioredis.from_url(f"redis://{server.host}:{server.port}/0", protocol=2)
    with pytest.raises(redis.exceptions.AuthenticationError):
        await anonymous.set("procfleet:forged", "1")
    await anonymous.aclose()
    wrong = aioredis.from_url(f"redis://:wrong@{server.host}:{server.port}/0", protocol=2)
    with pytest.raises(redis.exceptions.AuthenticationError):
        await wrong.ping()
    await wrong.aclose()
    client = aioredis.from_url(server.url, protocol=2)
    assert (await client.config_get("protected-mode"))["protected-mode"] == "yes"
    assert (await client.config_get("bind"))["bind"] == "127.0.0.1"
    assert await client.exists("procfleet:forged") == 0
    await client.aclose()
    # The password is not on the command line, which every local user can read.
    assert server.password.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()


async def test_postgres_refuses_connections_without_its_password(own_postgres):
    server = own_postgres()
    for netloc in ("postgres", "postgres:wrong"):
        with pytest.raises((asyncpg.InvalidPasswordError,
                            asyncpg.InvalidAuthorizationSpecificationError)):
            await asyncpg.connect(f"postgresql://{netloc}@{server.host}:{server.port}/postgres")
    conn = await asyncpg.connect(server.url)
    try:
        rules = await conn.fetch("SELECT type, auth_method FROM pg_hba_file_rules")
        assert {r["auth_method"] for r in rules} == {"scram-sha-256"}
        assert await conn.fetchval("SHOW password_encryption") == "scram-sha-256"
        assert (await conn.fetchval("SELECT rolpassword FROM pg_authid "
                                    "WHERE rolname = 'postgres'")).startswith("SCRAM-SHA-256$")
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
    finally:
        await conn.close()


async def test_a_trust_cluster_from_before_the_locks_gets_a_password(own_postgres):
    server = own_postgres()
    server.stop()
    # What an older `up` left: trust for everyone, no password file.
    (server.data_dir / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
    (server.data_dir / PASSWORD_FILE).unlink()
    server.start()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(f"postgresql://postgres@{server.host}:{server.port}/postgres")
    conn = await asyncpg.connect(server.url)
    assert await conn.fetchval("SELECT 1") == 1
    await conn.close()


async def test_server_data_and_passwords_are_for_their_owner_only(own_valkey, own_postgres):
    valkey, postgres = own_valkey(), own_postgres()
    client = aioredis.from_url(valkey.url, protocol=2)
    await client.xadd("procfleet:test", {"cmd": "mysql -psecret"})
    await client.aclose()
    aof = sorted((valkey.data_dir / "appendonlydir").iterdir())
    passwords = [valkey.data_dir / PASSWORD_FILE, postgres.data_dir / PASSWORD_FILE]
    assert aof and all(p.exists() for p in passwords)
    assert _private_tree(valkey.data_dir) == []
    assert _private_tree(postgres.data_dir) == []
    if os.geteuid() == 0:
        # Another local user, for real: nothing to read, whatever the parents' modes.
        leaks = [p for p in [*aof, *passwords] if _readable_by_nobody(p)]
        assert leaks == []


# -- as root (issue 13 items 1 and 2) ----------------------------------------------------------

@pytest.mark.skipif(os.geteuid() != 0, reason="the private root is for root only")
def test_as_root_postgres_lives_under_the_private_root_and_runs_as_its_user(own_postgres):
    import pwd

    server = own_postgres()
    # The fixture asked for a directory inside a 0700 one, as a clone in /root would.
    assert stat.S_IMODE(server.requested_dir.parent.stat().st_mode) == 0o700
    assert server.data_dir.parent == private_root.PRIVATE_ROOT / "postgres"
    info = server.data_dir.stat()
    assert pwd.getpwuid(info.st_uid).pw_name == private_root.PG_SYSTEM_USER
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert not server.requested_dir.exists()
    # The programs it runs are outside the (private) .venv, reachable by the PostgreSQL user.
    assert embedded.pg_install_dir().is_relative_to(private_root.PRIVATE_ROOT / "pginstall")
    exe = Path(f"/proc/{server.pid}").joinpath("exe").resolve()
    assert exe.is_relative_to(private_root.PRIVATE_ROOT)
    assert Path(f"/proc/{server.pid}").stat().st_uid == info.st_uid


def test_as_non_root_postgres_stays_where_it_was_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(private_root, "running_as_root", lambda: False)
    assert private_root.postgres_data_dir(tmp_path / "pg") == tmp_path / "pg"


def test_private_install_is_built_once_per_version_in_the_wheels_layout(tmp_path):
    site = tmp_path / "site"
    (site / "pkg" / "bin").mkdir(parents=True)
    (site / "pkg.libs").mkdir()
    program = site / "pkg" / "bin" / "tool"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o700)  # a root umask of 077: only a copy can make it reachable
    (site / "pkg.libs" / "lib.so").write_text("x")
    (site / "pkg.libs" / "lib.so").chmod(0o644)
    root = tmp_path / "root"
    tree = private_root.private_install(site, ("pkg", "pkg.libs"), "1.0", root=root)
    assert tree == root / "pginstall" / "1.0"
    copied = tree / "pkg" / "bin" / "tool"
    assert stat.S_IMODE(copied.stat().st_mode) == 0o755
    assert copied.stat().st_ino != program.stat().st_ino
    assert stat.S_IMODE(program.stat().st_mode) == 0o700  # the wheel's file is untouched
    if os.geteuid() == 0:  # hard links are root's here (fs.protected_hardlinks otherwise)
        assert (tree / "pkg.libs" / "lib.so").stat().st_ino == \
            (site / "pkg.libs" / "lib.so").stat().st_ino
    program.write_text("changed")
    assert private_root.private_install(site, ("pkg", "pkg.libs"), "1.0", root=root) == tree
    assert copied.read_text() == "#!/bin/sh\n"  # reused, not rebuilt


def test_private_root_refuses_a_directory_others_can_write(tmp_path):
    shared = tmp_path / "procfleet"
    shared.mkdir()
    shared.chmod(0o777)
    owner = (os.geteuid(), os.getegid())
    with pytest.raises(private_root.PrivateRootError, match="777"):
        private_root.owned_dir(shared, 0o755, owner)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777  # not ours: left as it was


# -- lifetime (issue 13 item 6) ----------------------------------------------------------------

def test_servers_die_with_a_parent_killed_with_9(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from procfleet.embedded import EmbeddedPostgres, EmbeddedValkey
        valkey = EmbeddedValkey(Path({str(tmp_path / "valkey")!r}))
        postgres = EmbeddedPostgres(Path({str(tmp_path / "pg")!r}))
        valkey.start()
        postgres.start()
        print(valkey.pid, postgres.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    family: list[int] = []
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2, "the parent did not start both servers"
        family = pids + descendants(pids[1])  # the postmaster's own processes too
        assert len(family) > 2, family
    finally:
        parent.kill()
        parent.wait()
    left = wait_gone(family, timeout_s=60)
    for pid in left:  # what would outlive the test otherwise
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(private_root.postgres_data_dir(tmp_path / "pg"), ignore_errors=True)
    assert left == []
