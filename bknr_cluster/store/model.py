"""The persistent object model: ``StoreObject`` classes with declared attributes and indices.

Attributes are declared with class annotations::

    class Account(StoreObject):
        owner: str = Index(unique=True)   # unique index
        city: str = Index()               # hash (non-unique) index
        balance: int = 0                  # plain persistent attribute with a default
        note: str = Transient("")         # never persisted, never logged

Every declared attribute becomes a ``__slots__`` slot, so reads are plain C-level slot reads and
an object costs a few machine words. Writes go through ``__setattr__`` which refuses to run
outside a transaction and does the write against the running store (liveness, type check, undo
log; index maintenance via the store). ``__init__`` and ``by_<index>`` are generated per class
for speed: see "Hot paths" in DESIGN.md for what they must keep in step with ``state.py``.
Objects do not point at their store: the store that is running the current transaction (a
thread-local) is the one that owns the write; class-level accessors go to that store, or, outside
a transaction, to the store the class was last bound to.
"""

from __future__ import annotations

import threading
import types
from typing import TYPE_CHECKING, Any, ClassVar

from bknr_cluster.errors import NotInTransaction, StoreError, UsageError

if TYPE_CHECKING:
    from bknr_cluster.store.core import Store
    from bknr_cluster.store.tx import TxContext


class _Local(threading.local):
    # Class attributes are the per-thread defaults, so reads never need getattr(..., default).
    store: Store | None = None      # store that class-level accessors use in this thread
    tx: TxContext | None = None     # transaction running in this thread


LOCAL = _Local()
# Undo-log entry kinds (``state.py`` replays them): (_SET, obj, spec, old), (_CREATE, obj),
# (_DELETE, obj). Defined here because attribute writes append their entry in ``__setattr__``.
UNDO_SET, UNDO_CREATE, UNDO_DELETE = 0, 1, 2
REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "<required>"})()

_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "str": (str,), "float": (int, float), "bool": (bool,), "bytes": (bytes,),
}


class Index:
    """Declares an indexed persistent attribute (``unique=True`` rejects duplicates)."""

    __slots__ = ("default", "unique")

    def __init__(self, default: Any = None, *, unique: bool = False):
        self.default = default
        self.unique = unique


class Transient:
    """Declares an attribute that lives only in memory: not logged, not in snapshots."""

    __slots__ = ("default",)

    def __init__(self, default: Any = None):
        self.default = default


class AttrSpec:
    """One declared attribute of a class (inherited specs are shared with subclasses)."""

    __slots__ = ("name", "default", "transient", "indexed", "unique", "check", "allow_none",
                 "accept", "owner", "getter", "setter")

    def __init__(self, name: str, default: Any, annotation: Any, *, transient: bool = False,
                 indexed: bool = False, unique: bool = False):
        self.name = name
        self.default = default
        self.transient = transient
        self.indexed = indexed
        self.unique = unique
        self.check, self.allow_none = _type_check(annotation, default)
        # ``isinstance(value, accept)`` is the whole check in one C call (None: no check), so the
        # hot paths call ``validate`` only to raise its error
        self.accept: tuple[type, ...] | None = (
            None if self.check is None else self.check + ((type(None),) if self.allow_none else ()))
        self.owner: type | None = None
        self.getter: Any = None
        self.setter: Any = None

    def make_default(self) -> Any:
        """A fresh default value: mutable defaults are copied so objects never share them."""
        d = self.default
        if type(d) in (list, dict, set, bytearray):
            return d.copy()
        return d

    def validate(self, cls_name: str, value: Any) -> None:
        check = self.check
        if check is not None and not isinstance(value, check) and not (value is None and self.allow_none):
            names = " | ".join(t.__name__ for t in check)
            raise TypeError(f"{cls_name}.{self.name} must be {names}, got {type(value).__name__}")


def _type_check(annotation: Any, default: Any) -> tuple[tuple[type, ...] | None, bool]:
    """Runtime check for the simple builtin annotations; anything richer is documentation only."""
    allow_none = default is None or default is REQUIRED
    parts: list[Any]
    if isinstance(annotation, str):
        parts = [p.strip() for p in annotation.split("|")]
    elif isinstance(annotation, types.UnionType):
        parts = list(annotation.__args__)
    else:
        parts = [annotation]
    allowed: list[type] = []
    for p in parts:
        if p in ("None", None, type(None)):
            allow_none = True
        elif isinstance(p, str) and p in _SIMPLE_TYPES:
            allowed.extend(_SIMPLE_TYPES[p])
        elif isinstance(p, type) and p.__name__ in _SIMPLE_TYPES and p in (int, str, float, bool, bytes):
            allowed.extend(_SIMPLE_TYPES[p.__name__])
        else:
            return None, True    # not a simple annotation: no runtime check
    return (tuple(allowed) or None), allow_none


class ClassMeta:
    """Everything the store needs to know about one persistent class, computed once."""

    def __init__(self, cls: type, specs: list[AttrSpec], renames: dict[str, str]):
        self.cls = cls
        self.name: str = cls.__dict__.get("__store_name__", cls.__name__)
        self.specs = specs
        self.by_name = {s.name: s for s in specs}
        self.persistent = tuple(s for s in specs if not s.transient)
        self.attrs = tuple(s.name for s in self.persistent)
        self.transients = tuple(s for s in specs if s.transient)
        self.indexed = tuple(s for s in specs if s.indexed)
        self.renames = renames
        # What ``Store._create`` does per attribute, precomputed: (name, slot setter, default,
        # copy the default?, accepted types or None, spec). Transients are not type-checked.
        self.plan = tuple((s.name, s.setter, s.default, type(s.default) in _COPIED_DEFAULTS,
                           None if s.transient else s.accept, s) for s in specs)


_COPIED_DEFAULTS = (list, dict, set, bytearray)


def _is_classvar(annotation: Any) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return "ClassVar" in text


class StoreClass(type):
    """Metaclass: turns annotations into slots + ``AttrSpec`` and generates ``by_<index>``."""

    def __new__(mcls, name: str, bases: tuple[type, ...], ns: dict[str, Any], **kw: Any):
        base_meta: ClassMeta | None = None
        for b in bases:
            if isinstance(b, StoreClass) and hasattr(b, "_meta"):
                if base_meta is not None:
                    raise UsageError(f"{name}: a persistent class may have one persistent base class")
                base_meta = b._meta
        own: list[AttrSpec] = []
        inherited = list(base_meta.specs) if base_meta else []
        taken = {s.name for s in inherited}
        for attr, ann in dict(ns.get("__annotations__", {})).items():
            if _is_classvar(ann) or attr.startswith("_"):
                continue
            if attr in taken or attr in ("id", "delete", "find", "all", "where", "count"):
                raise UsageError(f"{name}.{attr}: attribute name is already used (inherited or reserved)")
            val = ns.pop(attr, REQUIRED)
            if isinstance(val, Index):
                spec = AttrSpec(attr, val.default, ann, indexed=True, unique=val.unique)
            elif isinstance(val, Transient):
                spec = AttrSpec(attr, val.default, ann, transient=True)
            else:
                spec = AttrSpec(attr, val, ann)
            own.append(spec)
        ns["__slots__"] = tuple(ns.get("__slots__", ())) + tuple(s.name for s in own)
        cls = super().__new__(mcls, name, bases, ns, **kw)
        if not any(isinstance(b, StoreClass) for b in bases):
            return cls              # StoreObject itself
        for spec in own:
            spec.owner = cls
            slot = cls.__dict__[spec.name]
            spec.getter, spec.setter = slot.__get__, slot.__set__
        # by_<attr> for every index, own or inherited, unless this class or a base defines it
        # itself: each class gets its own so the class is bound in (no classmethod binding)
        for spec in inherited + own:
            name = f"by_{spec.name}"
            current = getattr(cls, name, None)
            if spec.indexed and name not in ns and (current is None or hasattr(current, "_generated")):
                setattr(cls, name, staticmethod(_make_lookup(cls, spec)))
        renames = dict(base_meta.renames) if base_meta else {}
        renames.update(ns.get("__renames__", {}))
        meta = cls._meta = ClassMeta(cls, inherited + own, renames)
        cls._persistent_specs = {s.name: s for s in meta.persistent}
        if "__init__" not in ns:
            cls.__init__ = _make_init(cls, meta)
        return cls


def _make_init(cls: type, meta: ClassMeta) -> Any:
    """Generate ``cls.__init__``: the creation path of ``Store._create`` unrolled for this class.

    Keyword arguments bind to parameters in C, and each attribute costs a few bytecodes (default,
    one ``isinstance``, slot store) instead of a loop over the plan. Everything unusual (positional
    values, unknown names, a class outside the running store, a subclass calling this through
    ``super().__init__``) goes to the generic ``Store._create``, which raises the errors. The
    checks run in the same order with the same messages.

    The store side (``ObjectState._register``: id, unique indices, extent, undo entry) is inlined
    too when every index of the class is unique: a taken or unhashable key hands over to
    ``_register``, which raises the error, so only the success path is duplicated here. Keep the
    two in step. Hash indices always go through ``_register``.
    Attribute names never start with ``_`` (those are not attributes), so the generated locals
    and globals (all ``_``-prefixed) cannot clash with them.
    """
    g: dict[str, Any] = {"_R": REQUIRED, "_local": LOCAL, "_cls": cls, "_NotInTx": NotInTransaction,
                         "_name": meta.name}
    params, fallback, body = [], [], []
    for i, (name, setter, default, copy, accept, spec) in enumerate(meta.plan):
        g[f"_set{i}"], g[f"_d{i}"], g[f"_a{i}"], g[f"_s{i}"] = setter, default, accept, spec
        params.append(f"{name}=_R")
        fallback.append(f"        if {name} is not _R:\n            _values[{name!r}] = {name}")
        if default is REQUIRED:
            g[f"_m{i}"] = f"{meta.name}() missing required attribute {name!r}"
            body.append(f"    if {name} is _R:\n        raise TypeError(_m{i})")
        else:
            body.append(f"    if {name} is _R:\n        {name} = _d{i}{'.copy()' if copy else ''}")
        if accept is not None:
            body.append(f"    elif not isinstance({name}, _a{i}):\n        _s{i}.validate(_name, {name})")
        body.append(f"    _set{i}(_self, {name})")
    if all(s.unique for s in meta.indexed):
        g["_set_id"], g["_UNDO_CREATE"] = StoreObject.__dict__["id"].__set__, UNDO_CREATE
        register = ["    _index = _store._index"]
        for j, spec in enumerate(meta.indexed):      # check every key before changing anything
            g[f"_x{j}"] = spec
            register.append(f"""\
    if {spec.name} is not None:
        _ix{j} = _index[_x{j}]
        try:
            _taken = _ix{j}.get({spec.name}) is not None
        except TypeError:
            _taken = True
        if _taken:
            return _store._register(_self, _extent, _tx)""")
        register.append("""\
    _oid = _store._next_id
    _store._next_id = _oid + 1
    _set_id(_self, _oid)""")
        for j, spec in enumerate(meta.indexed):
            register.append(f"    if {spec.name} is not None:\n        _ix{j}[{spec.name}] = _self")
        register.append("    _extent[_oid] = _self\n    _tx.undo.append((_UNDO_CREATE, _self))")
    else:
        register = ["    _store._register(_self, _extent, _tx)"]
    src = "\n".join([
        f"def __init__(_self, *_args, {', '.join(params + ['**_extra'])}):",
        "    _tx = _local.tx",
        "    if _tx is None:",
        "        raise _NotInTx(f'cannot create a {type(_self).__name__} outside a transaction')",
        "    _store = _tx.store",
        "    _extent = _store._extent.get(_cls)",
        "    if _args or _extra or _extent is None or type(_self) is not _cls:",
        "        _values = dict(_extra)",
        *fallback,
        "        _store._create(_self, _args, _values, _tx)",
        "        return",
        *body,
        *register,
    ])
    exec(compile(src, f"<generated {meta.name}.__init__>", "exec"), g)
    init = g["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = f"Create a {meta.name} (inside a transaction); attributes by keyword."
    return init


def _make_lookup(cls: Any, spec: AttrSpec) -> Any:
    """``cls.by_<attr>`` with class and spec bound in: one call instead of accessor -> store ->
    lookup. Same rules as ``Store.lookup``: the index covers the declaring class and its
    subclasses, so a lookup through a subclass filters out instances of sibling classes.
    """
    attr, exact, local = spec.name, cls is spec.owner, LOCAL
    if spec.unique:
        def lookup(key: Any) -> Any:
            store = local.store
            if store is None or cls not in store._extent:
                store = cls._current_store()
            obj = store._index[spec].get(key)       # None keys are never indexed
            if obj is None or exact or isinstance(obj, cls):
                return obj
            return None
    else:
        def lookup(key: Any) -> Any:
            return cls._current_store().lookup(cls, attr, key)
    lookup.__name__ = f"by_{attr}"
    lookup.__qualname__ = f"{cls.__qualname__}.by_{attr}"
    lookup.__doc__ = (f"The {attr}={{key}} instance or None (unique index)." if spec.unique
                      else f"Instances with {attr}={{key}}, by id (hash index).")
    lookup._generated = True            # type: ignore[attr-defined]
    return lookup


_set_slot = object.__setattr__


class StoreObject(metaclass=StoreClass):
    """Base class of persistent objects. ``id`` is allocated by the store, deterministically."""

    # ``_referenced``: True once some term of the store's digest saw a live reference to it
    # (digest.py: deleting it then changes its referrers' terms)
    __slots__ = ("id", "_referenced")
    _meta: ClassVar[ClassMeta]
    _bound: ClassVar[Store | None] = None
    _persistent_specs: ClassVar[dict[str, AttrSpec]]

    def __init__(self, *args: Any, **values: Any):
        tx = LOCAL.tx
        if tx is None:
            raise NotInTransaction(f"cannot create a {type(self).__name__} outside a transaction")
        tx.store._create(self, args, values, tx)

    def __setattr__(self, name: str, value: Any) -> None:
        # Subscripts in try blocks instead of dict.get calls: the misses are the rare cases.
        try:
            spec = self._persistent_specs[name]
        except KeyError:                    # transient or undeclared
            if self._meta.by_name.get(name) is None:
                raise AttributeError(f"{type(self).__name__} has no declared attribute {name!r}") from None
            _set_slot(self, name, value)
            return
        tx = LOCAL.tx
        if tx is None:
            raise NotInTransaction(f"cannot set {type(self).__name__}.{name} outside a transaction")
        # The store's write, inlined (this runs for every attribute write): liveness, type check,
        # index maintenance (``_reindex`` checks before it changes anything), undo entry.
        store = tx.store
        try:
            live = store._extent[type(self)][self.id] is self
        except KeyError:
            live = False
        if not live:
            store._check_live(self, f"set {name} of")
        accept = spec.accept
        if accept is not None and not isinstance(value, accept):
            spec.validate(self._meta.name, value)       # raises the TypeError
        old = getattr(self, name)       # the builtin is cheaper than calling the slot's __get__
        if spec.indexed and old is not value:
            store._reindex(self, spec, old, value)
        spec.setter(self, value)
        tx.undo.append((UNDO_SET, self, spec, old))

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete attribute {name!r}; set it to None inside a transaction")

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Persistent objects travel only through the store codec (by reference), never pickle.
        raise TypeError(f"{type(self).__name__} objects cannot be pickled or copied")

    def delete(self) -> None:
        """Delete this object (inside a transaction); indices are updated, the id is never reused."""
        tx = LOCAL.tx
        if tx is None:
            raise NotInTransaction(f"cannot delete {self!r} outside a transaction")
        tx.store._delete(self, tx)

    def __repr__(self) -> str:
        meta = self._meta
        shown = ", ".join(f"{a}={getattr(self, a, None)!r:.40}" for a in meta.attrs[:4])
        return f"<{meta.name} #{getattr(self, 'id', '?')} {shown}>"

    # --- class-level accessors --------------------------------------------------------------

    @classmethod
    def _current_store(cls) -> Store:
        store = LOCAL.store
        if store is not None and cls in store._extent:
            return store
        store = cls._bound
        if store is None:
            raise StoreError(f"class {cls.__name__} is not bound to any store (create a Store first)")
        return store

    @classmethod
    def find(cls, oid: int) -> Any:
        """The live instance of this class (or a subclass) with this id, or None."""
        return cls._current_store().find(oid, cls)

    @classmethod
    def all(cls, subclasses: bool = True) -> list[Any]:
        """All live instances ordered by id; ``subclasses=False`` restricts to this exact class."""
        return cls._current_store().all(cls, subclasses)

    @classmethod
    def where(cls, subclasses: bool = True, **criteria: Any) -> list[Any]:
        """Instances whose attributes equal ``criteria`` (uses an index when one applies)."""
        return cls._current_store().where(cls, subclasses, **criteria)

    @classmethod
    def count(cls, subclasses: bool = True) -> int:
        return cls._current_store().count(cls, subclasses)
