"""The loop thread keeps the leader alive whatever Python does: GIL stalls, huge snapshots."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.engine.harness import Client, Cluster
from tests.support import wait_until

ELECTION_MS = 600  # harness.FAST


def watch_followers(c: Cluster, leader: int, done: threading.Event, limit: float) -> list[dict]:
    """Polls followers until `done` (bounded by `limit` s); returns every status seen."""
    seen = []
    followers = [i for i in c.live() if i != leader]
    deadline = time.monotonic() + limit
    while not done.is_set() and time.monotonic() < deadline:
        for f in followers:
            seen.append(c.call(f, "status"))
        done.wait(0.02)
    return seen


def assert_no_election(seen: list[dict], leader: int, term: int) -> None:
    assert seen, "no follower status was observed"
    assert {s["term"] for s in seen} == {term}
    assert {s["state"] for s in seen} == {"follower"}
    assert {s["leader_id"] for s in seen} == {leader}
    worst = max(s["leader_contact_ms"] for s in seen)
    print(f"followers polled {len(seen)} times; worst heartbeat gap {worst} ms")
    assert worst < ELECTION_MS, f"heartbeat gap of {worst} ms seen by a follower"


def run_on_leader_while_watching(c: Cluster, lid: int, work, limit: float) -> tuple[list, dict]:
    """Runs work(client) against the leader in a thread while the followers are watched."""
    side = Client(c.control_ports[lid])  # a second control connection to the leader's driver
    side.connect(10)
    done = threading.Event()
    result: dict = {}

    def call() -> None:
        try:
            result["r"] = work(side)
        finally:
            done.set()

    t = threading.Thread(target=call)
    t.start()
    seen = watch_followers(c, lid, done, limit)
    t.join(limit)
    side.close()
    return seen, result


def test_gil_held_5s_on_leader_causes_no_election(procs, tmp_path):
    c = Cluster(procs, tmp_path, 3)
    c.start_all()
    lid = c.leader()
    term = c.call(lid, "status")["term"]
    t0 = time.monotonic()
    seen, result = run_on_leader_while_watching(
        c, lid, lambda side: side.call("hold_gil", timeout=30, seconds=5.0), 30)
    assert time.monotonic() - t0 >= 5.0 and "r" in result
    assert len(seen) > 20
    assert_no_election(seen, lid, term)
    st = c.call(lid, "status")
    assert st["state"] == "leader" and st["term"] == term
    assert c.call(lid, "submit", n=10, prefix="after")["error"] is None


def test_heartbeats_continue_while_200mb_store_snapshot_is_made(procs, tmp_path):
    c = Cluster(procs, tmp_path, 3, snapshot_threshold=100, snapshot_trailing=20,
                store_snapshot_every=50)
    c.start_all()
    lid = c.leader()
    term = c.call(lid, "status")["term"]
    c.call(lid, "pad", mb=210)

    def work(side: Client) -> list:
        # 60 entries: a store snapshot request at ~50, answered by serialising 210 MB in
        # Python; then 60 more: a Raft snapshot at ~100 carrying those bytes, written to disk.
        first = side.call("submit", n=60, prefix="s", window=4)
        wait_until(lambda: side.call("status")["store_snapshot_index"] > 0, 60, "the big store snapshot")
        second = side.call("submit", n=60, prefix="t", window=4)
        # The Raft snapshot counts once its 210 MB are on disk (written on libuv's pool).
        wait_until(lambda: side.call("status")["snapshot_index"] >= 100, 60, "the big Raft snapshot")
        return [first, second]

    seen, result = run_on_leader_while_watching(c, lid, work, 120)
    assert [r["error"] for r in result["r"]] == [None, None]
    state = c.call(lid, "state")
    assert state["snapshot_requests"] >= 1 and state["pad_bytes"] >= 200 << 20
    st = c.call(lid, "status")
    assert st["snapshot_index"] >= 100 and st["store_snapshot_index"] > 0
    snaps = [p for p in Path(tmp_path / f"n{lid}").glob("snapshot-*") if not p.name.endswith(".meta")]
    assert max(p.stat().st_size for p in snaps) >= 200 << 20
    assert_no_election(seen, lid, term)
    assert st["term"] == term and st["state"] == "leader"
