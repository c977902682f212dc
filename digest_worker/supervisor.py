"""Run N worker processes on one host (``procfleet worker --concurrency N``).

Each process is a full worker with its own consumer name; they share the consumer group, so
Redis spreads the entries between them. The supervisor forwards SIGTERM / SIGINT to every
process and waits for them to finish their batches. A process that dies on its own (killed,
crashed) is started again after a backoff — its pending entries are claimed by the others
meanwhile — except in burst mode, where the supervisor only waits for the drain.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
# A process that ran this long before dying gets restarted without delay build-up.
HEALTHY_RUN_S = 60.0


def run_processes(count: int, target: Callable[..., Any], args: tuple = (),
                  restart: bool = True) -> int:
    """Run ``target(index, *args)`` in ``count`` spawned processes until they all exit;
    return the highest exit code."""
    ctx = multiprocessing.get_context("spawn")
    stopping = False
    procs: dict[int, Any] = {}
    started_at: dict[int, float] = {}
    delays: dict[int, float] = {}
    codes: dict[int, int] = {}

    def start(index: int) -> None:
        proc = ctx.Process(target=target, args=(index, *args), name=f"procfleet-worker-{index}")
        proc.start()
        procs[index], started_at[index] = proc, time.monotonic()
        log.info("worker process started", extra={"kv": {"index": index, "pid": proc.pid}})

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()  # SIGTERM: each worker finishes its batch and exits

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(count):
            start(index)
        while procs:
            wait([p.sentinel for p in procs.values()], timeout=1.0)
            for index, proc in list(procs.items()):
                if proc.is_alive():
                    continue
                proc.join()
                del procs[index]
                code = proc.exitcode if proc.exitcode is not None else 1
                if stopping or not restart or code == 0:
                    codes[index] = max(code, 0) if stopping else code
                    continue
                ran_s = time.monotonic() - started_at[index]
                delay_s = RESTART_DELAY_S if ran_s > HEALTHY_RUN_S else min(
                    delays.get(index, RESTART_DELAY_S / 2) * 2, MAX_RESTART_DELAY_S)
                delays[index] = delay_s
                log.error("worker process exited, restarting it", extra={"kv": {
                    "index": index, "exit_code": code, "ran_s": round(ran_s, 1),
                    "restart_in_s": delay_s}})
                time.sleep(delay_s)
                if not stopping:
                    start(index)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return max(codes.values(), default=0)
