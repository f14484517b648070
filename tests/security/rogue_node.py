"""A rogue Raft process built from the project's own engine, used by test_rogue_node.py.

    python -m tests.security.rogue_node --dir D --members 1=127.0.0.1:7101,2=... \
        --appender-port P --voter-port Q [--secret-file F]

It runs two engines that attack the members listed:

* the **appender** (id 99): bootstrapped as the only voter of a configuration that lists the
  members as standbys, with its on-disk term raised to 50. It elects itself at once and sends
  AppendEntries at term 50 to every member (an unauthenticated cluster adopts term 50, loses its
  leader and is told to follow the rogue's log);
* the **voter** (id 98): a voter in a configuration listing the members as voters, pre-vote off,
  so it campaigns again and again and sends RequestVote with ever higher terms.

Without ``--secret-file`` the engines use libraft's stock TCP transport (no secret); with it, the
secret (wrong for the cluster) is passed to the engine, which needs the integrated authenticated
transport. Prints one JSON status line per engine every 0.2 s; exits after ``--lifetime`` seconds
or on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import sys
import threading
import time

from bknr_cluster.engine import RaftNode

FORCED_TERM = 50


def force_term(raft_dir: str, term: int) -> None:
    """raft_uv's metadata files: u64le format (1), version, term, voted_for; the higher version
    wins. Written while the engine is stopped (it reads them when it starts)."""
    for i in (1, 2):
        with open(os.path.join(raft_dir, f"metadata{i}"), "wb") as f:
            f.write(struct.pack("<QQQQ", 1, 100 + i, term, 0))


def engine(node_id: int, address: str, data_dir: str, secret: bytes | None, **kw) -> RaftNode:
    if secret is not None:
        kw["secret"] = secret  # TypeError here means: the engine has no authenticated transport yet
    return RaftNode(node_id, address, data_dir, election_timeout_ms=300, heartbeat_ms=50, **kw)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--members", required=True, help="id=host:port,...")
    ap.add_argument("--appender-port", type=int, required=True)
    ap.add_argument("--voter-port", type=int, required=True)
    ap.add_argument("--secret-file")
    ap.add_argument("--lifetime", type=float, default=90)
    a = ap.parse_args()
    members = [(int(i), addr) for i, addr in (m.split("=", 1) for m in a.members.split(","))]
    secret = open(a.secret_file, "rb").read().strip() if a.secret_file else None

    app_addr, vote_addr = f"127.0.0.1:{a.appender_port}", f"127.0.0.1:{a.voter_port}"
    app_dir, vote_dir = os.path.join(a.dir, "appender"), os.path.join(a.dir, "voter")
    boot = engine(99, app_addr, app_dir, secret)
    boot.bootstrap([(99, app_addr, "voter")] + [(i, addr, "standby") for i, addr in members])
    force_term(app_dir, FORCED_TERM)
    appender = engine(99, app_addr, app_dir, secret)
    voter = engine(98, vote_addr, vote_dir, secret, pre_vote=False)
    voter.bootstrap([(98, vote_addr, "voter")] + [(i, addr, "voter") for i, addr in members])

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    appender.start()
    voter.start()
    deadline = time.monotonic() + a.lifetime
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            for name, e in (("appender", appender), ("voter", voter)):
                s = e.status()
                print(json.dumps({"rogue": name, "state": s["state"], "term": s["term"],
                                  "leader_id": s["leader_id"]}), flush=True)
                e.next_committed(1024, 0)  # keep the apply queues short
            stop.wait(0.2)
    finally:
        appender.stop()
        voter.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
