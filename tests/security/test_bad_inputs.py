"""The bad-input table of docs/security.md: one test per row, each asserting the error text and
that nothing changed. Rows that need a cluster use real node processes (tests/cluster/harness.py).

"Nothing changed" is checked on every running node: same digest, term, leader and
configuration; for requests refused *before* reaching the log also the same last log index.
(A transaction that fails after commit is logged and applied as a no-op on every replica, so
there only the digest is compared.) The rogue-raft-peer row is in test_raft_transport.py and
test_rogue_node.py.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import yaml

from bknr_cluster.cluster.config import ClusterConfig
from bknr_cluster.errors import (
    ConfigError,
    MembershipError,
    NonDeterminism,
    TooBig,
    TransactionFailed,
    Unauthorized,
    UnknownNode,
    UnknownTransaction,
    UsageError,
)
from tests.cluster.harness import LocalCluster
from tests.support import Processes, wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    procs = Processes()
    try:
        # generous timing: a spurious election on a loaded machine would look like a change
        c = LocalCluster(tmp_path_factory.mktemp("badinput"), procs, 3, election_timeout_ms=1000,
                         heartbeat_ms=100)
        c.init()
        c.start_all()
        leader = c.wait_leader()
        c.tx(leader, "open_account", "ann", 100)
        c.tx(leader, "open_account", "bob", 5)
        # The leader's monitor publishes every member's store definition through the log in
        # its first rounds (cluster/DESIGN.md): three entries that would otherwise land between
        # a test's "before" and "after" views (the leader's last_log_index 3 -> 6).
        c.wait_definitions(leader)
        c.wait_converged()
        yield c
    finally:
        procs.stop_all()


def state(c: LocalCluster) -> dict[str, tuple]:
    """What must not change, per running node, once the cluster has settled."""
    c.wait_converged()
    out = {}
    for name in c.running:
        s = c.status(name)
        conf = sorted((m["id"], m["address"], m["role"]) for m in s["configuration"])
        out[name] = (s["digest"], s["term"], s["leader_id"], tuple(conf), s["last_log_index"])
    return out


def unchanged(before: dict, c: LocalCluster, *, logged: bool = False) -> None:
    after = state(c)
    if logged:  # the request was logged as a no-op: compare everything but the log index
        before = {n: v[:4] for n, v in before.items()}
        after = {n: v[:4] for n, v in after.items()}
    assert after == before


def error_of(c: LocalCluster, node: str, method: str, path: str, body=None, token: str | None = "") -> tuple:
    status, answer = c.client(node, token=token).request(method, path, body)
    return status, answer


# --- row: malformed YAML --------------------------------------------------------------------


def test_malformed_yaml(tmp_path):
    bad_syntax = tmp_path / "syntax.yaml"
    bad_syntax.write_text("group: x\nnodes: [ {id: 1, name: n1\n")
    before = bad_syntax.read_bytes()
    with pytest.raises(ConfigError) as info:
        ClusterConfig.load(bad_syntax)
    assert "is not valid YAML (line" in str(info.value)
    assert bad_syntax.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["syntax.yaml"]

    bad_schema = tmp_path / "schema.yaml"
    bad_schema.write_text(yaml.safe_dump({"group": "g", "store": "examples.bank.app:definition", "nodes": [
        {"id": 1, "name": "n1", "host": "127.0.0.1", "raft_port": 7101, "api_port": 8101, "data_dir": "d1"},
        {"id": 1, "name": "n2", "host": "127.0.0.1", "raft_port": 7101, "api_port": "x", "data_dir": "d2"},
    ]}))
    with pytest.raises(ConfigError) as info:
        ClusterConfig.load(bad_schema)
    paths = {p for p, _ in info.value.problems}
    # every problem is reported with its path, not just the first one
    assert {"nodes[1].id", "nodes[1].raft_port", "nodes[1].api_port"} <= paths, info.value.problems
    assert "already used by nodes[0]" in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["schema.yaml", "syntax.yaml"]  # no data dir created


# --- row: unknown node ----------------------------------------------------------------------


def test_unknown_node(cluster):
    with pytest.raises(UnknownNode, match="unknown node 'n9'"):
        ClusterConfig.load(cluster.config_path).node("n9")
    leader = cluster.wait_leader()
    before = state(cluster)
    status, answer = error_of(cluster, leader, "DELETE", "/peers/99")
    assert status == 400 and answer["type"] == "MembershipError", answer
    status, answer = error_of(cluster, leader, "POST", "/peers/99/role", {"role": "voter"})
    assert status == 400 and answer["type"] == "MembershipError", answer
    unchanged(before, cluster)


# --- row: removing the last voter -----------------------------------------------------------


def test_removing_the_last_voter(tmp_path):
    procs = Processes()
    try:
        c = LocalCluster(tmp_path, procs, 1)
        c.init()
        c.start_all()
        leader = c.wait_leader()
        c.tx(leader, "open_account", "solo", 1)
        before = state(c)
        status, answer = error_of(c, leader, "DELETE", f"/peers/{c.node_id(leader)}")
        assert status == 400 and answer["type"] == "MembershipError"
        assert answer["error"] == "cannot remove the last voter"
        status, answer = error_of(c, leader, "POST", f"/peers/{c.node_id(leader)}/role", {"role": "spare"})
        assert status == 400 and answer["error"] == "cannot demote the last voter"
        unchanged(before, c)
    finally:
        procs.stop_all()


# --- row: transfer to a non-member ----------------------------------------------------------


def test_transfer_to_a_non_member(cluster):
    leader = cluster.wait_leader()
    before = state(cluster)
    status, answer = error_of(cluster, leader, "POST", "/transfer", {"to": 99})
    assert status == 400 and answer["type"] == "MembershipError"
    assert answer["error"] == "transfer target 99 is not a voter"
    unchanged(before, cluster)
    assert cluster.wait_leader() == leader


# --- row: oversize transaction --------------------------------------------------------------


def test_oversize_transaction(cluster):
    leader = cluster.wait_leader()
    before = state(cluster)
    huge = "x" * (2 << 20)  # above the 1 MiB group-commit batch limit
    status, answer = error_of(cluster, leader, "POST", "/tx/open_account", {"args": [huge, 1]})
    assert status == 400 and answer["type"] == TooBig.__name__
    assert "exceeds the batch limit" in answer["error"]
    unchanged(before, cluster)


# --- row: unregistered transaction name -----------------------------------------------------


def test_unregistered_transaction_name(cluster):
    leader = cluster.wait_leader()
    before = state(cluster)
    status, answer = error_of(cluster, leader, "POST", "/tx/drop_all_tables", {"args": []})
    assert status == 404 and answer["type"] == UnknownTransaction.__name__
    assert answer["error"] == "unknown transaction 'drop_all_tables' in store 'bank'"
    unchanged(before, cluster)


# --- row: wrong-type arguments --------------------------------------------------------------


def test_wrong_type_arguments(cluster):
    leader = cluster.wait_leader()
    # wrong shape: refused while encoding, nothing is logged
    before = state(cluster)
    status, answer = error_of(cluster, leader, "POST", "/tx/deposit", {"args": ["ann", 5, 6]})
    assert status == 400 and answer["type"] == UsageError.__name__
    assert answer["error"].startswith("bad arguments for 'deposit'")
    status, answer = error_of(cluster, leader, "POST", "/tx/deposit", {"args": {"owner": "ann"}})
    assert status == 400 and answer["error"] == "'args' must be a JSON array"
    unchanged(before, cluster)
    # right shape, wrong type: the transaction rejects it on every replica, no state change
    with pytest.raises(TransactionFailed) as info:
        cluster.client(leader).tx("deposit", "ann", "5")
    assert info.value.exception == "ValueError"
    assert "amount must be a positive integer, got '5'" in str(info.value)
    unchanged(before, cluster, logged=True)


# --- row: wrong token -----------------------------------------------------------------------


def test_wrong_token(cluster):
    leader = cluster.wait_leader()
    before = state(cluster)
    wrong = "wrong-token-must-not-be-logged-7f3a"
    for token in (wrong, None):
        with pytest.raises(Unauthorized):
            cluster.client(leader, token=token).tx("deposit", "ann", 1)
        status, answer = error_of(cluster, leader, "GET", "/status", token=token)
        assert status == 401 and answer["type"] == "Unauthorized"
        assert answer["error"] in ("missing or wrong API token", "missing API token")
    status, answer = error_of(cluster, leader, "POST", "/snapshot", token=wrong)
    assert status == 401
    unchanged(before, cluster)
    for name in cluster.running:  # neither the real nor the offered token reaches a log
        log_text = cluster.log_tail(name, lines=100000)
        assert wrong not in log_text and cluster.token not in log_text


def test_api_binds_to_the_node_host_not_all_interfaces(cluster):
    """Default bind address is the node's own host (127.0.0.1 here), not 0.0.0.0: another
    loopback address on the same machine must not reach the API."""
    name = next(iter(cluster.running))
    port = cluster.node(name)["api_port"]
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    with pytest.raises(OSError), socket.create_connection(("127.0.0.2", port), timeout=2):
        pass


# --- row: non-deterministic transaction detected on replay ----------------------------------


def test_non_deterministic_transaction_fails_standalone_replay(tmp_path):
    from bknr_cluster.store import Store
    from tests.security import nondet_app

    path = tmp_path / "store"
    with Store(path, definition=nondet_app.definition, sync=False) as s:
        s.execute("put", "a", "1")
        s.execute("flaky", "b")
        digest = s.digest()
    files = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    nondet_app.FAIL_ON_REPLAY["on"] = True
    try:
        with pytest.raises(NonDeterminism, match="succeeded when logged but fails on replay"):
            Store(path, definition=nondet_app.definition, sync=False)
    finally:
        nondet_app.FAIL_ON_REPLAY["on"] = False
    # the failed replay changed nothing on disk, and a correct replay still gives the old state
    assert {p.name: p.read_bytes() for p in path.iterdir() if p.is_file() and p.name in files} == files
    with Store(path, definition=nondet_app.definition, sync=False) as s:
        assert s.digest() == digest


def test_non_deterministic_transaction_shows_as_digest_mismatch(tmp_path):
    from bknrctl.main import app
    from typer.testing import CliRunner

    procs = Processes()
    try:
        c = LocalCluster(tmp_path, procs, 3, store="tests.security.nondet_app:definition")
        c.init()
        c.start_all()
        leader = c.wait_leader()
        c.wait_definitions(leader)  # the cluster layer's own entries first: then the log is still
        c.tx(leader, "put", "a", "1")
        st = c.wait_converged()
        assert len({s["digest"] for s in st.values()}) == 1
        c.tx(leader, "stamp", "b")

        def diverged() -> dict:
            sts = {n: c.status(n) for n in c.running}
            if len({s["applied_index"] for s in sts.values()}) != 1:
                return {}
            return sts if len({s["digest"] for s in sts.values()}) > 1 else {}
        wait_until(diverged, 20, "replicas at the same applied index with different digests")
        r = CliRunner().invoke(app, ["--config", str(c.config_path), "status", "--output", "json"])
        report = json.loads(r.stdout)
        assert report["summary"] == "degraded" and r.exit_code == 4  # monitoring sees it
        assert any(row["digest_match"] is False for row in report["nodes"]), report
    finally:
        procs.stop_all()


def test_table_in_docs_lists_every_row():
    """docs/security.md's table and this module stay in step."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    for row in ("malformed YAML", "unknown node", "removing the last voter", "transfer to a non-member",
                "oversize transaction", "unregistered transaction name", "wrong-type arguments",
                "non-deterministic transaction", "wrong token", "rogue raft peer"):
        assert row in doc.lower() or row in doc, row
    assert MembershipError.__name__ in doc


def test_token_comparison_is_constant_time():
    """Guard: the API compares tokens with hmac.compare_digest, never ``==`` (timing leak)."""
    import inspect

    from bknr_cluster.cluster.api import Api
    src = inspect.getsource(Api._check_token)
    assert "hmac.compare_digest(" in src and "== self.token" not in src and "self.token ==" not in src
