"""The apply path of a ClusterStore: one applier thread, items in log order, on every replica.

Entries are group-commit batches (``batch.py``), restore entries or system entries (store
definitions, consistency checkpoints and their verdicts); ``snapshot_request`` and ``restore``
items implement the engine's snapshot-at-index protocol (native/DESIGN.md, DESIGN.md in this
folder).

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
import struct
import threading
import time
from collections import OrderedDict
from typing import Any

import msgpack

from bknr_cluster.cluster.batch import (
    RESTORE_MAGIC,
    SYSTEM_MAGIC,
    decode_batch,
    decode_restore,
    decode_system,
)
from bknr_cluster.errors import BknrError, CodecError, CorruptData, ReplicaHalted, Shutdown, UsageError
from bknr_cluster.vocabulary import DataDirLayout

log = logging.getLogger("bknr.cluster")

# The snapshots this layer hands to the engine carry the cluster layer's own replicated state
# (the members' published definitions, the last checkpoint) in front of the store snapshot:
#     b"BKCLSNP1" + u32 length + msgpack(meta) + store snapshot
# A snapshot without the prefix (older builds) is a plain store snapshot with empty meta.
SNAPSHOT_PREFIX = b"BKCLSNP1"
_LEN = struct.Struct("<I")
KEEP_CHECKPOINTS = 64  # checkpoint digests (and verdicts) remembered per replica


class Halt(Exception):
    """Raised inside the applier when this replica cannot apply an item as the others did."""

    def __init__(self, kind: str, reason: str, transaction: str | None = None,
                 records_applied: int = 0) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.transaction = transaction
        self.records_applied = records_applied


def snapshot_prefix(meta: dict) -> bytes:
    """``SNAPSHOT_PREFIX`` + meta: what goes in front of the store snapshot in an engine store
    snapshot (the forked writer writes it first, snapshot_writer.py)."""
    body = msgpack.packb(meta, use_bin_type=True)
    return SNAPSHOT_PREFIX + _LEN.pack(len(body)) + body


def split_snapshot(data: bytes) -> tuple[dict | None, int]:
    """(meta or None, offset of the store snapshot) of an engine store snapshot."""
    n = len(SNAPSHOT_PREFIX)
    if data[:n] != SNAPSHOT_PREFIX:
        return None, 0
    if len(data) < n + _LEN.size:
        raise CorruptData("cluster snapshot prefix truncated")
    (length,) = _LEN.unpack_from(data, n)
    start = n + _LEN.size
    if start + length > len(data):
        raise CorruptData("cluster snapshot prefix truncated")
    try:
        meta = msgpack.unpackb(data[start:start + length], raw=False, strict_map_key=False)
    except Exception as exc:
        raise CorruptData(f"cluster snapshot prefix is not valid msgpack: {exc}") from None
    return (meta if isinstance(meta, dict) else {}), start + length


def store_snapshot_of(data: bytes) -> bytes:
    """The plain store snapshot inside an engine store snapshot (for tools and tests)."""
    return data[split_snapshot(data)[1]:]


def _snapshot_object_count(data: bytes, off: int) -> int | None:
    """The object count a store snapshot's header announces (dropped classes included)."""
    try:
        from bknr_cluster.store.snapshot import _FRAME, MAGIC
        head = off + len(MAGIC) + 4
        if data[off:off + len(MAGIC)] != MAGIC:
            return None
        length, _ = _FRAME.unpack_from(data, head)
        header = msgpack.unpackb(data[head + _FRAME.size:head + _FRAME.size + length], raw=False)
        n = header.get("objects") if isinstance(header, dict) else None
        return n if isinstance(n, int) else None
    except Exception:  # the loader itself reports damaged snapshots
        return None


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
    halted: dict | None
    capabilities: Any
    checkpoints: OrderedDict
    verdicts: OrderedDict
    last_checkpoint: int
    _halt_event: threading.Event
    _published_digest: tuple[int, str] | None
    _cheap_digest: bool
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
                if self._cheap_digest and self.halted is None:
                    # an O(1) digest (store layer): publish it with its index for /status, which
                    # then never waits for the apply lock
                    self._published_digest = (self.applied_index, self.store.digest())
            with self._applied_cond:
                self._applied_cond.notify_all()

    # --- halting --------------------------------------------------------------------------

    def _halt(self, index: int, term: int, h: Halt) -> None:
        """Stop applying at ``index`` (DESIGN.md, "Halting a replica")."""
        self.halted = {"index": index, "term": term, "kind": h.kind, "reason": h.reason,
                       "transaction": h.transaction, "records_applied": h.records_applied,
                       "applied_index": self.applied_index, "since": round(time.time(), 3)}
        self._published_digest = None
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
        self.on_halt()

    def on_halt(self) -> None:
        """A halted leader hands leadership over: the monitor's next round does it (now)."""
        monitor = getattr(self, "monitor", None)
        if monitor is not None:
            monitor.poke()

    def _cannot_apply(self, record: bytes) -> tuple[str, str, str | None] | None:
        """Why this replica's definition cannot apply ``record`` the way a replica that knows it
        would, as (kind, reason, transaction name); None when the failure does not depend on the
        definition (the transaction's own exception, a reference to a missing object, bytes that
        are not msgpack at all: every replica fails them the same way)."""
        from bknr_cluster.store import RECORD_VERSION
        from bknr_cluster.store.codec import Codec

        try:
            fields = msgpack.unpackb(record, raw=False, strict_map_key=False,
                                     ext_hook=lambda code, data: msgpack.ExtType(code, data))
        except Exception:
            return None
        if type(fields) is not list or len(fields) != 5:
            return None
        version, name = fields[0], fields[1]
        if type(name) is not str:
            return None
        if type(version) is int and version != RECORD_VERSION:
            return ("record_version", f"transaction record format {version} is not one this "
                    f"version reads ({RECORD_VERSION})", name)
        if type(version) is not int:
            return None
        definition = self.store.definition
        try:
            definition.transaction(name)
        except Exception:
            return ("unknown_transaction", f"transaction {name!r} is not in this node's store "
                    f"definition {definition.name!r} (version "
                    f"{getattr(definition, 'version', '') or '-'})", name)
        probe = self._probe_codec
        if probe is None:
            probe = self._probe_codec = Codec(definition.enums, lambda oid: None, lambda o: True,
                                              lenient=True)
        try:
            probe.unpack(record)
        except CodecError as exc:
            return ("codec", f"the arguments of {name!r} cannot be decoded by this node's store "
                    f"definition: {exc}", name)
        except Exception:
            return None
        return None

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
                why = self._cannot_apply(record)
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
                self._checkpoint(index, body)
            elif kind == "verdict":
                self._verdict(index, body)
            else:  # a newer version's kind: by contract it changes nothing in the store
                log.warning("ignoring system entry %d of unknown kind %r", index, kind)
        except Halt:
            if w is not None:
                w.resolve(index, error=ReplicaHalted("replica halted at this entry"))
            raise
        if w is not None:
            w.resolve(index, index)

    def _checkpoint(self, index: int, body: dict) -> None:
        """Every replica records its state digest at exactly this index (DESIGN.md)."""
        t0 = time.perf_counter()
        digest = self.store.digest()
        took_ms = (time.perf_counter() - t0) * 1000
        own = self.capabilities.own
        rec: dict[str, Any] = {"digest": digest, "schema": own["schema"],
                               "fingerprint": own["fingerprint"], "ms": round(took_ms, 3)}
        if body.get("full"):
            # explicit verification (bknrctl verify): the full walk, on the apply path
            full_fn = getattr(self.store, "digest_full", None)
            t1 = time.perf_counter()
            full = full_fn() if full_fn is not None else digest
            rec["full"] = full
            rec["full_ms"] = round((time.perf_counter() - t1) * 1000, 3)
            if full != digest:
                log.error("checkpoint %d: the store's incremental digest %s disagrees with its "
                          "full walk %s (a bug in the store's digest maintenance)", index, digest,
                          full)
        self.checkpoints[index] = rec
        while len(self.checkpoints) > KEEP_CHECKPOINTS:
            self.checkpoints.popitem(last=False)
        self.last_checkpoint = index
        log.info("checkpoint at %d: digest %s (%.2f ms)", index, digest, took_ms)

    def _verdict(self, index: int, body: dict) -> None:
        """Compare our digest at a checkpoint with the majority's; halt when it differs."""
        c, digest, schema = body.get("index"), body.get("digest"), body.get("schema")
        if not isinstance(c, int):
            self.corrupt_entries += 1
            log.error("skipping malformed verdict entry %d", index)
            return
        mine = self.checkpoints.get(c)
        agree = body.get("agree") or []
        if mine is None:
            result = "not computed here"  # restored from a snapshot past it
        elif mine["schema"] != schema:
            result = "not comparable"     # another schema: digests differ by construction
        elif mine["digest"] == digest:
            result = "agree"
        else:
            result = "disagree"
        self.verdicts[c] = {"verdict_index": index, "digest": digest, "schema": schema,
                            "agree": agree, "result": result}
        while len(self.verdicts) > KEEP_CHECKPOINTS:
            self.verdicts.popitem(last=False)
        if result == "disagree":
            raise Halt("checkpoint", f"state digest at checkpoint {c} is {mine['digest']} here but "
                       f"{digest} on a majority of the voters (nodes {agree}): this replica "
                       "diverged (a transaction that behaved differently here)")
        if result == "agree":
            log.info("checkpoint %d verified: digest agrees with the majority (nodes %s)", c, agree)

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
                "last_checkpoint": self.last_checkpoint}

    def _load_snapshot_meta(self, meta: dict | None) -> None:
        meta = meta or {}
        self.capabilities.load(meta.get("capabilities"))
        last = meta.get("last_checkpoint")
        self.last_checkpoint = last if isinstance(last, int) else 0

    def _check_dropped(self, index: int, data: bytes, off: int, loaded: int, what: str) -> None:
        """Halt when loading dropped objects of classes this definition does not know."""
        announced = _snapshot_object_count(data, off)
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
            from bknr_cluster.cluster.snapshot_writer import StoreSnapshotWriter

            def done(at: int, seconds: float) -> None:
                self.last_store_snapshot = at  # before the engine may answer snapshot_now
                if self.on_store_snapshot is not None:  # metrics (api.py): a duration histogram
                    self.on_store_snapshot(seconds)

            writer = self._snapshot_writer = StoreSnapshotWriter(
                self.engine, self.store, DataDirLayout(self.data_dir).store_snapshot_dir,
                freeze_gc=self.freeze_gc, on_done=done)
        # the cluster layer's replicated state at ``index`` is packed here, the store in the child
        writer.start(index, prefix=snapshot_prefix(self._snapshot_meta()))

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
    """Python's object arenas on transparent huge pages (native/huge_arenas.cpp): the fork of a
    store snapshot then copies one page-table entry per 2 MiB instead of per 4 KiB, which is
    what keeps the GIL held by fork() short on a large store (store/DESIGN.md)."""
    try:
        from bknr_cluster import _raft
    except ImportError:  # pragma: no cover - the engine is not built: a test stand-in
        return
    if _raft.use_huge_page_arenas():
        log.info("python object arenas now come from huge-page regions")
    from bknr_cluster.store.huge_pages import keeper
    keeper().start()  # keeps them (and malloc's dense memory) on huge pages between snapshots


def _takes_wake(engine: Any) -> bool:
    """Whether ``engine.next_committed`` accepts the ``wake`` list (test stand-ins may not)."""
    try:
        return "wake" in inspect.signature(engine.next_committed).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def _post(signals: list[Any] | None) -> None:
    for sig in signals or ():
        sig.post()
