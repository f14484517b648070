"""``GET /leader?wait_ms=``: the long poll a failover-aware client holds on every node. It answers
the moment the node leads (and accepts entries), and stops polling when its client goes away."""

from __future__ import annotations

import http.client
import json
import socket
import tempfile
import threading
import time

import pytest

from bknr_cluster.cluster.api import ApiServer
from bknr_cluster.cluster.settings import ClusterSettings
from bknr_cluster.cluster.store import ClusterStore
from examples.bank.app import definition as bank
from tests.cluster.fake_engine import FakeEngine
from tests.support import free_ports, sample_for, wait_until

TOKEN = "leader-wait-token-0123456789"


class CountingEngine(FakeEngine):
    """The fake engine, counting the API's status calls (not the monitor's); ``transferee`` set
    = a hand-over running."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.status_calls = 0
        self.transferee = 0

    def status(self):
        if threading.current_thread().name.startswith("bknr-api"):
            self.status_calls += 1
        return {**super().status(), "transferee": self.transferee if self.leader else 0}


@pytest.fixture
def node():
    tmp = tempfile.TemporaryDirectory(prefix="bknr-leader-wait-")
    cs = ClusterStore(bank, ClusterSettings(1, "127.0.0.1:7001:1", tmp.name, token=TOKEN),
                      engine_factory=CountingEngine)
    cs.start()
    (port,) = free_ports(1)
    server = ApiServer(cs, "127.0.0.1", port, TOKEN)
    server.start_in_thread()
    try:
        yield cs, port
    finally:
        server.stop_thread()
        cs.stop()
        tmp.cleanup()


def _get(port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_a_leader_handing_over_answers_503_and_the_wait_ends_when_it_leads_again(node):
    cs, port = node
    engine = cs.engine
    assert _get(port, "/leader")[0] == 200
    engine.transferee = 2
    status, body = _get(port, "/leader")
    assert status == 503 and body["transferring_to"] == 2 and body["leader"] is False
    answer: list = []
    waiter = threading.Thread(target=lambda: answer.append(_get(port, "/leader?wait_ms=2000")))
    t0 = time.monotonic()
    waiter.start()
    wait_until(lambda: engine.status_calls > 5, 5.0, "the wait polling")
    engine.transferee = 0                                   # the transfer was aborted: it leads
    waiter.join(5.0)
    assert answer and answer[0][0] == 200 and answer[0][1]["leader"] is True
    assert time.monotonic() - t0 < 1.5


def test_a_long_poll_stops_when_its_client_goes_away(node):
    cs, port = node
    engine = cs.engine
    engine.leader = False
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /leader?wait_ms=2000 HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_until(lambda: engine.status_calls > 5, 5.0, "the handler polling the engine")
    sock.close()
    # no event marks "stopped": sample the count over a window well inside the 2 s wait
    counts = sample_for(lambda: engine.status_calls, 0.5)
    assert counts[-1] - counts[len(counts) // 3] <= 2, "the long poll kept running after its client left"


def test_with_the_real_engine_a_long_poll_is_answered_when_a_transfer_makes_its_node_lead(tmp_path, procs):
    """The native engine's role (no status round trip): a follower's long poll ends with 200
    once a planned transfer makes it leader; the old leader then names it."""
    from tests.cluster.harness import LocalCluster

    c = LocalCluster(tmp_path, procs, 3)
    c.init()
    c.start_all()
    leader = c.wait_leader()
    follower = next(n for n in c.names if n != leader)
    port = int(c.api_url(follower).rsplit(":", 1)[1])
    lport = int(c.api_url(leader).rsplit(":", 1)[1])
    assert _get(lport, "/leader")[1]["leader"] is True
    status, body = _get(port, "/leader?wait_ms=50")  # not leading: answered after the wait
    assert status == 503 and body["leader_id"] == c.node_id(leader) and body["node_id"] == c.node_id(follower)
    answer: list = []
    waiter = threading.Thread(target=lambda: answer.append(_get(port, "/leader?wait_ms=2000")))
    waiter.start()
    # a window, not synchronisation: the poll (a 2 s wait) must still be pending after 0.2 s
    assert not any(sample_for(lambda: bool(answer), 0.2))
    c.client(leader).call("POST", "/transfer", {"to": c.node_id(follower)})
    waiter.join(5.0)
    assert answer, "the long poll did not end"
    status, body = answer[0]
    assert status == 200 and body["leader"] is True and body["node_id"] == c.node_id(follower)
    wait_until(lambda: _get(lport, "/leader")[1]["leader_id"] == c.node_id(follower), 5.0,
               "the old leader naming the new one")
    assert _get(lport, "/leader")[0] == 503
