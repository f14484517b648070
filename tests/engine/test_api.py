"""API contract of bknr_cluster.engine on a single in-process node: errors, never crashes."""

from __future__ import annotations

import pytest

from bknr_cluster import engine
from bknr_cluster.engine import RaftNode
from bknr_cluster.errors import (
    AlreadyBootstrapped,
    MembershipError,
    NotLeader,
    Shutdown,
    TooBig,
    UsageError,
)
from tests.engine.conftest import two_voters
from tests.support import free_ports, wait_until


@pytest.fixture
def single(tmp_path):
    (port,) = free_ports(1)
    addr = f"127.0.0.1:{port}"
    node = RaftNode(1, addr, str(tmp_path / "n1"), election_timeout_ms=300, heartbeat_ms=30,
                    max_entry_bytes=1024)
    node.bootstrap([(1, addr, "voter")])
    node.start()
    wait_until(lambda: node.status()["state"] == "leader", 10, "self election")
    yield node
    node.stop()


def drain(node: RaftNode, want: int) -> list[tuple]:
    got: list[tuple] = []
    wait_until(lambda: got.extend(node.next_committed(100, 0.05)) or len(got) >= want, 10, f"{want} items")
    return got


def test_version_is_reported():
    assert engine.LIBRAFT_VERSION.count(".") == 2
    assert tuple(int(x) for x in engine.LIBRAFT_VERSION.split(".")) >= (0, 18, 1)


def test_submit_orders_and_queues(single):
    idx = [single.submit(b"v%d" % i).result(5) for i in range(5)]
    assert idx == list(range(idx[0], idx[0] + 5))
    items = [x for x in drain(single, 5) if x[0] == "entry"]
    assert [(i, d) for _, i, _, d in items] == [(i, b"v%d" % n) for n, i in enumerate(idx)]
    assert all(t >= 1 for _, _, t, _ in items)
    # Any bytes-like payload, including empty and odd lengths (the engine pads internally).
    for data in (b"", bytearray(b"abc"), memoryview(b"1234567"), b"x" * 1024):
        i = single.submit(data).result(5)
        (kind, index, _, got), = [x for x in drain(single, 1) if x[0] == "entry"]
        assert (kind, index, got) == ("entry", i, bytes(data))
    assert single.barrier().result(5) > idx[-1]


def test_bad_arguments_raise_clear_errors(single, tmp_path):
    with pytest.raises(TooBig):
        single.submit(b"x" * 1025).result(5)
    with pytest.raises(TypeError):
        single.submit("not bytes")  # type: ignore[arg-type]
    with pytest.raises(MembershipError):
        single.remove(1).result(5)            # the last voter
    with pytest.raises(MembershipError):
        single.assign(1, "spare").result(5)   # demoting the last voter
    with pytest.raises(MembershipError):
        single.assign(7, "voter").result(5)   # unknown id
    with pytest.raises(MembershipError):
        single.transfer(7).result(5)          # not a voter
    with pytest.raises(MembershipError):
        single.add(2, single.address).result(5)  # duplicate address
    with pytest.raises(UsageError):
        single.assign(1, "king")
    with pytest.raises(UsageError):
        single.add(0, "127.0.0.1:1")
    with pytest.raises(UsageError):
        single.add(2, "no-port")
    with pytest.raises(UsageError):
        RaftNode(2, "127.0.0.1:1", str(tmp_path / "x"), election_timeout_ms=100, heartbeat_ms=100)
    assert single.status()["state"] == "leader"  # still alive and well


def test_add_spare_then_remove(single):
    (port,) = free_ports(1)
    single.add(2, f"127.0.0.1:{port}").result(5)
    conf = {s["id"]: s["role"] for s in single.status()["configuration"]}
    assert conf == {1: "voter", 2: "spare"}
    single.remove(2).result(5)
    assert [s["id"] for s in single.status()["configuration"]] == [1]


def test_snapshot_now_and_store_snapshot_hand_back(single):
    last = [single.submit(b"e%d" % i).result(5) for i in range(3)][-1]
    fut = single.snapshot_now()
    # snapshot_now first asks the applier for the store at the commit index...
    items = drain(single, 4)
    assert [k for k, *_ in items] == ["entry"] * 3 + ["snapshot_request"]
    assert items[-1][1] == last
    assert not fut.done()
    single.store_snapshot_done(last, b"store at %d" % last)  # ...then libraft snapshots on it
    n = fut.result(10)
    st = single.status()
    assert st["snapshot_index"] == n >= st["commit_index"] - 1
    assert st["snapshot_store_index"] == last
    # nothing new (a barrier at most): answered without asking the applier again
    assert single.snapshot_now(store_wait=0).result(10) >= n


def test_lifecycle_errors(tmp_path):
    (port,) = free_ports(1)
    addr = f"127.0.0.1:{port}"
    node = RaftNode(1, addr, str(tmp_path / "n"), election_timeout_ms=300, heartbeat_ms=30)
    with pytest.raises(Shutdown):
        node.submit(b"x").result(1)  # before start
    assert node.status()["state"] == "unavailable"
    node.bootstrap([(1, addr, "voter")])
    with pytest.raises(AlreadyBootstrapped):
        node.bootstrap([(1, addr, "voter")])
    with pytest.raises(MembershipError):
        node.bootstrap([(1, addr, "voter"), (1, "127.0.0.1:2", "voter")])
    node.start()
    wait_until(lambda: node.status()["state"] == "leader", 10, "self election")
    fut = node.submit(b"last")
    fut.result(5)
    node.stop()
    node.stop()  # idempotent
    with pytest.raises(Shutdown):
        node.submit(b"x").result(1)
    with pytest.raises(Shutdown):
        node.barrier().result(1)
    # The queue still hands out what was committed, then reports the shutdown.
    items = node.next_committed(100, 0.1)
    assert items[-1][3] == b"last"
    with pytest.raises(Shutdown):
        node.next_committed(100, 0.1)


def test_follower_refuses_with_leader_hint(leader_and_follower):
    leader, follower = leader_and_follower
    with pytest.raises(NotLeader) as e:
        follower.submit(b"x").result(5)
    assert (e.value.leader_id, e.value.leader_address) == (leader.node_id, leader.address)


EXIT_WHILE_WAITING = """
import sys, threading
from bknr_cluster.engine import RaftNode
from tests.support import wait_until
n = RaftNode(1, sys.argv[1], sys.argv[2], election_timeout_ms=300, heartbeat_ms=30)
n.bootstrap([(1, sys.argv[1], "voter")]); n.start()
wait_until(lambda: n.status()["state"] == "leader", 10, "leader")
def drain():
    while True:
        n.next_committed(10, 0.001)
def submit():
    while True:
        try:
            n.submit(b"x").result(1)
        except Exception:
            pass
for _ in range(3):
    threading.Thread(target=drain, daemon=True).start()
    threading.Thread(target=submit, daemon=True).start()
threading.Event().wait(0.2)
print("exiting")
"""


def test_interpreter_exit_with_daemon_threads_inside_the_engine(procs, tmp_path):
    # Daemon threads waiting in next_committed()/result() while the interpreter finalizes used
    # to abort the process (GIL re-taken inside a destructor during pthread_exit).
    for i in range(3):
        (port,) = free_ports(1)
        p = procs.python("-c", EXIT_WHILE_WAITING, f"127.0.0.1:{port}", str(tmp_path / f"d{i}"),
                         log=tmp_path / f"out{i}.log")
        assert p.wait(30) == 0, (tmp_path / f"out{i}.log").read_text()
        assert "exiting" in (tmp_path / f"out{i}.log").read_text()


def test_restart_restores_empty_store_snapshot_plus_tail(tmp_path):
    # No store snapshot was ever handed back (M = 0, empty store): the Raft snapshot carries
    # every entry, and a restart replays them after an empty restore.
    (port,) = free_ports(1)
    addr = f"127.0.0.1:{port}"
    opts = {"election_timeout_ms": 300, "heartbeat_ms": 30, "snapshot_threshold": 8,
            "snapshot_trailing": 2, "store_snapshot_every": 10_000}
    node = RaftNode(1, addr, str(tmp_path / "n"), **opts)
    node.bootstrap([(1, addr, "voter")])
    node.start()
    wait_until(lambda: node.status()["state"] == "leader", 10, "self election")
    idx = [node.submit(b"p%d" % i).result(5) for i in range(20)]
    wait_until(lambda: node.status()["snapshot_index"] >= 8, 10, "an automatic snapshot")
    node.stop()

    node = RaftNode(1, addr, str(tmp_path / "n"), **opts)
    node.start()
    try:
        items = drain(node, 1)
        assert items[0][:2] == ("restore", 0) and items[0][3] == b""
        snap = node.status()["snapshot_index"]
        wait_until(lambda: items.extend(node.next_committed(100, 0.05)) or
                   len([x for x in items if x[0] == "entry"]) >= len([i for i in idx if i <= snap]),
                   10, "the tail")
        entries = [(i, d) for k, i, _, d in items if k == "entry"]
        expect = [(i, b"p%d" % n) for n, i in enumerate(idx) if i <= snap]
        assert entries[:len(expect)] == expect
    finally:
        node.stop()


class _Interrupted(Exception):
    pass


def test_pending_future_times_out_wakes_for_signals_then_loses_leadership(tmp_path):
    import signal

    from bknr_cluster.errors import LeadershipLost, Timeout

    with two_voters(tmp_path, election_timeout_ms=3000, heartbeat_ms=300) as (leader, follower):
        leader.submit(b"warm-up").result(10)
        follower.stop()   # no quorum any more
        fut = leader.submit(b"x")
        with pytest.raises(Timeout):
            fut.result(0.2)
        assert not fut.wait(0.05) and not fut.done()

        def interrupt(*_):
            raise _Interrupted
        old = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(_Interrupted):
                fut.result()  # no deadline, yet a signal handler still gets to run
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        with pytest.raises(LeadershipLost):
            fut.result(30)    # the leader steps down: the entry's outcome is unknown


STOP_FROM_SIGNAL = """
import atexit, signal, sys
from bknr_cluster.engine import RaftNode
from bknr_cluster.errors import Shutdown
from tests.support import wait_until
n = RaftNode(1, sys.argv[1], sys.argv[2], election_timeout_ms=300, heartbeat_ms=30)
n.bootstrap([(1, sys.argv[1], "voter")]); n.start()
atexit.register(n.stop)                                  # a second stop() must be harmless
signal.signal(signal.SIGTERM, lambda *_: n.stop())       # stop() from a signal handler
wait_until(lambda: n.status()["state"] == "leader", 10, "leader")
n.submit(b"x").result(5)
print("ready", flush=True)
while True:
    try:
        n.next_committed(10, 1.0)                        # interrupted by the handler, then drained
    except Shutdown:
        print("drained", flush=True)
        break
"""


def test_stop_from_signal_handler_and_atexit(procs, tmp_path):
    import signal

    (port,) = free_ports(1)
    log = tmp_path / "out.log"
    p = procs.python("-c", STOP_FROM_SIGNAL, f"127.0.0.1:{port}", str(tmp_path / "d"), log=log)
    wait_until(lambda: "ready" in log.read_text() or p.poll() is not None, 20, "the node to start")
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 0, log.read_text()
    assert "drained" in log.read_text()


def test_role_is_read_without_the_loop_and_its_signal_posted_on_each_change(tmp_path):
    """``role()``: (state, leader_id, transferee, changes) as of the loop's last iteration,
    "unavailable" while stopped; ``role_signal()`` is posted when it changes (GET /leader)."""
    with two_voters(tmp_path) as (leader, follower):
        state, leader_id, transferee, changes = leader.role()
        assert (state, leader_id, transferee) == ("leader", leader.node_id, 0) and changes >= 1
        wait_until(lambda: follower.role()[:3] == ("follower", leader.node_id, 0), 5, "follower role")
        sig = follower.role_signal()
        while sig.wait(0):  # the changes so far
            pass
        before = follower.role()[3]
        leader.transfer(follower.node_id).result(5)
        assert sig.wait(5), "no role change signalled"
        wait_until(lambda: follower.role()[:3] == ("leader", follower.node_id, 0), 5, "new leader's role")
        assert follower.role()[3] > before
        wait_until(lambda: leader.role()[:2] == ("follower", follower.node_id), 5, "old leader's role")
    assert follower.role()[:3] == ("unavailable", 0, 0) and leader.role()[0] == "unavailable"
