"""A halted replica never leads (native/halt_rule.cpp): RaftNode.set_halted(True) makes a node
stop campaigning, refuse every (pre-)vote and ignore TimeoutNow, while it keeps replicating."""

from __future__ import annotations

from tests.engine.harness import Cluster, digest_of, payloads
from tests.support import sample_for, wait_until


def _watch(c: Cluster, ids: list[int], seconds: float) -> list[str]:
    return [s for states in sample_for(lambda: [c.call(i, "status")["state"] for i in ids], seconds)
            for s in states]


def test_halted_nodes_neither_campaign_nor_grant_votes(procs, tmp_path):
    c = Cluster(procs, tmp_path, 3)
    c.start_all()
    lid = c.leader()
    assert c.call(lid, "submit", n=10, prefix="a")["error"] is None
    rest = [i for i in (1, 2, 3) if i != lid]
    c.wait_state([1, 2, 3], digest_of(payloads("a", 10)), 10)
    for i in rest:
        assert c.call(i, "halt", on=True)["halted"] is True
        assert c.call(i, "status")["halted"] is True
    # A halted node still replicates: it stores and hands over what the leader sends.
    assert c.call(lid, "submit", n=10, prefix="b")["error"] is None
    written = payloads("a", 10) + payloads("b", 10)
    c.wait_state(rest, digest_of(written), 20)
    c.kill(lid)
    t = c.options["election_timeout_ms"] / 1000
    # Both survivors halted: nobody campaigns, for many election timeouts.
    assert set(_watch(c, rest, 6 * t)) == {"follower"}
    # One of them healthy again: it campaigns, but the halted one refuses its votes.
    healthy, halted = rest
    c.call(healthy, "halt", on=False)
    states = _watch(c, [halted], 6 * t)
    assert set(states) == {"follower"}
    assert c.call(healthy, "status")["state"] != "leader"
    assert c.call(halted, "status")["halted_refused_votes"] > 0
    # Both healthy: a leader, with everything acknowledged before.
    c.call(halted, "halt", on=False)
    new = c.leader(rest)
    assert c.call(new, "submit", n=5, prefix="c")["error"] is None
    c.wait_state(rest, digest_of(written + payloads("c", 5)), 25)


def test_a_halted_follower_ignores_a_leadership_transfer(procs, tmp_path):
    c = Cluster(procs, tmp_path, 3)
    c.start_all()
    lid = c.leader()
    target = next(i for i in (1, 2, 3) if i != lid)
    c.call(target, "halt", on=True)
    r = c.call(lid, "request", what="transfer", node_id=target, timeout=15)
    assert r["outcome"] != "ok" or c.leader() != target
    wait_until(lambda: c.call(target, "status")["halted_dropped"] > 0, 10, "TimeoutNow dropped")
    assert c.call(target, "status")["state"] != "leader"
    assert c.leader() != target
