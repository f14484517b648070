"""The incremental state digest: ``digest()`` always equals the from-scratch ``digest_full()``,
whatever the history (aborts, snapshot round trips, deletions of referenced objects, fold
timing), and stores reaching one state by different paths have one digest."""

import io

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

from bknr_cluster.errors import CodecError, UsageError
from bknr_cluster.store import Store, StoreDefinition, TxContext, context, transaction
from bknr_cluster.store import digest as digest_mod
from tests.store import models
from tests.store.models import Person
from tests.store.test_stateful import NAMES, PeopleRules

SHAPES = ["one", "list", "tuple", "set", "dict_keys", "dict_values", "nested"]


@transaction("link")
def link(name: str, others: list, shape: str) -> None:
    """Point ``tags`` (or ``friend``) at other persons, inside containers of every kind."""
    p = Person.by_name(name)
    targets = [o for o in map(Person.by_name, others) if o is not None]
    if p is None:
        return
    if shape == "one":
        p.friend = targets[0] if targets else None
    elif shape == "list":
        p.tags = targets
    elif shape == "tuple":
        p.tags = tuple(targets)
    elif shape == "set":
        p.tags = set(targets)
    elif shape == "dict_keys":
        p.tags = {t: t.name for t in targets}
    elif shape == "dict_values":
        p.tags = {t.name: t for t in targets}
    else:
        p.tags = [{"x": (t, frozenset([t]))} for t in targets]


@transaction("churn")
def churn(name: str, times: int, fail: bool) -> None:
    """Writes one object repeatedly (ending where it started), then maybe fails."""
    p = Person.by_name(name)
    if p is not None:
        age = p.age
        for i in range(times):
            p.age = age + i + 1
        p.age = age
    if fail:
        raise models.Boom("after churning")


def _shape(targets: list, shape: str):
    if shape == "one":
        return targets[0] if targets else None
    if shape == "list":
        return targets
    if shape == "tuple":
        return tuple(targets)
    if shape == "set":
        return set(targets)
    if shape == "dict_keys":
        return {t: t.name for t in targets}
    if shape == "dict_values":
        return {t.name: t for t in targets}
    return [{"x": (t, frozenset([t]))} for t in targets]


@transaction("link_and_drop")
def link_and_drop(name: str, other: str, shape: str, fail: bool) -> None:
    """The referrer's write and the deletion of its target in one transaction."""
    p, o = Person.by_name(name), Person.by_name(other)
    if p is None or o is None:
        return
    setattr(p, "friend" if shape == "one" else "tags", _shape([o], shape))
    if p is not o:
        o.delete()
    if fail:
        raise models.Boom("after linking and dropping")


@transaction("ephemeral")
def ephemeral(linker: str, shape: str, fail: bool) -> None:
    """Creates an object, writes it, makes others reference it and it others, deletes it."""
    tmp = Person(name="tmp-" + linker, age=1)
    tmp.age = 2
    tmp.friend = Person.by_name(linker)
    tmp.tags = [tmp.friend, "x"]
    p = Person.by_name(linker)
    if p is not None:
        p.tags = _shape([tmp], shape)
        p.friend = tmp
    tmp.age = 3
    tmp.delete()
    if fail:
        raise models.Boom("after an ephemeral object")


@transaction("rewrite")
def rewrite(name: str, others: list, shape: str) -> None:
    """Several writes to the same attributes: each reference in turn, then a container."""
    p = Person.by_name(name)
    if p is None:
        return
    targets = [o for o in map(Person.by_name, others) if o is not None]
    for t in targets:
        p.friend = t
        p.tags = t
    p.tags = _shape(targets, shape)
    p.age = p.age + 1


@transaction("mutate_in_place")
def mutate_in_place(name: str) -> None:
    Person.by_name(name).tags.append("sneaky")      # against the rules: bypasses the store


@transaction("digest_inside")
def digest_inside() -> str:
    return context().store.digest()


@transaction("keep_unencodable")
def keep_unencodable(name: str, bad: bool) -> None:
    Person.by_name(name).tags = object() if bad else None


definition = StoreDefinition(
    "people", classes=models.definition.classes,
    transactions=[*models.definition.transactions.values(), link, churn, mutate_in_place,
                  link_and_drop, ephemeral, rewrite,
                  keep_unencodable, digest_inside], enums=models.definition.enums)


def _store(fold_at: int | None = None) -> Store:
    s = Store(None, definition=definition, bind=False)
    if fold_at is not None:
        s._fold_at = fold_at
    return s


def _apply(store: Store, ts: int, tx: str, *args) -> bool:
    try:
        store.apply_record(store.encode_transaction_at(ts, tx, *args), TxContext(store.last_index + 1))
        return True
    except Exception:
        return False


def _round_trip(store: Store) -> Store:
    other = _store()
    other.load_snapshot(io.BytesIO(store.snapshot_bytes()))
    return other


class DigestMachine(PeopleRules):
    """One store folding after every commit, one folding only when read, and (at checks) a
    store restored from a snapshot: same records, same digest, equal to the full walk."""

    def __init__(self):
        super().__init__()
        self.eager, self.lazy = _store(fold_at=1), _store()
        self.ok_records: list[bytes] = []
        self.clock = 1_000

    def _run(self, tx, *args):
        self.clock += 1
        rec = self.eager.encode_transaction_at(self.clock, tx, *args)
        before = self.eager.digest()
        outcomes = []
        for s in (self.eager, self.lazy):
            try:
                s.apply_record(rec, TxContext(s.last_index + 1))
                outcomes.append(True)
            except Exception:
                outcomes.append(False)
        assert outcomes[0] == outcomes[1]
        if outcomes[0]:
            self.ok_records.append(rec)
        else:
            assert self.eager.digest() == before, f"failed {tx}{args} changed the digest"

    @rule(name=NAMES, others=st.lists(NAMES, max_size=3), shape=st.sampled_from(SHAPES))
    def link(self, name, others, shape):
        self._run("link", name, others, shape)

    @rule(name=NAMES, times=st.integers(1, 3), fail=st.booleans())
    def churn(self, name, times, fail):
        self._run("churn", name, times, fail)

    @rule(name=NAMES, other=NAMES, shape=st.sampled_from(SHAPES), fail=st.booleans())
    def link_and_drop(self, name, other, shape, fail):
        self._run("link_and_drop", name, other, shape, fail)

    @rule(linker=NAMES, shape=st.sampled_from(SHAPES), fail=st.booleans())
    def ephemeral(self, linker, shape, fail):
        self._run("ephemeral", linker, shape, fail)

    @rule(name=NAMES, others=st.lists(NAMES, max_size=3), shape=st.sampled_from(SHAPES))
    def rewrite(self, name, others, shape):
        self._run("rewrite", name, others, shape)

    @rule()
    def read_lazy(self):
        """Reading folds: later folds start from a different point."""
        assert self.lazy.digest() == self.eager.digest()

    @rule()
    def snapshot_round_trip(self):
        """Replace the lazy store's state by its own snapshot; the digest is recomputed."""
        before = self.lazy.digest()
        self.lazy.load_snapshot(io.BytesIO(self.lazy.snapshot_bytes()))
        assert self.lazy.digest() == before

    @invariant()
    def incremental_equals_full(self):
        for s in (self.eager, self.lazy):
            assert s.digest() == s.digest_full()

    @invariant()
    def other_paths_agree(self):
        restored = _round_trip(self.eager)
        assert restored.digest() == restored.digest_full() == self.eager.digest()
        # only the successful records, with no failures in between
        replayed = _store()
        for i, rec in enumerate(self.ok_records, 1):
            replayed.apply_record(rec, TxContext(i))
        assert replayed.digest() == self.eager.digest()


DigestMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=25, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow])
TestDigestMachine = DigestMachine.TestCase


# --- targeted cases ---------------------------------------------------------------------------

def test_same_state_by_different_paths_has_one_digest():
    a, b = _store(fold_at=1), _store()
    _apply(a, 1, "add_person", "ann", "Oslo", 1)
    _apply(a, 2, "set_attr", "ann", "age", 7)
    _apply(a, 3, "mess_then_fail", "ann")
    _apply(a, 4, "set_attr", "ann", "tags", {"k": {1, 2}, "j": [3]})
    _apply(b, 1, "add_person", "ann", "Oslo", 5)
    _apply(b, 2, "set_attr", "ann", "tags", {"j": [3], "k": {2, 1}})     # other insertion order
    _apply(b, 4, "set_attr", "ann", "age", 7)
    assert a.digest() == b.digest() == a.digest_full()
    _apply(b, 5, "set_attr", "ann", "age", 8)
    assert a.digest() != b.digest()


def test_deleting_a_referenced_object_rehashes_its_referrers():
    s = _store()
    for i, name in enumerate(["ann", "bob", "cid"], 1):
        _apply(s, i, "add_person", name)
    _apply(s, 4, "befriend", "ann", "bob")
    _apply(s, 5, "link", "cid", ["bob", "ann"], "nested")
    s.digest()                                          # folded: ann and cid hashed with bob
    _apply(s, 6, "set_attr", "bob", "age", 3)           # bob rehashed: still referenced
    s.digest()
    _apply(s, 7, "delete_person", "bob")               # ann and cid are not touched
    assert s.digest() == s.digest_full() == _round_trip(s).digest()
    with s.reading():
        assert Person.by_name("ann").friend is not None     # dangling, digested as None


@pytest.mark.parametrize("shape", SHAPES)
def test_one_batch_that_moves_references_and_deletes_their_targets(shape):
    """Within one batch (no fold in between) a value moves off an object that is then deleted,
    and an object is created, linked to and deleted: the fold takes each old value as of the
    batch's start (the deleted target still live, the created one not yet)."""
    s = _store()
    for i, name in enumerate(["ann", "bob", "cid", "dan"], 1):
        _apply(s, i, "add_person", name)
    _apply(s, 5, "link", "ann", ["bob", "cid"], shape)
    s.digest()                                          # folded: bob and cid are referenced
    steps = [("link", "ann", ["cid"], shape), ("delete_person", "bob"),
             ("add_person", "eve"), ("link", "dan", ["eve", "ann"], shape),
             ("link", "dan", ["ann"], shape), ("delete_person", "eve"), ("churn", "ann", 2, False),
             ("link", "cid", ["dan"], shape), ("delete_person", "dan")]
    for ts, (tx, *args) in enumerate(steps, 10):
        assert _apply(s, ts, tx, *args), tx
    assert s._digest_pending                            # all of it in one batch
    assert s.digest() == s.digest_full() == _round_trip(s).digest()


def test_a_read_folds_only_what_changed(monkeypatch):
    s = _store()
    _apply(s, 1, "add_person", "ann")
    for i in range(2, 300):
        _apply(s, i, "stamp", f"p{i}")
    s.digest()
    hashed = []
    real = digest_mod._native.prepare

    def counting(*args):        # the fold (native/digest.cpp): the objects whose terms it computes
        assert args[-1] is None                     # no referrer recomputed
        hashed.extend({entry[1] for undo in args[0] for entry in undo})
        return real(*args)

    monkeypatch.setattr(digest_mod._native, "prepare", counting)
    _apply(s, 400, "churn", "ann", 3, False)
    _apply(s, 401, "set_attr", "p7", "age", 1)
    s.digest()
    assert sorted(p.name for p in hashed) == ["ann", "p7"]


@pytest.mark.parametrize("fold_at", [1, 3, 1 << 30])
def test_batches_that_delete_what_they_reference(fold_at):
    """One batch: writes referencing an object deleted in it, an object created, written and
    deleted in it, several writes to one attribute, a referenced object deleted later."""
    s = _store(fold_at=fold_at)
    for i, name in enumerate(["ann", "bob", "cid", "dan"], 1):
        _apply(s, i, "add_person", name, "Oslo", i)
    _apply(s, 5, "add_employee", "eve", 3)
    _apply(s, 6, "befriend", "dan", "cid")
    _apply(s, 7, "link", "eve", ["cid", "bob"], "dict_keys")
    assert s.digest() == s.digest_full()
    assert _apply(s, 8, "rewrite", "ann", ["bob", "cid", "eve"], "set")
    assert _apply(s, 9, "link_and_drop", "ann", "bob", "nested", False)
    assert _apply(s, 10, "ephemeral", "eve", "tuple", False)
    assert not _apply(s, 11, "ephemeral", "dan", "list", True)
    assert _apply(s, 12, "set_attr", "dan", "age", 40)
    assert _apply(s, 13, "delete_person", "cid")       # dan.friend, eve.tags, ann.friend/tags
    assert _apply(s, 14, "set_attr", "eve", "age", 5)
    assert s.digest() == s.digest_full() == _round_trip(s).digest()
    assert _apply(s, 15, "delete_person", "eve")
    assert s.digest() == s.digest_full() == _round_trip(s).digest()


def test_a_fold_reads_only_the_attributes_written():
    """bknr-digest-4: a write's fold hashes the written attribute's old and new values, never
    the object's other attributes (a value there that cannot be encoded goes unnoticed)."""
    s = _store()
    _apply(s, 1, "add_person", "ann")
    for i in range(2, 300):
        _apply(s, i, "stamp", f"p{i}")
    s.digest()
    with s.reading():
        ann = Person.by_name("ann")
    tags = ann.tags
    Person.__dict__["tags"].__set__(ann, object())     # bypasses the store, as a bug would
    _apply(s, 400, "churn", "ann", 3, False)
    _apply(s, 401, "set_attr", "ann", "age", 9)
    s.digest()                                          # folds without touching ann.tags
    Person.__dict__["tags"].__set__(ann, tags)
    assert s.digest() == s.digest_full()


def test_commits_fold_in_batches():
    s = _store(fold_at=10)
    for i in range(1, 10):
        _apply(s, i, "add_person", f"p{i}")
    assert s._digest_backlog == 9 and len(s._digest_pending) == 9
    _apply(s, 10, "add_person", "p10")
    assert s._digest_backlog == 0 and not s._digest_pending
    assert s.digest() == s.digest_full()


def test_in_place_mutation_shows_as_a_difference_with_the_full_walk():
    s = _store()
    _apply(s, 1, "add_person", "ann")
    _apply(s, 2, "set_attr", "ann", "tags", [1])
    assert s.digest() == s.digest_full()
    assert _apply(s, 3, "mutate_in_place", "ann")
    assert s.digest() != s.digest_full()


def test_an_unencodable_value_fails_the_read_not_the_commit():
    s = _store(fold_at=1)
    _apply(s, 1, "add_person", "ann")
    assert _apply(s, 2, "keep_unencodable", "ann", True)     # committed despite the fold failing
    with pytest.raises(CodecError):
        s.digest()
    assert _apply(s, 3, "add_person", "bob")
    assert _apply(s, 4, "keep_unencodable", "ann", False)
    assert s.digest() == s.digest_full()
    assert s._fold_at == digest_mod.FOLD_ENTRIES                # commits fold again


def test_standalone_restart_gives_the_same_digest(tmp_path):
    s = Store(tmp_path / "st", definition=definition, sync=False, bind=False)
    s.execute("add_person", "ann")
    s.execute("add_person", "bob")
    s.execute("befriend", "ann", "bob")
    s.snapshot()
    s.execute("delete_person", "bob")
    s.execute("set_attr", "ann", "age", 4)
    live = s.digest()
    s.close()
    again = Store(tmp_path / "st", definition=definition, sync=False, bind=False)
    try:
        assert again.digest() == live == again.digest_full()
    finally:
        again.close()


def test_loading_an_empty_snapshot_recomputes():
    s = _store()
    _apply(s, 1, "add_person", "ann")
    empty = _store()
    s.load_snapshot(io.BytesIO(b""))
    assert s.digest() == empty.digest() == s.digest_full()


def test_digest_is_refused_inside_a_transaction():
    """It would fold values that the transaction may still roll back."""
    s = _store()
    _apply(s, 1, "add_person", "ann")
    with pytest.raises(UsageError, match="inside a transaction"):
        s.execute("digest_inside")
    assert s.digest() == s.digest_full()
