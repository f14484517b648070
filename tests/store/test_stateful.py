"""Random transaction sequences, some failing: replay and restore reproduce the live digest."""

import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bknr_cluster.store import Store, TxContext
from tests.store.models import definition

NAMES = st.sampled_from(["ann", "bob", "cid", "dan"])
CITIES = st.one_of(st.none(), st.sampled_from(["Oslo", "Rome"]))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.text(max_size=5), st.binary(max_size=4))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.tuples(inner, inner),
    st.dictionaries(st.text(max_size=3), inner, max_size=3),
    st.frozensets(st.integers(-5, 5), max_size=3), st.sets(st.text(max_size=2), max_size=3)),
    max_leaves=6)


class PeopleRules(RuleBasedStateMachine):
    """The test schema's transactions as rules; a subclass says how a call runs (``_run``)."""

    def _run(self, tx, *args):
        raise NotImplementedError

    @rule(name=NAMES, city=CITIES, age=st.integers(0, 99))
    def add_person(self, name, city, age):
        self._run("add_person", name, city, age)

    @rule(name=NAMES, salary=st.integers(0, 10))
    def add_employee(self, name, salary):
        self._run("add_employee", name, salary)

    @rule(name=NAMES, attr=st.sampled_from(["city", "age", "tags", "name", "nonexistent"]),
          value=st.one_of(VALUES, NAMES, CITIES))
    def set_attr(self, name, attr, value):
        self._run("set_attr", name, attr, value)

    @rule(name=NAMES)
    def delete_person(self, name):
        self._run("delete_person", name)

    @rule(a=NAMES, b=NAMES)
    def befriend(self, a, b):
        self._run("befriend", a, b)

    @rule(name=NAMES)
    def mess_then_fail(self, name):
        self._run("mess_then_fail", name)

    @rule(name=NAMES)
    def stamp(self, name):
        self._run("stamp", name)


class StoreMachine(PeopleRules):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="bknr-stateful-")
        self.store = Store(self.dir, definition=definition, sync=False, bind=False)
        self.history: list[tuple[bytes, bool]] = []
        self.clock = 1_000

    def _run(self, tx, *args):
        self.clock += 1
        rec = self.store.encode_transaction_at(self.clock, tx, *args)
        before = self.store.digest()
        try:
            self.store.execute_record(rec)
        except Exception:
            assert self.store.digest() == before, f"failed {tx}{args} changed the state"
            self.history.append((rec, False))
        else:
            self.history.append((rec, True))

    @rule()
    def snapshot(self):
        self.store.snapshot()

    @precondition(lambda self: self.history)
    @rule()
    def restart(self):
        """Snapshot + log restore equals the live state."""
        live = self.store.digest()
        self.store.close()
        self.store = Store(self.dir, definition=definition, sync=False, bind=False)
        assert self.store.digest() == live

    @invariant()
    def replay_from_scratch_matches(self):
        """Applying every record (failures included) to a fresh store gives the live digest."""
        fresh = Store(None, definition=definition, bind=False)
        for i, (rec, ok) in enumerate(self.history, 1):
            try:
                fresh.apply_record(rec, TxContext(index=i))
            except Exception:
                assert not ok, f"record {i} succeeded live but failed on replay"
            else:
                assert ok, f"record {i} failed live but succeeded on replay"
        assert fresh.digest() == self.store.digest() == self.store.digest_full()

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


StoreMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=30, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow])
TestStoreMachine = StoreMachine.TestCase
