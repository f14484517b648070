"""Crash-restart rounds under load: no acknowledged entry is lost, replicas stay identical.

Small snapshot thresholds make every round go through store snapshots, Raft snapshots,
snapshot installs and restores from snapshot + log after SIGKILL.
"""

from __future__ import annotations

import random
import signal

from tests.engine.harness import Cluster
from tests.support import wait_until

ROUNDS = 4


def test_kill_restart_rounds_lose_no_acknowledged_entry(procs, tmp_path):
    rng = random.Random(7)
    c = Cluster(procs, tmp_path, 3, snapshot_threshold=48, snapshot_trailing=8, store_snapshot_every=20)
    c.start_all()
    acked: set[str] = set()
    for r in range(ROUNDS):
        lid = c.leader()
        c.call(lid, "background_submit", prefix=f"r{r}", n=100_000, window=16)
        wait_until(lambda lid=lid: c.call(lid, "background_outcomes")["outcomes"].get("ok", 0) >= 150,
                   30, "writes to flow")
        victim = lid if r % 2 == 0 else rng.choice([i for i in (1, 2, 3) if i != lid])
        if victim != lid:
            c.kill(victim)                                   # a follower dies mid-stream
            wait_until(lambda lid=lid: c.call(lid, "background_outcomes")["outcomes"].get("ok", 0) >= 300,
                       30, "writes to continue on the majority")
            res = c.call(lid, "background_outcomes", acked=True)
            c.kill(lid, signal.SIGKILL)                      # ...and then the leader: stop the stream
            acked |= set(res["acked"])
            c.start(victim)
            c.start(lid)
        else:
            res = c.call(lid, "background_outcomes", acked=True)
            c.kill(lid)                                      # the leader dies mid-stream
            acked |= set(res["acked"])
            c.start(lid)
    lid = c.leader()
    assert c.call(lid, "request", what="barrier")["outcome"] == "ok"

    def converged():
        st = {i: c.call(i, "state") for i in (1, 2, 3)}
        return st if len({(s["digest"], s["count"]) for s in st.values()}) == 1 else None
    st = wait_until(converged, 60, "identical replicas")
    entries = c.call(1, "entries")
    assert len(entries) == len(set(entries)), "an entry was applied twice"
    missing = acked - set(entries)
    assert not missing, f"{len(missing)} acknowledged entries lost, e.g. {sorted(missing)[:5]}"
    assert len(acked) >= ROUNDS * 150
    assert any(s["restores"] for s in st.values()), "no node ever restored from a snapshot"
    for i in (1, 2, 3):
        assert c.call(i, "status")["off_loop_callbacks"] == 0
