"""Integration tests on one shared 3-node cluster of real node processes (non-destructive cases)."""

from __future__ import annotations

import hashlib

import pytest

from bknr_cluster.errors import NotLeader, TransactionFailed, Unauthorized, UnknownTransaction, UsageError
from tests.cluster.harness import LocalCluster
from tests.support import Processes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    procs = Processes()
    try:
        c = LocalCluster(tmp_path_factory.mktemp("cluster"), procs, 3)
        c.init()
        c.start_all()
        c.wait_leader()
        yield c
    finally:
        procs.stop_all()


def followers(c: LocalCluster, leader: str) -> list[str]:
    return [n for n in c.running if n != leader]


def test_writes_on_the_leader_reach_every_replica_with_equal_digests(cluster):
    leader = cluster.wait_leader()
    cl = cluster.client(leader)
    cl.tx("open_account", "ann", 100)
    cl.tx("open_account", "bob", 0)
    res = cl.tx("transfer", "ann", "bob", 30, "rep-1")
    assert res["result"]["src_balance"] == 70 and res["index"] > 0
    st = cluster.wait_converged(min_index=res["index"])
    assert len({s["digest"] for s in st.values()}) == 1
    for name in cluster.running:  # each replica answers from its own state
        q = cluster.client(name).query("account", "bob")
        assert q["result"]["balance"] == 30 and q["applied_index"] >= res["index"]


def test_follower_write_raises_not_leader_with_a_usable_hint(cluster):
    leader = cluster.wait_leader()
    f = followers(cluster, leader)[0]
    before = cluster.status(f)["applied_index"]
    with pytest.raises(NotLeader) as info:
        cluster.client(f).tx("open_account", "carol", 5)
    hint = info.value
    assert hint.leader_id == cluster.node_id(leader)
    assert hint.leader_api == cluster.api_url(leader)
    # nothing was logged by the refused call; the hint works
    assert cluster.client(leader).query("account", "carol")["result"] is None
    from bknr_cluster.cluster.client import ApiClient
    ApiClient(hint.leader_api, cluster.token).tx("open_account", "carol", 5)
    assert cluster.status(leader)["applied_index"] > before


def test_forward_runs_the_transaction_on_the_leader(cluster):
    leader = cluster.wait_leader()
    f = followers(cluster, leader)[-1]
    cluster.client(leader).tx("open_account", "dave", 10)
    res = cluster.client(f).tx("deposit", "dave", 7, forward=True)
    assert res["result"] == 17
    cluster.wait_converged(min_index=res["index"])
    assert cluster.client(f).query("account", "dave")["result"]["balance"] == 17


def test_a_failing_transaction_raises_on_the_caller_and_changes_no_replica(cluster):
    leader = cluster.wait_leader()
    cl = cluster.client(leader)
    cl.tx("open_account", "erin", 5)
    st0 = cluster.wait_converged()
    digest0 = next(iter(st0.values()))["digest"]
    with pytest.raises(TransactionFailed) as info:
        cl.tx("transfer", "erin", "ann", 500, "fail-1")
    assert info.value.exception == "ValueError" and "insufficient" in str(info.value)
    status, body = cl.request("POST", "/tx/open_account", {"args": ["erin", 1]})
    assert status == 409 and body["type"] == "TransactionFailed"
    assert body["exception"] == "IntegrityError"
    # the failed entries were applied (index moved) and left every replica unchanged
    st1 = cluster.wait_converged(min_index=next(iter(st0.values()))["applied_index"] + 2)
    assert {s["digest"] for s in st1.values()} == {digest0}
    assert not cl.query("has_transfer", "fail-1")["result"]


def test_bad_token_gets_401_and_nothing_happens(cluster):
    leader = cluster.wait_leader()
    before = cluster.wait_converged()
    for token in (None, "wrong-token", cluster.token + "x"):
        bad = cluster.client(leader, token=token)
        with pytest.raises(Unauthorized):
            bad.tx("open_account", "mallory", 1000)
        with pytest.raises(Unauthorized):
            bad.status()
        for method, path, body in (("POST", "/snapshot", {}), ("POST", "/transfer", {"to": 0}),
                                   ("DELETE", "/peers/2", None),
                                   ("POST", "/peers", {"id": 9, "address": "127.0.0.1:1"})):
            status, answer = bad.request(method, path, body)
            assert status == 401 and answer["type"] == "Unauthorized"
        assert bad.health()["ok"]  # liveness needs no token
    after = cluster.wait_converged()
    assert {s["applied_index"] for s in after.values()} == {next(iter(before.values()))["applied_index"]}
    assert cluster.status(leader)["role"] == "leader"
    assert len(cluster.status(leader)["configuration"]) == 3
    assert cluster.client(leader).query("account", "mallory")["result"] is None


def test_malformed_input_gets_400_and_unknown_transaction_404(cluster):
    leader = cluster.wait_leader()
    cl = cluster.client(leader)
    with pytest.raises(UnknownTransaction):
        cl.tx("no_such_tx", 1)
    conn = cl._conn()
    conn.request("POST", "/tx/deposit", body=b"{not json",
                 headers={"Authorization": f"Bearer {cluster.token}"})
    resp = conn.getresponse()
    assert resp.status == 400 and b"not valid JSON" in resp.read()
    for body in ({"args": "x"}, {"kwargs": []}):
        status, answer = cl.request("POST", "/tx/deposit", body)
        assert status == 400 and answer["error"]
    with pytest.raises(UsageError):
        cl.tx("deposit", "ann")  # missing argument: refused before logging
    status, answer = cl.request("POST", "/peers/2/role", {"role": "king"})
    assert status == 400


def test_leader_endpoint_backup_and_metrics(cluster):
    leader = cluster.wait_leader()
    for name in cluster.running:
        status, body = cluster.client(name, token=None).request("GET", "/leader", auth=False)
        assert (status == 200) == (name == leader)
        assert body["leader_id"] == cluster.node_id(leader)
    status, (data, headers) = cluster.client(leader).request("GET", "/backup", raw=True)
    assert status == 200 and hashlib.sha256(data).hexdigest() == headers["X-Bknr-Sha256"]
    assert int(headers["X-Bknr-Index"]) > 0 and headers["X-Bknr-Group"] == "test"
    f = followers(cluster, leader)[0]
    status, _ = cluster.client(f).request("GET", "/backup", raw=True)
    assert status == 503
    status, text = cluster.client(leader, token=None).request("GET", "/metrics", auth=False)
    assert status == 200
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, s.labels.get("node")): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("bknr_is_leader", leader)] == 1
    assert "bknr_follower_lag" in text


def test_consistent_query_on_leader_and_not_leader_on_follower(cluster):
    leader = cluster.wait_leader()
    cluster.client(leader).tx("deposit", "ann", 1)
    q = cluster.client(leader).query("total_balance", consistent=True)
    assert q["result"] == sum(a["balance"] for a in
                              cluster.client(leader).query("accounts")["result"])
    with pytest.raises(NotLeader):
        cluster.client(followers(cluster, leader)[0]).query("total_balance", consistent=True)


def test_snapshot_and_transfer_leadership(cluster):
    leader = cluster.wait_leader()
    idx = cluster.client(leader).call("POST", "/snapshot", {})["index"]
    assert idx > 0 and cluster.status(leader)["snapshot_index"] >= idx
    target = followers(cluster, leader)[0]
    answer = cluster.client(leader).call("POST", "/transfer", {"to": cluster.node_id(target)})
    assert answer["leader_id"] == cluster.node_id(target)
    assert cluster.wait_leader() == target
    res = cluster.client(target).tx("deposit", "ann", 2)
    cluster.wait_converged(min_index=res["index"])


def test_a_failing_query_answers_409_with_the_exception_name(cluster):
    leader = cluster.wait_leader()
    status, body = cluster.client(leader).request("POST", "/query/account", {"args": []})
    assert status == 409 and body["exception"] == "TypeError"
    status, body = cluster.client(leader).request("POST", "/query/nope", {})
    assert status == 404
