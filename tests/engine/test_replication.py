"""Election, replication, restart, leader failure: 3 node processes on loopback."""

from __future__ import annotations

import signal

from tests.engine.harness import Cluster, digest_of, payloads
from tests.support import wait_until


def test_one_leader_among_three(procs, tmp_path):
    c = Cluster(procs, tmp_path, 3)
    c.start_all()
    lid = c.leader()
    st = c.statuses()
    assert [i for i, s in st.items() if s["state"] == "leader"] == [lid]
    assert all(s["term"] == st[lid]["term"] for s in st.values())
    assert sorted(x["id"] for x in st[lid]["configuration"]) == [1, 2, 3]
    assert sorted(f["id"] for f in st[lid]["followers"]) == sorted({1, 2, 3} - {lid})
    # A follower refuses writes and names the leader.
    follower = next(i for i in st if i != lid)
    r = c.call(follower, "submit", n=1, prefix="x")
    assert r["error"][0] == "NotLeader"
    assert c.address(lid) in r["error"][1]


def test_10k_entries_in_order_everywhere_then_restart_all(procs, tmp_path):
    c = Cluster(procs, tmp_path, 3, snapshot_threshold=1500, snapshot_trailing=200)
    c.start_all()
    lid = c.leader()
    r = c.call(lid, "submit", n=10_000, prefix="e", window=256, timeout=120)
    assert r["error"] is None
    assert r["indexes"] == sorted(r["indexes"]) and len(set(r["indexes"])) == 10_000
    expected = digest_of(payloads("e", 10_000))
    st = c.wait_state([1, 2, 3], expected, 10_000)
    # Snapshots were taken along the way, from store snapshots Python handed back.
    status = c.statuses()
    assert all(s["snapshot_index"] > 0 for s in status.values())
    assert all(s["store_snapshot_index"] > 0 for s in status.values())
    assert all(s["off_loop_callbacks"] == 0 for s in status.values())
    assert all(x["snapshot_requests"] > 0 for x in st.values())

    # Restart every node: state comes back from snapshot + log, identical on all.
    for i in [1, 2, 3]:
        c.stop(i)
    c.start_all(bootstrap=False)
    lid = c.leader()
    assert c.call(lid, "request", what="barrier")["outcome"] == "ok"
    st = c.wait_state([1, 2, 3], expected, 10_000)
    assert all(x["restores"] and x["restores"][0]["index"] > 0 for x in st.values()), st
    r = c.call(lid, "submit", n=10, prefix="after", window=4)
    assert r["error"] is None
    c.wait_state([1, 2, 3], digest_of(payloads("e", 10_000) + payloads("after", 10)), 10_010)


def test_leader_kill_elects_new_leader(procs, tmp_path):
    c = Cluster(procs, tmp_path, 3)
    c.start_all()
    old = c.leader()
    old_term = c.call(old, "status")["term"]
    assert c.call(old, "submit", n=50, prefix="a")["error"] is None
    c.kill(old)
    rest = [i for i in [1, 2, 3] if i != old]
    new = c.leader(rest)
    assert new != old
    assert c.call(new, "status")["term"] > old_term
    assert c.call(new, "submit", n=50, prefix="b")["error"] is None
    c.wait_state(rest, digest_of(payloads("a", 50) + payloads("b", 50)), 100)


def test_transfer_to_chosen_node(procs, tmp_path):
    c = Cluster(procs, tmp_path, 3)
    c.start_all()
    lid = c.leader()
    target = next(i for i in [1, 2, 3] if i != lid)
    r = c.call(lid, "request", what="transfer", node_id=target)
    assert r == {"outcome": "ok", "value": target}
    assert c.leader() == target
    # Transferring to a server that is not a voter is refused, not crashed on.
    r = c.call(target, "request", what="transfer", node_id=99)
    assert r["outcome"] == "MembershipError"
    assert c.leader() == target
    # 0: libraft picks the best follower.
    r = c.call(target, "request", what="transfer", node_id=0)
    assert r["outcome"] == "ok" and r["value"] != target
    assert c.leader() == r["value"]


def test_recover_after_quorum_loss(procs, tmp_path):
    c = Cluster(procs, tmp_path, 3)
    c.start_all()
    lid = c.leader()
    assert c.call(lid, "submit", n=30, prefix="a")["error"] is None
    survivor = lid
    c.wait_state([survivor], digest_of(payloads("a", 30)), 30)
    for i in [1, 2, 3]:
        if i != survivor:
            c.kill(i)
    c.stop(survivor)
    # Forced single-voter configuration on the node with the longest log.
    c.start(survivor, recover=[[survivor, c.address(survivor), "voter"]])
    assert c.leader([survivor]) == survivor
    conf = c.call(survivor, "status")["configuration"]
    assert [(x["id"], x["role"]) for x in conf] == [(survivor, "voter")]
    assert c.call(survivor, "submit", n=5, prefix="b")["error"] is None
    c.wait_state([survivor], digest_of(payloads("a", 30) + payloads("b", 5)), 35)


def test_leadership_lost_when_partitioned_mid_submit(procs, tmp_path):
    c = Cluster(procs, tmp_path, 3)
    c.start_all()
    lid = c.leader()
    followers = [i for i in [1, 2, 3] if i != lid]
    c.call(lid, "background_submit", prefix="p", n=200_000, window=32)
    wait_until(lambda: c.call(lid, "background_outcomes")["outcomes"].get("ok", 0) > 100, 20,
               "some writes to commit")
    for f in followers:
        c.kill(f, signal.SIGSTOP)  # the leader is cut off from its quorum mid-stream
    try:
        res = wait_until(lambda: (r := c.call(lid, "background_outcomes"))["done"] and r, 30,
                         "the submitter to finish")
        assert res["outcomes"].get("LeadershipLost", 0) >= 1, res
        assert c.call(lid, "status")["state"] != "leader"
    finally:
        for f in followers:
            c.kill(f, signal.SIGCONT)
