"""Elections at once when the leader's process dies (native/fast_election.cpp), and what must
NOT trigger them.

The election timeout here is long (2 s: a follower's timer is uniform in [2, 3] s), so a new
leader within a few heartbeats can only come from the fast path; the status counters say which
step ran (``leader_closes``: the leader's stream closed; ``leaders_gone``: the probe of its
raft port was refused or reset; ``fast_elections``: the head start started an election).
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.netns import TABLE, Network, NetworkUnavailable, run
from tests.engine.harness import Cluster, digest_of, payloads
from tests.support import wait_until

ELECTION_MS = 2000
HEARTBEAT_MS = 50


def cluster(procs, tmp_path) -> Cluster:
    return Cluster(procs, tmp_path, 3, election_timeout_ms=ELECTION_MS, heartbeat_ms=HEARTBEAT_MS)


def counters(c: Cluster, ids: list[int]) -> dict[str, int]:
    st = c.statuses(ids)
    keys = ("leader_closes", "leaders_gone", "fast_elections")
    return {k: sum(int(s[k]) for s in st.values()) for k in keys}


def new_leader(c: Cluster, ids: list[int], timeout: float = 30.0) -> int:
    def one() -> int | None:
        leaders = [i for i, s in c.statuses(ids).items() if s["state"] == "leader"]
        return leaders[0] if leaders else None
    return wait_until(one, timeout, f"a leader among {ids}", interval=0.005)


def transfer(c: Cluster, leader: int, to: int) -> None:
    r = c.call(leader, "request", what="transfer", node_id=to)
    assert r["outcome"] == "ok", r
    assert c.leader() == to


def test_follower_campaigns_within_ticks_of_the_leaders_process_dying(procs, tmp_path):
    c = cluster(procs, tmp_path)
    c.start_all()
    lid = c.leader()
    assert c.call(lid, "submit", n=20, prefix="a")["error"] is None
    written = payloads("a", 20)
    rest = [i for i in (1, 2, 3) if i != lid]
    c.wait_state(rest, digest_of(written), len(written))
    before = counters(c, rest)
    term = c.call(rest[0], "status")["term"]
    t0 = time.monotonic()
    c.kill(lid)
    new = new_leader(c, rest)
    took = time.monotonic() - t0
    after = counters(c, rest)
    assert after["leaders_gone"] > before["leaders_gone"], (before, after)
    assert after["fast_elections"] == before["fast_elections"] + 1, (before, after)
    # No follower timer fires before ELECTION_MS of silence: this is the fast path.
    assert took < ELECTION_MS / 1000 / 2, f"{took:.3f} s to a new leader"
    assert c.call(new, "status")["term"] > term
    # Safety: the new leader holds everything acknowledged and takes new writes.
    assert c.call(new, "submit", n=10, prefix="b")["error"] is None
    written += payloads("b", 10)
    c.wait_state(rest, digest_of(written), len(written))


def test_a_leader_that_closes_one_connection_is_not_deposed(procs, tmp_path):
    c = cluster(procs, tmp_path)
    c.start_all()
    lid = c.leader()
    follower = next(i for i in (1, 2, 3) if i != lid)
    before = c.call(follower, "status")
    # The leader drops its stream to one follower (it reconnects on its next heartbeat).
    assert c.call(lid, "close_streams_to", port=c.raft_ports[follower]) >= 1
    wait_until(lambda: c.call(follower, "status")["leader_closes"] > before["leader_closes"], 10,
               "the follower to see its leader's stream close")
    # Watch two election timeouts (the probe waits one): the follower finds the leader alive
    # and nobody campaigns.
    watch_until = time.monotonic() + 2 * ELECTION_MS / 1000

    def quiet_for_two_timeouts() -> bool:
        st = c.statuses([1, 2, 3])
        assert all(s["term"] == before["term"] and s["leader_id"] == lid for s in st.values()), st
        return time.monotonic() >= watch_until
    wait_until(quiet_for_two_timeouts, 30, "two election timeouts", interval=0.05)
    after = c.call(follower, "status")
    assert after["leaders_gone"] == before["leaders_gone"]
    assert after["fast_elections"] == before["fast_elections"]
    assert c.call(lid, "submit", n=5, prefix="x")["error"] is None


def test_a_lagging_follower_does_not_win_by_its_head_start(procs, tmp_path):
    """Node 1 comes first in the head-start order (lowest id) but really misses the last
    committed writes: each node runs in its own network namespace and node 1's namespace drops
    every packet from the leader except SYN and RST (no data, no FIN reaches it; a stopped
    process would instead catch up from its socket buffer). When the leader dies, node 1 still
    learns of it: the test resets the dead leader's connections (``ss -K`` in its namespace),
    the RST passes, and node 1's probe of the leader's port is refused. Node 1 then campaigns
    first, and the up-to-date node 2 must win: it refuses node 1's pre-vote on log length and
    campaigns itself at once. The step between head starts is large here (heartbeat / 2 =
    100 ms), so node 2's own head start cannot decide the race."""
    net = Network(["n1", "n2", "n3"])
    try:
        net.setup()
    except NetworkUnavailable as exc:
        pytest.skip(f"needs network namespaces: {exc}")
    try:
        c = Cluster(procs, tmp_path, 3, net=net, election_timeout_ms=ELECTION_MS, heartbeat_ms=200)
        c.start_all()
        lid = c.leader()
        if lid != 3:
            transfer(c, lid, 3)
        assert c.call(3, "submit", n=10, prefix="a")["error"] is None
        written = payloads("a", 10)
        c.wait_state([1, 2, 3], digest_of(written), len(written))
        # node 1 stops hearing node 3: only connection setup and resets get through
        net._nft("n1", f"add rule inet {TABLE} input ip saddr {net.addr('n3')} "
                       "tcp flags & (syn | rst) == 0 drop\n")
        assert c.call(3, "submit", n=10, prefix="b")["error"] is None  # committed by 3 and 2
        written += payloads("b", 10)
        c.wait_state([2], digest_of(written), len(written))
        st1, st2 = c.call(1, "status"), c.call(2, "status")
        assert st1["last_log_index"] < st2["last_log_index"], (st1, st2)
        before = c.statuses([1, 2])
        t0 = time.monotonic()
        # one shell: the reset follows the kill within milliseconds, long before node 2's
        # head start (101 ms) is over
        run(net.exec_prefix("n3") + ["sh", "-c", f"kill -9 {c.proc[3].pid}; "
                                     f"exec ss -K -t dst {net.addr('n1')}"])
        c.proc[3].wait(10)
        new = new_leader(c, [1, 2])
        took = time.monotonic() - t0
        after = c.statuses([1, 2])
        # node 1 learnt of the death and campaigned (the path under test ran); node 2 won
        assert after[1]["leaders_gone"] > before[1]["leaders_gone"], (before[1], after[1])
        assert after[1]["fast_elections"] > before[1]["fast_elections"], (before[1], after[1])
        assert new == 2, f"node {new} won; node 1 lacked committed entries"
        assert took < ELECTION_MS / 1000 / 2, f"{took:.3f} s to a new leader"
        c.wait_state([2], digest_of(written), len(written))
        net.heal()
        net._nft("n1", f"flush chain inet {TABLE} input\n"
                       f"add rule inet {TABLE} input ip saddr @blocked drop\n")
        assert c.call(2, "submit", n=5, prefix="c")["error"] is None
        written += payloads("c", 5)
        c.wait_state([1, 2], digest_of(written), len(written))
    finally:
        procs.stop_all()
        net.teardown()


def test_a_priority_minus_one_node_does_not_lead_while_another_can(procs, tmp_path):
    """Node 1 (priority -1) would come first by id; it never takes the head start and its
    timer range lies above the others', so the other survivor leads, round after round."""
    prio = {1: -1, 2: 0, 3: 0}
    c = cluster(procs, tmp_path)
    for i in (1, 2, 3):
        c.start(i, bootstrap=True, priority=prio[i],
                peer_priorities={str(j): p for j, p in prio.items() if j != i})
    lid = c.leader()
    assert c.call(1, "status")["priority"] == -1
    if lid == 1:  # started first, alone: nobody better could lead then (the cluster layer's
        transfer(c, 1, 2)  # PriorityKeeper hands leadership away; here the test does)
        lid = 2
    for r in range(3):
        rest = [i for i in (1, 2, 3) if i != lid]
        c.kill(lid)
        new = new_leader(c, rest)
        assert new != 1, f"round {r}: the priority -1 node leads"
        c.start(lid, priority=prio[lid], peer_priorities={str(j): p for j, p in prio.items() if j != lid})
        c.leader()
        lid = new
