"""Regression tests of small defects (issue 14's review): each failed before its fix."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from bknrctl.client import NodeClient
from bknrctl.control import NodeControl
from bknrctl.main import app

from bknr_cluster.cluster.admin import ClusterAdmin
from bknr_cluster.cluster.config import ClusterConfig
from bknr_cluster.errors import AlreadyBootstrapped, BknrError, NotCapable, TransactionFailed
from bknr_cluster.vocabulary import error_body, error_from_body, error_status
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


# --- the CLI reuses the cluster's client and its one error table (vocabulary.py) -----------------


class _OneAnswer(BaseHTTPRequestHandler):
    """Answers every request with the status and JSON body the test sets on the server."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, body = self.server.answer  # type: ignore[attr-defined]
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def one_answer():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OneAnswer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_cli_client_rebuilds_what_the_node_raised(one_answer) -> None:
    # Before: bknrctl's own copy of the mapping made "transaction failed: transaction failed: ..."
    # of a TransactionFailed, and a NotCapable lost its node list.
    c = NodeClient("n1", f"http://127.0.0.1:{one_answer.server_port}", "t")
    failed = TransactionFailed("ValueError", "no such account")
    one_answer.answer = (error_status(failed), error_body(failed))
    with pytest.raises(TransactionFailed) as info:
        c.tx("withdraw", "ann", 5)
    assert str(info.value) == "transaction failed: ValueError: no such account"
    assert info.value.exception == "ValueError"
    refused = NotCapable("n2 runs an older definition", [{"id": 2, "name": "n2"}])
    one_answer.answer = (error_status(refused), error_body(refused))
    with pytest.raises(NotCapable) as info2:
        c.tx("new_tx")
    assert info2.value.nodes == [{"id": 2, "name": "n2"}]
    # the same table on the cluster's side: both clients rebuild the same class
    assert isinstance(error_from_body(409, error_body(failed)), TransactionFailed)


# --- NodeControl is complete: callers use nothing a controller may lack --------------------------


class _OnlyTheInterface(_ScriptedInit):
    """A controller with the abstract methods only, whose node is already running."""

    def pid(self):
        return 4242


def test_start_needs_nothing_beyond_the_node_control_interface(fake, monkeypatch) -> None:
    # Before: start_nodes called exited_early() (`# type: ignore`) and getattr(c, "tail_out"),
    # which only LocalControl had: any other NodeControl failed with AttributeError.
    import bknrctl.nodes
    from bknrctl.cluster import Cluster

    path, *_ = fake
    cluster = Cluster.load(path)
    monkeypatch.setattr(bknrctl.nodes, "controller", lambda cfg, n: _OnlyTheInterface(cfg, 0, ""))
    assert bknrctl.nodes.start_nodes(cluster, [cluster.cfg.node("n1")], timeout=5.0, quiet=True) \
        == {"n1": 4242}
