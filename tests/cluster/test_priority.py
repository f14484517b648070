"""Leadership priority (YAML ``nodes[i].priority``; bknr_cluster/cluster/priority.py): the
validation, the leader's decision, and real nodes handing leadership back to a restarted
priority-1 node once it is caught up -- once, not on every restart."""

from __future__ import annotations

import pytest

from bknr_cluster.cluster.config import ClusterConfig
from bknr_cluster.cluster.priority import PriorityKeeper
from bknr_cluster.errors import ConfigError
from tests.cluster.harness import LocalCluster
from tests.support import wait_until

# --- validation -----------------------------------------------------------------------------


def test_priority_is_validated_with_its_path(tmp_path, procs):
    c = LocalCluster(tmp_path, procs, 3)
    c.data["nodes"][1]["priority"] = 2
    with pytest.raises(ConfigError) as e:
        ClusterConfig.from_dict(c.data, tmp_path)
    assert ("nodes[1].priority", "must be 1 (preferred leader), 0 (no preference) or -1 (avoid)") \
        in e.value.problems
    c.data["nodes"][1]["priority"] = -1
    cfg = ClusterConfig.from_dict(c.data, tmp_path)
    assert [n.priority for n in cfg.nodes] == [0, -1, 0]


# --- the leader's decision (pure over a status dict) -----------------------------------------


def leader_status(commit: int, matches: dict[int, int]) -> dict:
    return {"state": "leader", "commit_index": commit,
            "configuration": [{"id": i, "role": "voter"} for i in (1, 2, 3)],
            "followers": [{"id": i, "match_index": m} for i, m in matches.items()]}


def keeper(node_id: int, prio: dict[int, int], settle: float = 1.0) -> PriorityKeeper:
    return PriorityKeeper(node_id, prio, engine=None, election_timeout_ms=200, settle_s=settle)


def test_leader_yields_only_to_a_better_node_caught_up_for_the_settle_time():
    k = keeper(2, {1: 1, 2: 0, 3: 0})
    assert k.choose(leader_status(100, {1: 100, 3: 100}), 0.0) is None  # no earlier commit seen
    assert k.choose(leader_status(150, {1: 100, 3: 150}), 0.1) is None  # 1 caught up since 0.1
    assert k.choose(leader_status(200, {1: 150, 3: 200}), 0.8) is None  # not for 1 s yet
    assert k.choose(leader_status(210, {1: 100, 3: 210}), 1.0) is None  # fell behind: restart
    assert k.choose(leader_status(220, {1: 210, 3: 220}), 1.5) is None
    target, cause = k.choose(leader_status(230, {1: 220, 3: 230}), 2.6)
    assert target == 1 and "priority 1" in cause
    # never to an equal priority: node 3 is caught up all along
    assert keeper(2, {1: 0, 2: 0, 3: 0}).choose(leader_status(1, {1: 1, 3: 1}), 9.0) is None
    # a follower does nothing
    assert k.choose({"state": "follower"}, 9.0) is None


def test_a_minus_one_leader_hands_away_after_two_election_timeouts():
    k = keeper(1, {1: -1, 2: 0, 3: 0}, settle=10.0)
    k.choose(leader_status(10, {2: 10, 3: 10}), 0.0)
    k.choose(leader_status(20, {2: 20, 3: 5}), 0.1)
    assert k.choose(leader_status(30, {2: 30, 3: 30}), 0.3) is None
    target, _ = k.choose(leader_status(40, {2: 40, 3: 40}), 0.6)
    assert target == 2  # caught up longer; on a tie the lower id


# --- real nodes ------------------------------------------------------------------------------


def test_leadership_returns_to_a_restarted_priority_one_node_and_does_not_flap(tmp_path, procs):
    c = LocalCluster(tmp_path, procs, 3, election_timeout_ms=300, heartbeat_ms=30)
    c.data["nodes"][0]["priority"] = 1
    # the settle time must outlast one start+kill of n1 below (process start, catch-up, first
    # answer), which takes over 2 s on a loaded 2-core machine
    c.data["timing"]["priority_settle_ms"] = 5000
    c.write()
    c.init()
    c.start_all()
    wait_until(lambda: c.wait_leader() == "n1", 30, "n1 (priority 1) to get leadership")
    assert c.status("n1", digest=False)["priority"] == 1
    c.tx("n1", "open_account", "ann", 100)
    # n1 fails: another node leads. n1 then restarts three times in a row, each time killed
    # as soon as it answers, before it could be caught up for the settle time.
    c.kill("n1")
    other = c.wait_leader(among=["n2", "n3"])
    made = c.status(other, digest=False)["priority_transfers"]  # 1 if it handed over at start
    for _ in range(3):
        c.start("n1")
        c.kill("n1")
    assert c.status(other, digest=False)["priority_transfers"] == made
    # n1 stays up: once caught up for the settle time, the leader hands over, once.
    c.start("n1")
    wait_until(lambda: c.wait_leader() == "n1", 30, "leadership back on n1")
    st = c.status(other, digest=False)
    assert st["priority_transfers"] == made + 1
    assert "priority 1" in st["last_priority_transfer"]["cause"]
    assert c.tx("n1", "deposit", "ann", 5)["result"] == 105
    c.wait_converged()
