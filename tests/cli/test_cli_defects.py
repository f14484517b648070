"""Regression tests of small defects (issue 14's review): each failed before its fix."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from bknrctl.control import NodeControl
from bknrctl.main import app

from bknr_cluster.cluster.admin import ClusterAdmin
from bknr_cluster.cluster.config import ClusterConfig
from bknr_cluster.errors import AlreadyBootstrapped, BknrError
from tests.cli.conftest import write_yaml
from tests.support import free_ports


class _ScriptedInit(NodeControl):
    """A controller whose ``bknr-node --init`` answers with a given exit code and output."""

    def __init__(self, cfg: ClusterConfig, rc: int, out: str):
        super().__init__(cfg, cfg.nodes[0])
        self.rc, self.out = rc, out

    def pid(self):
        return None

    def spawn(self):
        raise AssertionError("not used")

    def signal(self, sig):
        pass

    def run_node(self, *extra, timeout=120.0):
        return self.rc, self.out

    def has_raft_state(self):
        return False

    def wipe_raft_state(self):
        pass

    def retain_snapshots(self, keep):
        return {"archived": 0, "removed": 0, "kept": 0}

    def tail(self, lines=50):
        return ""

    def follow(self, lines=20):
        return iter(())


def test_init_usage_error_of_the_node_is_not_already_bootstrapped(tmp_path: Path) -> None:
    cfg = ClusterConfig.load(write_yaml(tmp_path, free_ports(6)))
    clash = "bknr-node: invalid configuration: nodes[1].api_port: port 7001 on 127.0.0.1 already " \
            "used by nodes[0]"
    with pytest.raises(BknrError) as info:
        _ScriptedInit(cfg, 2, clash).init()
    assert not isinstance(info.value, AlreadyBootstrapped)
    assert "init failed" in str(info.value) and "already used by" in str(info.value)
    with pytest.raises(AlreadyBootstrapped):
        _ScriptedInit(cfg, 2, "bknr-node: node n1 is already bootstrapped (/x/raft)").init()


def test_no_leader_message_names_the_leader_followers_still_point_to(runner, fake) -> None:
    path, cluster, _ = fake
    cluster.down = {1, 4}       # n1 leads in the fake, but is gone; n2, n3 still name it
    r = runner.invoke(app, ["-c", str(path), "leader", "transfer"])
    assert r.exit_code == 3
    assert "followers still name n1" in r.stderr


class _Engine:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def _done(self, *what):
        self.calls.append(what)

        class Done:
            @staticmethod
            def result(timeout=None):
                return None
        return Done()

    def add(self, node_id, address):
        return self._done("add", node_id)

    def assign(self, node_id, role):
        return self._done("assign", node_id)

    def remove(self, node_id):
        return self._done("remove", node_id)


def test_remove_peer_forgets_the_peer_add_peer_learned() -> None:
    admin = ClusterAdmin(1, "n1", _Engine(), store=None, applier=None, submitter=None,
                         # membership changes wake the monitor
                         monitor=SimpleNamespace(poke=lambda: None),
                         peers={1: "127.0.0.1:7001"}, node_name=str)
    admin.add_peer(2, "127.0.0.1:7002", "voter")
    assert admin.peers == {1: "127.0.0.1:7001", 2: "127.0.0.1:7002"}
    admin.remove_peer(2)
    assert admin.peers == {1: "127.0.0.1:7001"}
    assert admin.engine.calls == [("add", 2), ("assign", 2), ("remove", 2)]
