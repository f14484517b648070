"""The apply path of a ClusterStore: the ``Applier``, one thread, items in log order, on every replica.

Entries are group-commit batches (``batch.py``), restore entries or system entries (store
definitions, consistency checkpoints and their verdicts); ``snapshot_request`` and ``restore``
items implement the engine's snapshot-at-index protocol (native/DESIGN.md, DESIGN.md in this
folder).

Contract: the ``Applier`` owns the applied index (``applied_index``, ``applied_term``) and the
apply counters; only its thread changes them, the store, the members' published definitions
(``capabilities``) and the checkpoints (checkpoints.py). Readers that need the store and the
applied index as one consistent pair take ``paused()`` (the apply lock); ``wait_applied`` waits
for an index; ``digest`` gives ``(applied_index, digest)`` together.

A replica that cannot apply a committed entry the way the others did **halts** (``_halt``):
it stops applying right there, keeps its log, says so loudly, and can never lead (the engine
refuses to campaign or vote). Anything else that fails is logged and counted and applying goes on:
what fails identically on every replica (a transaction's own exception, a malformed entry) keeps
them equal. DESIGN.md, "Halting a replica", has the rule.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bknr_cluster.cluster import stall_trace
from bknr_cluster.cluster.batch import (
    RESTORE_MAGIC,
    SYSTEM_MAGIC,
    decode_batch,
    decode_restore,
    decode_system,
)
from bknr_cluster.cluster.checkpoints import Checkpoints, DefinitionProbe, Halt
from bknr_cluster.cluster.commit import AppliedSignal
from bknr_cluster.cluster.definition import COMPRESSED_SNAPSHOTS
from bknr_cluster.cluster.snapshot_meta import snapshot_object_count, snapshot_prefix, split_snapshot
from bknr_cluster.cluster.snapshot_writer import StoreSnapshotWriter  # not lazily: a pause
from bknr_cluster.errors import BknrError, CorruptData, ReplicaHalted, Shutdown, UsageError
from bknr_cluster.vocabulary import DataDirLayout

log = logging.getLogger("bknr.cluster")

# Publishing the digest after each slice (``Applier._publish_digest``): a digest computed in up
# to DIGEST_FREE_S of CPU time is published after every slice; a dearer one at most every
# DIGEST_SPACING times its cost (1 %: under writes a published pair goes stale at the next
# slice anyway, and a reader then computes the current one itself).
DIGEST_FREE_S = 50e-6
DIGEST_SPACING = 100


class Applier:
    """Applies committed items to ``store`` on its own thread; see the module docstring.

    Collaborators: the ``engine`` (``next_committed``, ``status``, ``set_halted``), the
    ``committer`` (resolves this node's waiters: ``take``, ``take_handoff``,
    ``release_deferred``, ``fail_pending``), ``capabilities`` (definition.py: updated from
    definition entries and snapshots), ``data_dir`` (where the store snapshot writer works),
    ``freeze_gc`` (gctune.py after each store snapshot restored) and ``on_halt`` (called once
    when this replica halts: the monitor hands leadership over).
    """

    def __init__(self, engine: Any, store: Any, committer: Any, capabilities: Any,
                 data_dir: Path, *, freeze_gc: bool = False,
                 on_halt: Callable[[], None] | None = None, snapshot_compression: int = 0) -> None:
        self.engine = engine
        self.store = store
        self.committer = committer
        self.capabilities = capabilities
        self.data_dir = data_dir
        self.freeze_gc = freeze_gc
        self.snapshot_compression = snapshot_compression  # zstd level asked for, 0: off
        self.on_halt = on_halt
        self.checks = Checkpoints()
        self.applied_index = 0
        self.applied_term = 0
        self.last_store_snapshot = 0
        self.applied_entries = 0
        self.applied_records = 0
        self.failed_records = 0
        self.corrupt_entries = 0
        self.restores = 0
        self.replayed_entries = 0  # entries refused because they were already applied
        # ``halted`` is None while this replica applies, else {index, reason, ...}.
        self.halted: dict[str, Any] | None = None
        self._halt_event = threading.Event()
        self.on_store_snapshot: Callable[[float], None] | None = None  # seconds per snapshot
        self._snapshot_writer: Any = None  # StoreSnapshotWriter, made at the first request
        self._probe = DefinitionProbe(store)  # why a record fails: halt or skip
        # The apply lock makes (store state, applied_index) one consistent pair for readers of
        # the whole state (digest, backup); transactions themselves lock inside the store.
        self._apply_lock = threading.RLock()
        # Signalled after each slice; that is also when the callers the slice resolved are
        # woken (commit.py: deferred wake-ups).
        self._applied_cond = AppliedSignal(committer.release_deferred)
        # A store whose digest() is O(1) (incremental; it then also offers digest_full() for
        # the full walk) lets the applier publish (index, digest) after every slice, so
        # /status never waits for the apply lock; otherwise digest() walks the store once per
        # applied index, under the apply lock (cached).
        self.cheap_digest = callable(getattr(store, "digest_full", None))
        self.published_digest: tuple[int, str] | None = None
        # Such a digest can still cost more than it should: the store hashes its system
        # namespace whole, and a failover drill fills it with one record per transfer (5,000
        # records: ~1 ms per slice on every replica, more than the transfer itself). Past
        # DIGEST_FREE_S a publication is spaced (``_publish_digest``); until the next one,
        # ``published_stale`` sends readers to the locked path.
        self.published_stale = False
        self._publish_after = 0.0
        self._digest_cache: tuple[int, str] | None = None
        self._running = False
        self.thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self.thread = threading.Thread(target=self._apply_loop, name="bknr-applier", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Ends the loop after its current slice (call after the engine stopped)."""
        self._running = False
        self._halt_event.set()

    def join(self, timeout: float = 10) -> None:
        if self.thread is not None:
            self.thread.join(timeout=timeout)

    # --- readers --------------------------------------------------------------------------

    @contextmanager
    def paused(self) -> Iterator[int]:
        """Applying paused (the apply lock held); yields the applied index the store is at."""
        with self._apply_lock:
            yield self.applied_index

    def digest(self) -> tuple[int, str]:
        """``(applied_index, canonical digest)`` taken together."""
        if not self.published_stale:  # read before the pair: a stale flag set later is fine
            published = self.published_digest
            if published is not None:  # O(1) digests: the applier's, from its last slice
                return published
        with self._apply_lock:
            cached = self._digest_cache
            if cached is not None and cached[0] == self.applied_index:
                return cached
            self._digest_cache = (self.applied_index, self.store.digest())
            if self.cheap_digest and self.halted is None:  # no slice runs: it is current
                self.published_digest = self._digest_cache
                self.published_stale = False
            return self._digest_cache

    def wait_applied(self, index: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._applied_cond:
            while self.applied_index < index:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._applied_cond.wait(left)
        return True

    def snapshot_writer_status(self) -> dict[str, Any]:
        w = self._snapshot_writer
        return {"store_snapshot_s": round(w.last_seconds, 3) if w else None,
                "store_snapshot_fork_ms": round(w.last_fork_ms, 1) if w else None,
                "store_snapshot_compress_ms": round(w.last_compress_ms, 1) if w else None,
                "store_snapshot_failures": w.failures if w else 0}

    # --- apply path -----------------------------------------------------------------------

    def _apply_loop(self) -> None:
        from bknr_cluster.store import TxContext

        eng = self.engine
        # The wake-ups of the callers resolved in one slice are posted by the engine in the next
        # next_committed call, after it released the GIL (commit.py engine_wake); engine
        # stand-ins without ``wake`` get them posted at the end of the slice instead.
        committer = self.committer
        hand_off = committer.engine_wake = _takes_wake(eng)
        if self.freeze_gc:
            _use_huge_page_arenas()  # before any restore allocates the store's objects
        stall_trace.start()  # BKNR_TRACE_STALLS only (a diagnostic)
        try:
            self._apply_slices(eng, committer, hand_off, TxContext)
        finally:
            _post(committer.take_handoff())  # stopping: nobody may be left asleep
            if self._snapshot_writer is not None:
                self._snapshot_writer.cancel()

    def _apply_slices(self, eng: Any, committer: Any, hand_off: bool, ctx_cls: Any) -> None:
        while self._running:
            if self.halted is not None:
                # Halted: apply nothing more until restarted (the engine keeps the log).
                _post(committer.take_handoff())
                self._halt_event.wait(0.5)
                continue
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
                        elif kind == "restore_failed":  # the engine could not read its image
                            raise Halt("snapshot", f"the snapshot at {index} cannot be read: "
                                       f"{data.decode(errors='replace')}")
                        else:
                            log.error("unknown committed item kind %r at %d", kind, index)
                    except Halt as h:
                        # applied_index stays at the item before; the rest of the slice is
                        # dropped (a restart replays it from the engine's snapshot and log)
                        self._halt(index, term, h)
                        break
                    except Exception:
                        # Anything else that fails here failed the same way on every replica
                        # (or the checkpoints will tell): log it and go on.
                        log.exception("applying %s at index %d failed", kind, index)
                    self.applied_index = index
                    if term:
                        self.applied_term = term
                self._digest_cache = None
                if self.cheap_digest and self.halted is None:
                    # an O(1) digest (store layer): publish it with its index for /status, which
                    # then never waits for the apply lock
                    self._publish_digest()
            with self._applied_cond:
                self._applied_cond.notify_all()

    def _publish_digest(self) -> None:
        """Publish ``(applied_index, digest)`` (under the apply lock, at the end of a slice).
        A digest that took more than DIGEST_FREE_S is next published only DIGEST_SPACING times
        its cost later, so it takes at most ~1/DIGEST_SPACING of the applier's time (and of the
        CPU every write on this node waits for); the slices in between mark the published pair
        stale, and ``digest()`` computes the current one under the lock when asked (a slice at
        most: the wait of a store without an O(1) digest)."""
        now = time.monotonic()
        if now < self._publish_after:
            self.published_stale = True
            return
        cpu = time.thread_time()  # its cost: this thread's CPU time (a preemption is not one)
        self.published_digest = (self.applied_index, self.store.digest())
        self.published_stale = False
        cost = time.thread_time() - cpu
        self._publish_after = now + DIGEST_SPACING * cost if cost > DIGEST_FREE_S else 0.0

    # --- halting --------------------------------------------------------------------------

    def _halt(self, index: int, term: int, h: Halt) -> None:
        """Stop applying at ``index`` (DESIGN.md, "Halting a replica")."""
        self.halted = {"index": index, "term": term, "kind": h.kind, "reason": h.reason,
                       "transaction": h.transaction, "records_applied": h.records_applied,
                       "applied_index": self.applied_index, "since": round(time.time(), 3)}
        self.published_digest = None
        log.error("HALTED: this replica cannot apply committed entry %d (term %d)%s the way the "
                  "other replicas did: %s. It stops applying at %d, keeps its log, will not "
                  "campaign or vote, and refuses writes. Deploy a version that can apply it and "
                  "restart the node; it then resumes from its snapshot and log with nothing lost.",
                  index, term, f", transaction {h.transaction!r}," if h.transaction else "",
                  h.reason, self.applied_index)
        setter = getattr(self.engine, "set_halted", None)
        if setter is not None:
            try:
                setter(True)
            except Exception:  # the flag is best effort; the applier has stopped either way
                log.exception("engine.set_halted failed")
        err = ReplicaHalted(f"replica halted at entry {index}: {h.reason}; the outcome of "
                            "this write is unknown")
        self.committer.fail_pending(err)
        if self.on_halt is not None:  # a halted leader hands leadership over
            self.on_halt()

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
        magic = data[:4]
        if magic == RESTORE_MAGIC:
            self._apply_restore_entry(index, data)
            return
        if magic == SYSTEM_MAGIC:
            self._apply_system(index, data)
            return
        try:
            node_id, session, items = decode_batch(data)
        except CorruptData as exc:
            # Every replica decodes the same bytes the same way, so skipping keeps them equal.
            # (An entry kind of a newer version lands here too: by contract such kinds change
            # nothing in the store, or are only logged once every voter knows them.)
            self.corrupt_entries += 1
            log.error("skipping malformed entry %d: %s", index, exc)
            return
        take = self.committer.take
        apply = self.store.apply_record
        done = 0
        for seq, record in items:
            w = take(node_id, session, seq)
            if not record:  # read marker
                if w is not None:
                    w.resolve(index)
                continue
            try:
                result = apply(record, ctx_cls(index))
            except Exception as exc:  # the store is unchanged
                why = self._probe.cannot_apply(record)
                if why is not None:  # this definition cannot apply it: halt (not skip)
                    if w is not None:
                        w.resolve(index, error=ReplicaHalted(f"replica halted: {why[1]}"))
                    raise Halt(why[0], why[1], why[2], done) from None
                # the transaction's own exception: the same on every replica that runs this
                # definition (a replica where it differs is caught by the checkpoints)
                self.applied_records += 1
                self.failed_records += 1
                done += 1
                if w is not None:
                    w.resolve(index, error=exc, tx_error=True)
                continue
            self.applied_records += 1
            done += 1
            if w is not None:
                w.resolve(index, result)

    # --- system entries (batch.py) --------------------------------------------------------

    def _apply_system(self, index: int, data: bytes) -> None:
        try:
            node_id, session, seq, kind, body = decode_system(data)
        except CorruptData as exc:
            self.corrupt_entries += 1
            log.error("skipping malformed system entry %d: %s", index, exc)
            return
        w = self.committer.take(node_id, session, seq) if seq else None
        try:
            if kind == "definition":
                who = body.get("node")
                desc = body.get("definition")
                if self.capabilities.publish(who, desc, index):
                    log.info("definition of node %s at %d: %s version %s, fingerprint %s", who, index,
                             desc.get("name"), desc.get("version") or "-", desc.get("fingerprint"))
                else:
                    self.corrupt_entries += 1
                    log.error("skipping malformed definition entry %d", index)
            elif kind == "checkpoint":
                self.checks.record(index, body, self.store, self.capabilities.own)
            elif kind == "verdict":
                if not self.checks.verdict(index, body):
                    self.corrupt_entries += 1
            else:  # a newer version's kind: by contract it changes nothing in the store
                log.warning("ignoring system entry %d of unknown kind %r", index, kind)
        except Halt:
            if w is not None:
                w.resolve(index, error=ReplicaHalted("replica halted at this entry"))
            raise
        if w is not None:
            w.resolve(index, index)


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
                try:
                    n = self.store.load_snapshot(io.BytesIO(snapshot))
                except Exception as exc:
                    # the leader loaded it with its definition before logging it: ours differs
                    raise Halt("snapshot", f"the backup in restore entry {index} cannot be loaded "
                               f"by this node's store definition: {exc}") from None
                self._check_dropped(index, snapshot, 0, n, "restore entry")
            except Halt as h:
                if w is not None:
                    w.resolve(index, error=ReplicaHalted(f"replica halted: {h.reason}"))
                raise
        if error is None:
            self.restores += 1
            log.info("store restored from a backup entry at %d (%d bytes)", index, len(snapshot))
        if w is not None:
            w.resolve(index, error=error)

    def _snapshot_meta(self) -> dict:
        """The cluster layer's replicated state, carried in front of each store snapshot."""
        return {"v": 1, "capabilities": self.capabilities.dump(),
                "last_checkpoint": self.checks.last_checkpoint}

    def _load_snapshot_meta(self, meta: dict | None) -> None:
        meta = meta or {}
        self.capabilities.load(meta.get("capabilities"))
        self.checks.load(meta.get("last_checkpoint"))

    def _check_dropped(self, index: int, data: bytes, off: int, loaded: int, what: str) -> None:
        """Halt when loading dropped objects of classes this definition does not know."""
        announced = snapshot_object_count(data, off)
        if announced is not None and loaded < announced:
            classes = [ln.split(":")[0].removeprefix("class ") for ln in self.store.schema_report
                       if ln.startswith("class ")]
            raise Halt("snapshot", f"the {what} at {index} holds {announced - loaded} object(s) of "
                       f"classes this node's store definition does not know ({', '.join(classes)}); "
                       "loading it drops them")

    def _store_snapshot(self, index: int) -> None:
        """Fork a writer of the state at ``index`` and go on applying (snapshot_writer.py)."""
        writer = self._snapshot_writer
        if writer is None:
            def done(at: int, seconds: float) -> None:
                self.last_store_snapshot = at  # before the engine may answer snapshot_now
                if self.on_store_snapshot is not None:  # metrics (api.py): a duration histogram
                    self.on_store_snapshot(seconds)

            writer = self._snapshot_writer = StoreSnapshotWriter(
                self.engine, self.store, DataDirLayout(self.data_dir).store_snapshot_dir,
                freeze_gc=self.freeze_gc, on_done=done, compress_level=self._compress_level)
        # the cluster layer's replicated state at ``index`` is packed here, the store in the child
        writer.start(index, prefix=snapshot_prefix(self._snapshot_meta()))

    def _compress_level(self) -> int:
        """The zstd level for the store image of the next engine snapshot: the configured one
        once every member's build reads compressed snapshots (a member of an older build could
        not restore one sent to it), else 0."""
        if self.snapshot_compression <= 0:
            return 0
        return self.snapshot_compression if self.capabilities.all_have(COMPRESSED_SNAPSHOTS) else 0

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
        try:
            meta, off = split_snapshot(data)
            stream = io.BytesIO(data)  # shares the bytes; the store part starts at off
            stream.seek(off)
            loaded = self.store.load_snapshot(stream)  # empty: the empty store
        except Exception as exc:
            raise Halt("snapshot", f"the snapshot at {index} cannot be loaded by this node's store "
                       f"definition: {exc}") from None
        self._load_snapshot_meta(meta)
        self._check_dropped(index, data, off, loaded, "snapshot")
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
    """Python's object arenas on transparent huge pages and the keeper (store/huge_pages.py):
    the fork of a store snapshot then copies one page-table entry per 2 MiB instead of per
    4 KiB, which is what keeps the GIL held by fork() short on a large store (store/DESIGN.md)."""
    from bknr_cluster.store.huge_pages import use_huge_pages
    if use_huge_pages():
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
