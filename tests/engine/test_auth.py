"""The engine over the authenticated transport (native/auth_transport.cpp): in-process nodes."""

from __future__ import annotations

import pytest

from bknr_cluster.engine import RaftNode
from bknr_cluster.errors import UsageError
from tests.support import free_ports, wait_until

SECRET = b"0123456789abcdef0123456789abcdef"
WRONG = b"fedcba9876543210fedcba9876543210"


def test_peers_with_the_secret_replicate_and_an_impostor_gets_nothing(tmp_path):
    ports = free_ports(3)
    conf = [(i + 1, f"127.0.0.1:{p}", "voter") for i, p in enumerate(ports)]
    secrets = {1: SECRET, 2: SECRET, 3: WRONG}
    nodes = {i: RaftNode(i, a, str(tmp_path / f"n{i}"), election_timeout_ms=400, heartbeat_ms=40,
                         secret=secrets[i], auth_timeout_ms=1000) for i, a, _ in conf}
    try:
        for n in nodes.values():
            n.bootstrap(conf)
            n.start()
        leader = wait_until(lambda: [n for n in nodes.values() if n.status()["state"] == "leader"],
                            20, "a leader among the nodes holding the secret")[0]
        assert leader.node_id in (1, 2)
        index = leader.submit(b"hello").result(10)
        honest = nodes[3 - leader.node_id]
        wait_until(lambda: honest.status()["commit_index"] >= index, 10, "replication to the peer")
        st = leader.status()
        assert st["auth"]["connected"] + st["auth"]["accepted"] >= 1
        wait_until(lambda: leader.status()["auth"]["refused_out"] + leader.status()["auth"]["refused_in"] > 0,
                   10, "the impostor to be refused")
        impostor = nodes[3].status()
        assert impostor["last_log_index"] < index and impostor["leader_id"] == 0
        assert impostor["state"] != "leader"
    finally:
        for n in nodes.values():
            n.stop()


def test_short_secret_is_refused(tmp_path):
    with pytest.raises(UsageError):
        RaftNode(1, "127.0.0.1:1", str(tmp_path / "n"), secret=b"short")
