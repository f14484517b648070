"""One process per Raft data directory (bknr_cluster/datadir_lock.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bknr_cluster.datadir_lock import DataDirLock
from bknr_cluster.engine import RaftNode
from bknr_cluster.errors import UsageError
from tests.support import free_ports


def test_second_holder_is_refused_with_the_holders_pid(tmp_path):
    a, b = DataDirLock(str(tmp_path)), DataDirLock(str(tmp_path))
    a.acquire()
    with pytest.raises(UsageError, match=r"in use by another process \(pid \d+\)"):
        b.acquire()
    a.release()
    b.acquire()  # free again once released
    b.release()


def test_lock_dies_with_its_process(tmp_path):
    # A crashed holder (no release) leaves no stale lock: the kernel drops flock with the fd.
    code = ("import os,sys; from bknr_cluster.datadir_lock import DataDirLock;"
            f"DataDirLock({str(tmp_path)!r}).acquire(); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    lock = DataDirLock(str(tmp_path))
    lock.acquire()
    lock.release()


def test_running_node_holds_its_directory(tmp_path):
    port, port2 = free_ports(2)
    d = str(tmp_path / "raft")
    n = RaftNode(1, f"127.0.0.1:{port}", d, election_timeout_ms=300, heartbeat_ms=30)
    n.bootstrap([(1, f"127.0.0.1:{port}", "voter")])
    n.start()
    try:
        twin = RaftNode(1, f"127.0.0.1:{port2}", d, election_timeout_ms=300, heartbeat_ms=30)
        with pytest.raises(UsageError, match="in use by another process"):
            twin.start()
        with pytest.raises(UsageError, match="in use by another process"):
            twin.recover([(1, f"127.0.0.1:{port2}", "voter")])
        assert n.submit(b"still fine").result(10) > 0
    finally:
        n.stop()
    twin.start()  # released by stop()
    twin.stop()
