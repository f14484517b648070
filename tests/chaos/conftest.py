"""Fixtures of the short chaos suite: a private namespace network and a 3-node cluster in it.

Everything is torn down by name / PID in ``finally`` blocks, whatever the test did.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.cluster import ChaosCluster
from tests.chaos.diskfull import SmallDisk
from tests.chaos.netns import Network
from tests.support import Processes


@pytest.fixture
def net3():
    net = Network(["n1", "n2", "n3"])
    try:
        yield net.setup()
    finally:
        net.teardown()


def started(cluster: ChaosCluster) -> ChaosCluster:
    cluster.init()
    cluster.start_all()
    cluster.wait_up(60)
    cluster.wait_leader(60)
    return cluster


@contextlib.contextmanager
def small_disk_cluster(tmp_path: Path, procs: Processes,
                       **options: Any) -> Iterator[tuple[ChaosCluster, SmallDisk]]:
    """3 nodes on loopback, n3's data directory on a 64 MB tmpfs; n3 is not the leader.
    A missing tmpfs/mount capability fails the test (SmallDisk.mount raises), never skips."""
    disk = SmallDisk(tmp_path / "n3disk", size_mb=64)
    disk.mount()
    try:
        c = ChaosCluster(tmp_path / "cluster", procs, 3, data_dirs={"n3": disk.path}, **options)
        try:
            started(c)
            if c.wait_leader() == "n3":
                c.restart("n3")
                c.wait_leader(30, among=["n1", "n2"])
                c.wait_up(30)
            yield c, disk
        finally:
            c.stop_all()
    finally:
        disk.umount()


@pytest.fixture
def cluster3(tmp_path, procs, net3):
    c = ChaosCluster(tmp_path / "cluster", procs, 3, net=net3)
    try:
        yield started(c)
    finally:
        c.stop_all()


def report_on_failure(report: dict, cluster: ChaosCluster) -> str:
    """Assertion message: the verdict problems plus the tail of every node's log."""
    from tests.chaos.runner import verdict_problems

    tails = "\n".join(f"--- {n}\n{cluster.log_tail(n, 8)}" for n in cluster.nodes)
    return f"{verdict_problems(report)}\n{tails}"
