"""Opt-in stall tracing of a node (``BKNR_TRACE_STALLS=1`` in its environment): where does a
pause of the whole process come from? (issue 19; docs/performance.md, "Snapshots").

A daemon thread asks for the GIL every millisecond. When it gets it more than
``BKNR_TRACE_STALLS_MS`` (default 20) late, it logs one ``stall`` line: the lateness, when it
began (``CLOCK_MONOTONIC``, the clock the bench reads too, so its slow calls can be matched),
and how much of it the thread spent runnable but without a CPU (``run_delay`` of
``/proc/thread-self/schedstat``). Lateness that is mostly run-queue wait is the host's
scheduling; lateness with little of it is a wait for the GIL (another thread held it: a fork, a
long C call) or for the kernel (page faults, the mmap lock). ``event(name)`` logs a step of the
snapshot path with the same clock, so each stall can be placed against the fork, the child's
exit, the re-hash and the hand-over. Off (no thread, ``event`` a no-op) unless asked for.
"""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger("bknr.stall")

ENABLED = os.environ.get("BKNR_TRACE_STALLS", "") not in ("", "0")
_MAX_LINES = 20_000  # bounded: a diagnostic, never a log flood on a starved host


def event(name: str, **fields: object) -> None:
    """Log one step of the snapshot path at its monotonic time (only when tracing)."""
    if ENABLED:
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        log.info("event %s t=%.6f %s", name, time.monotonic(), extra)


def _run_delay_ns() -> int:
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _tick(period: float, threshold: float) -> None:
    lines = 0
    while lines < _MAX_LINES:
        d0 = _run_delay_ns()
        t0 = time.monotonic()
        time.sleep(period)
        late = time.monotonic() - t0 - period
        if late > threshold:
            runq = (_run_delay_ns() - d0) / 1e6
            log.info("stall %.1f ms t=%.6f runq=%.1f ms", late * 1000, t0 + period, runq)
            lines += 1


def start() -> bool:
    """Start the ticker thread if tracing is on; whether it runs."""
    if not ENABLED:
        return False
    threshold = float(os.environ.get("BKNR_TRACE_STALLS_MS", "20")) / 1000
    threading.Thread(target=_tick, args=(0.001, threshold), name="bknr-stall-trace",
                     daemon=True).start()
    log.info("stall tracing on: lateness over %.0f ms is logged", threshold * 1000)
    return True
