"""Indices: unique and hash indices maintained on create, write, delete and rollback."""

from typing import Any

import pytest

from bknr_cluster.errors import IntegrityError
from bknr_cluster.store import Index, Store, StoreDefinition, StoreObject, transaction
from tests.store.models import Person


def test_unique_violation_on_create(mem):
    mem.execute("add_person", "ann", "Oslo")
    before = mem.digest()
    with pytest.raises(IntegrityError, match="Person.name must be unique: 'ann' is already used"):
        mem.execute("add_person", "ann", "Rome")
    assert mem.digest() == before
    assert Person.by_city("Rome") == [] and Person.count() == 1
    assert mem.execute("add_person", "bob").id == 2       # the failed create used no id


def test_unique_violation_on_write(mem):
    mem.execute("add_person", "ann")
    mem.execute("add_person", "bob")
    with pytest.raises(IntegrityError):
        mem.execute("set_attr", "bob", "name", "ann")
    assert Person.by_name("bob").name == "bob" and Person.by_name("ann").id == 1


def test_unique_index_follows_writes(mem):
    mem.execute("add_person", "ann")
    mem.execute("set_attr", "ann", "name", "anna")
    assert Person.by_name("ann") is None and Person.by_name("anna").id == 1
    mem.execute("add_person", "ann")                      # the old key is free again
    assert Person.by_name("ann").id == 2


def test_hash_index_follows_writes_and_none(mem):
    mem.execute("add_person", "ann", "Oslo")
    mem.execute("add_person", "bob", "Oslo")
    mem.execute("set_attr", "ann", "city", "Rome")
    assert [p.name for p in Person.by_city("Oslo")] == ["bob"]
    assert [p.name for p in Person.by_city("Rome")] == ["ann"]
    mem.execute("set_attr", "bob", "city", None)
    assert Person.by_city("Oslo") == [] and Person.by_city(None) == []
    assert [p.name for p in Person.where(city=None)] == ["bob"]


def test_none_is_not_unique_constrained(mem):
    mem.execute("add_person", "ann")
    mem.execute("set_attr", "ann", "name", None)
    mem.execute("add_person", "bob")
    mem.execute("set_attr", "bob", "name", None)          # two None keys: allowed, not indexed
    assert Person.by_name(None) is None and Person.count() == 2


def test_typed_index_value_is_rejected_cleanly(mem):
    mem.execute("add_person", "ann", "Oslo")
    before = mem.digest()
    with pytest.raises(TypeError, match="Person.city must be str, got list"):
        mem.execute("set_attr", "ann", "city", ["not", "hashable"])
    assert mem.digest() == before and [p.name for p in Person.by_city("Oslo")] == ["ann"]


def test_unhashable_index_value_is_rejected_cleanly():
    class Tagged(StoreObject):
        tag: Any = Index()

    @transaction("tag")
    def tag(value, oid=None):
        if oid is None:
            return Tagged(tag=value)
        Tagged.find(oid).tag = value

    s = Store(None, definition=StoreDefinition("t", [Tagged], [tag]))
    t = s.execute(tag, "a")
    before = s.digest()
    with pytest.raises(TypeError, match="Tagged.tag is indexed, so its value must be hashable"):
        s.execute(tag, ["x"], t.id)
    with pytest.raises(TypeError, match="must be hashable"):
        s.execute(tag, {"x": 1})
    assert s.digest() == before and Tagged.by_tag("a") == [t] and s.count() == 1


def test_class_index_is_maintained(mem):
    mem.execute("add_person", "ann")
    mem.execute("add_employee", "eve", 1)
    mem.execute("delete_person", "eve")
    assert Person.all() == [Person.by_name("ann")] and mem.count() == 1
