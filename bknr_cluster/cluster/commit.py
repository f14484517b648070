"""Group commit: concurrent callers' records are packed into one engine entry.

Callers ``enqueue`` a record and get a :class:`Waiter`. A submitter thread takes everything
pending (bounded by count and bytes), packs it with :mod:`batch` and submits it to the engine,
keeping at most ``window`` batches in flight so that batches grow while the log is busy. A watcher
thread waits on the engine futures in submission order: a failed submission fails the batch's
waiters that are still pending. Success is *not* reported from here: the applier resolves each
waiter after the local apply, with the transaction's result or exception (see ``resolve``).

A waiter is resolved exactly once: whoever pops its sequence number from ``_pending`` resolves it
(``dict.pop`` is atomic), so a late apply after a ``LeadershipLost`` is silently dropped.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from bknr_cluster.cluster.batch import BATCH_OVERHEAD, ITEM_OVERHEAD, encode_batch
from bknr_cluster.errors import BknrError, EngineError, Shutdown, TooBig

log = logging.getLogger("bknr.cluster.commit")


class Waiter:
    """One caller's pending record; a pre-acquired lock is the cheapest one-shot event."""

    __slots__ = ("_lock", "result", "error", "tx_error", "index", "callback", "seq")

    def __init__(self, callback: Callable[[Waiter], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.result: Any = None
        self.error: BaseException | None = None
        self.tx_error = False        # True: ``error`` was raised by the transaction itself
        self.index = 0
        self.callback = callback
        self.seq = 0

    def resolve(self, index: int, result: Any = None, error: BaseException | None = None,
                tx_error: bool = False) -> None:
        self.index, self.result, self.error, self.tx_error = index, result, error, tx_error
        self._lock.release()
        if self.callback is not None:
            try:
                self.callback(self)
            except Exception:  # a broken callback must not kill the applier
                log.exception("waiter callback failed")

    def wait(self, timeout: float | None) -> bool:
        return self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout))


class LoopDelivery:
    """Hands resolved waiters to one asyncio loop with one wake-up per burst, not per waiter
    (each ``call_soon_threadsafe`` writes to the loop's self-pipe: a syscall)."""

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self._ready: list[tuple[Any, Waiter]] = []
        self._scheduled = False
        self._lock = threading.Lock()

    def deliver(self, fut: Any, w: Waiter) -> None:
        """Any thread: complete ``fut`` with ``w`` on the loop."""
        with self._lock:
            self._ready.append((fut, w))
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
            self._scheduled = False
        for fut, w in ready:
            if not fut.done():
                fut.set_result(w)


class GroupCommitter:
    """Packs enqueued records into engine entries; see the module docstring."""

    def __init__(self, submit: Callable[[bytes], Any], node_id: int, *, max_count: int = 512,
                 max_bytes: int = 1 << 20, window: int = 4,
                 map_error: Callable[[BaseException], BaseException] = lambda e: e) -> None:
        self._submit = submit
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
        self._cond = threading.Condition()
        self._inflight = 0
        self._submitter_idle = False
        self._watch: queue.SimpleQueue = queue.SimpleQueue()
        self._running = False
        self._threads: list[threading.Thread] = []
        self.batches = 0          # entries submitted (metrics)
        self.items = 0            # records submitted (metrics)

    # --- caller side ----------------------------------------------------------------------

    def max_record(self) -> int:
        return self.max_bytes - BATCH_OVERHEAD - ITEM_OVERHEAD

    def enqueue(self, record: bytes, callback: Callable[[Waiter], None] | None = None) -> Waiter:
        """Queue ``record`` (``b""`` = read marker) for the next batch; returns its waiter."""
        if len(record) > self.max_record():
            raise TooBig(f"transaction record of {len(record)} bytes exceeds the batch limit "
                         f"of {self.max_record()} bytes")
        w = Waiter(callback)
        with self._cond:
            if not self._running:
                raise Shutdown("the cluster store is not running")
            seq = w.seq = next(self._seq)
            self._pending[seq] = w
            self._queue.append((seq, record))
            # Wake the submitter only when it sleeps for lack of work: while it waits for a free
            # window slot, waking it on every record would cost a thread switch per record.
            if self._submitter_idle:
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
        return self._pending.pop(seq, None)

    # --- threads --------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            self._running = True
        for name, target in (("bknr-submit", self._submit_loop), ("bknr-watch", self._watch_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, error: BaseException | None = None) -> None:
        """Stop the threads and fail every pending waiter with ``error`` (default Shutdown)."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        self._watch.put(None)
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        self._queue.clear()
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
                while self._running and (not self._queue or self._inflight >= self.window):
                    self._submitter_idle = not self._queue
                    self._cond.wait()
                self._submitter_idle = False
                if not self._running:
                    return
                items = self._take_batch()
                self._inflight += 1
            seqs = [s for s, _ in items]
            try:
                fut = self._submit(encode_batch(self.node_id, self.session, items))
            except BaseException as exc:  # noqa: BLE001 - reported to the callers
                self._done_one()
                self._fail(seqs, self._map_error(exc))
                continue
            self.batches += 1
            self.items += len(items)
            self._watch.put((fut, seqs))

    def _watch_loop(self) -> None:
        while True:
            job = self._watch.get()
            if job is None:
                return
            fut, seqs = job
            try:
                fut.result()
            except BknrError as exc:
                self._fail(seqs, self._map_error(exc))
            except BaseException as exc:  # noqa: BLE001 - an engine bug must still reach callers
                log.exception("engine future failed unexpectedly")
                self._fail(seqs, EngineError(f"engine failure: {exc!r}"))
            finally:
                self._done_one()

    def _done_one(self) -> None:
        with self._cond:
            self._inflight -= 1
            self._cond.notify_all()

    def _fail(self, seqs: list[int], error: BaseException) -> None:
        for s in seqs:
            w = self._pending.pop(s, None)
            if w is not None:
                w.resolve(0, error=error)
