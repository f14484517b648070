"""The apply/encode fast paths: generated ``__init__`` and ``by_<attr>``, inlined writes and
record decoding, pooled packers, and the formats they must not change."""

import gc
import io
import json
import threading
import weakref
from pathlib import Path

import pytest

from bknr_cluster.errors import (
    CorruptData,
    IntegrityError,
    NotInTransaction,
    StoreError,
    UnknownTransaction,
    UsageError,
)
from bknr_cluster.store import (
    DIGEST_SCHEME,
    Index,
    Store,
    StoreDefinition,
    StoreObject,
    Transient,
    TxContext,
    gc_tuning,
    transaction,
)
from bknr_cluster.store.model import LOCAL
from tests.store.models import Boom, Color, Employee, Person, definition

GOLDEN = Path(__file__).parent / "data" / "golden_v1.json"
# the calls behind GOLDEN's records (written by the store before the fast paths existed)
GOLDEN_CALLS = [
    (10, "add_person", ["ann", "Oslo", 3], {}),
    (11, "add_employee", ["eve", 5], {"color": Color.BLUE}),
    (12, "set_attr", ["ann", "tags", {"b": {1, 2}, "a": (1, 2), "c": 2**70}], {}),
    (13, "befriend", ["ann", "eve"], {}),
    (14, "mess_then_fail", ["ann"], {}),
    (15, "stamp", ["zed"], {}),
    (9, "add_person", ["bob"], {"age": 41}),
    (16, "store_doc", ["d1", b"blob-bytes"], {}),
    (17, "delete_person", ["eve"], {}),
    (18, "add_person", ["cid", None, 7], {}),
]


def _run(store_def_classes, fn):
    """Run fn inside a transaction of a fresh store holding these classes; returns (store, result)."""
    @transaction(f"adhoc{id(fn)}")
    def adhoc():
        return fn()
    s = Store(None, definition=StoreDefinition("adhoc", store_def_classes, [adhoc]), bind=False)
    return s, s.execute(adhoc)


# --- formats -----------------------------------------------------------------------------------

def test_old_records_and_snapshot_give_the_same_state():
    golden = json.loads(GOLDEN.read_text())
    replayed = Store(None, definition=definition, bind=False)
    for i, ((ts, name, args, kw), rec) in enumerate(zip(GOLDEN_CALLS, golden["records"], strict=True), 1):
        rec = bytes.fromhex(rec)
        assert replayed.encode_transaction_at(ts, name, *args, **kw) == rec     # same bytes
        try:
            replayed.apply_record(rec, TxContext(index=i))
        except Boom:
            pass
    digest = golden["digests"][DIGEST_SCHEME]       # one per digest scheme
    assert replayed.digest() == digest == replayed.digest_full()
    loaded = Store(None, definition=definition, bind=False)
    loaded.load_snapshot(io.BytesIO(bytes.fromhex(golden["snapshot"])))
    assert loaded.digest() == digest and loaded.last_index == golden["last_index"]
    assert replayed.snapshot_bytes() == bytes.fromhex(golden["snapshot"])
    with loaded.reading():
        ann = Person.by_name("ann")
        assert (ann.city, ann.age, ann.friend) == ("Oslo", 3, None)    # mess_then_fail undone, eve deleted
        assert ann.tags == {"b": {1, 2}, "a": (1, 2), "c": 2**70}
        assert [p.name for p in Person.all()] == ["ann", "zed", "bob", "cid"]


# --- generated __init__ -------------------------------------------------------------------------

class Gadget(StoreObject):
    code: str = Index(unique=True)
    size: int = 1
    ratio: float | None = None
    parts: list = []
    label: str = Transient("")


class Widget(Gadget):
    maker: str

    def __init__(self, maker: str, **values):       # a user __init__ reaching the generic path
        super().__init__(maker=maker.upper(), **values)


class Sprocket(Gadget):
    teeth: int = 8


PARTS = [Gadget, Widget, Sprocket]


@pytest.mark.parametrize("make, error, message", [
    (lambda: Gadget(code=5), TypeError, "Gadget.code must be str, got int"),
    (lambda: Gadget(code="a", size=None), TypeError, "Gadget.size must be int, got NoneType"),
    (lambda: Gadget(code="a", ratio="x"), TypeError, r"Gadget.ratio must be int \| float, got str"),
    (lambda: Gadget(code="a", colour=1), TypeError, "unknown attributes: colour"),
    (lambda: Gadget("a", 2, 1.0, [], "l", 9), TypeError, "takes at most 4 positional values"),
    (lambda: Gadget("a", code="b"), TypeError, "got two values for 'code'"),
    (lambda: Widget("acme", size="big", code="w"), TypeError, "Widget.size must be int, got str"),
    (lambda: Sprocket(code="s", teeth=1.5), TypeError, "Sprocket.teeth must be int, got float"),
    (lambda: Sprocket(code="s", id=3), TypeError, "unknown attributes: id"),
    (lambda: Gadget(code="first"), IntegrityError, "Gadget.code must be unique: 'first' is already used"),
    (lambda: Sprocket(code="first"), IntegrityError, "Sprocket.code must be unique: 'first'"),
    (lambda: Widget("w", code="first"), IntegrityError, "Widget.code must be unique: 'first'"),
])
def test_create_errors_keep_their_messages_and_change_nothing(make, error, message):
    seen = []

    def body():
        Gadget(code="first")
        seen.append(1)
        make()

    @transaction("body")
    def run():
        body()
    s = Store(None, definition=StoreDefinition("g", PARTS, [run]), bind=False)
    before = s.digest()
    with pytest.raises(error, match=message):
        s.execute(run)
    assert seen and s.digest() == before and s.count() == 0 and s._next_id == 1


def test_required_attribute_missing_on_the_generated_path():
    class Plate(StoreObject):
        serial: str

    with pytest.raises(TypeError, match=r"Plate\(\) missing required attribute 'serial'"):
        _run([Plate], lambda: Plate())


def test_create_paths_fill_the_same_values():
    def make():
        return [Gadget(code="g"), Gadget("p", 3, 0.5, ["x"]), Widget("acme", code="w", label="t"),
                Sprocket(code="s", ratio=2), Gadget(code="n", ratio=None)]
    s, (g, p, w, sp, n) = _run(PARTS, make)
    assert (g.code, g.size, g.ratio, g.parts, g.label) == ("g", 1, None, [], "")
    assert g.parts is not Gadget._meta.by_name["parts"].default            # default copied
    assert (p.code, p.size, p.ratio, p.parts) == ("p", 3, 0.5, ["x"])
    assert (type(w), w.maker, w.code, w.label) == (Widget, "ACME", "w", "t")
    assert (sp.teeth, sp.ratio, n.ratio) == (8, 2, None)
    assert [o.id for o in (g, p, w, sp, n)] == [1, 2, 3, 4, 5]
    with s.reading():
        assert Gadget.by_code("w") is w and Widget.by_code("w") is w


def test_transient_values_are_not_type_checked_on_create():
    class Tagged(StoreObject):
        key: str = Index(unique=True)
        memo: str = Transient("")

    _, t = _run([Tagged], lambda: Tagged(key="k", memo=123))
    assert t.memo == 123


def test_class_outside_the_store_is_a_usage_error_before_value_checks():
    with pytest.raises(UsageError, match="not part of this store's definition"):
        _run([Person], lambda: Gadget(code=5))


def test_unique_violation_on_create_rolls_back_everything(mem):
    mem.execute("add_person", "ann", "Oslo")
    before = mem.digest()

    @transaction("clash")
    def clash():
        Person.by_name("ann").age = 50
        Person(name="bob", city="Oslo")
        Person(name="ann")
    s = Store(None, definition=StoreDefinition("people", definition.classes, [clash]), bind=False)
    s.load_snapshot(io.BytesIO(mem.snapshot_bytes()))
    with pytest.raises(IntegrityError, match="Person.name must be unique: 'ann'"):
        s.execute(clash)
    assert s.digest() == before
    with s.reading():
        assert Person.by_name("bob") is None and [p.name for p in Person.by_city("Oslo")] == ["ann"]
        assert Person.by_name("ann").age == 0


def test_unhashable_unique_key_on_create():
    class Keyed(StoreObject):
        key: object = Index(unique=True)

    with pytest.raises(TypeError, match="Keyed.key is indexed, so its value must be hashable, got list"):
        _run([Keyed], lambda: Keyed(key=["x"]))


# --- generated by_<attr> -----------------------------------------------------------------------

def test_lookup_through_a_subclass_never_returns_a_sibling():
    def make():
        return Gadget(code="g"), Widget("acme", code="w"), Sprocket(code="s")
    s, (g, w, sp) = _run(PARTS, make)
    with s.reading():
        assert (Gadget.by_code("g"), Gadget.by_code("w"), Gadget.by_code("s")) == (g, w, sp)
        assert Widget.by_code("s") is None and Sprocket.by_code("w") is None
        assert Widget.by_code("g") is None and Sprocket.by_code("s") is sp
        assert Gadget.by_code(None) is None and Gadget.by_code("zzz") is None
        with pytest.raises(TypeError):
            Gadget.by_code(["unhashable"])
    assert Employee.by_name.__qualname__ == "Employee.by_name"


def test_user_defined_lookup_is_kept_in_subclasses():
    class Base(StoreObject):
        key: str = Index(unique=True)

        @classmethod
        def by_key(cls, key):
            return ("custom", cls.__name__, key)

    class Child(Base):
        extra: int = 0

    assert Base.by_key("k") == ("custom", "Base", "k")
    assert Child.by_key("k") == ("custom", "Child", "k")


def test_lookup_uses_the_running_store_then_the_bound_one(mem):
    mem.execute("add_person", "ann")
    other = Store(None, definition=StoreDefinition("other", [Gadget], []), bind=False)
    with other.reading():       # Person is not in `other`: falls back to the store Person is bound to
        assert Person.by_name("ann") is not None and LOCAL.store is other
    twin = Store(None, definition=definition, bind=False)
    with twin.reading():        # Person is in `twin`: its (empty) index answers
        assert Person.by_name("ann") is None


# --- writes -------------------------------------------------------------------------------------

def test_write_errors(mem):
    p = mem.execute("add_person", "ann", "Oslo")
    before = mem.digest()
    with pytest.raises(AttributeError, match="no declared attribute 'id'"):
        mem.execute("set_attr", "ann", "id", 7)
    with pytest.raises(TypeError, match="Person.age must be int, got NoneType"):
        mem.execute("set_attr", "ann", "age", None)
    with pytest.raises(TypeError, match="Person.city must be str, got int"):
        mem.execute("set_attr", "ann", "city", 5)
    assert mem.digest() == before and (p.id, p.age, p.city) == (1, 0, "Oslo")
    mem.execute("set_attr", "ann", "city", None)          # `str | None`
    assert p.city is None and Person.by_city("Oslo") == []
    with pytest.raises(NotInTransaction):
        p.city = "Oslo"
    p.note = "transient: allowed anywhere"

    @transaction("poke")
    def poke():
        p.age = 3
    s = Store(None, definition=StoreDefinition("people", definition.classes, [poke]), bind=False)
    s.load_snapshot(io.BytesIO(mem.snapshot_bytes()))
    # `p` belongs to `mem`, not to `s` (which has its own #1): refused like a deleted object
    with pytest.raises(StoreError, match=r"cannot set age of <Person #1.*deleted or belongs to another"):
        s.execute(poke)
    assert p.age == 0


def test_write_then_failure_restores_values_and_indices(mem):
    mem.execute("add_person", "ann", "Oslo", 1)
    mem.execute("add_person", "bob", "Rome", 2)
    before = mem.digest()
    with pytest.raises(Boom):
        mem.execute("mess_then_fail", "ann")
    assert mem.digest() == before
    assert [p.name for p in Person.by_city("Oslo")] == ["ann"] and Person.by_name("ann").age == 1


# --- records ------------------------------------------------------------------------------------

def test_records_off_the_fast_path_still_apply_or_fail_precisely(mem):
    enc = mem.encode_value
    mem.apply_record(mem.encode_transaction("add_person", "ann", age=3), TxContext(index=1))   # kwargs
    assert Person.by_name("ann").age == 3
    dotted = transaction("people.v2.add")(lambda name: Person(name=name))
    d = StoreDefinition("people", definition.classes, [dotted])
    s = Store(None, definition=d, bind=False)
    s.apply_record(enc([1, "add", 5, ["bob"], None]))                      # short name
    assert s.count() == 1 and s.last_index == 0
    for bad, error, message in [
        (enc([1, "nope", 5, [], None]), UnknownTransaction, "unknown transaction 'nope'"),
        (enc([1, "add", 5, ["x"], {1: 2}]), CorruptData, "bad field types"),
        (enc([1, "add", "5", ["x"], None]), CorruptData, "bad field types"),
        (enc([1, "add", 5, ("x",), None]), CorruptData, "bad field types"),
        (enc([1, ["add"], 5, ["x"], None]), CorruptData, "bad field types"),
        (enc("abcde"), CorruptData, "not a version-1"),
        (enc([2, "add", 5, ["x"], None]), CorruptData, "not a version-1"),
        (enc([1, "add", 5, ["x"]]), CorruptData, "not a version-1"),
        (enc([1, "add", 5, ["x"], None]) + b"\x00", CorruptData, "malformed transaction record"),
    ]:
        with pytest.raises(error, match=message):
            s.apply_record(bad, TxContext(index=9))
    assert s.count() == 1 and s.last_index == 9


def test_apply_restores_the_threads_store_and_transaction(mem):
    other = Store(None, definition=definition, bind=False)
    rec = other.encode_transaction("add_person", "ann")
    with mem.reading():
        other.apply_record(rec)
        assert LOCAL.store is mem and LOCAL.tx is None
        with pytest.raises(IntegrityError):
            other.apply_record(rec)
        assert LOCAL.store is mem and LOCAL.tx is None
    assert LOCAL.store is None and LOCAL.tx is None and other.count() == 1


# --- encoding -------------------------------------------------------------------------------------

def test_pooled_packers_are_safe_across_threads_nesting_and_errors(mem):
    values = [(i, (i, "x"), {i: frozenset({i, i + 1})}, Color.RED, 2**70 + i) for i in range(200)]
    expected = [mem.encode_value(v) for v in values]
    results: dict[int, list] = {}

    def worker(k):
        results[k] = [mem.encode_value(v) for v in values]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(results[k] == expected for k in range(4))
    with pytest.raises(Exception, match="cannot encode"):
        mem.encode_value([1, (2, object())])
    assert mem.encode_value(values[3]) == expected[3]
    big = b"x" * (1 << 20)
    assert mem.decode_value(mem.encode_value(big)) == big
    assert len(mem._codec._idle) <= 4 * 3      # bounded by concurrency x nesting, never leaked
    assert mem.decode_value(mem.encode_value(values[5])) == values[5]


# --- gc_tuning --------------------------------------------------------------------------------------

def test_gc_tuning_collects_then_freezes():
    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a         # a garbage cycle: only the cyclic GC frees it
    ref = weakref.ref(a)
    del a, b
    try:
        frozen = gc_tuning()
        assert ref() is None                    # collected before the freeze
        # other threads of the test process may free a few frozen objects meanwhile
        assert frozen > 0 and 0 < gc.get_freeze_count() <= frozen
        assert gc.isenabled()
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
