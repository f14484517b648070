"""Standalone ``Store.snapshot()``: a forked child writes it; transactions go on meanwhile."""

import os
import signal
import threading

import pytest

from bknr_cluster.errors import StoreError
from bknr_cluster.store import snapshot_fork
from tests.snapshot_child import HeldChildren


class Snapshotter(threading.Thread):
    def __init__(self, store) -> None:
        super().__init__(daemon=True)
        self.store, self.path, self.error = store, None, None

    def run(self) -> None:
        try:
            self.path = self.store.snapshot()
        except BaseException as exc:
            self.error = exc


def _snaps(path):
    return sorted(n for n in os.listdir(path) if n.endswith(".snap"))


def test_transactions_run_while_the_snapshot_is_written_and_both_survive_a_restart(
        disk, tmp_path, monkeypatch):
    s = disk()
    for i in range(50):
        s.execute("add_person", f"p{i}", "Oslo")
    held = HeldChildren(monkeypatch, snapshot_fork)
    snap = Snapshotter(s)
    snap.start()
    child = held.wait_held()
    ((_, digest_at_fork),) = held.forks
    for i in range(10):  # the store lock is free while the child writes
        s.execute("add_person", f"late{i}")
    assert snap.path is None and _snaps(tmp_path / "store") == []
    held.release(child)
    snap.join(60)
    assert snap.error is None
    assert os.path.basename(snap.path) == "snapshot-00000000000000000050.snap"
    digest = s.digest()
    s.close()
    # the snapshot holds exactly the state after record 50...
    from bknr_cluster.store import Store
    from tests.store.models import definition
    image = Store(None, definition=definition, bind=False)
    with open(snap.path, "rb") as f:
        image.load_snapshot(f)
    assert image.digest() == digest_at_fork and image.last_index == 50
    # ...and a restart replays the 10 records logged meanwhile on top of it
    s2 = disk()
    assert s2.digest() == digest and s2.last_index == 60


def test_a_killed_snapshot_child_keeps_the_previous_snapshot_and_every_record(
        disk, tmp_path, monkeypatch):
    s = disk()
    s.execute("add_person", "ann")
    first = s.snapshot()
    held = HeldChildren(monkeypatch, snapshot_fork)
    snap = Snapshotter(s)
    s.execute("add_person", "bob")
    snap.start()
    child = held.wait_held()
    os.kill(child.pid, signal.SIGKILL)
    snap.join(60)
    assert isinstance(snap.error, StoreError) and "killed by signal 9" in str(snap.error)
    assert _snaps(tmp_path / "store") == [os.path.basename(first)]
    assert not [n for n in os.listdir(tmp_path / "store") if n.endswith(".tmp")]
    s.execute("add_person", "carol")  # still writable
    digest = s.digest()
    s.close()
    s2 = disk()
    assert s2.digest() == digest and s2.run_query("names") == ["ann", "bob", "carol"]


def test_the_child_reports_a_failure_to_write(disk, tmp_path):
    s = disk()
    s.execute("add_person", "ann")
    child = snapshot_fork.fork_snapshot(s, str(tmp_path / "no-such-dir" / "x.snap"))
    with pytest.raises(StoreError, match="FileNotFoundError"):
        child.wait()
