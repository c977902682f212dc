"""Child processes that die with their parent.

``procfleet up`` and the test fixtures start servers and programs in their own sessions (so a
Ctrl-C in the terminal reaches only ``up``, which stops them in order). A parent killed with
``-9`` runs no cleanup, so on Linux each child asks the kernel for a parent-death signal
(``prctl(PR_SET_PDEATHSIG, sig)``): Valkey and PostgreSQL are C programs that watch no pipe,
and PostgreSQL's own backends follow their postmaster. The signal is each program's own
graceful stop (SIGTERM; SIGINT for PostgreSQL), so what was acknowledged is still kept.

The kernel sends the signal when the *thread* that forked the child exits, not the process, so
start long-lived children from a thread that lives as long as the parent (the main thread).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return libc.prctl


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen`` that makes the child get ``sig`` when its
    parent dies (Linux; ``None`` elsewhere, where children may outlive a killed parent).

    Popen runs ``preexec_fn`` after switching to ``user=`` / ``group=``, which matters: a
    credential change clears the parent-death signal."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent_pid = os.getpid()

    def preexec() -> None:
        _arm(prctl, parent_pid, sig)

    return preexec


def follow_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """In a child already running (a ``multiprocessing`` process): get ``sig`` when
    ``parent_pid``, the process that started us, dies."""
    prctl = _prctl()
    if prctl is not None:
        _arm(prctl, parent_pid, sig)


def _arm(prctl: Callable[..., int], parent_pid: int, sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    # The parent may have died before prctl: then nobody would ever signal us.
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)
