"""A real nginx on loopback in front of the cluster, routing by GET /leader, during a drill.

The proxied client (``failover --drill --via``) must see the failover gap as failed requests and
then succeed against the new leader, with no acknowledged transfer lost.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from tests.cli.conftest import TOKEN, write_yaml
from tests.cli.realcluster import invoke, kill_started, node_pids, start_cluster
from tests.support import free_ports, wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="needs nginx")


def render_nginx(runner, path: Path, d: Path, front: int, gates: list[int]) -> Path:
    """``bknrctl lb nginx``: the templates in configs/ filled in from the YAML."""
    conf = d / "nginx.conf"
    r = invoke(runner, path, "lb", "nginx", "-o", str(conf), "--dir", str(d), "--port", str(front),
               "--gate-ports", ",".join(map(str, gates)))
    assert r.exit_code == 0, r.output
    return conf


def _http(port: int, method: str, path: str, body: str = "") -> tuple[int, str]:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request(method, path, body=body or None, headers={"Authorization": f"Bearer {TOKEN}",
                                                            "Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def test_drill_through_nginx(runner, tmp_path: Path, procs) -> None:
    ports = free_ports(10)
    path = write_yaml(tmp_path, ports[:6], n=3)
    front, gates = ports[6], ports[7:10]
    from bknr_cluster.cluster.config import ClusterConfig

    cfg = ClusterConfig.load(path)
    d = tmp_path / "nginx"
    d.mkdir()
    conf = render_nginx(runner, path, d, front, gates)
    assert all(f"proxy_pass http://127.0.0.1:{n.api_port}/leader;" in conf.read_text()
               for n in cfg.nodes)
    seen: set[int] = set()
    try:
        seen |= start_cluster(runner, path)
        lb = procs.start([NGINX, "-c", str(conf), "-p", str(d)], log=d / "nginx.out")

        def up() -> bool:
            if lb.poll() is not None:
                raise AssertionError((d / "nginx.out").read_text() + (d / "error.log").read_text())
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", front)) == 0
        wait_until(up, 10, "nginx listening")
        # the LB always lands on the leader
        for _ in range(6):
            assert _http(front, "GET", "/leader")[0] == 200
        st, body = _http(front, "POST", "/tx/open_account", json.dumps({"args": ["lb-ann", 10]}))
        assert st == 200, body

        r = invoke(runner, path, "failover", "--drill", "--rounds", "1", "--via",
                   f"http://127.0.0.1:{front}", "-o", "json", "--workload", "bank", "--yes")
        seen |= set(node_pids(path).values())
        assert r.exit_code == 0, r.output
        rep = json.loads(r.stdout)
        rnd = rep["rounds"][0]
        assert rnd["acked"] > 0 and rnd["lost"] == 0 and rep["digests_match"] and rep["bank_total_ok"]
        assert rnd["failed_requests"] >= 1          # the proxied client saw the gap ...
        assert rnd["write_gap_ms"] is not None      # ... and then succeeded on the new leader
        # a killed leader is detected by its closed connections, not its election timeout
        # (docs/failover.md, detection paths): the gap is real but no longer ~T long
        assert 0 < rnd["write_gap_ms"] < 30_000
        st, body = _http(front, "POST", "/tx/transfer", json.dumps(
            {"args": ["lb-ann", "drill-0", 1, "after-drill"]}))
        assert st == 200, body
    finally:
        seen |= set(node_pids(path).values())
        kill_started(path, seen)
