"""POST /snapshot makes a compact snapshot that a node joining later is installed from.

The default snapshot policy (threshold 10000, trailing 2000, a store snapshot every 5000
entries) is never reached here: before snapshot_now asked the applier for a store snapshot, the
newcomer received the whole log (the Raft snapshot was "empty store + every entry", and the
log still started at 1) and replayed every transaction.
"""

from __future__ import annotations

from tests.cluster.harness import LocalCluster


def test_a_node_joining_after_post_snapshot_is_installed_at_the_leaders_index(tmp_path, procs):
    c = LocalCluster(tmp_path, procs, 3)  # the default snapshot policy
    c.init()
    c.start_all()
    leader = c.wait_leader()
    cl = c.client(leader)
    for i in range(40):
        cl.tx("open_account", f"acct{i}", 10 + i)
    c.wait_converged(timeout=30)
    before = c.status(leader, digest=False)
    assert before["snapshot_index"] == 0 and before["store_snapshot_index"] == 0
    target = before["applied_index"]

    idx = cl.call("POST", "/snapshot", {})["index"]
    st = c.status(leader, digest=False)
    assert st["snapshot_index"] == idx >= target
    assert st["store_snapshot_index"] >= target  # the applier serialised the store at the end

    n4 = c.add_node("voter")
    conv = c.wait_converged(timeout=60)
    assert len({s["digest"] for s in conv.values()}) == 1
    new = c.status(n4, digest=False)
    assert new["restores"] == 1, "n4 must have been installed from the snapshot"
    assert new["store_snapshot_index"] >= target  # ... holding the store at the leader's index
    # ... and replayed none of the 40 transactions (only the cluster layer's own entries that
    # followed the snapshot: the members' published definitions, cluster/DESIGN.md)
    assert new["applied_records"] == 0
    assert new["replayed_entries"] == 0
    assert c.client(n4).query("account", "acct39")["result"]["balance"] == 49
    # the cluster keeps committing with the new member
    res = cl.tx("deposit", "acct0", 5)
    conv = c.wait_converged(min_index=res["index"], timeout=30)
    assert set(conv) == {*c.names}
