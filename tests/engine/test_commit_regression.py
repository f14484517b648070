"""A follower's commit index never goes back, and no snapshot holds state past its Raft index.

libraft 0.22.1 sets a follower's commit index to min(leader_commit, prev_log_index + n_entries)
even when that is *below* the current one, and then files its next snapshot under the lowered
index while the state machine is further on. Restarting from that snapshot applies the entries
in between twice: the silent double apply of the 22-minute chaos run (native/DESIGN.md §1).

Here the leader is a few lines of Python speaking libraft's TCP wire format (uv_tcp_connect.c
handshake, uv_encoding.c AppendEntries), so the regressing heartbeat is sent on purpose instead
of waiting for a restarted follower to receive one by chance.
"""

from __future__ import annotations

from bknr_cluster.engine import RaftNode
from tests.chaos.checkers import mislabeled_snapshots
from tests.engine.fake_leader import TERM, FakeLeader
from tests.support import free_ports, wait_until

N = 40  # entries 2..N (index 1 is the bootstrap configuration)


def entries_after_start(node: RaftNode, upto: int) -> list[int]:
    """Indices of the entries the node hands to its applier until it has reached ``upto``
    (answering snapshot requests as a store would)."""
    got: list[int] = []
    state = {"at": 0}

    def pump() -> bool:
        for kind, index, _term, _data in node.next_committed(100, 0.05):
            if kind == "entry":
                got.append(index)
                state["at"] = index
            elif kind == "restore":
                state["at"] = index
            elif kind == "snapshot_request":
                node.store_snapshot_done(index, b"store")
        return state["at"] >= upto
    wait_until(pump, 20, f"entries up to {upto}")
    return got


def test_a_stale_heartbeat_does_not_lower_the_commit_index(tmp_path):
    p1, p2 = free_ports(2)
    a1, a2 = f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"
    conf = [(1, a1, "voter"), (2, a2, "voter")]
    opts = {"election_timeout_ms": 10_000, "heartbeat_ms": 50, "snapshot_threshold": 8,
            "snapshot_trailing": 1000, "store_snapshot_every": 4}
    node = RaftNode(1, a1, str(tmp_path), **opts)
    node.bootstrap(conf)
    node.start()
    leader = FakeLeader(a1, 2, a2)
    try:
        leader.append(prev=1, prev_term=1, commit=N, first=2, n=N - 1)
        assert entries_after_start(node, N) == list(range(2, N + 1))
        wait_until(lambda: (lambda s: s["snapshot_index"] >= N and not s["snapshot_taking"])(node.status()),
                   20, f"a snapshot at {N}")
        # The leader's view of this follower is stale: a heartbeat anchored 5 entries back,
        # carrying a commit index beyond everything. libraft 0.22.1 would set commit = N - 5.
        leader.append(prev=N - 5, prev_term=TERM, commit=N + 10)
        wait_until(lambda: (lambda s: s["commit_index"] < N or s.get("commit_clamps", 0) >= 1)(node.status()),
                   10, "the heartbeat to be handled")
        st = node.status()
        assert st["commit_index"] == N, f"the commit index went back to {st['commit_index']}"
        wait_until(lambda: not node.status()["snapshot_taking"], 20, "snapshot writes to finish")
        assert mislabeled_snapshots(tmp_path) == []
    finally:
        leader.close()
        node.stop()

    # Restart from whatever is on disk: the leader confirms N again, and no entry may come twice.
    node = RaftNode(1, a1, str(tmp_path), **opts)
    node.start()
    leader = FakeLeader(a1, 2, a2)
    try:
        leader.append(prev=N, prev_term=TERM, commit=N)
        again = entries_after_start(node, N)
        wait_until(lambda: node.status()["commit_index"] >= N, 10, "the heartbeat to be handled")
        more = [i for kind, i, _t, _d in node.next_committed(100, 0.2) if kind == "entry"]
        assert not more and (not again or again == list(range(again[0], N + 1))), (again, more)
        assert node.status()["last_applied"] == N
    finally:
        leader.close()
        node.stop()
