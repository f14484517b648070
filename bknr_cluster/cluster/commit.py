"""Group commit: concurrent callers' records are packed into one engine entry.

Callers ``enqueue`` a record and get a :class:`Waiter`. Everything pending (bounded by count and
bytes) is packed with :mod:`batch` into one entry and submitted to the engine, keeping at most
``window`` entries in flight so that batches grow while the log is busy. When several window slots
are free and more than one entry's worth is queued, the entries go to the engine in one
``submit_many`` call (one crossing, one future). A watcher thread waits on the engine futures in
submission order: a failed submission fails the waiters of its entries that are still pending;
a completed one frees its window slots and wakes the submitter if records are waiting. (Letting
the watcher submit them itself was measured: batches got ~40% smaller under 256 callers, so
followers paid more per transaction, for no gain on the leader.) Success is *not* reported
from here: the applier resolves each waiter after the local apply, with the transaction's result
or exception (see ``Waiter.resolve``).

A waiter is resolved exactly once: whoever pops its sequence number from ``_pending`` resolves it
(``dict.pop`` is atomic), so a late apply after a ``LeadershipLost`` is silently dropped.

Wake-ups of blocked callers resolved on the applier thread are deferred to the end of the
applier's batch (``release_deferred``, run by the applier's end-of-batch signal) and then handed
to a :class:`~bknr_cluster.cluster.wake.WokenCallers` tally (see ``wake.py``); the wake-ups
are posted by the engine inside the applier's next ``next_committed`` call, after it released
the GIL (``engine_wake``; see wake.py). While callers are still
being woken and an entry is in flight, the submitter holds back (at most ``pace_hold_s``): the
callers being woken are about to queue their next records, and they should share one entry
rather than trickle out as several small ones (256 callers: ~115 instead of ~68 records per
entry, +5-10 % throughput in alternating rounds).
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from bknr_cluster._raft import Signal
from bknr_cluster.cluster.batch import BATCH_OVERHEAD, ITEM_OVERHEAD, encode_batch
from bknr_cluster.cluster.wake import AppliedSignal, LoopDelivery, Waiter, WokenCallers
from bknr_cluster.errors import BknrError, EngineError, Shutdown, TooBig

__all__ = ["AppliedSignal", "GroupCommitter", "LoopDelivery", "Waiter"]

log = logging.getLogger("bknr.cluster.commit")


class GroupCommitter:
    """Packs enqueued records into engine entries; see the module docstring."""

    def __init__(self, submit: Callable[[bytes], Any], node_id: int, *, max_count: int = 512,
                 max_bytes: int = 1 << 20, window: int = 4,
                 map_error: Callable[[BaseException], BaseException] = lambda e: e,
                 submit_many: Callable[[list[bytes]], Any] | None = None,
                 pace_hold_s: float = 0.002) -> None:
        self._submit = submit
        # engine.submit_many (one future for several entries), when the engine has it
        self._submit_many = submit_many
        self.node_id = node_id
        # Random per instance: entries replayed from a previous life of this node never match.
        self.session = int.from_bytes(os.urandom(6), "big")
        self.max_count = max(1, max_count)
        self.max_bytes = max(1024, max_bytes)
        self.window = max(1, window)
        self._map_error = map_error
        self._seq = itertools.count(1)
        self._pending: dict[int, Waiter] = {}
        self._queue: deque[tuple[int, bytes]] = deque()
        self._lock = threading.Lock()  # a plain lock: ``with`` costs no Python frame
        self._cond = threading.Condition(self._lock)
        self._inflight = 0
        self._life = 0
        self._max_record = self.max_bytes - BATCH_OVERHEAD - ITEM_OVERHEAD
        # Deferred wake-ups (module docstring): only for waiters taken on this thread.
        self.applier_ident: int | None = None
        self._deferred: list[Signal] = []
        self._loop_flushes: list[LoopDelivery] = []   # asyncio deliveries held to the slice end
        self.woken = WokenCallers(on_idle=self._woken_idle)
        # Wake-ups to post from inside the applier's next engine.next_committed(wake=...), once
        # the GIL is released there, instead of with the GIL at the end of its slice: only with
        # an engine that takes ``wake`` (the applier sets ``engine_wake``).
        self.engine_wake = False
        self._handoff: list[Signal] = []
        self.pace_hold_s = max(0.0, pace_hold_s)
        self._submitter_idle = False
        self._submitter_holding = False  # waiting (with a deadline) for woken callers to run
        self._watch: queue.SimpleQueue = queue.SimpleQueue()
        self._running = False
        self._threads: list[threading.Thread] = []
        self.batches = 0          # entries submitted (metrics)
        self.items = 0            # records submitted (metrics)
        self.failed = 0           # records whose submission failed (metrics)

    # --- caller side ----------------------------------------------------------------------

    def max_record(self) -> int:
        return self._max_record

    def enqueue(self, record: bytes, callback: Callable[[Waiter], None] | None = None,
                future: Any = None) -> Waiter:
        """Queue ``record`` (``b""`` = read marker) for the next batch; returns its waiter
        (``future``: the asyncio future a LoopDelivery ``callback`` completes)."""
        if len(record) > self._max_record:
            raise TooBig(f"transaction record of {len(record)} bytes exceeds the batch limit "
                         f"of {self._max_record} bytes")
        w = Waiter(callback, future)
        with self._lock:
            if not self._running:
                raise Shutdown("the cluster store is not running")
            seq = w.seq = next(self._seq)
            self._pending[seq] = w
            self._queue.append((seq, record))
            # Wake the submitter only when it sleeps and the window has room: while the window
            # is full, the watcher wakes it on the next completion (a wake-up per record would
            # cost a thread switch per record). Submitting from the caller's thread instead
            # (when nothing was in flight) was tried: one hop less for a lone caller, but
            # entries ~15 % smaller at 256 callers, and no clear gain either way.
            if self._submitter_idle and not self._submitter_holding and self._inflight < self.window:
                self._cond.notify()
        return w

    def register(self) -> Waiter:
        """A waiter (with its ``seq``) for an entry the caller submits itself (restore)."""
        w = Waiter()
        with self._cond:
            if not self._running:
                raise Shutdown("the cluster store is not running")
            w.seq = next(self._seq)
            self._pending[w.seq] = w
        return w

    def abandon(self, waiter: Waiter) -> bool:
        """Forget a waiter whose caller gave up; False when it was resolved meanwhile."""
        return self._pending.pop(waiter.seq, None) is not None

    # --- applier side ---------------------------------------------------------------------

    def take(self, node_id: int, session: int, seq: int) -> Waiter | None:
        """The waiter for a just-applied item, if it is one of ours and still waiting."""
        if node_id != self.node_id or session != self.session:
            return None
        w = self._pending.pop(seq, None)
        if w is not None and w.callback is None and threading.get_ident() == self.applier_ident:
            w.defer, w.on_run = self._defer, self.woken.ran
        return w

    def wait(self, w: Waiter, timeout: float) -> bool:
        """Block until ``w`` is resolved: False when ``timeout`` passed and the waiter was
        withdrawn (outcome unknown). A waiter resolved just as the time ran out is waited for
        (its wake-up is already on its way), so its outcome is never lost and it is
        counted as run (wake.py)."""
        if w.wait(timeout):
            return True
        if self.abandon(w):
            return False
        return w.wait(None)

    def defer_delivery(self, delivery: LoopDelivery) -> bool:
        """``LoopDelivery``'s hook: on the applier thread, hold the loop wake-up until the end
        of the slice (``release_deferred``); elsewhere (False) the delivery wakes it at once."""
        if threading.get_ident() != self.applier_ident:
            return False
        self._loop_flushes.append(delivery)
        return True

    def _defer(self, sig: Signal) -> None:
        d = self._deferred
        d.append(sig)
        if len(d) >= 1024:  # a long backlog batch: do not hold early callers until its end
            self.release_deferred(now=True)

    def release_deferred(self, now: bool = False) -> None:
        """Wake the callers resolved since the last call (the applier, at the end of a batch):
        through the tally, posted here or (``engine_wake``) handed to the applier's next
        ``next_committed`` (``take_handoff``); ``now``: post them here in any case. Also wakes
        each asyncio loop that has waiters from this slice, once (``defer_delivery``)."""
        if self._loop_flushes:
            flushes, self._loop_flushes = self._loop_flushes, []
            for delivery in flushes:
                delivery.flush()
        if self._deferred:
            signals, self._deferred = self._deferred, []
            if self.applier_ident is None:  # stopping: everyone at once
                for sig in signals:
                    sig.post()
            elif self.engine_wake and not now:
                self._handoff.extend(self.woken.start(signals))
            else:
                self.woken.release(signals)

    def take_handoff(self) -> list[Signal]:
        """The applier, before each ``next_committed``: the wake-ups it is to pass as ``wake``
        (it must post them, even if it does not call the engine again)."""
        h = self._handoff
        if h:
            self._handoff = []
        return h

    def _woken_idle(self) -> None:
        # Every woken caller runs: a submitter holding records back for them can go now.
        if self._submitter_holding:
            with self._cond:
                self._cond.notify()

    def _hold(self) -> bool:
        """Pacing: callers are still being woken and an entry is in flight (module doc)."""
        return self.woken.running > 0 and self._inflight > 0 and self.pace_hold_s > 0

    # --- threads --------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            self._running = True
            # A fresh watch queue and count per life: a watcher of a previous life that still
            # waits on an engine future (see stop) never sees this life's jobs or slots.
            self._life += 1
            self._inflight = 0
            self._watch = queue.SimpleQueue()
        threads = (threading.Thread(target=self._submit_loop, name="bknr-submit", daemon=True),
                   threading.Thread(target=self._watch_loop, args=(self._life, self._watch),
                                    name="bknr-watch", daemon=True))
        for t in threads:
            t.start()
            self._threads.append(t)

    def stop(self, error: BaseException | None = None) -> None:
        """Stop the threads and fail every pending waiter with ``error`` (default Shutdown)."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        self._watch.put(None)
        busy = self._inflight > 0
        for t in self._threads:
            # A watcher waiting on an in-flight entry that cannot commit finishes only once the
            # engine stops (which comes after this): do not wait for it; it exits by itself.
            t.join(timeout=0.1 if busy and t.name == "bknr-watch" else 5)
        self._threads.clear()
        self._queue.clear()
        self.applier_ident = None  # from here on, wake-ups are immediate
        self.release_deferred()
        for sig in self.take_handoff():  # the applier did not get to pass them on
            sig.post()
        self._fail(list(self._pending), error or Shutdown("the cluster store stopped"))

    def _take_batch(self) -> list[tuple[int, bytes]]:
        items: list[tuple[int, bytes]] = []
        size = BATCH_OVERHEAD
        q = self._queue
        while q and len(items) < self.max_count:
            n = len(q[0][1]) + ITEM_OVERHEAD
            if items and size + n > self.max_bytes:
                break
            items.append(q.popleft())
            size += n
        return items

    def _submit_loop(self) -> None:
        while True:
            with self._cond:
                self._submitter_idle = True  # asleep: enqueue wakes it when the window has room
                hold_until = 0.0
                while self._running:
                    if not self._queue or self._inflight >= self.window:
                        hold_until = 0.0
                        self._cond.wait()
                    elif self._hold():
                        now = time.monotonic()
                        if not hold_until:
                            hold_until = now + self.pace_hold_s
                        elif now >= hold_until:
                            break
                        self._submitter_holding = True
                        self._cond.wait(hold_until - now)
                        self._submitter_holding = False
                    else:
                        break
                self._submitter_idle = False
                if not self._running:
                    return
            self._pump()

    def _pump(self) -> None:
        """Submit what is queued, as entries, into the free window slots (submitter thread)."""
        with self._lock:
            if not self._running:
                return
            batches = []
            while self._queue and self._inflight < self.window:
                batches.append(self._take_batch())
                self._inflight += 1
        if not batches:
            return
        entries = [encode_batch(self.node_id, self.session, items) for items in batches]
        if self._submit_many is not None and len(entries) > 1:
            groups = [(entries, [s for items in batches for s, _ in items], len(entries))]
        else:
            groups = [([e], [s for s, _ in items], 1) for e, items in zip(entries, batches, strict=True)]
        for datas, seqs, n in groups:
            try:
                fut = self._submit(datas[0]) if n == 1 else self._submit_many(datas)  # type: ignore[misc]
            except BaseException as exc:  # noqa: BLE001 - reported to the callers
                self._done(n)
                self._fail(seqs, self._map_error(exc))
                continue
            self.batches += n
            self.items += len(seqs)
            self._watch.put((fut, seqs, n))

    def _watch_loop(self, life: int, jobs: queue.SimpleQueue) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            fut, seqs, n = job
            try:
                fut.result()
            except BknrError as exc:
                self._fail(seqs, self._map_error(exc))
            except BaseException as exc:  # noqa: BLE001 - an engine bug must still reach callers
                log.exception("engine future failed unexpectedly")
                self._fail(seqs, EngineError(f"engine failure: {exc!r}"))
            finally:
                self._done(n, life)
            if self._queue and life == self._life:  # records waited for a free slot
                with self._cond:
                    self._cond.notify()

    def _done(self, n: int, life: int | None = None) -> None:
        with self._lock:
            if life is None or life == self._life:
                self._inflight -= n

    def fail_pending(self, error: BaseException) -> None:
        """Resolve every waiter still pending with ``error`` (a halted replica, apply.py)."""
        self._fail(list(self._pending), error)

    def _fail(self, seqs: list[int], error: BaseException) -> None:
        self.failed += len(seqs)  # metrics: proposals the engine refused or lost
        for s in seqs:
            w = self._pending.pop(s, None)
            if w is not None:
                w.resolve(0, error=error)
