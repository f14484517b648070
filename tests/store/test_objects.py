"""Objects: declared attributes, ids, accessors, delete, and writes outside transactions."""

import copy
import pickle

import pytest

from bknr_cluster.errors import NotInTransaction, StoreError, UsageError
from bknr_cluster.store import Index, Store, StoreDefinition, StoreObject, transaction
from tests.store.models import Employee, Person


def test_create_defaults_and_ids(mem):
    p = mem.execute("add_person", "ann", "Oslo", 30)
    q = mem.execute("add_person", "bob")
    assert (p.id, q.id) == (1, 2)
    assert (q.city, q.age, q.tags, q.note) == (None, 0, None, "")
    assert mem.find(1) is p and Person.find(2) is q and Person.find(99) is None


def test_ids_never_reused_after_delete(mem):
    mem.execute("add_person", "ann")
    mem.execute("delete_person", "ann")
    assert mem.execute("add_person", "bob").id == 2


def test_all_with_and_without_subclasses(mem):
    a = mem.execute("add_person", "ann")
    e = mem.execute("add_employee", "eve", 10)
    b = mem.execute("add_person", "bob")
    assert Person.all() == [a, e, b]
    assert Person.all(subclasses=False) == [a, b]
    assert Employee.all() == [e]
    assert Person.count() == 3 and Person.count(subclasses=False) == 2
    assert Employee.find(a.id) is None and Person.find(e.id) is e


def test_where_and_index_accessors(mem):
    mem.execute("add_person", "ann", "Oslo", 30)
    mem.execute("add_person", "bob", "Oslo", 40)
    mem.execute("add_person", "cid", "Rome", 30)
    assert [p.name for p in Person.where(city="Oslo")] == ["ann", "bob"]
    assert [p.name for p in Person.where(age=30)] == ["ann", "cid"]
    assert [p.name for p in Person.where(city="Oslo", age=40)] == ["bob"]
    assert Person.by_name("cid").city == "Rome"
    assert [p.name for p in Person.by_city("Oslo")] == ["ann", "bob"]
    assert Person.by_city("Paris") == [] and Person.by_name("zed") is None
    with pytest.raises(UsageError, match="no attribute"):
        Person.where(height=3)


def test_subclass_index_lookup_filters_class(mem):
    mem.execute("add_person", "ann")
    mem.execute("add_employee", "eve", 10)
    assert Employee.by_name("ann") is None
    assert Employee.by_name("eve").salary == 10
    assert Person.by_name("eve").salary == 10


def test_delete_removes_from_extent_and_indices(mem):
    mem.execute("add_person", "ann", "Oslo")
    p = Person.by_name("ann")
    mem.execute("delete_person", "ann")
    assert Person.by_name("ann") is None and Person.by_city("Oslo") == [] and mem.find(p.id) is None


def test_writes_outside_a_transaction_raise(mem):
    p = mem.execute("add_person", "ann")
    with pytest.raises(NotInTransaction, match="set Person.age outside a transaction"):
        p.age = 3
    with pytest.raises(NotInTransaction, match="create a Person outside"):
        Person(name="x")
    with pytest.raises(NotInTransaction, match="delete"):
        p.delete()
    p.note = "transient attributes may change anywhere"
    assert p.note.startswith("transient") and p.age == 0


def test_undeclared_attribute_and_type_checks(mem):
    with pytest.raises(TypeError, match="unknown attributes: height"):
        _run(mem, lambda: Person(name="x", height=3))
    with pytest.raises(TypeError, match="Person.age must be int, got str"):
        _run(mem, lambda: Person(name="x", age="old"))
    p = mem.execute("add_person", "ann")
    with pytest.raises(TypeError, match="age must be int"):
        mem.execute("set_attr", "ann", "age", "x")
    with pytest.raises(AttributeError, match="no declared attribute 'height'"):
        mem.execute("set_attr", "ann", "height", 1)
    assert p.age == 0


def _run(store, fn):
    """Run fn inside a transaction of an ad-hoc store definition."""
    @transaction(f"adhoc{id(fn)}")
    def adhoc():
        return fn()
    s = Store(None, definition=StoreDefinition("people", store.definition.classes, [adhoc]), bind=False)
    return s.execute(adhoc)


def test_required_attribute():
    class Thing(StoreObject):
        label: str

    @transaction("mk")
    def mk(**kw):
        return Thing(**kw)

    s = Store(None, definition=StoreDefinition("t", [Thing], [mk]))
    with pytest.raises(TypeError, match="missing required attribute 'label'"):
        s.execute(mk)
    assert s.execute(mk, label="x").label == "x"


def test_write_to_deleted_object_fails(mem):
    p = mem.execute("add_person", "ann")
    mem.execute("delete_person", "ann")

    @transaction("poke")
    def poke():
        p.age = 5
    s = Store(None, definition=StoreDefinition("people", mem.definition.classes, [poke]), bind=False)
    with pytest.raises(StoreError, match="deleted or belongs to another store"):
        s.execute(poke)


def test_no_pickle_no_copy(mem):
    p = mem.execute("add_person", "ann")
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(p)
    with pytest.raises(TypeError):
        copy.copy(p)


def test_mutable_defaults_are_not_shared():
    class Bag(StoreObject):
        items: list = []

    @transaction("bag")
    def bag():
        return Bag()

    s = Store(None, definition=StoreDefinition("b", [Bag], [bag]))
    a, b = s.execute(bag), s.execute(bag)
    assert a.items == [] and a.items is not b.items


def test_class_definition_errors():
    with pytest.raises(UsageError, match="already used"):
        class Bad(Person):
            name: str = "again"
    with pytest.raises(UsageError, match="not a StoreObject subclass"):
        StoreDefinition("x", [int])
    with pytest.raises(UsageError, match="decorate it with @transaction"):
        StoreDefinition("x", [], [lambda: None])

    class Other(StoreObject):
        key: str = Index(unique=True)

    @transaction("mk_other")
    def mk_other():
        return Other(key="k")
    s = Store(None, definition=StoreDefinition("o", [Person], [mk_other]), bind=False)
    with pytest.raises(UsageError, match="not part of this store's definition"):
        s.execute(mk_other)


def test_repr(mem):
    assert repr(mem.execute("add_person", "ann")).startswith("<Person #1 name='ann'")
