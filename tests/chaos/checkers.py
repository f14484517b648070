"""Bank and append checkers: what the final replica states must say about a recorded history.

Both take the history plus the final state read *locally* from every replica after the cluster
has converged, so they check durability (acked => present) and agreement (replicas equal), not
only the leader's view.
"""

from __future__ import annotations

import struct
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.history import FAIL, OK, UNKNOWN, Op


def mislabeled_snapshots(raft_dir: Path) -> list[str]:
    """Raft snapshot files whose engine header says "state after N" with N different from the
    index libraft filed them under (``snapshot-<term>-<index>-<ms>``).  Restarting from such a
    file applies (or skips) the entries in between: native/DESIGN.md §1, "A follower's commit
    index can go back"."""
    bad = []
    for f in Path(raft_dir).glob("snapshot-*"):
        if f.suffix == ".meta":
            continue
        try:
            with f.open("rb") as fh:
                head = fh.read(48)
        except FileNotFoundError:  # removed by a newer snapshot meanwhile
            continue
        if len(head) < 48 or head[:8] != b"BKNRSNP1":
            continue
        m, _store_len, count, last = struct.unpack("<4Q", head[16:48])
        index = int(f.name.split("-")[2])
        if last != index:
            bad.append(f"{f.name}: store snapshot {m} + {count} entries = state after {last}")
    return sorted(bad)


@dataclass
class CheckResult:
    name: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def fail(self, msg: str) -> None:
        self.ok = False
        # A broken run can produce thousands of identical complaints; the first ones tell the story.
        if len(self.problems) < 50:
            self.problems.append(msg)

    def summary(self) -> dict:
        return {"name": self.name, "ok": self.ok, "problems": self.problems[:10], **self.stats}


def check_bank(ops: list[Op], initial: dict[str, int], replicas: dict[str, dict]) -> CheckResult:
    """Bank invariants.

    ``ops``: ``transfer`` ops (value ``{"id", "from", "to", "amount"}``) and ``read`` ops (result:
    ``{account: balance}`` read in one consistent snapshot).
    ``replicas``: node name -> ``{"balances": {account: balance}, "applied": [transfer id, ...]}``.

    Checked: the total is constant in every read and on every replica; every acknowledged
    transfer is applied exactly once, unknown ones at most once, failed and never-issued ones
    not at all; each replica's balances equal the initial balances plus exactly its applied
    transfers; all replicas agree.
    """
    res = CheckResult("bank", True)
    total = sum(initial.values())
    transfers = {op.value["id"]: op for op in ops if op.f == "transfer"}
    status = Counter(op.status for op in transfers.values())
    res.stats.update(acked=status[OK], failed=status[FAIL], unknown=status[UNKNOWN], lost=0,
                     duplicated=0, reads=0)

    for op in ops:
        if op.f == "read" and op.status == OK:
            res.stats["reads"] += 1
            if sum(op.result.values()) != total:
                res.fail(f"read by client {op.client} at {op.invoke:.3f} saw total "
                         f"{sum(op.result.values())}, expected {total}")
            if any(v < 0 for v in op.result.values()):
                res.fail(f"read by client {op.client} saw a negative balance: {op.result}")

    if not replicas:
        res.fail("no replica state to check")
    lost: set = set()
    first: tuple[str, dict] | None = None
    for node, st in sorted(replicas.items()):
        balances, applied = st["balances"], st["applied"]
        if sum(balances.values()) != total:
            res.fail(f"{node}: total {sum(balances.values())} != {total}")
        counts = Counter(applied)
        for tid, n in counts.items():
            op = transfers.get(tid)
            if op is None:
                res.fail(f"{node}: transfer {tid!r} applied but never issued")
            elif n > 1:
                res.stats["duplicated"] += 1
                res.fail(f"{node}: transfer {tid!r} ({op.status}) applied {n} times")
            elif op.status == FAIL:
                res.fail(f"{node}: transfer {tid!r} reported failed but applied ({op.error})")
        for tid, op in transfers.items():
            if op.status == OK and counts[tid] == 0:
                lost.add(tid)
                res.fail(f"{node}: acknowledged transfer {tid!r} missing")
        expected = dict(initial)
        for tid in applied:
            op = transfers.get(tid)
            if op is None:
                continue
            expected[op.value["from"]] -= op.value["amount"]
            expected[op.value["to"]] += op.value["amount"]
        if expected != balances:
            diff = {a: (expected.get(a), balances.get(a)) for a in set(expected) | set(balances)
                    if expected.get(a) != balances.get(a)}
            res.fail(f"{node}: balances differ from initial + applied transfers: {diff}")
        if first is None:
            first = (node, st)
        elif (st["balances"], list(st["applied"])) != (first[1]["balances"], list(first[1]["applied"])):
            res.fail(f"replicas {first[0]} and {node} disagree")
    res.stats["lost"] = len(lost)
    return res


def check_append(ops: list[Op], replicas: dict[str, dict[Any, list]]) -> CheckResult:
    """Append-only lists.

    ``ops``: ``append`` ops (key = list name, value unique per op) and ``read`` ops (result: the
    list as read with a consistent read).
    ``replicas``: node name -> ``{key: [values in list order]}``.

    Checked: every replica holds the same lists (one order everywhere); no value twice; every
    acknowledged append present; failed and never-issued values absent; acknowledged appends
    that did not overlap in time appear in real-time order; every consistent read is a prefix
    of the final list.
    """
    res = CheckResult("append", True)
    appends = {(op.key, op.value): op for op in ops if op.f == "append"}
    status = Counter(op.status for op in appends.values())
    res.stats.update(acked=status[OK], failed=status[FAIL], unknown=status[UNKNOWN], lost=0,
                     duplicated=0, reads=0)
    if not replicas:
        res.fail("no replica state to check")
        return res
    nodes = sorted(replicas)
    ref_node = nodes[0]
    ref = replicas[ref_node]
    for node in nodes[1:]:
        for key in set(ref) | set(replicas[node]):
            if list(ref.get(key, [])) != list(replicas[node].get(key, [])):
                res.fail(f"list {key!r}: replicas {ref_node} and {node} differ")

    lost = 0
    for node in nodes:
        lists = replicas[node]
        for key, values in lists.items():
            counts = Counter(values)
            for v, n in counts.items():
                op = appends.get((key, v))
                if op is None:
                    res.fail(f"{node}: list {key!r} holds {v!r}, never appended")
                elif n > 1:
                    res.stats["duplicated"] += 1
                    res.fail(f"{node}: list {key!r} holds {v!r} {n} times ({op.status})")
                elif op.status == FAIL:
                    res.fail(f"{node}: list {key!r} holds {v!r}, whose append failed ({op.error})")
        present = {k: set(vs) for k, vs in lists.items()}
        for (key, v), op in appends.items():
            if op.status == OK and v not in present.get(key, ()):
                lost += 1
                res.fail(f"{node}: acknowledged append {v!r} to {key!r} missing")
    res.stats["lost"] = lost

    # Real-time order: if a was acknowledged before b was invoked, a must come first.
    by_key: dict[Any, list[Op]] = defaultdict(list)
    for op in appends.values():
        if op.status == OK:
            by_key[op.key].append(op)
    for key, kops in by_key.items():
        pos = {v: i for i, v in enumerate(ref.get(key, []))}
        kops = [o for o in kops if o.value in pos]
        kops.sort(key=lambda o: pos[o.value])
        # Walking in list order, every op's invocation must not come after the completion of a
        # later-listed op: track the minimum completion time seen from the end.
        min_complete = float("inf")
        min_op = None
        for op in reversed(kops):
            if min_op is not None and op.invoke > min_complete:
                res.fail(f"list {key!r}: {min_op.value!r} was acknowledged before {op.value!r} "
                         f"was appended, yet comes after it")
                break
            if op.complete < min_complete:
                min_complete, min_op = op.complete, op

    for op in ops:
        if op.f == "read" and op.status == OK:
            res.stats["reads"] += 1
            final = list(ref.get(op.key, []))
            seen = list(op.result)
            if final[:len(seen)] != seen:
                res.fail(f"read of {op.key!r} by client {op.client} is not a prefix of the final "
                         f"list: {seen[:5]}... vs {final[:5]}...")
    return res
