"""``StoreDefinition`` and ``Store``: records in, state out.

A record (format version 1) is the msgpack array ``[1, name, timestamp_ns, args, kwargs]`` with
the codec's extension types; it is produced by ``encode_transaction`` and consumed by
``apply_record``. Standalone stores also append every successful record to their own log
(see ``durable.py``); cluster stores get records from Raft instead.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from enum import Enum
from typing import IO, Any

from bknr_cluster.errors import CodecError, CorruptData, StoreError, UnknownTransaction, UsageError
from bknr_cluster.store import system
from bknr_cluster.store.blobs import BlobStore
from bknr_cluster.store.codec import UNPACK_ERRORS, Codec, unpackb
from bknr_cluster.store.digest import FOLD_ENTRIES, IncrementalDigest, finish, full_sum
from bknr_cluster.store.model import LOCAL, StoreObject
from bknr_cluster.store.protocols import LoadedState
from bknr_cluster.store.state import ObjectState
from bknr_cluster.store.tx import Query, Transaction, TxContext

RECORD_VERSION = 1


def _names(kind: str, items: Iterable[Any], cls: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """Registry by full name plus unambiguous short names (the part after the last dot)."""
    by_name: dict[str, Any] = {}
    for it in items:
        if not isinstance(it, cls):
            raise UsageError(f"{it!r} is not a registered {kind}: decorate it with @{kind}")
        if it.name in by_name and by_name[it.name] is not it:
            raise UsageError(f"two {kind}s are registered as {it.name!r}")
        by_name[it.name] = it
    short: dict[str, Any] = {}
    clashes = set()
    for name, it in by_name.items():
        s = name.rsplit(".", 1)[-1]
        if s in short and short[s] is not it:
            clashes.add(s)
        short[s] = it
    for s in clashes:
        del short[s]
    return by_name, short


def _add_system(registry: dict[str, Any], builtins: dict[str, Any], kind: str) -> None:
    """The system namespace's built-ins (system.py), by full name only: no short-name clashes."""
    for name, item in registry.items():
        # the built-in itself is fine: a definition made from another's transactions has them
        if name.startswith(system.PREFIX) and builtins.get(name) is not item:
            raise UsageError(f"{kind} name {name!r}: the prefix {system.PREFIX!r} is reserved")
    registry.update(builtins)


class StoreDefinition:
    """What a store holds: persistent classes, transactions, queries and codec enums."""

    def __init__(self, name: str, classes: Iterable[type], transactions: Iterable[Transaction] = (),
                 queries: Iterable[Query] = (), *, enums: Iterable[type[Enum]] = (),
                 class_renames: dict[str, str] | None = None, version: str = ""):
        self.name = name
        # The application's own version label (free text, e.g. "1.4"); the cluster layer reports
        # it with the definition's fingerprint (cluster/definition.py) and compares nothing else
        # by it.
        if not isinstance(version, str):
            raise UsageError(f"version must be a string, not {version!r}")
        self.version = version
        self.classes = tuple(classes)
        seen: dict[str, type] = {}
        for c in self.classes:
            if not (isinstance(c, type) and issubclass(c, StoreObject) and c is not StoreObject):
                raise UsageError(f"{c!r} is not a StoreObject subclass")
            other = seen.setdefault(c._meta.name, c)
            if other is not c:
                raise UsageError(f"two classes are stored as {c._meta.name!r}")
        self.transactions, self._tx_short = _names("transaction", transactions, Transaction)
        _add_system(self.transactions, system.TRANSACTIONS, "transaction")
        # the hot paths' one-dict lookup: full name, unambiguous short name or the Transaction
        # itself -> Transaction (anything else goes through ``transaction()`` for its error)
        self._tx_any: dict[Any, Transaction] = {**self._tx_short, **self.transactions}
        self._tx_any.update((t, t) for t in self.transactions.values())
        self.queries, self._q_short = _names("query", queries, Query)
        _add_system(self.queries, system.QUERIES, "query")
        self.enums = tuple(enums)
        for e in self.enums:
            if not (isinstance(e, type) and issubclass(e, Enum)):
                raise UsageError(f"{e!r} is not an Enum class")
        # snapshot class name (old) -> current class name
        self.class_renames = dict(class_renames or {})

    def transaction(self, tx: Transaction | str) -> Transaction:
        if isinstance(tx, Transaction):
            name = tx.name
        elif isinstance(tx, str):
            name = tx
        else:
            raise UsageError(f"{tx!r} is not a transaction")
        found = self.transactions.get(name) or self._tx_short.get(name)
        if found is None or (isinstance(tx, Transaction) and found is not tx):
            raise UnknownTransaction(f"unknown transaction {name!r} in store {self.name!r}")
        return found

    def query(self, q: Query | str) -> Query:
        name = q.name if isinstance(q, Query) else q
        found = self.queries.get(name) or self._q_short.get(name) if isinstance(name, str) else None
        if found is None:
            raise UnknownTransaction(f"unknown query {name!r} in store {self.name!r}")
        return found


class _Reading:
    __slots__ = ("store", "prev")

    def __init__(self, store: Store):
        self.store = store

    def __enter__(self) -> Store:
        self.store._lock.acquire()
        self.prev = LOCAL.store
        LOCAL.store = self.store
        return self.store

    def __exit__(self, *exc: Any) -> None:
        LOCAL.store = self.prev
        self.store._lock.release()


class Store(ObjectState):
    """A prevalence store: all state in memory, changed only by transactions.

    ``Store(None, definition=d)`` is an in-memory store driven through ``apply_record`` (cluster
    mode); ``Store(path, definition=d)`` is standalone: it restores from ``path`` and logs every
    transaction it executes, fsync'd before ``execute`` returns.
    """

    def __init__(self, path: str | os.PathLike | None = None, definition: StoreDefinition | None = None,
                 *, classes: Iterable[type] = (), transactions: Iterable[Transaction] = (),
                 queries: Iterable[Query] = (), enums: Iterable[type[Enum]] = (), name: str = "store",
                 sync: bool = True, blob_dir: str | None = None, bind: bool = True):
        if definition is None:
            definition = StoreDefinition(name, classes, transactions, queries, enums=enums)
        self.definition = definition
        self._lock = threading.RLock()
        self._init_state(definition.classes)
        self._codec = Codec(definition.enums, self.find, self._is_live)
        self._tx_full = definition.transactions      # full name -> Transaction (apply fast path)
        self._ext_hook = self._codec._ext_hook          # bound once, not per record
        self._last_ts = 0
        self.system: dict[str, Any] = {}   # the cluster layer's namespace (system.py)
        self.last_index = 0            # index of the last record applied (TxContext.index)
        self._version = 0              # bumped on every successful change; digest cache key
        self._digest_cache: tuple[int, str] | None = None
        self._digests = IncrementalDigest(self)
        # the commit path's view of it: undo logs not yet folded, their entry count, threshold
        self._digest_pending = self._digests.pending
        self._digest_backlog = 0
        self._fold_at = FOLD_ENTRIES
        self.schema_report: list[str] = []
        if path is not None and blob_dir is None:
            blob_dir = os.path.join(os.fspath(path), "blobs")
        self.blobs = BlobStore(blob_dir, sync=sync)
        if bind:
            self.bind()
        self._durable: Any = None
        if path is not None:
            from bknr_cluster.store.durable import Durable
            self._durable = Durable(self, os.fspath(path), sync=sync)
            self._durable.open()

    def bind(self) -> None:
        """Make class-level accessors and direct transaction calls use this store."""
        for c in self.definition.classes:
            c._bound = self
        for t in self.definition.transactions.values():
            t._bound = self
        for q in self.definition.queries.values():
            q._bound = self
        BlobStore.default_owner = self

    def _is_live(self, obj: Any) -> bool:
        extent = self._extent.get(type(obj))
        return extent is not None and extent.get(obj.id) is obj

    # --- records ------------------------------------------------------------------------------

    def encode_transaction(self, tx: Transaction | str, *args: Any, **kwargs: Any) -> bytes:
        """The record for ``tx(*args, **kwargs)`` stamped with this machine's clock."""
        # encode_call inlined: this runs for every transaction on the leader
        try:
            t = self.definition._tx_any[tx]
        except (KeyError, TypeError):
            t = self.definition.transaction(tx)     # raises the right error
        if kwargs or not t._min_pos <= len(args) <= t._max_pos:
            t.check_args(args, kwargs)
        return self._codec.pack([RECORD_VERSION, t.name, time.time_ns(), list(args), kwargs or None])

    def encode_transaction_at(self, timestamp_ns: int, tx: Transaction | str, *args: Any,
                              **kwargs: Any) -> bytes:
        """Same, with an explicit timestamp (nanoseconds since the epoch, UTC)."""
        return self.encode_call(tx, args, kwargs, timestamp_ns)

    def encode_call(self, tx: Transaction | str, args: Iterable[Any] = (),
                    kwargs: dict[str, Any] | None = None, timestamp_ns: int | None = None) -> bytes:
        """Validate and encode a call; raises UnknownTransaction, UsageError or CodecError."""
        t = self.definition.transaction(tx)
        args = tuple(args)
        kwargs = kwargs or {}
        t.check_args(args, kwargs)
        ts = time.time_ns() if timestamp_ns is None else int(timestamp_ns)
        return self._codec.pack([RECORD_VERSION, t.name, ts, list(args), kwargs or None])

    def _decode_record(self, record: bytes) -> tuple[Transaction, int, list, dict | None]:
        """(transaction, timestamp, args, kwargs or None); bad records raise CorruptData,
        UnknownTransaction, or CodecError (a reference to an object that does not exist)."""
        try:        # Codec.unpack inlined (one call less per record)
            fields = unpackb(record, ext_hook=self._ext_hook, strict_map_key=False, raw=False)
        except CodecError as exc:
            if "cannot decode" in str(exc):
                raise CorruptData(f"malformed transaction record: {exc}") from None
            raise
        except UNPACK_ERRORS as exc:
            raise CorruptData(f"malformed transaction record: cannot decode value: {exc}") from None
        if type(fields) is not list or len(fields) != 5 or fields[0] != RECORD_VERSION:
            raise CorruptData(f"not a version-{RECORD_VERSION} transaction record")
        _, name, ts, args, kwargs = fields
        if (type(name) is not str or type(ts) is not int or type(args) is not list
                or not (kwargs is None or (type(kwargs) is dict and all(type(k) is str for k in kwargs)))):
            raise CorruptData("malformed transaction record: bad field types")
        t = self.definition._tx_any.get(name)
        if t is None:
            t = self.definition.transaction(name)       # raises UnknownTransaction
        return t, ts, args, kwargs or None

    def describe_record(self, record: bytes) -> dict[str, Any]:
        """Decoded fields of a record (for tools and error messages)."""
        with self._lock:
            t, ts, args, kwargs = self._decode_record(record)
        return {"name": t.name, "timestamp_ns": ts, "args": args, "kwargs": kwargs or {}}

    def apply_record(self, record: bytes, ctx: TxContext | None = None) -> Any:
        """Run the record's transaction. On failure the store is unchanged and the transaction's
        own exception propagates (UnknownTransaction/CodecError/CorruptData for bad records)."""
        if ctx is None:
            ctx = TxContext()
        lock = self._lock       # re-entrant: execute_record and replay call this holding it
        lock.acquire()          # (acquire/release: cheaper than a with statement)
        try:
            if ctx.index:
                self.last_index = ctx.index
            # _decode_record's common case inlined; anything unusual (kwargs, a short name, any
            # malformation) is decoded again by _decode_record, which raises the precise error
            try:
                version, name, ts, args, kwargs = fields = unpackb(
                    record, ext_hook=self._ext_hook, strict_map_key=False, raw=False)
                t = self._tx_full[name]
            except Exception:
                fields = None
            if (fields is None or type(fields) is not list or version != RECORD_VERSION
                    or type(ts) is not int or type(args) is not list or kwargs is not None):
                t, ts, args, kwargs = self._decode_record(record)
            if ts < self._last_ts:
                ts = self._last_ts          # time never runs backwards, even across leader changes
            ctx.store = self
            ctx.timestamp_ns = ts
            ctx.record = record
            # this thread's dict of LOCAL: one thread-local access instead of six (absent keys
            # are LOCAL's class-level defaults, None)
            local = LOCAL.__dict__
            prev_store, prev_tx = local.get("store"), local.get("tx")
            local["store"] = self
            local["tx"] = ctx
            next_id = self._next_id
            try:
                result = t.fn(*args) if kwargs is None else t.fn(*args, **kwargs)
            except BaseException:
                self._rollback(ctx, next_id)
                raise
            finally:
                local["store"] = prev_store
                local["tx"] = prev_tx
            undo = ctx.undo
            if undo:        # the digest folds it in later (digest.py); no copy, no clear
                ctx.undo = []
                self._digest_pending.append(undo)
                backlog = self._digest_backlog + len(undo)
                self._digest_backlog = backlog
                if backlog >= self._fold_at:
                    self._digests.fold_after_commit()
            self._last_ts = ts
            self._version += 1
            return result
        finally:
            lock.release()

    def execute(self, tx: Transaction | str, *args: Any, **kwargs: Any) -> Any:
        """Encode, apply and (standalone) durably log a transaction; returns its result."""
        if LOCAL.tx is not None:
            raise UsageError("execute() inside a transaction: call the transaction function directly")
        return self.execute_record(self.encode_call(tx, args, kwargs))

    def execute_record(self, record: bytes) -> Any:
        durable = self._durable
        if durable is None:
            with self._lock:
                return self.apply_record(record, TxContext(self.last_index + 1))
        with self._lock:
            durable.check_writable()
            result = self.apply_record(record, TxContext(durable.next_seq))
            ticket = durable.append(record)
        durable.wait_durable(ticket)      # group commit: outside the lock, shared fsync
        return result

    # --- reading ------------------------------------------------------------------------------

    def reading(self) -> _Reading:
        """``with store.reading():`` — no transaction applies until the block ends."""
        return _Reading(self)

    def run_query(self, q: Query | str, *args: Any, **kwargs: Any) -> Any:
        query = self.definition.query(q)
        with _Reading(self):
            return query.fn(*args, **kwargs)

    # --- codec --------------------------------------------------------------------------------

    def encode_value(self, value: Any) -> bytes:
        return self._codec.pack(value)

    def decode_value(self, data: bytes) -> Any:
        with self._lock:
            return self._codec.unpack(data)

    # --- snapshots, digest, blobs -------------------------------------------------------------

    def write_snapshot(self, stream: IO[bytes], include_blobs: bool = True,
                       include_system: bool = True) -> int:
        """Serialise the whole state to a binary stream; returns the number of objects.

        ``include_system=False`` leaves the system namespace out (backups: system.py)."""
        from bknr_cluster.store import snapshot
        with self._lock:
            return snapshot.write(self, stream, include_blobs=include_blobs,
                                  include_system=include_system)

    def load_snapshot(self, stream: IO[bytes]) -> int:
        """Replace the whole state with a snapshot (an empty stream means the empty store)."""
        from bknr_cluster.store import snapshot
        with self._lock:
            n = snapshot.load(self, stream)
            self._digests.reset()
            self._version += 1
            return n

    # --- the install seam (protocols.py): a loaded snapshot replaces the state here only ------

    def install_state(self, state: LoadedState) -> None:
        """Replace the whole object state with one decoded and checked by ``snapshot.load``
        (called under the store lock, by ``load_snapshot``)."""
        self._extent = state.extent
        self._index = state.index
        self._subs_cache.clear()
        self._unsorted.clear()
        self._next_id = state.next_id
        self._last_ts = state.last_ts
        self.last_index = state.last_index
        self.schema_report = state.schema_report
        self.system = state.system

    def reset_to_empty(self) -> None:
        """The state of an empty snapshot: no objects, no system records, index 0."""
        self._reset_state()
        self.system = {}
        self._last_ts = 0
        self.last_index = 0
        self.schema_report = []

    @property
    def lock(self) -> threading.RLock:
        """The store lock (re-entrant): held while a transaction runs or the state is replaced."""
        return self._lock

    def enum_class(self, name: str) -> type[Enum] | None:
        """The enum class registered under ``name``, None when unknown (jsonmap.py)."""
        return self._codec.enum_by_name.get(name)

    def snapshot_bytes(self) -> bytes:
        import io
        buf = io.BytesIO()
        self.write_snapshot(buf)
        return buf.getvalue()

    def digest(self) -> str:
        """Canonical hex digest of the persistent state: equal states give equal digests.
        Kept up to date incrementally: costs at most one fold of recent writes, whatever the
        store's size (digest.py)."""
        if LOCAL.tx is not None:    # it would fold values the transaction may still roll back
            raise UsageError("digest() inside a transaction: read it before or after")
        with self._lock:
            cached = self._digest_cache
            if cached is not None and cached[0] == self._version:
                return cached[1]
            value = self._digests.value()
            self._digest_cache = (self._version, value)
            return value

    def digest_full(self) -> str:
        """The same digest computed from scratch by walking every object (O(n), holds the store
        lock throughout): for verification. Always equal to ``digest()``; a difference means
        an attribute value was changed in place, outside the store's knowledge."""
        with self._lock:
            return finish(full_sum(self), self._next_id, self._last_ts, self.system)

    def collect_blobs(self) -> list[str]:
        """Delete blob contents no live object refers to; returns the removed hashes."""
        from bknr_cluster.store import snapshot
        with self._lock:
            used = snapshot.referenced_blobs(self)
            removed = sorted(self.blobs.hashes() - used)
            for sha in removed:
                self.blobs.remove(sha)
            return removed

    # --- standalone ---------------------------------------------------------------------------

    def snapshot(self) -> str:
        """Standalone: write a snapshot, start a fresh log; returns the snapshot file path."""
        if self._durable is None:
            raise StoreError("snapshot() needs a standalone store (Store(path, ...))")
        return self._durable.snapshot()  # holds the lock only to fork: transactions go on

    def close(self) -> None:
        """Standalone: flush the log and release the directory. Later writes raise StoreError
        (the store object stays readable)."""
        if self._durable is not None:
            with self._lock:
                self._durable.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return self.count()

    def __bool__(self) -> bool:      # an empty store is still a store (``if store:`` stays true)
        return True

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"objects": {c._meta.name: len(self._extent[c]) for c in self._classes},
                    "next_id": self._next_id, "last_index": self.last_index,
                    "standalone": self._durable is not None}
