"""snapshot_now() builds its Raft snapshot on a fresh store snapshot (native/DESIGN.md §2).

In-process nodes; the "applier" here is a thread that records every item and answers
snapshot requests with the indexes it has applied (or holds them back, to test the waits).
"""

from __future__ import annotations

import threading

import pytest

from bknr_cluster.engine import RaftNode
from bknr_cluster.errors import Shutdown, Timeout
from tests.support import free_ports, wait_until


class Applier:
    """Drains a node's apply queue; answers ("snapshot_request", M) with the entries <= M."""

    def __init__(self, node: RaftNode, answer: bool = True) -> None:
        self.node = node
        self.answer = threading.Event()
        if answer:
            self.answer.set()
        self.lock = threading.Lock()
        self.items: list[tuple[str, int]] = []
        self.applied: list[int] = []
        self.held: list[int] = []  # requests not answered yet (answer cleared)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                items = self.node.next_committed(64, 0.05)
            except Shutdown:
                return
            for kind, index, _term, data in items:
                with self.lock:
                    self.items.append((kind, index))
                    if kind == "entry":
                        self.applied.append(index)
                    elif kind == "restore":
                        self.applied = [int(x) for x in data.split(b",") if x]
                    elif kind == "snapshot_request":
                        self.held.append(index)
                self.flush()
            if self.answer.is_set():
                self.flush()

    def flush(self) -> None:
        """Answers the held requests once answering is on (on this thread: in log order)."""
        if not self.answer.is_set():
            return
        with self.lock:
            held, self.held = self.held, []
            state = b",".join(b"%d" % i for i in self.applied)
        for index in held:
            upto = b",".join(x for x in state.split(b",") if x and int(x) <= index)
            self.node.store_snapshot_done(index, upto)

    def kinds(self, kind: str) -> list[int]:
        with self.lock:
            return [i for k, i in self.items if k == kind]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def make_node(tmp_path, name: str = "n1", port: int | None = None, **kw) -> RaftNode:
    port = port or free_ports(1)[0]
    addr = f"127.0.0.1:{port}"
    node = RaftNode(1, addr, str(tmp_path / name), election_timeout_ms=300, heartbeat_ms=30, **kw)
    return node


def start_single(node: RaftNode, bootstrap: bool = True) -> None:
    if bootstrap:
        node.bootstrap([(1, node.address, "voter")])
    node.start()
    wait_until(lambda: node.status()["state"] == "leader", 10, "self election")


def submit(node: RaftNode, n: int, prefix: bytes = b"e") -> list[int]:
    return [node.submit(prefix + b"%d" % i).result(5) for i in range(n)]


def test_snapshot_now_is_built_on_a_store_snapshot_at_the_commit_index(tmp_path):
    # The default policy: no threshold snapshot and no periodic store snapshot within 40 entries.
    node = make_node(tmp_path)
    start_single(node)
    app = Applier(node)
    try:
        idx = submit(node, 40)
        wait_until(lambda: app.applied[-1:] == [idx[-1]], 10, "entries applied")
        st = node.status()
        assert st["snapshot_index"] == 0 and st["store_snapshot_index"] == 0
        commit = st["commit_index"]
        n = node.snapshot_now(store_wait=None).result(10)
        st = node.status()
        assert st["snapshot_index"] == n >= commit
        # exactly one store snapshot was asked for, at the commit index, and it is inside
        assert app.kinds("snapshot_request") == [commit]
        assert st["fresh_store_snapshots"] == 1
        assert st["snapshot_store_index"] == st["store_snapshot_index"] == commit
        assert st["tail_entries"] == 0
        assert st["snapshot_trailing"] == 1  # no other member: the log is trimmed to the label
        assert st["off_loop_callbacks"] == 0
    finally:
        node.stop()
        app.close()

    # Restarted from it: the store part is loaded, no entry is replayed.
    node = make_node(tmp_path, port=int(node.address.rsplit(":", 1)[1]))
    node.start()
    app = Applier(node)
    try:
        wait_until(lambda: app.kinds("restore"), 10, "restore at start-up")
        assert app.kinds("restore") == [commit]
        assert app.applied == idx  # the state after the last entry, from the snapshot alone
        wait_until(lambda: node.status()["state"] == "leader", 10, "self election")
        node.barrier().result(5)
        assert app.kinds("entry") == []
    finally:
        node.stop()
        app.close()


def test_a_pending_periodic_store_snapshot_is_awaited_then_one_more_is_asked_for(tmp_path):
    node = make_node(tmp_path, store_snapshot_every=10)
    start_single(node)
    app = Applier(node, answer=False)
    try:
        idx = submit(node, 15)
        wait_until(lambda: app.applied[-1:] == [idx[-1]], 10, "entries applied")
        periodic = app.kinds("snapshot_request")
        assert len(periodic) == 1 and periodic[0] < idx[-1]  # pending, not answered
        fut = node.snapshot_now(store_wait=None)
        with pytest.raises(Timeout):
            fut.result(0.5)  # it waits for the applier
        assert app.kinds("snapshot_request") == periodic  # no second request while one is pending
        app.answer.set()  # answers the periodic one; the engine then asks at the commit index
        n = fut.result(10)
        requests = app.kinds("snapshot_request")
        assert requests == [periodic[0], idx[-1]]
        st = node.status()
        assert st["snapshot_index"] == n >= idx[-1]
        assert st["snapshot_store_index"] == idx[-1] and st["fresh_store_snapshots"] == 1
    finally:
        node.stop()
        app.close()


def test_a_silent_applier_bounds_the_wait_and_stop_fails_the_waiter(tmp_path):
    node = make_node(tmp_path)
    start_single(node)
    app = Applier(node, answer=False)
    try:
        idx = submit(node, 5)
        # store_wait bounds the wait: the snapshot is then built on the store snapshot the
        # engine holds (the empty store at 0) plus the raw entries.
        n = node.snapshot_now(store_wait=0.3).result(10)
        st = node.status()
        assert n >= idx[-1] and st["snapshot_index"] == n and st["snapshot_store_index"] == 0
        assert len(app.kinds("snapshot_request")) == 1  # asked once, never answered
        submit(node, 2)
        fut = node.snapshot_now(store_wait=None)  # the request is still outstanding
        with pytest.raises(Timeout):
            fut.result(0.5)
        assert len(app.kinds("snapshot_request")) == 1  # and is not asked for twice
    finally:
        node.stop()
        app.close()
    with pytest.raises(Shutdown):
        fut.result(5)


def test_snapshot_now_on_a_follower_uses_its_own_store_snapshot(leader_and_follower):
    leader, follower = leader_and_follower
    apps = {n.node_id: Applier(n) for n in (leader, follower)}
    try:
        idx = [leader.submit(b"f%d" % i).result(5) for i in range(30)]
        wait_until(lambda: apps[follower.node_id].applied[-1:] == [idx[-1]], 10, "follower applied")
        commit = follower.status()["commit_index"]
        n = follower.snapshot_now(store_wait=None).result(10)
        st = follower.status()
        assert st["snapshot_index"] == n >= commit
        assert st["snapshot_store_index"] >= idx[-1] and st["fresh_store_snapshots"] == 1
        assert apps[follower.node_id].kinds("snapshot_request") == [st["snapshot_store_index"]]
        assert apps[leader.node_id].kinds("snapshot_request") == []  # the leader is not involved
        assert leader.status()["snapshot_index"] == 0
    finally:
        for a in apps.values():
            a.close()


def test_the_leader_keeps_the_entries_a_lagging_member_still_needs(tmp_path):
    # snapshot_now on the leader trims its log to what the members need: a member that was
    # down keeps catching up from the log, not by an install of the new snapshot.
    ports = free_ports(3)
    conf = [(i + 1, f"127.0.0.1:{p}", "voter") for i, p in enumerate(ports)]

    def node(i: int) -> RaftNode:
        return RaftNode(i, conf[i - 1][1], str(tmp_path / f"n{i}"), election_timeout_ms=300,
                        heartbeat_ms=30, snapshot_trailing=1000)
    nodes = {i: node(i) for i in (1, 2, 3)}
    apps: dict[int, Applier] = {}
    try:
        for i, n in nodes.items():
            n.bootstrap(conf)
            n.start()
            apps[i] = Applier(n)
        leader = wait_until(lambda: [n for n in nodes.values() if n.status()["state"] == "leader"],
                            10, "leader")[0]
        lagging = next(i for i in nodes if i != leader.node_id)
        first = [leader.submit(b"a%d" % i).result(5) for i in range(10)]
        wait_until(lambda: apps[lagging].applied[-1:] == [first[-1]], 10, "member applied")
        nodes[lagging].stop()
        apps.pop(lagging).close()
        later = [leader.submit(b"b%d" % i).result(5) for i in range(50)]
        n = leader.snapshot_now(store_wait=None).result(10)
        st = leader.status()
        assert st["snapshot_index"] == n and st["snapshot_store_index"] >= later[-1]
        # the log keeps the member's last entry (for the consistency check) and everything after
        assert st["snapshot_trailing"] == n - first[-1] + 1 < 1000

        nodes[lagging] = node(lagging)
        nodes[lagging].start()
        apps[lagging] = Applier(nodes[lagging])
        wait_until(lambda: apps[lagging].applied[-1:] == [later[-1]], 20, "lagging member caught up")
        assert apps[lagging].kinds("restore") == []  # from the log, no install
        assert apps[lagging].kinds("entry") == first + later  # its own log again, then the rest
    finally:
        for n in nodes.values():
            n.stop()
        for a in apps.values():
            a.close()
