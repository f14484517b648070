"""``bknrctl failover --drill --app``: the end-user drill through a HAProxy the drill starts
itself, against bank web applications hosted by nodes bknrctl started."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest
import yaml

from bknr_cluster.cluster.config import ClusterConfig
from tests.cli.conftest import write_yaml
from tests.cli.realcluster import invoke, kill_started, node_pids, start_cluster
from tests.support import free_ports

pytestmark = pytest.mark.skipif(not Path(shutil.which("haproxy") or "/usr/sbin/haproxy").exists(),
                                reason="needs haproxy (scripts/install-deps.sh installs it)")


def app_yaml(tmp_path: Path) -> Path:
    ports = free_ports(9)
    path = write_yaml(tmp_path, ports[:6], n=3)
    data = yaml.safe_load(path.read_text())
    data["app"] = {"asgi": "examples.bank.web:app"}
    for node, port in zip(data["nodes"], ports[6:], strict=True):
        node["app_port"] = port
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_end_user_drill_through_haproxy(runner, tmp_path: Path) -> None:
    path = app_yaml(tmp_path)
    seen: set[int] = set()
    try:
        seen |= start_cluster(runner, path)
        plot = tmp_path / "app.png"
        r = invoke(runner, path, "failover", "--drill", "--app", "--yes", "--rounds", "2", "--clients", "16",
                   "--plot", str(plot), "-o", "json")
        seen |= set(node_pids(path).values())
        assert r.exit_code == 0, r.output
        rep = json.loads(r.stdout)
        for key in ("user_errors", "requests", "p99_ms", "max_ms", "longest_stall_ms", "lost_total",
                    "digests_match"):
            assert key in rep, key
        assert len(rep["rounds"]) == 2 and rep["requests"] > 0
        assert rep["requests"] == sum(x["requests"] for x in rep["rounds"])
        assert rep["user_errors"] == sum(x["user_errors"] for x in rep["rounds"])
        assert rep["lost_total"] == 0 and rep["digests_match"] and rep["bank_total_ok"]
        assert all(x["acked"] > 0 and x["new_leader"] != x["victim"] for x in rep["rounds"])
        assert rep["p50_ms"] <= rep["p99_ms"] <= rep["max_ms"]
        assert plot.stat().st_size > 0
        assert not (tmp_path / "haproxy" / "haproxy.pid").exists()   # the drill stopped it
        # a rolling restart brings every node's application back
        r = invoke(runner, path, "restart")
        seen |= set(node_pids(path).values())
        assert r.exit_code == 0, r.output
        cfg = ClusterConfig.load(path)
        for n in cfg.nodes:
            with urllib.request.urlopen(n.app_url + "/accounts", timeout=10) as answer:
                assert answer.status == 200 and json.loads(answer.read())["node"] == n.name
    finally:
        seen |= set(node_pids(path).values())
        kill_started(path, seen)


def test_app_drill_needs_an_app_section(runner, tmp_path: Path) -> None:
    path = write_yaml(tmp_path, free_ports(6), n=3)
    r = invoke(runner, path, "failover", "--drill", "--app", "--yes")
    assert r.exit_code == 2 and "needs an 'app' section" in r.output
