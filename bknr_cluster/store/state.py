"""In-memory object state: extents, indices, mutations with undo, and lookups.

Invariants the rest of the store relies on:

* ``_extent[cls]`` maps id -> object for the exact class ``cls``, in ascending id order. New ids
  are always the largest, so creations append; only undoing a deletion re-inserts out of order,
  and such extents are re-sorted lazily (``_unsorted``) before anyone iterates them. Iteration
  order therefore never depends on history, which keeps transactions deterministic.
* One index dict per indexed ``AttrSpec`` (shared by the declaring class and its subclasses).
  Unique: key -> object. Hash: key -> {id: object}. ``None`` keys are not indexed.
* Every mutation inside a transaction appends one undo entry; ``_rollback`` replays them in
  reverse, restoring values, index entries and extents, and the id counter.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

from bknr_cluster.errors import IntegrityError, StoreError, UsageError
from bknr_cluster.store.model import REQUIRED, UNDO_CREATE, UNDO_DELETE, UNDO_SET, AttrSpec, StoreObject
from bknr_cluster.store.tx import TxContext

_SET, _CREATE, _DELETE = UNDO_SET, UNDO_CREATE, UNDO_DELETE
_by_id = attrgetter("id")
_set_id = StoreObject.__dict__["id"].__set__


class ObjectState:
    """The object graph of a store; ``Store`` adds records, codec and durability on top."""

    def _init_state(self, classes: tuple[type, ...]) -> None:
        self._classes = classes
        self._extent: dict[type, dict[int, Any]] = {c: {} for c in classes}
        self._index: dict[AttrSpec, dict] = {}
        for c in classes:
            for spec in c._meta.indexed:
                self._index.setdefault(spec, {})
        self._subs_cache: dict[type, tuple[type, ...]] = {}
        self._unsorted: set[type] = set()
        self._next_id = 1

    def _reset_state(self) -> None:
        for d in self._extent.values():
            d.clear()
        for d in self._index.values():
            d.clear()
        self._unsorted.clear()
        self._next_id = 1

    # --- mutations (only reachable from inside a transaction) -----------------------------------

    def _create(self, obj: Any, args: tuple, values: dict, tx: TxContext) -> None:
        """Generic creation (the generated ``__init__`` handles the common shapes itself and
        calls ``_register``): positional values, unknown names, every error message."""
        cls = type(obj)
        extent = self._extent.get(cls)
        meta = cls._meta
        if extent is None:
            raise UsageError(f"class {meta.name} is not part of this store's definition")
        if args:
            if len(args) > len(meta.attrs):
                raise TypeError(f"{meta.name}() takes at most {len(meta.attrs)} positional values")
            for name, v in zip(meta.attrs, args, strict=False):
                if name in values:
                    raise TypeError(f"{meta.name}() got two values for {name!r}")
                values[name] = v
        pop = values.pop
        for name, setter, default, copy, accept, spec in meta.plan:
            v = pop(name, REQUIRED)
            if v is REQUIRED:
                if default is REQUIRED:
                    raise TypeError(f"{meta.name}() missing required attribute {name!r}")
                v = default.copy() if copy else default
            elif accept is not None and not isinstance(v, accept):
                spec.validate(meta.name, v)         # raises the TypeError
            setter(obj, v)
        if values:
            raise TypeError(f"{meta.name}() got unknown attributes: {', '.join(sorted(values))}")
        self._register(obj, extent, tx)

    def _register(self, obj: Any, extent: dict[int, Any], tx: TxContext) -> None:
        """Give a filled-in new object its id and add it to the indices and its extent.
        Unique-index and hashability checks run before anything changes."""
        meta = obj._meta
        index = self._index
        for spec in meta.indexed:       # check everything before changing anything
            key = getattr(obj, spec.name)      # cheaper than calling the slot's __get__
            if key is None:
                continue
            if spec.unique:
                try:
                    other = index[spec].get(key)
                except TypeError:
                    _hashable(meta.name, spec, key)     # unhashable key: the clear message
                    raise
                if other is not None:
                    raise IntegrityError(f"{meta.name}.{spec.name} must be unique: {key!r} is "
                                         f"already used by {other!r}")
            else:
                _hashable(meta.name, spec, key)
        oid = self._next_id
        self._next_id = oid + 1
        _set_id(obj, oid)
        for spec in meta.indexed:
            key = getattr(obj, spec.name)      # cheaper than calling the slot's __get__
            if key is None:
                continue
            if spec.unique:
                index[spec][key] = obj
            else:
                self._index_add(spec, obj, key)
        extent[oid] = obj
        tx.undo.append((_CREATE, obj))

    def _check_live(self, obj: Any, action: str) -> None:
        extent = self._extent.get(type(obj))
        if extent is None or extent.get(obj.id) is not obj:
            raise StoreError(f"cannot {action} {obj!r}: it is deleted or belongs to another store")

    # Attribute writes are done by StoreObject.__setattr__ itself (one call less per write); it
    # calls _check_live and, for indexed attributes, _reindex.

    def _reindex(self, obj: Any, spec: AttrSpec, old: Any, value: Any) -> None:
        """Move ``obj`` from ``old`` to ``value`` in the spec's index, after the checks."""
        if value is not None:
            _hashable(obj._meta.name, spec, value)
            if spec.unique:
                other = self._index[spec].get(value)
                if other is not None and other is not obj:
                    raise IntegrityError(f"{obj._meta.name}.{spec.name} must be unique: {value!r} "
                                         f"is already used by {other!r}")
        self._index_remove(spec, obj, old)
        self._index_add(spec, obj, value)

    def _delete(self, obj: Any, tx: TxContext) -> None:
        self._check_live(obj, "delete")
        for spec in obj._meta.indexed:
            self._index_remove(spec, obj, spec.getter(obj))
        del self._extent[type(obj)][obj.id]
        tx.undo.append((_DELETE, obj))

    def _rollback(self, tx: TxContext, next_id: int) -> None:
        for entry in reversed(tx.undo):
            kind, obj = entry[0], entry[1]
            if kind == _SET:
                spec, old = entry[2], entry[3]
                if spec.indexed:
                    self._index_remove(spec, obj, spec.getter(obj))
                    self._index_add(spec, obj, old)
                spec.setter(obj, old)
            elif kind == _CREATE:
                for spec in obj._meta.indexed:
                    self._index_remove(spec, obj, spec.getter(obj))
                del self._extent[type(obj)][obj.id]
            else:
                cls = type(obj)
                self._extent[cls][obj.id] = obj
                self._unsorted.add(cls)      # re-inserted at the end: re-sort before iterating
                for spec in obj._meta.indexed:
                    self._index_add(spec, obj, spec.getter(obj))
        tx.undo.clear()
        self._next_id = next_id

    def _index_add(self, spec: AttrSpec, obj: Any, key: Any) -> None:
        if key is None:
            return
        d = self._index[spec]
        if spec.unique:
            d[key] = obj
        else:
            bucket = d.get(key)
            if bucket is None:
                d[key] = {obj.id: obj}
            else:
                bucket[obj.id] = obj

    def _index_remove(self, spec: AttrSpec, obj: Any, key: Any) -> None:
        if key is None:
            return
        d = self._index[spec]
        if spec.unique:
            if d.get(key) is obj:
                del d[key]
        else:
            bucket = d.get(key)
            if bucket is not None:
                bucket.pop(obj.id, None)
                if not bucket:
                    del d[key]

    # --- lookups ------------------------------------------------------------------------------

    def _subclasses(self, cls: type | None, subclasses: bool = True) -> tuple[type, ...]:
        if cls is None:
            return self._classes
        if not subclasses:
            if cls not in self._extent:
                raise UsageError(f"class {cls.__name__} is not part of this store's definition")
            return (cls,)
        found = self._subs_cache.get(cls)
        if found is None:
            found = tuple(c for c in self._classes if issubclass(c, cls))
            self._subs_cache[cls] = found
        return found

    def _sorted_extent(self, cls: type) -> dict[int, Any]:
        d = self._extent[cls]
        if cls in self._unsorted:
            items = sorted(d.items())
            d.clear()
            d.update(items)
            self._unsorted.discard(cls)
        return d

    def find(self, oid: int, cls: type | None = None) -> Any:
        """The live object with id ``oid`` (of ``cls`` or a subclass when given), or None."""
        for c in self._subclasses(cls):
            obj = self._extent[c].get(oid)
            if obj is not None:
                return obj
        return None

    def all(self, cls: type | None = None, subclasses: bool = True) -> list[Any]:
        """Live objects ordered by id."""
        classes = self._subclasses(cls, subclasses)
        if len(classes) == 1:
            return list(self._sorted_extent(classes[0]).values())
        out: list[Any] = []
        for c in classes:
            out.extend(self._extent[c].values())
        out.sort(key=_by_id)
        return out

    def count(self, cls: type | None = None, subclasses: bool = True) -> int:
        return sum(len(self._extent[c]) for c in self._subclasses(cls, subclasses))

    def lookup(self, cls: type, attr: str, key: Any) -> Any:
        """Index lookup: the object or None (unique index), else the list of objects by id."""
        spec = cls._meta.by_name.get(attr)
        if spec is None or not spec.indexed:
            raise UsageError(f"{cls.__name__}.{attr} is not an indexed attribute")
        d = self._index[spec]
        exact = cls is spec.owner
        if spec.unique:
            obj = d.get(key) if key is not None else None
            return obj if obj is None or exact or isinstance(obj, cls) else None
        bucket = d.get(key) if key is not None else None
        if not bucket:
            return []
        return [bucket[i] for i in sorted(bucket) if exact or isinstance(bucket[i], cls)]

    def where(self, cls: type, subclasses: bool = True, **criteria: Any) -> list[Any]:
        """Objects of ``cls`` whose attributes equal every criterion, by id."""
        meta = cls._meta
        candidates = None
        for name, value in criteria.items():
            spec = meta.by_name.get(name)
            if spec is None:
                raise UsageError(f"{meta.name} has no attribute {name!r}")
            if candidates is None and spec.indexed and value is not None:
                found = self.lookup(cls, name, value)
                candidates = [] if found is None else [found] if spec.unique else found
        if candidates is None:
            candidates = self.all(cls, subclasses)
        elif not subclasses:
            candidates = [o for o in candidates if type(o) is cls]
        items = list(criteria.items())
        return [o for o in candidates if all(getattr(o, k) == v for k, v in items)]


def _hashable(cls_name: str, spec: AttrSpec, key: Any) -> None:
    try:
        hash(key)
    except TypeError:
        raise TypeError(f"{cls_name}.{spec.name} is indexed, so its value must be hashable, "
                        f"got {type(key).__name__}") from None
