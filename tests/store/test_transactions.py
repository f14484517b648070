"""Transactions: registry, argument checks, undo on failure, deterministic context."""

import pytest

from bknr_cluster.errors import NotInTransaction, UnknownTransaction, UsageError
from bknr_cluster.store import Store, StoreDefinition, TxContext, context, transaction
from tests.store.models import Boom, Person, add_person, definition


def module_level_tx():
    return 1


def test_names_explicit_and_module_qualified():
    assert add_person.name == "add_person"
    t = transaction(module_level_tx)
    assert t.name == "tests.store.test_transactions.module_level_tx"
    assert transaction(name="x.y")(module_level_tx).name == "x.y"
    s = Store(None, definition=StoreDefinition("n", [], [t]), bind=False)
    assert s.execute("tests.store.test_transactions.module_level_tx") == 1
    assert s.execute("module_level_tx") == 1                # unambiguous short name


def test_unknown_transaction(mem):
    with pytest.raises(UnknownTransaction, match="unknown transaction 'nope' in store 'people'"):
        mem.encode_transaction("nope")
    other = Store(None, definition=StoreDefinition("other", [], [transaction("nope")(lambda: 0)]),
                  bind=False)
    rec = other.encode_transaction("nope")
    with pytest.raises(UnknownTransaction):
        mem.apply_record(rec)
    with pytest.raises(UnknownTransaction, match="unknown query"):
        mem.run_query("nope")


def test_bad_arguments_rejected_at_encode(mem):
    with pytest.raises(UsageError, match="bad arguments for 'add_person'"):
        mem.encode_transaction("add_person", "a", "b", 1, 2)
    with pytest.raises(UsageError, match="bad arguments"):
        mem.encode_transaction("add_person", nam="x")
    with pytest.raises(UsageError, match="missing a required argument"):
        mem.encode_transaction("add_person")
    assert mem.encode_transaction("add_person", name="x", age=3)
    assert mem.encode_transaction("add_person", "x") and mem.encode_transaction("add_person", "x", "y", 3)


def test_failure_leaves_store_unchanged_and_reraises_same_exception(mem):
    mem.execute("add_person", "ann", "Oslo", 1)
    mem.execute("add_person", "bob", "Rome", 2)
    mem.execute("befriend", "ann", "bob")
    before = mem.digest()
    snapshot = [(p.id, p.name, p.city, p.age, p.friend) for p in Person.all()]
    rec = mem.encode_transaction("mess_then_fail", "ann")
    with pytest.raises(Boom, match="failing on purpose") as info:
        mem.apply_record(rec, TxContext(index=7))
    assert type(info.value) is Boom
    assert mem.digest() == before
    assert [(p.id, p.name, p.city, p.age, p.friend) for p in Person.all()] == snapshot
    assert [p.name for p in Person.by_city("Oslo")] == ["ann"] and Person.by_city("Changed") == []
    assert Person.by_name("ann-new") is None and Person.by_name("ann").id == 1
    assert mem.last_index == 7                             # applied (and failed) at index 7
    assert mem.execute("add_person", "cid").id == 3      # id counter restored


def test_rollback_restores_deleted_objects_in_id_order(mem):
    for n in ("a", "b", "c"):
        mem.execute("add_person", n)
    with pytest.raises(Boom):
        mem.execute("mess_then_fail", "a")
    assert [p.name for p in Person.all()] == ["a", "b", "c"]


def test_nested_transaction_call_joins_outer(mem):
    @transaction("outer")
    def outer():
        add_person("inner")
        raise Boom("after nested")
    s = Store(None, definition=StoreDefinition("people", definition.classes, [outer, add_person]))
    with pytest.raises(Boom):
        s.execute(outer)
    assert s.count() == 0


def test_execute_inside_transaction_is_refused(mem):
    @transaction("reenter")
    def reenter():
        mem.execute("add_person", "x")
    s = Store(None, definition=StoreDefinition("people", definition.classes, [reenter]), bind=False)
    with pytest.raises(UsageError, match="inside a transaction"):
        s.execute(reenter)


def test_direct_call_executes_on_bound_store(mem):
    p = add_person("direct")
    assert mem.find(p.id) is p


def test_context_is_deterministic(mem):
    rec = mem.encode_transaction_at(1_700_000_000_123_456_789, "stamp", "ann")
    twin = Store(None, definition=definition, bind=False)
    r1 = mem.apply_record(rec)
    r2 = twin.apply_record(rec)
    assert r1 == r2 and r1[2] == 1_700_000_000_123_456_789
    assert mem.digest() == twin.digest()
    assert Person.by_name("ann").tags[1] == "2023-11-14T22:13:20.123456+00:00"
    other = mem.encode_transaction_at(1_700_000_000_123_456_789, "stamp", "bob")
    assert mem.apply_record(other)[1] != r1[1]             # seed differs with the record
    with pytest.raises(NotInTransaction):
        context()


def test_timestamp_never_goes_backwards(mem):
    mem.apply_record(mem.encode_transaction_at(2_000, "stamp", "a"))
    assert mem.apply_record(mem.encode_transaction_at(1_000, "stamp", "b"))[2] == 2_000


def test_failed_transaction_does_not_advance_time(mem):
    before = mem.digest()
    rec = mem.encode_transaction_at(5_000, "mess_then_fail", "x")
    with pytest.raises(Boom):
        mem.apply_record(rec)
    assert mem.digest() == before
    assert mem.apply_record(mem.encode_transaction_at(1_000, "stamp", "a"))[2] == 1_000
