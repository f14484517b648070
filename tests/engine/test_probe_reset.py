"""The fast-election probe (native/fast_election.cpp, native/DESIGN.md §1a step "Confirm"):
a probe connection that the leader's listener had queued and then *reset* proves the leader's
process gone, while one that stays open proves it alive.

When a process dies, the kernel closes its sockets one by one: the follower can read EOF on the
leader's stream, connect() to the leader's raft port and complete the handshake into the listen
queue, and only then see the listener close, which resets every connection still queued. The
refused case (the listener was already gone) is covered by test_fast_election.py; here the
leader is Python (tests/engine/fake_leader.py) with a listening socket of its own on its raft
address, so the test decides when the listener closes: only after the probe sits in its queue.

The election timeout is long (5 s; a follower's timer fires at about 6 s of silence), so a
campaign within a fraction of it can only come from the fast path. Counters (status):
``leader_closes`` the leader's stream closed, ``leaders_gone`` the probe confirmed the process
gone, ``fast_elections`` the head start started an election.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bknr_cluster.engine import RaftNode
from tests.engine.fake_leader import TERM, FakeLeader
from tests.support import free_ports, sample_for, wait_until

ELECTION_MS = 5000
HEARTBEAT_MS = 50
KEYS = ("leader_closes", "leaders_gone", "fast_elections", "early_campaigns")


class Heartbeats:
    """Empty AppendEntries every HEARTBEAT_MS on the fake leader's current stream (a live leader
    reconnects a stream it closed and goes on)."""

    def __init__(self, stream: FakeLeader) -> None:
        self.lock = threading.Lock()
        self.stream: FakeLeader | None = stream
        self.done = threading.Event()
        self.errors: list[OSError] = []
        self.beat()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def beat(self) -> None:
        with self.lock:
            if self.stream is not None:
                self.stream.append(prev=1, prev_term=1, commit=1)  # index 1: the bootstrap entry

    def run(self) -> None:
        while not self.done.wait(HEARTBEAT_MS / 1000):  # pacing, not synchronisation
            try:
                self.beat()
            except OSError as exc:
                self.errors.append(exc)
                return

    def swap(self, stream: FakeLeader | None) -> FakeLeader | None:
        """Install ``stream`` (None: stop sending) and return the previous one."""
        with self.lock:
            old, self.stream = self.stream, stream
        return old

    def stop(self) -> None:
        self.done.set()
        self.thread.join(5)
        old = self.swap(None)
        if old is not None:
            old.close()


def pending(listener: socket.socket, timeout: float) -> bool:
    """Whether a connection is in the listener's accept queue (readable), waiting up to
    ``timeout`` s for one; nothing is accepted."""
    return bool(select.select([listener], [], [], timeout)[0])


@dataclass
class Setup:
    node: RaftNode
    listener: socket.socket  # the fake leader's raft address (node 2)
    address: str
    heartbeats: Heartbeats
    client: socket.socket  # libraft's connection from node 1 to node 2 (its results), accepted

    def counters(self) -> dict[str, int]:
        st = self.node.status()
        return {k: int(st[k]) for k in KEYS}


@contextmanager
def follower_of_fake_leader(tmp_path: Path) -> Iterator[Setup]:
    """Node 1 (a real engine) following node 2 (Python) in term TERM of a two-voter cluster,
    with node 2's listener open and libraft's connection to it accepted, so that the next
    connection queued there can only be node 1's probe."""
    p1, p2 = free_ports(2)
    a1, a2 = f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", p2))
    listener.listen(8)
    node = RaftNode(1, a1, str(tmp_path / "n1"), election_timeout_ms=ELECTION_MS, heartbeat_ms=HEARTBEAT_MS)
    node.bootstrap([(1, a1, "voter"), (2, a2, "voter")])
    node.start()
    heartbeats = None
    client = None
    try:
        heartbeats = Heartbeats(FakeLeader(a1, 2, a2))
        wait_until(lambda: (lambda s: s["leader_id"] == 2 and s["term"] == TERM)(node.status()), 10,
                   "node 1 to follow the fake leader")
        # libraft answers the heartbeats on a connection of its own to node 2's address: accept
        # it (as a live leader would) and check it is libraft's (handshake: protocol 1, id 1).
        assert pending(listener, 10), "libraft's connection to the fake leader"
        client, _ = listener.accept()
        client.settimeout(5)
        hello = b""
        while len(hello) < 24:
            chunk = client.recv(24 - len(hello))
            assert chunk, "libraft closed its connection during the handshake"
            hello += chunk
        assert struct.unpack("<3Q", hello)[:2] == (1, 1), hello
        # libraft keeps that one connection while its writes succeed: nothing else is queued.
        assert not pending(listener, 0)
        yield Setup(node, listener, a2, heartbeats, client)
        assert not heartbeats.errors, heartbeats.errors
    finally:
        node.stop()  # first: closing the fake leader's sockets must not start another probe
        if heartbeats is not None:
            heartbeats.stop()
        if client is not None:
            client.close()
        listener.close()


def test_a_probe_reset_from_the_dying_leaders_listen_queue_confirms_it_gone(tmp_path):
    with follower_of_fake_leader(tmp_path) as s:
        before = s.counters()
        t0 = time.monotonic()
        # The leader process dies: first its stream to the follower closes ...
        s.heartbeats.swap(None).close()
        # ... the follower's probe completes its handshake into the still open listen queue ...
        assert pending(s.listener, ELECTION_MS / 1000 / 2), "node 1's probe of the leader's port"
        # Two status requests (handled on node 1's loop thread) make sure its loop has run the
        # probe's connect callback, so the reset below hits the connected probe's read (the
        # deterministic case; a reset before the callback fails the connect() with ECONNRESET
        # instead). The probe was connected when it entered the queue: the loop iteration that
        # answers the first request, sent after we saw the queue, also polls the probe's socket;
        # the second request needs one more iteration.
        assert s.counters()["leader_closes"] == before["leader_closes"] + 1
        s.node.status()
        # ... and then the listener closes: the kernel resets the queued probe connection.
        s.listener.close()
        s.client.close()

        def campaigned() -> dict[str, int] | None:
            c = s.counters()
            return c if c["fast_elections"] > before["fast_elections"] else None
        after = wait_until(campaigned, ELECTION_MS / 1000 / 2, "node 1 to campaign on its head start",
                           interval=0.005)
        took = time.monotonic() - t0
        assert after["leaders_gone"] == before["leaders_gone"] + 1, (before, after)
        assert after["fast_elections"] == before["fast_elections"] + 1, (before, after)
        # Its timer would fire only after ~1.2 x ELECTION_MS of silence: this is the fast path.
        assert took < ELECTION_MS / 1000 / 4, f"{took:.3f} s to the campaign"
        assert s.node.status()["state"] == "candidate"


def test_a_probe_the_leader_keeps_open_does_not_start_an_election(tmp_path):
    """Control: the leader process is alive and closed only its stream to the follower (and
    reconnects it); its listener accepts the probe and keeps it. The follower waits one election
    timeout for a reset, then closes the probe, and never campaigns."""
    with follower_of_fake_leader(tmp_path) as s:
        before = s.counters()
        s.heartbeats.swap(None).close()
        assert pending(s.listener, ELECTION_MS / 1000 / 2), "node 1's probe of the leader's port"
        probe, _ = s.listener.accept()
        with probe:
            wait_until(lambda: s.counters()["leader_closes"] == before["leader_closes"] + 1, 10,
                       "node 1 to see its leader's stream close")
            s.heartbeats.swap(FakeLeader(s.node.address, 2, s.address))
            # The probe's verdict comes when node 1 gives up waiting for a reset (one election
            # timeout after it connected) and closes it: EOF here.
            probe.settimeout(ELECTION_MS / 1000 + 10)
            t0 = time.monotonic()
            assert probe.recv(64) == b"", "the probe sent data: it was not node 1's probe"
            waited = time.monotonic() - t0
        assert waited > ELECTION_MS / 1000 / 2, f"the probe closed after {waited:.3f} s, not by its timer"
        # A wrong verdict would start the head start (1 ms) right there; watch well past it.
        for st in sample_for(s.node.status, 0.5):
            assert (st["state"], st["term"], st["leader_id"]) == ("follower", TERM, 2), st
        after = s.counters()
        assert after["leaders_gone"] == before["leaders_gone"], (before, after)
        assert after["fast_elections"] == before["fast_elections"], (before, after)
        assert after["early_campaigns"] == before["early_campaigns"], (before, after)
