"""A node that rejoins while writing a snapshot of its own gets the leader's snapshot safely.

libraft 0.22.1 dereferences NULL when an InstallSnapshot arrives during a local snapshot
write (native/install_guard.cpp); the engine holds the install back until the write is done.
"""

from __future__ import annotations

import signal

from tests.engine.harness import Cluster
from tests.support import wait_until


def test_install_snapshot_arriving_during_a_local_snapshot(procs, tmp_path):
    c = Cluster(procs, tmp_path, 3, snapshot_threshold=64, snapshot_trailing=8, store_snapshot_every=32)
    c.start_all()
    lid = c.leader()
    f = next(i for i in (1, 2, 3) if i != lid)
    c.call(f, "pad", mb=300)  # F's snapshots carry 300 MB: each write takes a while
    c.call(lid, "background_submit", prefix="a", n=20_000, window=8)

    def writing():
        st = c.call(f, "status")
        return st if st["snapshot_taking"] else None
    st = wait_until(writing, 60, "the follower to be writing a snapshot")
    c.kill(f, signal.SIGSTOP)  # frozen mid-write; the others move on and compact their logs
    try:
        wait_until(lambda: c.call(lid, "status")["snapshot_index"] > st["last_log_index"] + 300, 60,
                   "the leader to compact past the frozen follower")
    finally:
        c.kill(f, signal.SIGCONT)  # resumes its write; the leader's InstallSnapshot arrives meanwhile
    wait_until(lambda: c.call(lid, "background_outcomes")["done"], 120, "the load to finish")
    assert c.call(lid, "request", what="barrier")["outcome"] == "ok"

    def converged():
        states = {i: c.call(i, "state") for i in (1, 2, 3)}
        return states if len({(s["digest"], s["count"]) for s in states.values()}) == 1 else None
    states = wait_until(converged, 60, "the follower to catch up")
    assert states[f]["restores"], "the follower should have installed the leader's snapshot"
    fs = c.call(f, "status")
    print(f"deferred installs on the follower: {fs['deferred_installs']}")
    assert c.proc[f].poll() is None
