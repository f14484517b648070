"""The web application hosted in bknr-node: the YAML ``app`` section, start/stop, follower
policies, idempotent transfers, bad input, WSGI through a2wsgi, and the node refusing to start."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bknr_cluster.cluster.config import ClusterConfig
from bknr_cluster.errors import ConfigError
from tests.cluster.harness import LocalCluster
from tests.support import wait_until


def http(url: str, body: dict | None = None, headers: dict | None = None,
         method: str | None = None, timeout: float = 15) -> tuple[int, dict | str, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=timeout) as r:
            status, raw, hdrs = r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read().decode(), dict(e.headers)
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, raw, hdrs


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


# --- configuration --------------------------------------------------------------------------------

def _yaml(app: dict | None, nodes: list[dict]) -> dict:
    data = {"group": "g", "store": "examples.bank.app:definition", "nodes": nodes}
    if app is not None:
        data["app"] = app
    return data


def _node(i: int, **kw: object) -> dict:
    return {"id": i, "name": f"n{i}", "host": "127.0.0.1", "raft_port": 7000 + i,
            "api_port": 8000 + i, "data_dir": f"d{i}", **kw}


@pytest.mark.parametrize(("app", "nodes", "path", "words"), [
    ({"asgi": "a.b:app", "wsgi": "c:d"}, [_node(1, app_port=9001)], "app", "exactly one"),
    ({"asgi": "not a spec"}, [_node(1, app_port=9001)], "app.asgi", "module:app"),
    ({"asgi": "a:b", "threads": 4}, [_node(1, app_port=9001)], "app.threads", "wsgi"),
    ({"wsgi": "a:b", "threads": 0}, [_node(1, app_port=9001)], "app.threads", "[1, 1024]"),
    ({"asgi": "a:b", "colour": 1}, [_node(1, app_port=9001)], "app.colour", "unknown key"),
    ({"asgi": "a:b"}, [_node(1)], "nodes[0].app_port", "required"),
    ({"asgi": "a:b"}, [_node(1, app_port=8001)], "nodes[0].app_port", "port 8001"),
    ({"asgi": "a:b", "port": 9001}, [_node(1), _node(2)], "nodes[1].app_port", "already used"),
    (None, [_node(1, app_port=9001)], "nodes[0].app_port", "needs an 'app' section"),
])
def test_app_section_is_validated_with_paths(app, nodes, path, words) -> None:
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_dict(_yaml(app, nodes), Path("/tmp"))
    assert any(p == path and words in m for p, m in info.value.problems), info.value.problems


def test_app_section_ports_per_node_and_default() -> None:
    cfg = ClusterConfig.from_dict(_yaml({"wsgi": "a:b", "threads": 8, "port": 9100},
                                        [_node(1), {**_node(2), "host": "10.0.0.2"},
                                         _node(3, app_port=9103)]), Path("/tmp"))
    assert cfg.app is not None and (cfg.app.kind, cfg.app.threads) == ("wsgi", 8)
    assert [n.app_url for n in cfg.nodes] == ["http://127.0.0.1:9100", "http://10.0.0.2:9100",
                                              "http://127.0.0.1:9103"]
    assert ClusterConfig.from_dict(_yaml(None, [_node(1)]), Path("/tmp")).nodes[0].app_url == ""


# --- the node refuses to start ----------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "words"), [
    ("tests.web.no_such_module:app", "cannot import 'tests.web.no_such_module'"),
    ("tests.web.apps:missing", "has no attribute 'missing'"),
    ("tests.web.apps:NOT_AN_APP", "is not an ASGI application"),
    ("tests.web.apps:flask_app", "use app.wsgi"),
])
def test_node_refuses_an_app_it_cannot_serve(tmp_path: Path, procs, spec: str, words: str) -> None:
    cluster = LocalCluster(tmp_path, procs, 1, app={"asgi": spec})
    r = cluster.run_node_cmd("n1", timeout=60)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "INFO" not in ln]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and "app.asgi" in lines[0] and words in lines[0], r.stderr
    assert not (cluster.data_dir("n1") / "raft").exists() or not any(
        (cluster.data_dir("n1") / "raft").iterdir())  # nothing started


def test_node_refuses_a_taken_app_port(tmp_path: Path, procs) -> None:
    cluster = LocalCluster(tmp_path, procs, 1, app={"asgi": "examples.bank.web:app"})
    with socket.socket() as held:
        held.bind(("127.0.0.1", cluster.node("n1")["app_port"]))
        held.listen(1)
        r = cluster.run_node_cmd("n1", timeout=60)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "nodes[0].app_port" in last and "address already in use" in last.lower(), r.stderr


# --- the bank web application on three nodes ---------------------------------------------------------

def test_bank_web_app_on_three_nodes(tmp_path: Path, procs) -> None:
    cluster = LocalCluster(tmp_path, procs, 3, app={"asgi": "examples.bank.web:app"},
                           election_timeout_ms=300, heartbeat_ms=30)
    cluster.init()
    cluster.start_all()
    leader = cluster.wait_leader()
    follower = next(n for n in cluster.names if n != leader)
    lead, fol = cluster.app_url(leader), cluster.app_url(follower)
    assert http(fol + "/accounts", {"owner": "ann", "balance": 100})[0] == 200   # forwarded
    assert http(lead + "/accounts", {"owner": "bob", "balance": 100})[0] == 200
    assert http(lead + "/accounts", {"owner": "bob", "balance": 1})[0] == 409    # exists

    key = {"Idempotency-Key": "web-1"}
    move = {"from": "ann", "to": "bob", "amount": 5}
    st, body, _ = http(fol + "/transfers", move, key)
    assert st == 200 and body["duplicate"] is False, body
    st, body, _ = http(lead + "/transfers", move, key)            # a retry, through another node
    assert st == 200 and body["duplicate"] is True, body
    assert http(lead + "/transfers", {**move, "amount": 6}, key)[0] == 422  # key reused
    # follower policies chosen per request
    st, _, hdrs = http(fol + "/transfers?on_follower=redirect", move, {"Idempotency-Key": "web-2"})
    assert st == 307 and hdrs["location"] == lead + "/transfers?on_follower=redirect"
    st, body, _ = http(fol + "/transfers?on_follower=503", move, {"Idempotency-Key": "web-3"})
    assert st == 503 and body["leader_app"] == lead
    # local reads everywhere; the consistent read only on the leader
    cluster.wait_converged()
    for name in cluster.names:
        st, body, _ = http(cluster.app_url(name) + "/accounts")
        assert st == 200 and {a["owner"]: a["balance"] for a in body["accounts"]} == \
            {"ann": 95, "bob": 105} and body["node"] == name
    assert http(lead + "/accounts?consistent=1")[0] == 200
    assert http(fol + "/accounts?consistent=1")[0] == 503
    page = http(fol + "/")[1]
    assert f'<b id="node">{follower}</b>' in page and "follower" in page and ">95<" in page

    # bad input: a 4xx from the application, nothing applied, nothing logged (once the leader's
    # monitor has published the members' definitions and every node applied them: their entries
    # and log lines are not ours)
    cluster.wait_definitions(leader)
    cluster.wait_converged()
    logs = {n: (cluster.data_dir(n) / "node.log").read_text() for n in cluster.names}
    applied = cluster.status(leader)["applied_index"]
    for body, headers in (({"from": "ann", "to": "bob", "amount": "lots"}, key),
                          ({"from": "ann", "to": "bob", "amount": 1}, {}),
                          ({"from": "ann"}, key), (None, key)):
        st, answer, _ = http(lead + "/transfers", body, headers, method="POST")
        assert 400 <= st < 500 and answer["error"], (body, answer)
    st, answer, _ = http(lead + "/transfers", move, {"Idempotency-Key": "web-4"},)
    assert st == 200
    assert cluster.status(leader)["applied_index"] == applied + 1   # only the good one
    for n in cluster.names:
        assert (cluster.data_dir(n) / "node.log").read_text() == logs[n]


def test_sigterm_hands_over_then_drains_in_flight_requests(tmp_path: Path, procs) -> None:
    cluster = LocalCluster(tmp_path, procs, 3, app={"asgi": "tests.web.apps:slow_app", "drain_s": 10},
                           election_timeout_ms=300, heartbeat_ms=30)
    cluster.init()
    cluster.start_all()
    leader = cluster.wait_leader()
    url = cluster.app_url(leader)
    answers: list[tuple] = []
    threads = [threading.Thread(target=lambda o=o: answers.append(
        http(f"{url}/slow?owner={o}&s=1.5", {}))) for o in ("d1", "d2", "d3")]
    for t in threads:
        t.start()
    wait_until(lambda: len(http(url + "/started")[1]["started"]) == 3, 10, "requests in flight")
    assert http(url + "/started")[1]["state_is_store"] is True
    assert cluster.stop(leader, timeout=30) == 0
    for t in threads:
        t.join(30)
    assert [a[0] for a in answers] == [200, 200, 200], answers
    log = (cluster.data_dir(leader) / "node.log").read_text()
    assert "leadership transferred" in log
    assert log.index("leadership transferred") < log.index("Shutting down")
    new = cluster.wait_leader(among=[n for n in cluster.names if n != leader])
    for o in ("d1", "d2", "d3"):
        assert cluster.client(new).query("account", o, consistent=True)["result"]["balance"] == 7


def test_flask_app_executes_a_transaction(tmp_path: Path, procs) -> None:
    cluster = LocalCluster(tmp_path, procs, 1, app={"wsgi": "tests.web.apps:flask_app", "threads": 4})
    cluster.init()
    cluster.start_all()
    cluster.wait_leader()
    st, body, _ = http(cluster.app_url("n1") + "/open/flo?balance=12", {})
    assert st == 200 and body["result"]["balance"] == 12 and body["count"]["accounts"] == 1, body
    assert cluster.client("n1").query("account", "flo")["result"]["balance"] == 12
    assert cluster.stop("n1") == 0


def test_app_stops_with_the_node(tmp_path: Path, procs) -> None:
    cluster = LocalCluster(tmp_path, procs, 1, app={"asgi": "examples.bank.web:app"})
    cluster.init()
    cluster.start_all()
    cluster.wait_leader()
    port = cluster.node("n1")["app_port"]
    assert http(cluster.app_url("n1") + "/accounts")[0] == 200
    assert cluster.stop("n1") == 0
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0   # the port is free again
    cluster.start("n1")
    wait_until(lambda: http(cluster.app_url("n1") + "/accounts")[0] == 200, 20, "app back")
