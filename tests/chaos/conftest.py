"""Fixtures of the short chaos suite: a private namespace network and a 3-node cluster in it.

Everything is torn down by name / PID in ``finally`` blocks, whatever the test did.
"""

from __future__ import annotations

import pytest

from tests.chaos.cluster import ChaosCluster
from tests.chaos.netns import Network


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
