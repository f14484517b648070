"""Linearizability checker for a read / write / compare-and-set register (Wing–Gong with Lowe's
memoisation), checked independently per key (registers are independent objects, so a history is
linearizable iff each key's sub-history is).

Operations with unknown outcome get an infinite completion time: the search may linearize them
at any point after their invocation, and postponing one past every other operation is the same
as it never having taken effect — so "maybe applied, maybe not" needs no special case beyond
a model step that accepts both outcomes of an unknown compare-and-set.

Failed operations (definitely not applied) and reads with unknown outcome (no effect, nothing
observed) are dropped before the search.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from tests.chaos.history import FAIL, OK, UNKNOWN, Op

INF = float("inf")


@dataclass
class KeyVerdict:
    key: Any
    ok: bool | None            # None: the search hit its budget without an answer
    ops: int
    steps: int
    unknown_ops: int
    detail: str = ""


@dataclass
class Verdict:
    ok: bool | None            # True linearizable, False not, None undecided (budget)
    keys: list[KeyVerdict] = field(default_factory=list)

    @property
    def failures(self) -> list[KeyVerdict]:
        return [k for k in self.keys if k.ok is False]

    def summary(self) -> dict:
        return {"linearizable": self.ok, "keys": len(self.keys),
                "non_linearizable_keys": [str(k.key) for k in self.failures],
                "undecided_keys": [str(k.key) for k in self.keys if k.ok is None],
                "details": [k.detail for k in self.keys if k.ok is not True][:5]}


def register_step(state: Any, op: Op) -> tuple[bool, Any]:
    """The sequential register: is ``op`` (with its observed result) legal in ``state``, and the
    state after it.  An unknown-outcome op has no observed result, so it only transforms."""
    if op.f == "read":
        return state == op.result, state
    if op.f == "write":
        return True, op.value
    if op.f == "cas":
        expected, new = op.value
        if op.status == UNKNOWN:
            # Applied now: it succeeds iff the value matches.  "Never applied" is covered by the
            # search postponing it past everything else.
            return True, (new if state == expected else state)
        if op.result:
            return state == expected, new
        return state != expected, state
    raise ValueError(f"register model has no operation {op.f!r}")


class _Entry:
    """A node of the doubly linked event list (Lowe's formulation)."""

    __slots__ = ("op", "idx", "is_call", "time", "match", "prev", "next")

    def __init__(self, op: Op | None, idx: int, is_call: bool, time: float) -> None:
        self.op = op
        self.idx = idx
        self.is_call = is_call
        self.time = time
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _build(ops: list[Op]) -> _Entry:
    events: list[_Entry] = []
    for i, op in enumerate(ops):
        call = _Entry(op, i, True, op.invoke)
        ret = _Entry(op, i, False, INF if op.complete is None else op.complete)
        call.match = ret
        events += [call, ret]
    # At equal times calls sort before returns: treating touching operations as concurrent is
    # the permissive reading, so a tie on the clock never produces a false alarm.
    events.sort(key=lambda e: (e.time, 0 if e.is_call else 1))
    head = _Entry(None, -1, False, -INF)
    prev = head
    for e in events:
        prev.next = e
        e.prev = prev
        prev = e
    return head


def _lift(e: _Entry) -> None:
    e.prev.next = e.next
    if e.next:
        e.next.prev = e.prev
    m = e.match
    m.prev.next = m.next
    if m.next:
        m.next.prev = m.prev


def _unlift(e: _Entry) -> None:
    m = e.match
    m.prev.next = m
    if m.next:
        m.next.prev = m
    e.prev.next = e
    if e.next:
        e.next.prev = e


def check_key(ops: list[Op], init: Any = None, step=register_step, budget: int = 2_000_000,
              key: Any = None) -> KeyVerdict:
    """WGL search over one key's operations (already filtered)."""
    n_unknown = sum(1 for o in ops if o.status == UNKNOWN)
    if not ops:
        return KeyVerdict(key, True, 0, 0, 0)
    head = _build(ops)
    state = init
    linearized = 0
    seen: set[tuple[int, Any]] = set()
    stack: list[tuple[_Entry, Any]] = []
    entry = head.next
    steps = 0
    best_depth, best_blocker = -1, None
    while True:
        if head.next is None:                  # every operation linearized
            return KeyVerdict(key, True, len(ops), steps, n_unknown)
        steps += 1
        if steps > budget:
            return KeyVerdict(key, None, len(ops), steps, n_unknown,
                              f"key {key!r}: search budget of {budget} steps exhausted")
        if entry.is_call:
            legal, new_state = step(state, entry.op)
            if legal:
                lin2 = linearized | (1 << entry.idx)
                if (lin2, new_state) not in seen:
                    seen.add((lin2, new_state))
                    stack.append((entry, state))
                    state, linearized = new_state, lin2
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
            continue
        if entry.time == INF:
            # Only unknown-outcome ops remain un-linearized: leave them "never applied".
            return KeyVerdict(key, True, len(ops), steps, n_unknown)
        # This op's completion was reached without linearizing it: backtrack.
        if len(stack) > best_depth:
            best_depth, best_blocker = len(stack), (entry.op, state)
        if not stack:
            break
        top, state = stack.pop()
        linearized &= ~(1 << top.idx)
        _unlift(top)
        entry = top.next
    op, st = best_blocker if best_blocker else (None, None)
    detail = (f"key {key!r}: no linearization; after {best_depth} linearized ops with state {st!r} "
              f"the search could not place {_fmt(op)}")
    return KeyVerdict(key, False, len(ops), steps, n_unknown, detail)


def _fmt(op: Op | None) -> str:
    if op is None:
        return "?"
    return (f"client {op.client} {op.f}({op.value!r}) -> {op.result!r} [{op.status}] "
            f"@{op.invoke:.6f}..{op.complete if op.complete is not None else 'inf'}")


def prepare(ops: list[Op]) -> dict[Any, list[Op]]:
    """Drop ops that cannot matter and split the rest by key."""
    by_key: dict[Any, list[Op]] = defaultdict(list)
    for op in ops:
        if op.status == FAIL:
            continue
        if op.status == UNKNOWN and op.f == "read":
            continue
        if op.status not in (OK, UNKNOWN):
            continue
        by_key[op.key].append(op)
    return by_key


def check_register(ops: list[Op], init: Any = None, budget: int = 2_000_000) -> Verdict:
    """Is this register history linearizable?  Keys are checked independently."""
    keys = []
    for key, kops in sorted(prepare(ops).items(), key=lambda kv: str(kv[0])):
        keys.append(check_key(kops, init=init, budget=budget, key=key))
    if any(k.ok is False for k in keys):
        ok: bool | None = False
    elif any(k.ok is None for k in keys):
        ok = None
    else:
        ok = True
    return Verdict(ok, keys)
