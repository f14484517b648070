"""The state digest, kept up to date incrementally so reading it costs O(1) at any size.

Definition (scheme ``bknr-digest-4``)::

    digest  = blake2s(pack([SCHEME, S, next_id, last_ts])).hexdigest()
    S       = sum over live objects o of h(o)  mod 2**120
    h(o)    = t(o) + sum over o's persistent attributes i of t(o, i)
    t(o)    = siphash128(ROW_KEY, pack([tag(class), o.id]))          mod 2**120
    t(o, i) = siphash128(ROW_KEY, pack([tag(class), o.id, i, v_i]))  mod 2**120

``siphash128`` is SipHash-1-3 with its 128-bit output read as a little-endian integer, under
the fixed public key ``ROW_KEY``; ``tag(class)`` is the 8-byte blake2s of the packed ``[stored
class name, [persistent attribute names, sorted]]``; ``i`` is an attribute's position in that
sorted list and ``v_i`` its value, canonicalised (dict items and set members sorted by their
encoding) and encoded with the store codec; a reference to a deleted object encodes as None,
exactly as snapshots write it, so a replica that restored a snapshot and one that replayed the
log agree. A sum does not depend on the order objects were created, written or deleted in, so
equal states give equal digests whatever the history. (``bknr-digest-3`` hashed each object's
whole row once; a per-attribute term lets a write change S by ``t(o, i, new) - t(o, i, old)``
without reading the object's other attributes: see "Keeping S current".)

Terms are hashed in C (native/digest.cpp, module ``_digest``): it encodes None, bool, int, float,
str, bytes and references itself and every other value through ``_Hasher.fallback`` (this
module's packer over ``_canon``), giving the same bytes the codec would.

Keeping S current. A successful transaction hands its undo log (which names every object it
created, wrote or deleted, and each written attribute's old value) to ``pending`` instead of
clearing it; nothing is added to the attribute-write path. ``fold`` then takes the batch of
pending undo entries object by object: an object created in the batch adds its h; one that
existed before it and is deleted now subtracts h over its values as they were when the batch
began (each written attribute's value is the old value of its first write in the batch, the
others are unchanged); one live before and after changes S by ``t(o, i, now) - t(o, i, then)``
for each attribute the batch wrote. "Then" also means references are encoded as of the batch's
start: objects the batch created were not live yet, objects it deleted still were. The fold
runs when ``pending`` holds ``FOLD_ENTRIES`` undo entries (at the commit that reaches it) and
before every read of the digest, so a read costs at most one such batch; it reads only what
the writes touched. A failed transaction's undo log never reaches ``pending``: it changed
nothing. Objects hold no hash: S is the only state.

Deleting an object changes the terms of every value that references it (the reference becomes
None) without touching their objects. So every object a new term saw a live reference to is
marked (its ``_referenced`` slot becomes True, sticky), and when a batch deletes a marked object
the fold scans the classes that have held references for the live objects pointing at it and
recomputes all their terms, then and now: one O(n) scan per fold that deletes a referenced
object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from hashlib import blake2s
from itertools import compress
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any

import msgpack

from bknr_cluster.store import _digest as _native
from bknr_cluster.store.codec import EXT_REF, Codec
from bknr_cluster.store.model import StoreObject

if TYPE_CHECKING:
    from bknr_cluster.store.core import Store

log = logging.getLogger("bknr_cluster.store")

SCHEME = "bknr-digest-4"
ROW_KEY = b"bknr-digest-4\0\0\0"   # 16 bytes
FOLD_ENTRIES = 64                  # undo entries pending before a commit folds them (while hot)
_MASK = (1 << 120) - 1
_CONTAINERS = frozenset((dict, set, frozenset, list, tuple))
_native.configure(StoreObject, StoreObject.__dict__["id"], StoreObject.__dict__["_referenced"], ROW_KEY)
# ``ExtType(code, data)`` without its Python-level argument checks (ours are always valid)
_ext = partial(tuple.__new__, msgpack.ExtType)


def _canon(pack: Callable[[Any], bytes], v: Any) -> Any:
    """A value whose encoding does not depend on dict/set insertion order."""
    t = type(v)
    if t is dict:
        return ["$d", sorted(([pack(_canon(pack, k)), _canon(pack, x)] for k, x in v.items()),
                             key=itemgetter(0))]
    if t is set or t is frozenset:
        return ["$s" if t is set else "$f", sorted(pack(_canon(pack, x)) for x in v)]
    if t is list:
        return [_canon(pack, x) for x in v]
    if t is tuple:
        return tuple(_canon(pack, x) for x in v)
    return v


class _Hasher:
    """Terms for many objects of one class at a time, in C (native/digest.cpp), which encodes
    the common values itself and hands the others to ``fallback`` (this module's msgpack packer
    over ``_canon``): the bytes hashed are exactly those of the definition above.

    With ``seen_refs``, every live object referenced by a hashed value is appended to it.
    ``fallback_before`` encodes values as of the running fold's batch start (``_native.was_live``)
    and notes nothing."""

    def __init__(self, store: Store, seen_refs: list[Any] | None = None):
        extents = store.__dict__        # ``_extent`` is replaced when a snapshot loads
        note = seen_refs.append if seen_refs is not None else None

        def is_live(obj: Any) -> bool:
            extent = extents["_extent"].get(type(obj))
            if extent is not None and extent.get(obj.id) is obj:
                if note is not None:
                    note(obj)
                return True
            return False

        self.fallback = _fallback(store, is_live, note)
        self.fallback_before = _fallback(store, _native.was_live, before=True)
        self.extents = extents
        self.seen_refs = seen_refs
        # class -> (tag, persistent attributes' slots sorted by name, {spec: position}): what the
        # C side reads
        self.plans: dict[type, tuple[bytes, tuple[Any, ...], dict[Any, int]]] = {}
        self.getters: dict[type, list[Any]] = {}

    def plan(self, cls: type) -> tuple[bytes, tuple[Any, ...], dict[Any, int]]:
        plan = self.plans.get(cls)
        if plan is None:
            specs = sorted(cls._meta.persistent, key=attrgetter("name"))
            tag = blake2s(msgpack.packb([cls._meta.name, [s.name for s in specs]]), digest_size=8).digest()
            plan = self.plans[cls] = (tag, tuple(s.owner.__dict__[s.name] for s in specs),
                                      {s: i for i, s in enumerate(specs)})
            self.getters[cls] = [s.getter for s in specs]
        return plan

    def hashes(self, cls: type, objs: list[Any]) -> list[int]:
        return _native.hashes(self.plan(cls), objs, self.extents["_extent"], self.seen_refs,
                              self.fallback)


def _fallback(store: Store, is_live: Callable[[Any], bool],
              note: Callable[[Any], None] | None = None, before: bool = False) -> Callable[[Any], bytes]:
    """value -> the bytes the codec writes for it, canonicalised. References are live per
    ``is_live``: the store's extents now (checked inline below, live ones passed to ``note``),
    or with ``before`` whatever ``is_live`` says (``_native.was_live``)."""
    extents = store.__dict__
    codec = Codec(store.definition.enums, store.find, is_live, lenient=True)
    codec_default, pack_id = codec._default, msgpack.Packer().pack

    def default(o: Any) -> Any:
        if isinstance(o, StoreObject):
            if before:
                if not is_live(o):
                    return None
            else:       # ``is_live`` inlined: the codec's encoding, without its chain of type tests
                extent = extents["_extent"].get(type(o))
                if extent is None or extent.get(o.id) is not o:
                    return None
                if note is not None:
                    note(o)
            return _ext((EXT_REF, pack_id(o.id)))
        return codec_default(o)

    pack = msgpack.Packer(default=default, strict_types=True, use_bin_type=True, autoreset=True).pack
    canon_pack = codec.pack
    return lambda v: pack(_canon(canon_pack, v))


def finish(total: int, next_id: int, last_ts: int, system: dict[str, Any]) -> str:
    """The digest string from the object sum, the store's counters and the system namespace.

    The system namespace (system.py) is hashed whole: it is small (a drill's records) and only
    a non-empty one is included, so stores that never used it keep their digest."""
    parts = [SCHEME, total.to_bytes(15, "big"), next_id, last_ts]
    if system:
        parts += ["system", sorted(system.items())]
    return blake2s(msgpack.packb(parts)).hexdigest()


def full_sum(store: Store) -> int:
    """S computed from scratch (changes nothing; what ``Store.digest_full`` walks)."""
    hasher = _Hasher(store)
    total = 0
    for cls in store._classes:
        objs = list(store._extent[cls].values())
        if objs:
            total += sum(hasher.hashes(cls, objs))
    return total & _MASK


class IncrementalDigest:
    """S for one store, plus the undo logs not yet folded into it (see the module docstring).

    ``pending`` is the very list the store's commit path appends to; the store also keeps the
    count of pending undo entries and the threshold (``Store._digest_backlog``/``_fold_at``) so
    that path reads no attribute of this object.
    """

    def __init__(self, store: Store):
        self.store = store
        self.total = 0
        self.pending: list[list[tuple]] = []
        self._seen_refs: list[Any] = []
        self._ref_classes: set[type] = set()
        self._hasher = _Hasher(store, self._seen_refs)
        self._broken: Exception | None = None

    def value(self) -> str:
        store = self.store
        self.fold()
        return finish(self.total, store._next_id, store._last_ts, store.system)

    def reset(self) -> None:
        """Recompute S from the whole state (after a snapshot load), O(n)."""
        store = self.store
        self.pending.clear()
        store._digest_backlog = 0
        self._seen_refs.clear()
        self._ref_classes.clear()
        total = 0
        for cls in store._classes:
            objs = list(store._extent[cls].values())
            if objs:
                total += sum(self._hashes(cls, objs))
        _native.mark(self._seen_refs)
        self._seen_refs.clear()
        self.total = total & _MASK
        self._broken = None
        store._fold_at = FOLD_ENTRIES

    def fold_after_commit(self) -> None:
        """The commit path's fold. Its transaction has already succeeded, so a value that cannot
        be encoded must not turn into an error there: the fold is left for ``value()``, which
        raises it (as ``write_snapshot`` would), and commits stop folding until one succeeds."""
        try:
            self.fold()
        except Exception as exc:
            if self._broken is None:
                log.error("state digest cannot be computed: %s", exc)
            self._broken = exc
            self.store._fold_at = 1 << 62

    def fold(self) -> None:
        """Bring S up to date with every pending undo log; all or nothing (a value that cannot
        be encoded raises CodecError with S, the marks and ``pending`` unchanged)."""
        store = self.store
        pending = self.pending
        if not pending:
            return
        seen = self._seen_refs
        seen.clear()
        hasher = self._hasher
        args = (pending, store._extent, hasher.plans, hasher.plan, seen, hasher.fallback,
                hasher.fallback_before)
        delta, deleted_referenced, ref_classes = _native.prepare(*args, None)
        if deleted_referenced:
            # rare: the batch deleted objects some term referenced; fold again with every term
            # of their live referrers recomputed (prepare changes nothing, so this is a redo)
            referrers = self._referrers(deleted_referenced)
            if referrers:
                seen.clear()
                delta, _, more_classes = _native.prepare(*args, referrers)
                ref_classes += more_classes
        # nothing below can fail
        self._ref_classes.update(ref_classes)
        _native.mark(seen)
        seen.clear()
        self.total = (self.total + delta) & _MASK
        pending.clear()
        store._digest_backlog = 0
        if self._broken is not None:
            self._broken = None
            store._fold_at = FOLD_ENTRIES

    def _hashes(self, cls: type, objs: list[Any]) -> list[int]:
        seen = len(self._seen_refs)
        hashes = self._hasher.hashes(cls, objs)
        if len(self._seen_refs) != seen:
            self._ref_classes.add(cls)
        return hashes

    def _referrers(self, deleted: list[Any]) -> list[Any]:
        """Live objects whose values reference one of ``deleted``: a scan of every class that
        has held a reference."""
        dead = set(deleted)
        found: set[Any] = set()
        for cls in self._ref_classes:
            objs = list(self.store._extent[cls].values())
            self._hasher.plan(cls)
            for getter in self._hasher.getters[cls]:
                col = list(map(getter, objs))
                if _CONTAINERS.isdisjoint(map(type, col)):
                    try:        # hashable values: one C-level pass
                        found.update(compress(objs, map(dead.__contains__, col)))
                        continue
                    except TypeError:       # an unhashable value (say a bytearray)
                        pass
                found.update(o for o, v in zip(objs, col, strict=True) if _refers(v, dead))
        return list(found)


def _refers(v: Any, dead: set[Any]) -> bool:
    t = type(v)
    if t is dict:
        return any(_refers(k, dead) or _refers(x, dead) for k, x in v.items())
    if t in _CONTAINERS:
        return any(_refers(x, dead) for x in v)
    return isinstance(v, StoreObject) and v in dead

