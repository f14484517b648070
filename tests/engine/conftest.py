"""Fixtures shared by the in-process engine tests."""

from __future__ import annotations

import pytest

from bknr_cluster.engine import RaftNode
from tests.support import free_ports, wait_until


@pytest.fixture
def leader_and_follower(tmp_path):
    """Two running voters; yields (leader, follower) once the follower knows the leader."""
    ports = free_ports(2)
    conf = [(i + 1, f"127.0.0.1:{p}", "voter") for i, p in enumerate(ports)]
    nodes = [RaftNode(i, a, str(tmp_path / f"n{i}"), election_timeout_ms=300, heartbeat_ms=30)
             for i, a, _ in conf]
    try:
        for n in nodes:
            n.bootstrap(conf)
            n.start()
        leader = wait_until(lambda: [n for n in nodes if n.status()["state"] == "leader"], 10, "leader")[0]
        follower = next(n for n in nodes if n is not leader)
        wait_until(lambda: follower.status()["leader_id"] == leader.node_id, 10, "leader known")
        yield leader, follower
    finally:
        for n in nodes:
            n.stop()
