"""Waking callers whose transactions were applied: waiters, the woken-caller tally,
asyncio delivery.

A thread caller blocks on its :class:`Waiter`, i.e. on a native ``_raft.Signal`` (a futex
one-shot semaphore whose wait releases the GIL). The applier resolves waiters while it holds the
GIL, so their wake-ups are deferred to the end of the applier's slice and handed to a
:class:`WokenCallers`, which counts the callers that were woken but have not run yet
(``running``).
While that count is non-zero and an entry is in flight, the group committer's submitter holds
back (bounded, see commit.py): the callers being woken are about to queue their next records,
and one entry carries them all.

With an engine whose ``next_committed`` takes ``wake`` (``GroupCommitter.engine_wake``) the
wake-ups are not posted there but passed to the applier's next
``engine.next_committed(..., wake=signals)``, which posts them after releasing the GIL: a woken
caller no longer finds the GIL held by the thread that woke it (fewer context switches per
transaction; figures in docs/performance.md, *Cluster*). The end-of-slice path stays for engines
without ``wake``.

Liveness: every caller woken through the tally reports ``ran`` exactly once, as soon as it runs
(even if it never calls the store again), so the count always comes back to zero.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from bknr_cluster._raft import Signal

log = logging.getLogger("bknr.cluster.commit")


class Waiter:
    """One caller's pending record; the caller blocks on a native :class:`Signal` (its wait
    releases the GIL, and the applier can post it from inside ``next_committed``)."""

    __slots__ = ("_signal", "result", "error", "tx_error", "index", "callback", "seq", "defer",
                 "on_run", "future", "deadline")

    def __init__(self, callback: Callable[[Waiter], None] | None = None,
                 future: Any = None) -> None:
        self._signal = Signal()
        self.result: Any = None
        self.error: BaseException | None = None
        self.tx_error = False        # True: ``error`` was raised by the transaction itself
        self.index = 0
        self.callback = callback
        self.seq = 0
        # Set on the applier thread (GroupCommitter.take): where to park the wake-up, and
        # WokenCallers.ran, which ``wait`` calls once this caller was woken and runs.
        self.defer: Callable[[Signal], None] | None = None
        self.on_run: Callable[[], None] | None = None
        # asyncio callers (LoopDelivery): the future to complete, and the loop-clock deadline
        self.future = future
        self.deadline = 0.0

    def resolve(self, index: int, result: Any = None, error: BaseException | None = None,
                tx_error: bool = False) -> None:
        self.index, self.result, self.error, self.tx_error = index, result, error, tx_error
        if self.defer is not None:  # the outcome is visible now; the wake-up comes later
            self.defer(self._signal)
            return
        self._signal.post()
        if self.callback is not None:
            try:
                self.callback(self)
            except Exception:  # a broken callback must not kill the applier
                log.exception("waiter callback failed")

    def woken(self) -> bool:
        """True once the wake-up was posted and not yet consumed by ``wait`` (tests)."""
        return self._signal.posted()

    def wait(self, timeout: float | None) -> bool:
        """True once resolved and woken. A caller counted by ``WokenCallers`` reports here,
        first thing, that it runs (whatever it does afterwards)."""
        if not self._signal.wait(None if timeout is None else max(0.0, timeout)):
            return False
        if self.on_run is not None:
            self.on_run()
        return True


class WokenCallers:
    """Counts the callers woken but not running yet (see the module docstring); calls
    ``on_idle`` when the last of them runs."""

    def __init__(self, on_idle: Callable[[], None] | None = None) -> None:
        self._on_idle = on_idle
        self._lock = threading.Lock()
        self.running = 0                  # > 0: callers are still being woken

    def start(self, signals: list[Signal]) -> list[Signal]:
        """Count these wake-ups as running and return them: the caller posts them
        (``release``), or hands them to the engine, which posts them without the GIL
        (``GroupCommitter.engine_wake``)."""
        with self._lock:
            self.running += len(signals)
        return signals

    def release(self, signals: list[Signal]) -> None:
        """``start`` these wake-ups and post them here (with the GIL)."""
        for sig in self.start(signals):
            sig.post()

    def ran(self) -> None:
        """Called by a counted caller as soon as it runs."""
        with self._lock:
            if self.running > 0:
                self.running -= 1
            idle = self.running == 0
        if idle and self._on_idle is not None:
            self._on_idle()


class LoopDelivery:
    """Completes the asyncio callers of one loop: one loop wake-up per applier slice, and no
    per-request timer.

    Each ``call_soon_threadsafe`` writes to the loop's self-pipe (a syscall) and wakes the loop
    thread, which then competes with the applier for the GIL. A waiter resolved on the applier
    thread is therefore only queued (``defer`` accepts it) and the whole slice's waiters go to
    the loop in one wake-up when the applier ends the slice (``GroupCommitter.release_deferred``
    calls ``flush``). A waiter resolved anywhere else (a failed engine future, stop) wakes the
    loop at once.

    Deadlines: instead of a ``call_later`` timer (a handle, a closure, a heap entry) per
    request, ``watch`` files the waiter in a dict and one sweep every ``SWEEP_S`` completes the
    expired ones with None. Every object allocated per request counts towards CPython's cyclic
    GC, whose full collections walk the whole store (cluster/DESIGN.md: with 256 asyncio callers
    those collections took a third of the time).
    """

    SWEEP_S = 0.05

    def __init__(self, loop: Any, defer: Callable[[LoopDelivery], bool] | None = None) -> None:
        self.loop = loop
        self._defer = defer
        self._ready: list[Waiter] = []
        self._scheduled = False
        self._lock = threading.Lock()
        self.callback = self.deliver          # one bound method for every waiter
        self._watched: dict[int, Waiter] = {}  # seq -> waiter with a deadline (loop thread)
        self._sweeping = False

    def deliver(self, w: Waiter) -> None:
        """Any thread: complete ``w.future`` with ``w`` on the loop."""
        with self._lock:
            self._ready.append(w)
            if self._scheduled:
                return
            self._scheduled = True
        if self._defer is not None and self._defer(self):
            return  # the applier flushes it at the end of its slice
        self.flush()

    def flush(self) -> None:
        """Wake the loop to complete everything delivered so far."""
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            with self._lock:
                self._ready.clear()
                self._scheduled = False

    def watch(self, w: Waiter, deadline: float) -> None:
        """Loop thread: complete ``w.future`` with None once the loop clock passes ``deadline``
        (within ``SWEEP_S``) unless the waiter is delivered first."""
        w.deadline = deadline
        self._watched[w.seq] = w
        if not self._sweeping:
            self._sweeping = True
            self.loop.call_later(self.SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        watched = self._watched
        for w in [w for w in watched.values() if w.deadline <= now]:
            del watched[w.seq]
            fut = w.future
            if fut is not None and not fut.done():
                fut.set_result(None)
        if watched:
            self.loop.call_later(self.SWEEP_S, self._sweep)
        else:
            self._sweeping = False

    def _drain(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
            self._scheduled = False
        watched = self._watched
        for w in ready:
            watched.pop(w.seq, None)
            # Break the waiter <-> future reference cycle before the future holds the waiter:
            # a cycle per request is garbage only the cyclic GC frees, and its full
            # collections walk the whole store (with 256 asyncio callers they took a third
            # of the time; cluster/DESIGN.md).
            fut, w.future = w.future, None
            if fut is not None and not fut.done():
                fut.set_result(w)


class AppliedSignal(threading.Condition):
    """The applier's end-of-batch condition (``ClusterStore._applied_cond``): ``notify_all``
    first wakes the callers whose waiters the batch resolved (``release_deferred``)."""

    def __init__(self, on_batch: Callable[[], None]) -> None:
        super().__init__(threading.Lock())
        self._on_batch = on_batch

    def notify_all(self) -> None:
        self._on_batch()
        super().notify_all()
