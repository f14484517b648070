"""Fixtures shared by the in-process engine tests."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from bknr_cluster.engine import RaftNode
from tests.support import free_ports, wait_until


@contextmanager
def two_voters(tmp_path, election_timeout_ms: int = 300, heartbeat_ms: int = 30):
    """Two running voters; yields (leader, follower) once the follower knows the leader, and
    stops both whatever happens."""
    ports = free_ports(2)
    conf = [(i + 1, f"127.0.0.1:{p}", "voter") for i, p in enumerate(ports)]
    nodes = [RaftNode(i, a, str(tmp_path / f"n{i}"), election_timeout_ms=election_timeout_ms,
                      heartbeat_ms=heartbeat_ms) for i, a, _ in conf]
    try:
        for n in nodes:
            n.bootstrap(conf)
            n.start()
        leader = wait_until(lambda: [n for n in nodes if n.status()["state"] == "leader"],
                            max(10, election_timeout_ms / 150), "leader")[0]
        follower = next(n for n in nodes if n is not leader)
        wait_until(lambda: follower.status()["leader_id"] == leader.node_id, 10, "leader known")
        yield leader, follower
    finally:
        for n in nodes:
            n.stop()


@pytest.fixture
def leader_and_follower(tmp_path):
    """Two running voters with the default test timing: (leader, follower)."""
    with two_voters(tmp_path) as pair:
        yield pair
