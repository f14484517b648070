"""Standalone ``Store.snapshot()``: a forked child writes it; transactions go on meanwhile."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bknr_cluster.errors import StoreError
from bknr_cluster.store import snapshot_fork
from tests.snapshot_child import HeldChildren

ROOT = Path(__file__).resolve().parents[2]


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


def test_the_fork_imports_nothing_while_it_holds_the_store_lock(tmp_path):
    # Everything between taking the store lock and fork() returning pauses the process (GIL
    # held): a first-time import there cost 9-20 ms. A fresh interpreter shows every lazy one.
    code = (
        "import sys\n"
        "from bknr_cluster.store import Store, snapshot_fork\n"
        "from tests.store.models import definition\n"
        "s = Store(None, definition=definition, bind=False)\n"
        "s.execute('add_person', 'ann')\n"
        "before = set(sys.modules)\n"
        f"child = snapshot_fork.fork_snapshot(s, {str(tmp_path / 'x.snap')!r})\n"
        "print(sorted(set(sys.modules) - before))\n"
        "child.wait()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_child_runs_in_a_session_of_its_own_at_a_lower_priority():
    # Under scheduler autogroups a nice value only ranks a task within its session: the child
    # takes a session (and, where there are autogroups, one at nice 10) of its own.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            snapshot_fork._own_autogroup(snapshot_fork._CHILD_NICE)
            group = ""
            if os.path.exists("/proc/self/autogroup"):
                with open("/proc/self/autogroup") as f:
                    group = f.read().strip()
            os.write(w, f"{int(os.getsid(0) == os.getpid())}|{group}".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        own_session, group = f.read().split("|")
    os.waitpid(pid, 0)
    assert own_session == "1"
    if group:  # autogroups exist here; the kernel may refuse the change (EAGAIN) now and then
        assert group.endswith(("nice 10", "nice 0")) and group != _autogroup_of_self()


def _autogroup_of_self() -> str:
    with open("/proc/self/autogroup") as f:
        return f.read().strip()


def test_the_child_nice_value_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("BKNR_SNAPSHOT_NICE", "5")
    assert snapshot_fork._child_nice() == 5
    monkeypatch.setenv("BKNR_SNAPSHOT_NICE", "40")
    assert snapshot_fork._child_nice() == 19
    monkeypatch.setenv("BKNR_SNAPSHOT_NICE", "low")
    assert snapshot_fork._child_nice() == 10
    monkeypatch.delenv("BKNR_SNAPSHOT_NICE")
    assert snapshot_fork._child_nice() == 10
