"""The apply path of a ClusterStore: one applier thread, items in log order, on every replica.

Entries are group-commit batches (``batch.py``) or restore entries; ``snapshot_request`` and
``restore`` items implement the engine's snapshot-at-index protocol (native/DESIGN.md,
DESIGN.md in this folder). Nothing here may stop the applier: a replica that stops applying is
worse than a logged error, and a divergence shows as different digests at one applied index.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
import threading
import time
from typing import Any

from bknr_cluster.cluster.batch import RESTORE_MAGIC, decode_batch, decode_restore
from bknr_cluster.errors import BknrError, CorruptData, Shutdown, UsageError

log = logging.getLogger("bknr.cluster")


class ApplierMixin:
    """Mixed into ClusterStore (which provides the attributes declared here)."""

    engine: Any
    committer: Any
    store: Any
    applied_index: int
    applied_term: int
    applied_entries: int
    applied_records: int
    failed_records: int
    corrupt_entries: int
    restores: int
    replayed_entries: int
    last_store_snapshot: int
    freeze_gc: bool
    data_dir: Any
    _snapshot_writer: Any = None  # StoreSnapshotWriter, made at the first snapshot_request
    _running: bool
    _apply_lock: Any
    _applied_cond: threading.Condition
    _digest_cache: Any
    on_store_snapshot: Any = None  # called with the seconds each store snapshot took

    # --- apply path -----------------------------------------------------------------------

    def _apply_loop(self) -> None:
        from bknr_cluster.store import TxContext

        eng = self.engine
        # The wake-ups of the callers resolved in one slice are posted by the engine in the next
        # next_committed call, after it released the GIL (commit.py wake_in_engine); engine
        # stand-ins without ``wake`` get them posted at the end of the slice instead.
        committer = self.committer
        hand_off = committer.engine_wake = _takes_wake(eng)
        if self.freeze_gc:
            _use_huge_page_arenas()  # before any restore allocates the store's objects
        try:
            self._apply_slices(eng, committer, hand_off, TxContext)
        finally:
            _post(committer.take_handoff())  # stopping: nobody may be left asleep
            if self._snapshot_writer is not None:
                self._snapshot_writer.cancel()

    def _apply_slices(self, eng: Any, committer: Any, hand_off: bool, ctx_cls: Any) -> None:
        while self._running:
            wake = committer.take_handoff() if hand_off else None
            try:
                items = eng.next_committed(256, 0.1, wake) if wake else eng.next_committed(256, 0.1)
            except Shutdown:
                _post(wake)
                break
            except Exception:
                _post(wake)  # in case the engine failed before posting them (twice is harmless)
                if not self._running:
                    break
                log.exception("next_committed failed")
                threading.Event().wait(0.1)
                continue
            if not items:
                continue
            with self._apply_lock:
                for kind, index, term, data in items:
                    try:
                        if kind == "entry":
                            # applied_index is the last entry (or restore) applied: items
                            # arrive in log order, so anything at or below it is a replay.
                            if index <= self.applied_index:
                                self._refuse_replay(index)
                                continue
                            self._apply_entry(index, data, ctx_cls)
                        elif kind == "snapshot_request":
                            self._store_snapshot(index)
                        elif kind == "restore":
                            self._restore(index, data)
                        else:
                            log.error("unknown committed item kind %r at %d", kind, index)
                    except Exception:
                        # Nothing may stop the applier: a replica that stops applying is worse
                        # than a logged error (the digest comparison will show divergence).
                        log.exception("applying %s at index %d failed", kind, index)
                    self.applied_index = index
                    if term:
                        self.applied_term = term
                self._digest_cache = None
            with self._applied_cond:
                self._applied_cond.notify_all()

    def _refuse_replay(self, index: int) -> None:
        """Defence in depth: the engine handed over an entry at or below one already applied
        since the last restore.  Applying it again would apply a transaction twice (a silent
        divergence), so it is skipped, counted (``/status`` ``replayed_entries``) and logged
        loudly: it means a bug below this layer."""
        self.replayed_entries += 1
        log.error("REFUSED entry %d: entries up to %d were already applied since the last "
                  "restore (replayed_entries=%d)", index, self.applied_index, self.replayed_entries)

    def _apply_entry(self, index: int, data: bytes, ctx_cls: Any) -> None:
        self.applied_entries += 1
        if data[:4] == RESTORE_MAGIC:
            self._apply_restore_entry(index, data)
            return
        try:
            node_id, session, items = decode_batch(data)
        except CorruptData as exc:
            # Every replica decodes the same bytes the same way, so skipping keeps them equal.
            self.corrupt_entries += 1
            log.error("skipping malformed entry %d: %s", index, exc)
            return
        take = self.committer.take
        apply = self.store.apply_record
        for seq, record in items:
            w = take(node_id, session, seq)
            if not record:  # read marker
                if w is not None:
                    w.resolve(index)
                continue
            self.applied_records += 1
            try:
                result = apply(record, ctx_cls(index))
            except Exception as exc:  # the transaction's own exception; the store is unchanged
                self.failed_records += 1
                if w is not None:
                    w.resolve(index, error=exc, tx_error=True)
                continue
            if w is not None:
                w.resolve(index, result)

    def _apply_restore_entry(self, index: int, data: bytes) -> None:
        """A backup loaded through the log (``POST /restore``); deterministic on every replica:
        refused unless the store is empty at this index, checked against its SHA-256."""
        try:
            node_id, session, seq, sha, snapshot = decode_restore(data)
        except CorruptData as exc:
            self.corrupt_entries += 1
            log.error("skipping malformed restore entry %d: %s", index, exc)
            return
        w = self.committer.take(node_id, session, seq)
        error: BknrError | None = None
        if len(self.store) != 0:
            error = UsageError("the store is not empty: a backup can only seed an empty cluster")
            error.http_status = 409  # type: ignore[attr-defined]
        elif hashlib.sha256(snapshot).digest() != sha:
            error = CorruptData("restore entry: snapshot does not match its SHA-256")
        else:
            try:
                self.store.load_snapshot(io.BytesIO(snapshot))
            except Exception as exc:  # validated on the leader first; this is a last resort
                log.exception("restore entry %d failed to load", index)
                self.store.load_snapshot(io.BytesIO(b""))
                error = CorruptData(f"restore entry could not be loaded: {exc}")
        if error is None:
            self.restores += 1
            log.info("store restored from a backup entry at %d (%d bytes)", index, len(snapshot))
        if w is not None:
            w.resolve(index, error=error)

    def _store_snapshot(self, index: int) -> None:
        """Fork a writer of the state at ``index`` and go on applying (snapshot_writer.py)."""
        writer = self._snapshot_writer
        if writer is None:
            from bknr_cluster.cluster.snapshot_writer import StoreSnapshotWriter

            def done(at: int, seconds: float) -> None:
                self.last_store_snapshot = at  # before the engine may answer snapshot_now
                if self.on_store_snapshot is not None:  # metrics (api.py): a duration histogram
                    self.on_store_snapshot(seconds)

            writer = self._snapshot_writer = StoreSnapshotWriter(
                self.engine, self.store, self.data_dir / "store-snapshot",
                freeze_gc=self.freeze_gc, on_done=done)
        writer.start(index)

    def _maybe_freeze_gc(self) -> None:
        if self.freeze_gc:
            from bknr_cluster.store import gc_tuning
            t0 = time.monotonic()
            frozen = gc_tuning()
            log.info("gc: %d objects frozen in %.3f s", frozen, time.monotonic() - t0)

    def _restore(self, index: int, data: bytes) -> None:
        if self._snapshot_writer is not None:
            self._snapshot_writer.cancel()  # it writes a state this restore supersedes
        t0 = time.monotonic()
        self.store.load_snapshot(io.BytesIO(data))  # empty bytes: the empty store
        self.last_store_snapshot = index
        self.restores += 1
        try:  # where libraft stands: ties this restore to the Raft snapshot and log on disk
            st = self.engine.status(1.0)
            where = (f"raft snapshot {st.get('snapshot_index')}, log up to "
                     f"{st.get('last_log_index')}, commit {st.get('commit_index')}, "
                     f"tail {st.get('tail_entries')}")
        except Exception as exc:  # diagnostics only
            where = f"status unavailable: {exc}"
        log.info("restored store snapshot at %d (%d bytes) in %.3f s (%s)", index, len(data),
                 time.monotonic() - t0, where)
        self._maybe_freeze_gc()


def _use_huge_page_arenas() -> None:
    """Python's object arenas on transparent huge pages (native/huge_arenas.cpp): the fork of a
    store snapshot then copies one page-table entry per 2 MiB instead of per 4 KiB, which is
    what keeps the GIL held by fork() short on a large store (store/DESIGN.md)."""
    try:
        from bknr_cluster import _raft
    except ImportError:  # pragma: no cover - the engine is not built: a test stand-in
        return
    if _raft.use_huge_page_arenas():
        log.info("python object arenas now come from huge-page regions")


def _takes_wake(engine: Any) -> bool:
    """Whether ``engine.next_committed`` accepts the ``wake`` list (test stand-ins may not)."""
    try:
        return "wake" in inspect.signature(engine.next_committed).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def _post(signals: list[Any] | None) -> None:
    for sig in signals or ():
        sig.post()
