"""Store snapshots written by a forked child while the node keeps applying (issue 19).

In-process, over the real engine (a single-node cluster): the writer child is held still with
SIGSTOP (tests/snapshot_child.py) so that "the snapshot is being written" lasts as long as the
test needs, deterministically.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest

from bknr_cluster.cluster import snapshot_writer
from bknr_cluster.cluster.settings import ClusterSettings
from bknr_cluster.cluster.snapshot_meta import store_snapshot_of
from bknr_cluster.cluster.store import ClusterStore
from bknr_cluster.store import Store, StoreDefinition, transaction
from examples.bank import app as bank
from tests.snapshot_child import HeldChildren
from tests.support import free_ports, wait_until


@transaction("bulk_open")
def bulk_open(prefix: str, n: int) -> int:
    for i in range(n):
        bank.Account(owner=f"{prefix}{i}", balance=1)
    return n


definition = StoreDefinition(name="bank", classes=[bank.Account, bank.Transfer],
                             transactions=[bank.open_account, bank.deposit, bulk_open],
                             queries=[bank.account, bank.total_balance])


def _node(data_dir: Path, port: int, *, bootstrap: bool) -> ClusterStore:
    # periodic store snapshots out of the way: the tests ask for each one (snapshot_now)
    cs = ClusterStore(definition, ClusterSettings(1, f"127.0.0.1:{port}:1", data_dir,
                                                  election_timeout_ms=200, heartbeat_ms=20,
                                                  snapshot_threshold=100_000), start=False)
    if bootstrap:
        cs.bootstrap()
    cs.start()
    wait_until(cs.is_leader, 20, "single node leadership")
    return cs


@pytest.fixture
def node(tmp_path):
    (port,) = free_ports(1)
    started: list[ClusterStore] = []

    def make(bootstrap: bool = True) -> ClusterStore:
        cs = _node(tmp_path / "n1", port, bootstrap=bootstrap)
        started.append(cs)
        return cs

    yield make
    for cs in started:
        cs.stop()


class SnapshotAsker(threading.Thread):
    """``snapshot_now`` in the background: it only returns once the store snapshot is in."""

    def __init__(self, cs: ClusterStore) -> None:
        super().__init__(daemon=True)
        self.cs = cs
        self.index: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.index = self.cs.snapshot_now(timeout=120)
        except BaseException as exc:
            self.error = exc


def _images(cs: ClusterStore) -> list[tuple[int, str]]:
    """Wrap the engine's file handover: (index, digest of the image) per store snapshot."""
    seen: list[tuple[int, str]] = []
    real = cs.engine.store_snapshot_file

    def handover(index: int, path: str, **kw: int) -> bool:
        copy = Store(None, definition=definition, bind=False)
        with open(path, "rb") as f:  # the cluster layer's prefix first, then the store's image
            copy.load_snapshot(io.BytesIO(store_snapshot_of(f.read())))
        seen.append((index, copy.digest()))
        return real(index, path, **kw)
    cs.engine.store_snapshot_file = handover
    return seen


def test_applying_goes_on_while_the_child_writes_and_the_image_is_the_state_at_its_index(
        node, monkeypatch):
    cs = node()
    cs.execute(bulk_open, "a", 2000)
    images = _images(cs)
    held = HeldChildren(monkeypatch, snapshot_writer)
    asker = SnapshotAsker(cs)
    asker.start()
    child = held.wait_held()
    at_fork = cs.applied_index
    # the writer is stopped mid-snapshot: transactions still commit, apply and answer
    for i in range(20):
        assert cs.execute(bank.deposit, f"a{i}", 5) == 6
    assert cs.applied_index >= at_fork + 20
    assert images == []  # nothing handed over yet
    held.release(child)
    asker.join(120)
    assert asker.error is None and asker.index is not None
    ((index, image_digest),) = images
    (_, digest_at_fork), = held.forks
    assert index == at_fork  # the request came at the index the applier had reached...
    assert image_digest == digest_at_fork  # ...and the image is exactly that state
    st = cs.engine.status()
    assert st["snapshot_store_index"] == index and st["snapshot_index"] == asker.index
    status = cs.status()
    assert status["store_snapshot_index"] == index and status["replayed_entries"] == 0
    assert status["store_snapshot_failures"] == 0
    assert not list((cs.data_dir / "store-snapshot").iterdir())  # handed over, unlinked


def test_a_restart_from_the_forked_snapshot_applies_nothing_twice_and_skips_nothing(node):
    cs = node()
    cs.execute(bulk_open, "a", 1000)
    stop = threading.Event()
    acked: list[int] = []

    def writer() -> None:
        while not stop.is_set() and len(acked) < 5000:
            cs.execute(bank.deposit, "a1", 1)
            acked.append(1)
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        wait_until(lambda: len(acked) > 20, 30, "writer running")
        first = cs.snapshot_now(timeout=120)
        wait_until(lambda: len(acked) > 40, 30, "writer still running")
        second = cs.snapshot_now(timeout=120)
        assert second > first
    finally:
        stop.set()
        t.join(30)
    expected = cs.digest()
    balance = cs.store.run_query("account", "a1")["balance"]
    assert balance == 1 + len(acked)
    cs.stop()
    again = node(bootstrap=False)  # restores [store snapshot] + the entries after it
    wait_until(lambda: again.applied_index >= expected[0], 30, "restarted node caught up")
    st = again.status()
    assert st["restores"] == 1 and st["replayed_entries"] == 0
    assert again.digest() == expected
    assert again.store.run_query("account", "a1")["balance"] == balance


def test_a_killed_snapshot_child_leaves_the_previous_snapshot_and_a_healthy_node(
        node, monkeypatch):
    cs = node()
    cs.execute(bulk_open, "a", 500)
    first = cs.snapshot_now(timeout=120)
    before = cs.engine.status()
    assert before["store_snapshot_index"] == before["snapshot_store_index"] > 0
    cs.execute(bank.deposit, "a0", 7)
    held = HeldChildren(monkeypatch, snapshot_writer)
    asker = SnapshotAsker(cs)
    asker.start()
    child = held.wait_held()
    os.kill(child.pid, 9)  # the writer dies mid-snapshot
    wait_until(lambda: cs.status()["store_snapshot_failures"] == 1, 30, "failure noticed")
    assert not (cs.data_dir / "store-snapshot" / Path(child.path).name).exists()
    # the node keeps serving; the engine asks again (snapshot_now is still waiting) and the
    # next writer, not held, completes it on top of the state at the new index
    assert cs.execute(bank.deposit, "a0", 1) == 9
    asker.join(120)
    assert asker.error is None and asker.index > first
    after = cs.engine.status()
    assert after["snapshot_store_index"] > before["snapshot_store_index"]
    assert len(held.forks) == 2 and cs.status()["replayed_entries"] == 0
    # and the snapshot on disk is a good one: a restart lands on the same state
    expected = cs.digest()
    cs.stop()
    again = node(bootstrap=False)
    wait_until(lambda: again.applied_index >= expected[0], 30, "restarted node caught up")
    assert again.digest() == expected


def test_a_node_installed_from_a_snapshot_taken_under_writes_matches_the_replicas(
        tmp_path, procs):
    """Real node processes: the leader snapshots (POST /snapshot: its forked child writes the
    store) while a writer keeps depositing; a node added afterwards is installed from that
    snapshot and then holds exactly what the replicas hold, every deposit applied once."""
    from tests.cluster.harness import LocalCluster

    c = LocalCluster(tmp_path, procs, 3)
    c.init()
    c.start_all()
    leader = c.wait_leader()
    cl = c.client(leader)
    for i in range(30):
        cl.tx("open_account", f"acct{i}", 0)
    stop = threading.Event()
    acked: list[int] = []

    def writer() -> None:
        w = c.client(leader)
        while not stop.is_set() and len(acked) < 3000:
            w.tx("deposit", f"acct{len(acked) % 30}", 1)
            acked.append(1)
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        wait_until(lambda: len(acked) > 20, 30, "writer running")
        index = cl.call("POST", "/snapshot", {})["index"]
        wait_until(lambda: len(acked) > 60, 30, "writer still running after the snapshot")
    finally:
        stop.set()
        t.join(30)
    st = c.status(leader, digest=False)
    assert st["store_snapshot_index"] > 30 and st["snapshot_index"] == index
    n4 = c.add_node("voter")
    conv = c.wait_converged(timeout=60)
    assert len({s["digest"] for s in conv.values()}) == 1
    new = conv[n4]
    assert new["restores"] == 1 and new["store_snapshot_index"] >= st["store_snapshot_index"]
    assert all(s["replayed_entries"] == 0 for s in conv.values())
    assert c.client(n4).query("total_balance")["result"] == len(acked)


def test_a_backup_is_written_by_a_child_while_applying_goes_on(node, monkeypatch):
    cs = node()
    cs.execute(bulk_open, "a", 300)
    held = HeldChildren(monkeypatch, snapshot_writer)
    out: list = []
    t = threading.Thread(target=lambda: out.append(cs.backup()), daemon=True)
    t.start()
    child = held.wait_held()
    at_fork = cs.applied_index
    assert cs.execute(bank.deposit, "a0", 5) == 6  # applies while the backup is written
    held.release(child)
    t.join(60)
    ((index, data),) = out
    ((_, digest_at_fork),) = held.forks
    copy = Store(None, definition=definition, bind=False)
    copy.load_snapshot(io.BytesIO(data))
    assert index == at_fork and copy.digest() == digest_at_fork
    assert not list((cs.data_dir / "store-snapshot").glob("backup-*"))


def test_a_wedged_writer_is_killed_after_its_timeout_and_reported_failed(tmp_path, monkeypatch):
    from tests.cluster.fake_engine import FakeEngine

    engine = FakeEngine(1, "127.0.0.1:7001", str(tmp_path))
    store = Store(None, definition=definition, bind=False)
    writer = snapshot_writer.StoreSnapshotWriter(engine, store, tmp_path / "snaps",
                                                 freeze_gc=False, child_timeout=0.2)
    held = HeldChildren(monkeypatch, snapshot_writer)
    writer.start(7)
    # stopped for good (SIGSTOP sent before start() returned): only the timeout can end it.
    # Not wait_held(): its wait for state T can miss the 0.2 s the child lives on a busy host.
    assert len(held.held) == 1
    wait_until(lambda: engine.failed_snapshots == [7], 30, "wedged writer given up")
    wait_until(lambda: not writer.running, 30, "writer slot free again")
    assert writer.failures == 1 and engine.store_snapshots == []
    assert not list((tmp_path / "snaps").iterdir())


def test_a_memfd_image_is_sealed_and_size_checked_instead_of_re_hashed():
    # the memfd path skips the re-hash: its trust rests on the seals (cluster/DESIGN.md)
    from bknr_cluster.errors import StoreError
    from bknr_cluster.store.snapshot_fork import SnapshotFile

    fd = snapshot_writer._memfd("bknr-test-image")
    if fd < 0:
        pytest.skip("no memfd on this host")
    try:
        os.write(fd, b"image bytes")
        path = f"/proc/self/fd/{fd}"
        # a hash that would not verify: the memfd path must not read it
        snapshot_writer._check_image(SnapshotFile(path, 11, "0" * 64, 0.1), fd)
        with pytest.raises(PermissionError):
            os.write(fd, b"x")  # sealed: nobody can change what the engine maps
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 3)
    finally:
        os.close(fd)
    fd = snapshot_writer._memfd("bknr-test-short-image")
    try:
        os.write(fd, b"image bytes")
        with pytest.raises(StoreError, match="reported 12"):
            snapshot_writer._check_image(SnapshotFile(f"/proc/self/fd/{fd}", 12, "0" * 64, 0.1), fd)
    finally:
        os.close(fd)


def test_a_file_image_is_still_re_hashed(tmp_path):
    from bknr_cluster.errors import StoreError
    from bknr_cluster.store.snapshot_fork import SnapshotFile

    path = tmp_path / "store-1-1.snap"
    path.write_bytes(b"image bytes")
    with pytest.raises(StoreError, match="SHA-256"):
        snapshot_writer._check_image(SnapshotFile(str(path), 11, "0" * 64, 0.1), -1)
