"""The checkers themselves, on hand-made histories (linearizable and not, including the tricky
cases with unknown outcomes) and on generated ones."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.chaos.checkers import check_append, check_bank
from tests.chaos.history import FAIL, OK, UNKNOWN, Op, ops_from
from tests.chaos.linearizability import check_register


def lin(rows, **kw):
    return check_register(ops_from(rows), **kw)


# (client, f, key, value, result, status, invoke, complete)

def test_empty_history_is_linearizable():
    assert check_register([]).ok is True


def test_sequential_write_then_read():
    assert lin([(1, "write", "x", 1, None, OK, 0, 1), (2, "read", "x", None, 1, OK, 2, 3)]).ok is True


def test_read_of_a_value_never_written():
    v = lin([(1, "write", "x", 1, None, OK, 0, 1), (2, "read", "x", None, 2, OK, 2, 3)])
    assert v.ok is False
    assert "x" in v.failures[0].detail


def test_initial_value_read_before_any_write():
    assert lin([(1, "read", "x", None, None, OK, 0, 1), (1, "write", "x", 5, None, OK, 2, 3)]).ok is True


def test_stale_read_after_acknowledged_write():
    # The write completed before the read began: reading the old value is a stale read.
    assert lin([(1, "write", "x", 1, None, OK, 0, 1), (2, "read", "x", None, None, OK, 2, 3)]).ok is False


@pytest.mark.parametrize("seen", [None, 1])
def test_read_concurrent_with_write_may_see_either(seen):
    assert lin([(1, "write", "x", 1, None, OK, 0, 10), (2, "read", "x", None, seen, OK, 1, 2)]).ok is True


def test_value_cannot_flip_back_after_both_writes_complete():
    rows = [(1, "write", "x", 1, None, OK, 0, 5), (2, "write", "x", 2, None, OK, 0, 5),
            (3, "read", "x", None, 2, OK, 6, 7), (3, "read", "x", None, 1, OK, 8, 9)]
    assert lin(rows).ok is False


def test_each_write_takes_effect_once():
    # Both writes span the whole history; reads (sequential) see 1, 2, 1: w1 would be needed twice.
    rows = [(1, "write", "x", 1, None, OK, 0, 100), (2, "write", "x", 2, None, OK, 0, 100),
            (3, "read", "x", None, 1, OK, 1, 2), (3, "read", "x", None, 2, OK, 3, 4),
            (3, "read", "x", None, 1, OK, 5, 6)]
    assert lin(rows).ok is False
    rows[-1] = (3, "read", "x", None, 2, OK, 5, 6)
    assert lin(rows).ok is True


def test_concurrent_readers_must_agree_on_an_order():
    # Two writes concurrent with two readers; reader A sees 1 then 2, reader B sees 2 then 1,
    # all four reads pairwise overlapping only within a reader's window: no single order exists.
    rows = [(1, "write", "x", 1, None, OK, 0, 50), (2, "write", "x", 2, None, OK, 0, 50),
            (3, "read", "x", None, 1, OK, 1, 10), (3, "read", "x", None, 2, OK, 20, 30),
            (4, "read", "x", None, 2, OK, 1, 10), (4, "read", "x", None, 1, OK, 20, 30)]
    assert lin(rows).ok is False


def test_unknown_write_may_apply_later():
    rows = [(1, "write", "x", 3, None, UNKNOWN, 0, None),
            (2, "read", "x", None, None, OK, 1, 2), (2, "read", "x", None, 3, OK, 50, 51)]
    assert lin(rows).ok is True


def test_unknown_write_may_never_apply():
    rows = [(1, "write", "x", 3, None, UNKNOWN, 0, None), (2, "read", "x", None, None, OK, 100, 101)]
    assert lin(rows).ok is True


def test_unknown_write_applies_at_most_once():
    rows = [(1, "write", "x", 3, None, UNKNOWN, 0, None), (2, "write", "x", 4, None, OK, 1, 2),
            (3, "read", "x", None, 3, OK, 3, 4), (3, "read", "x", None, 4, OK, 5, 6),
            (3, "read", "x", None, 3, OK, 7, 8)]
    assert lin(rows).ok is False


def test_unknown_write_cannot_apply_before_its_invocation():
    rows = [(2, "read", "x", None, 3, OK, 0, 1), (1, "write", "x", 3, None, UNKNOWN, 2, None)]
    assert lin(rows).ok is False


def test_failed_write_must_not_be_visible():
    rows = [(1, "write", "x", 3, None, FAIL, 0, 1), (2, "read", "x", None, 3, OK, 2, 3)]
    assert lin(rows).ok is False


def test_unknown_read_is_ignored():
    rows = [(1, "write", "x", 1, None, OK, 0, 1), (2, "read", "x", None, None, UNKNOWN, 2, None)]
    assert lin(rows).ok is True


def test_cas_success_and_failure_semantics():
    base = [(1, "write", "x", 0, None, OK, 0, 1)]
    assert lin(base + [(1, "cas", "x", (0, 1), True, OK, 2, 3),
                       (1, "read", "x", None, 1, OK, 4, 5)]).ok is True
    # Two sequential successful CAS from the same expected value: the second must fail.
    assert lin(base + [(1, "cas", "x", (0, 1), True, OK, 2, 3),
                       (2, "cas", "x", (0, 2), True, OK, 4, 5)]).ok is False
    # A CAS that reports failure while the value matched is wrong.
    assert lin(base + [(1, "cas", "x", (0, 1), False, OK, 2, 3)]).ok is False
    assert lin(base + [(1, "cas", "x", (7, 1), False, OK, 2, 3)]).ok is True


def test_concurrent_cas_only_one_wins():
    rows = [(1, "write", "x", 0, None, OK, 0, 1),
            (1, "cas", "x", (0, 1), True, OK, 2, 10), (2, "cas", "x", (0, 2), True, OK, 2, 10)]
    assert lin(rows).ok is False
    rows[2] = (2, "cas", "x", (0, 2), False, OK, 2, 10)
    assert lin(rows).ok is True


@pytest.mark.parametrize("seen, ok", [(0, True), (1, True), (5, False)])
def test_unknown_cas(seen, ok):
    rows = [(1, "write", "x", 0, None, OK, 0, 1), (1, "cas", "x", (0, 1), None, UNKNOWN, 2, None),
            (2, "read", "x", None, seen, OK, 3, 4)]
    assert lin(rows).ok is ok


def test_keys_are_checked_independently():
    rows = [(1, "write", "a", 1, None, OK, 0, 1), (2, "read", "a", None, 1, OK, 2, 3),
            (1, "write", "b", 1, None, OK, 0, 1), (2, "read", "b", None, 9, OK, 2, 3)]
    v = lin(rows)
    assert v.ok is False
    assert [k.key for k in v.failures] == ["b"]
    assert v.summary()["non_linearizable_keys"] == ["b"]


def test_budget_gives_undecided_not_a_verdict():
    rows = [(c, "write", "x", c, None, OK, 0, 100) for c in range(12)]
    rows.append((99, "read", "x", None, 1000, OK, 200, 201))   # impossible: forces full search
    assert lin(rows, budget=50).ok is None


def simulate(seed: int, n_ops: int, clients: int, unknown_rate: float = 0.0, keys=("x",)):
    """A correct register execution: each op takes effect at one instant inside its interval."""
    rnd = random.Random(seed)
    events = []
    t_free = dict.fromkeys(range(clients), 0.0)
    for _ in range(n_ops):
        c = rnd.randrange(clients)
        inv = t_free[c] + rnd.random()
        comp = inv + rnd.random() * 3
        point = rnd.uniform(inv, comp)
        t_free[c] = comp
        f = rnd.choice(["read", "write", "cas"])
        events.append((point, c, f, rnd.choice(keys), inv, comp))
    events.sort()
    state: dict = {}
    ops = []
    for _point, c, f, key, inv, comp in events:
        cur = state.get(key)
        unknown = f != "read" and rnd.random() < unknown_rate
        if f == "read":
            op = Op(c, f, key, None, cur, OK, inv, comp)
        elif f == "write":
            v = rnd.randrange(4)
            if not (unknown and rnd.random() < 0.5):   # an unknown op may also never apply
                state[key] = v
            op = Op(c, f, key, v, None, UNKNOWN if unknown else OK, inv, None if unknown else comp)
        else:
            e, n = rnd.randrange(4), rnd.randrange(4)
            applied = cur == e and not (unknown and rnd.random() < 0.5)
            if applied:
                state[key] = n
            op = Op(c, f, key, (e, n), None if unknown else cur == e, UNKNOWN if unknown else OK,
                    inv, None if unknown else comp)
        ops.append(op)
    return ops


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), clients=st.integers(1, 5), unknown=st.sampled_from([0.0, 0.1]))
def test_generated_correct_histories_are_linearizable(seed, clients, unknown):
    ops = simulate(seed, 40, clients, unknown, keys=("x", "y"))
    assert check_register(ops).ok is True


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), clients=st.integers(1, 5))
def test_generated_histories_with_a_corrupted_read_are_not(seed, clients):
    ops = simulate(seed, 40, clients)
    reads = [o for o in ops if o.f == "read"]
    if not reads:
        return
    random.Random(seed).choice(reads).result = 99     # a value no one ever wrote
    assert check_register(ops).ok is False


def test_long_history_checks_quickly():
    ops = simulate(7, 3000, 5, 0.02, keys=("a", "b", "c"))
    v = check_register(ops)
    assert v.ok is True
    assert sum(k.ops for k in v.keys) == len(ops)


# --- bank ------------------------------------------------------------------------------------

INITIAL = {"a": 100, "b": 100, "c": 100}


def transfer(tid, frm, to, amount, status, t=0.0):
    return Op(1, "transfer", None, {"id": tid, "from": frm, "to": to, "amount": amount}, None,
              status, t, None if status == UNKNOWN else t + 1)


def replica(applied, history):
    bal = dict(INITIAL)
    ops = {o.value["id"]: o for o in history if o.f == "transfer"}
    for tid in applied:
        v = ops[tid].value if tid in ops else {"from": "a", "to": "b", "amount": 1}
        bal[v["from"]] -= v["amount"]
        bal[v["to"]] += v["amount"]
    return {"balances": bal, "applied": list(applied)}


def test_bank_good_run():
    h = [transfer("t1", "a", "b", 10, OK), transfer("t2", "b", "c", 5, UNKNOWN),
         transfer("t3", "c", "a", 7, FAIL), transfer("t4", "c", "a", 1, UNKNOWN),
         Op(2, "read", None, None, {"a": 90, "b": 110, "c": 100}, OK, 2, 3)]
    reps = {n: replica(["t1", "t2"], h) for n in ("n1", "n2", "n3")}
    r = check_bank(h, INITIAL, reps)
    assert r.ok, r.problems
    assert (r.stats["acked"], r.stats["unknown"], r.stats["failed"], r.stats["lost"]) == (1, 2, 1, 0)


def test_bank_lost_acked_transfer():
    h = [transfer("t1", "a", "b", 10, OK), transfer("t2", "b", "c", 5, OK)]
    r = check_bank(h, INITIAL, {"n1": replica(["t1"], h)})
    assert not r.ok and r.stats["lost"] == 1
    assert "t2" in r.problems[0]


@pytest.mark.parametrize("status", [OK, UNKNOWN])
def test_bank_duplicate_application(status):
    h = [transfer("t1", "a", "b", 10, status)]
    r = check_bank(h, INITIAL, {"n1": replica(["t1", "t1"], h)})
    assert not r.ok and r.stats["duplicated"] == 1


def test_bank_failed_transfer_applied():
    h = [transfer("t1", "a", "b", 10, FAIL)]
    assert not check_bank(h, INITIAL, {"n1": replica(["t1"], h)}).ok


def test_bank_total_changed_in_a_read():
    h = [Op(2, "read", None, None, {"a": 90, "b": 100, "c": 100}, OK, 0, 1)]
    r = check_bank(h, INITIAL, {"n1": replica([], h)})
    assert not r.ok and "total" in r.problems[0]


def test_bank_balance_changed_without_transfer_record():
    h = [transfer("t1", "a", "b", 10, OK)]
    rep = replica(["t1"], h)
    rep["balances"]["a"] -= 3
    rep["balances"]["c"] += 3
    r = check_bank(h, INITIAL, {"n1": rep})
    assert not r.ok and "initial + applied" in r.problems[0]


def test_bank_replicas_disagree():
    h = [transfer("t1", "a", "b", 10, UNKNOWN)]
    r = check_bank(h, INITIAL, {"n1": replica(["t1"], h), "n2": replica([], h)})
    assert not r.ok and "disagree" in r.problems[-1]


def test_bank_never_issued_transfer():
    h = [transfer("t1", "a", "b", 10, OK)]
    r = check_bank(h, INITIAL, {"n1": replica(["t1", "zz"], h)})
    assert not r.ok and "never issued" in r.problems[0]


# --- append ----------------------------------------------------------------------------------

def app(client, key, v, status, inv, comp):
    return Op(client, "append", key, v, None, status, inv, comp)


def test_append_good_run():
    h = [app(1, "L", 1, OK, 0, 1), app(2, "L", 2, OK, 0.5, 2), app(1, "L", 3, UNKNOWN, 3, None),
         app(2, "L", 4, FAIL, 3, 4), app(1, "L", 5, OK, 5, 6),
         Op(3, "read", "L", None, [2, 1], OK, 2.5, 2.6)]
    final = {"L": [2, 1, 5]}
    r = check_append(h, {"n1": final, "n2": final})
    assert r.ok, r.problems
    assert r.stats["acked"] == 3


@pytest.mark.parametrize("lists, why", [
    ({"L": [1]}, "missing"),                 # acked 2 lost
    ({"L": [1, 2, 1]}, "2 times"),          # duplicated
    ({"L": [2, 1]}, "acknowledged before"),  # 1 completed before 2 was invoked
    ({"L": [1, 2, 9]}, "never appended"),
    ({"L": [1, 2, 3]}, "failed"),
])
def test_append_violations(lists, why):
    h = [app(1, "L", 1, OK, 0, 1), app(1, "L", 2, OK, 2, 3), app(2, "L", 3, FAIL, 4, 5)]
    r = check_append(h, {"n1": lists})
    assert not r.ok
    assert any(why in p for p in r.problems), r.problems


def test_append_replicas_in_different_orders():
    h = [app(1, "L", 1, OK, 0, 10), app(2, "L", 2, OK, 0, 10)]
    r = check_append(h, {"n1": {"L": [1, 2]}, "n2": {"L": [2, 1]}})
    assert not r.ok and "differ" in r.problems[0]


def test_append_read_not_a_prefix():
    h = [app(1, "L", 1, OK, 0, 10), app(2, "L", 2, OK, 0, 10),
         Op(3, "read", "L", None, [2], OK, 11, 12)]
    r = check_append(h, {"n1": {"L": [1, 2]}})
    assert not r.ok and "prefix" in r.problems[0]
