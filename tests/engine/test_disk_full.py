"""A full disk is reported in status()['last_error'] and clears when space returns."""

from __future__ import annotations

import pytest

from bknr_cluster.engine import RaftNode
from bknr_cluster.errors import EngineIOError
from tests.support import free_ports, wait_until


def test_disk_full_is_reported_and_recovers(tmp_path):
    from tests.chaos.diskfull import SmallDisk
    from tests.chaos.netns import NetworkUnavailable

    disk = SmallDisk(tmp_path / "disk", size_mb=80)
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
        # Grow the log past the preallocated segments with 1 MB entries. Depending on where
        # libraft hits the wall, an append waits for room (retried on a timer) or is refused
        # at once; either way the node must say why.
        futs = [node.submit(bytes(1 << 20)) for _ in range(24)]
        err = wait_until(lambda: node.status()["last_error"], 20, "the engine to report the full disk")
        assert "no space left" in err, err
        waiting = sum(not f.done() for f in futs)
        disk.release()
        outcomes = []
        for f in futs:
            try:
                outcomes.append(f.result(30) > 0)
            except EngineIOError:
                outcomes.append(False)
        assert waiting or not all(outcomes), "every 1 MB entry fitted: the disk was not full"

        def accepted() -> bool:
            try:
                return node.submit(b"after").result(10) > 0
            except EngineIOError:
                return False  # libraft retries its segment allocation on a timer
        wait_until(accepted, 30, "writes to be accepted again")
        wait_until(lambda: node.status()["last_error"] == "", 10, "the error to clear")
        assert node.status()["state"] == "leader"
    finally:
        node.stop()
        disk.umount()
