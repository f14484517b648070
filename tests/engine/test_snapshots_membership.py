"""Membership changes, snapshot install, and snapshot-at-index exactness (node processes)."""

from __future__ import annotations

from tests.engine.harness import Cluster, digest_of, payloads
from tests.support import wait_until


def test_fourth_node_joins_by_snapshot_install_then_is_removed(procs, tmp_path):
    c = Cluster(procs, tmp_path, 3, snapshot_threshold=64, snapshot_trailing=16)
    c.start_all()
    lid = c.leader()
    assert c.call(lid, "submit", n=500, prefix="a", window=32)["error"] is None
    # The leader's log no longer starts at 1, so a newcomer can only catch up by snapshot.
    wait_until(lambda: c.call(lid, "status")["snapshot_index"] > 64, 20, "a leader snapshot")

    c.start(4)  # empty data dir, not bootstrapped
    assert c.call(lid, "request", what="add", node_id=4, address=c.address(4))["outcome"] == "ok"
    assert c.call(lid, "request", what="assign", node_id=4, role="voter")["outcome"] == "ok"
    expected = digest_of(payloads("a", 500))
    st = c.wait_state([1, 2, 3, 4], expected, 500)
    assert st[4]["restores"], "node 4 should have been restored from an installed snapshot"
    assert st[4]["restores"][0]["index"] > 0
    conf = {s["id"]: s["role"] for s in c.call(lid, "status")["configuration"]}
    assert conf == {1: "voter", 2: "voter", 3: "voter", 4: "voter"}
    assert c.call(4, "status")["off_loop_callbacks"] == 0

    # Adding an existing id or address is refused, not fatal.
    r = c.call(lid, "request", what="add", node_id=4, address=c.address(5))
    assert r["outcome"] == "MembershipError"
    r = c.call(lid, "request", what="add", node_id=5, address=c.address(4))
    assert r["outcome"] == "MembershipError"

    assert c.call(lid, "request", what="remove", node_id=4)["outcome"] == "ok"
    conf = {s["id"] for s in c.call(lid, "status")["configuration"]}
    assert conf == {1, 2, 3}
    assert c.call(lid, "request", what="remove", node_id=4)["outcome"] == "MembershipError"
    assert c.call(lid, "submit", n=20, prefix="b")["error"] is None
    c.wait_state([1, 2, 3], digest_of(payloads("a", 500) + payloads("b", 20)), 520)


def test_snapshot_at_n_restores_exactly_state_after_n(procs, tmp_path):
    # No automatic snapshots; store snapshots every 100 entries, so N is never a multiple.
    c = Cluster(procs, tmp_path, 3, snapshot_threshold=100_000, snapshot_trailing=10,
                store_snapshot_every=100)
    c.start_all()
    lid = c.leader()
    follower = next(i for i in [1, 2, 3] if i != lid)
    first = c.call(lid, "submit", n=250, prefix="a", window=16)
    assert first["error"] is None
    c.wait_state([follower], digest_of(payloads("a", 250)), 250)
    # store_wait=0: on the periodic store snapshot the engine holds plus the raw entries after it,
    # as threshold snapshots are built (a plain snapshot_now would serialise the store at N).
    r = c.call(follower, "request", what="snapshot_now", store_wait=0)
    assert r["outcome"] == "ok"
    n = r["value"]
    st = c.call(follower, "status")
    assert st["snapshot_index"] == n
    m = st["snapshot_store_index"]
    assert 0 < m < n
    # More entries after N: they are in the log, but a lone restarted node cannot know they
    # are committed, so it must come back with exactly the state after N.
    assert c.call(lid, "submit", n=30, prefix="b")["error"] is None
    c.wait_state([follower], digest_of(payloads("a", 250) + payloads("b", 30)), 280)
    for i in [1, 2, 3]:
        c.stop(i)

    c.start(follower)
    idx = first["indexes"]
    upto = [p for p, i in zip(payloads("a", 250), idx, strict=True) if i <= n]
    st = c.wait_state([follower], digest_of(upto), len(upto), timeout=20)[follower]
    assert st["restores"][0]["index"] == m      # store snapshot M, then entries M+1..N replayed
    assert st["applied"] == max(i for i in idx if i <= n)
    # Once the others are back, the rest of the log is applied on top, in order.
    for i in [1, 2, 3]:
        if i != follower:
            c.start(i)
    lid = c.leader()
    assert c.call(lid, "request", what="barrier")["outcome"] == "ok"
    c.wait_state([1, 2, 3], digest_of(payloads("a", 250) + payloads("b", 30)), 280)
