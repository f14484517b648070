"""A full disk is reported in status()['last_error'] and clears when space returns."""

from __future__ import annotations

import pytest

from bknr_cluster.engine import RaftNode
from tests.support import free_ports, wait_until


def test_disk_full_is_reported_and_recovers(tmp_path):
    from tests.chaos.diskfull import SmallDisk
    from tests.chaos.netns import NetworkUnavailable

    disk = SmallDisk(tmp_path / "disk", size_mb=48)
    try:
        disk.mount()
    except NetworkUnavailable as e:
        pytest.skip(str(e))
    (port,) = free_ports(1)
    addr = f"127.0.0.1:{port}"
    node = RaftNode(1, addr, str(disk.path / "n1"), election_timeout_ms=300, heartbeat_ms=30)
    try:
        node.bootstrap([(1, addr, "voter")])
        node.start()
        wait_until(lambda: node.status()["state"] == "leader", 10, "self election")
        assert node.status()["last_error"] == ""
        disk.fill()
        # Grow the log past the preallocated segments: 1 MB entries, none can be persisted.
        futs = [node.submit(bytes(1 << 20)) for _ in range(40)]
        err = wait_until(lambda: node.status()["last_error"], 20, "the engine to report the full disk")
        assert "no space left" in err and "not persisted" in err, err
        assert not all(f.done() for f in futs)
        disk.release()
        for f in futs:
            f.result(30)  # the writes are retried once there is room again
        wait_until(lambda: node.status()["last_error"] == "", 10, "the error to clear")
        assert node.status()["state"] == "leader"
    finally:
        node.stop()
        disk.umount()
