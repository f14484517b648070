"""A stale connection to a restarted peer must not delay the next election by a candidate
timeout. Two mechanisms: the engine flushes libraft's connection to a peer whose stream closed
(native/fast_election.cpp, "flush"), so the first election message no longer goes into the
dead one; and a pre-vote round that is still lost is re-sent on the next tick
(native/vote_rule.cpp, pre-vote retry).

libraft's client never reads from its outgoing connections, so a node keeps writing to the
connection of a peer's *previous* process until a write fails: the first message after the peer
restarted is lost silently. The test builds exactly that: node 2 leads for a while (so it has a
connection to node 1), hands the leadership to node 3, node 1 restarts, and then node 3 crashes.
Whichever survivor campaigns first, one message of its first pre-vote round (the request from 2
or the answer from 2) would go into 2's dead connection to 1's old process.
"""

from __future__ import annotations

import time

from tests.engine.harness import Cluster, digest_of, payloads
from tests.support import wait_until

ELECTION_MS = 1000


def transfer(c: Cluster, leader: int, to: int) -> None:
    r = c.call(leader, "request", what="transfer", node_id=to)
    assert r["outcome"] == "ok", r
    assert c.leader() == to


def test_stale_connection_to_a_restarted_peer_does_not_delay_the_election(procs, tmp_path):
    c = Cluster(procs, tmp_path, 3, election_timeout_ms=ELECTION_MS, heartbeat_ms=20)
    c.start_all()
    lid = c.leader()
    if lid != 2:
        transfer(c, lid, 2)
    assert c.call(2, "submit", n=10, prefix="a")["error"] is None  # 2 writes to 1 and 3
    transfer(c, 2, 3)
    assert c.call(3, "submit", n=10, prefix="b")["error"] is None
    written = payloads("a", 10) + payloads("b", 10)
    c.kill(1)
    c.start(1)
    c.wait_state([1, 2, 3], digest_of(written), len(written))
    c.kill(3)

    seen: dict[str, float] = {}

    def elected() -> int | None:
        st = c.statuses([1, 2])
        now = time.monotonic()
        if "candidate" not in seen and any(s["state"] == "candidate" for s in st.values()):
            seen["candidate"] = now
        leaders = [i for i, s in st.items() if s["state"] == "leader"]
        return leaders[0] if leaders else None

    new = wait_until(elected, 30, "a new leader among the survivors", interval=0.005)
    took = time.monotonic() - seen.get("candidate", time.monotonic())
    # libraft alone re-sends a lost round only after the candidate timer (>= ELECTION_MS).
    assert took < ELECTION_MS / 1000, f"{took:.3f} s from the first candidacy to a leader"
    assert c.call(new, "submit", n=5, prefix="c")["error"] is None
    written += payloads("c", 5)
    c.wait_state([1, 2], digest_of(written), len(written))
