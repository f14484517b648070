"""The operator's commands of issue 16 against real node processes: /metrics (parsed by the
Prometheus client's own parser, checked against the shipped alert rules and dashboard), history
(kept across restarts), leader transfer --at / leader cancel, reinit, backup --check."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.cli.conftest import write_yaml
from tests.cli.realcluster import client, invoke, kill_started, node_pids
from tests.support import ROOT, free_ports, wait_until

# PromQL words that are not metric names
PROMQL = {"max", "min", "sum", "by", "rate", "increase", "histogram_quantile", "time", "le", "node",
          "group", "follower", "result", "job", "instance", "without", "avg", "count", "on",
          "ignoring", "bool", "and", "or", "unless", "code", "refused_in", "refused_out",
          "m", "s", "h", "d"}


def metric_names(expr: str) -> set[str]:
    """Identifiers of a PromQL expression that are metric names (labels and keywords removed)."""
    expr = re.sub(r'\{[^}]*\}', "", expr)          # label matchers
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)         # range selectors
    expr = re.sub(r"by \([^)]*\)", "", expr)
    return {w for w in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr) if w not in PROMQL}


def scrape(path: Path, name: str) -> dict[str, list]:
    """Sample name -> samples, parsed by prometheus_client's own text parser."""
    n = client(path, name)
    with urllib.request.urlopen(f"{n.api_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    samples: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def _status(runner, path: Path) -> dict:
    r = invoke(runner, path, "status", "-o", "json")
    return json.loads(r.stdout) if r.stdout.strip() else {}


@pytest.fixture
def cluster(runner, tmp_path: Path):
    path = write_yaml(tmp_path, free_ports(6), n=3)
    seen: set[int] = set()

    def track() -> None:
        seen.update(node_pids(path).values())
    try:
        assert invoke(runner, path, "init").exit_code == 0
        assert invoke(runner, path, "start").exit_code == 0
        track()
        wait_until(lambda: invoke(runner, path, "status").exit_code == 0, 20, "a healthy cluster")
        yield path, track
    finally:
        track()
        kill_started(path, seen)


def test_metrics_alerts_dashboard_history_schedule(runner, cluster) -> None:
    path, track = cluster
    leader = _status(runner, path)["leader"]
    for i in range(5):
        client(path, leader).tx("open_account", f"m{i}", 10)
    assert invoke(runner, path, "snapshot", "-q").exit_code == 0

    # --- /metrics, parsed by the Prometheus client's parser ------------------------------------
    samples = scrape(path, leader)
    for name in ("bknr_server_has_leader", "bknr_is_leader", "bknr_server_leader_changes_seen_total",
                 "bknr_server_proposals_committed_total", "bknr_server_proposals_applied_total",
                 "bknr_server_proposals_failed_total", "bknr_server_proposals_pending",
                 "bknr_server_tx_duration_seconds_bucket", "bknr_snapshot_save_duration_seconds_count",
                 "bknr_raft_auth_total", "bknr_halted", "bknr_diverged", "bknr_disk_error",
                 "bknr_follower_lag", "bknr_http_requests_total"):
        assert name in samples, name
    assert samples["bknr_is_leader"][0].value == 1 and samples["bknr_server_has_leader"][0].value == 1
    assert samples["bknr_server_leader_changes_seen_total"][0].value >= 1
    tx_count = next(s.value for s in samples["bknr_server_tx_duration_seconds_count"])
    assert tx_count == 5
    assert samples["bknr_snapshot_save_duration_seconds_count"][0].value >= 1
    assert {s.labels["result"] for s in samples["bknr_raft_auth_total"]} >= {"accepted", "refused_in"}

    # --- every alert and dashboard expression uses metrics the nodes export -----------------
    rules = yaml.safe_load((ROOT / "configs" / "prometheus-alerts.yaml").read_text())
    exprs = [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]
             if r.get("labels", {}).get("exporter") is None]
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"BknrNoLeader", "BknrLeaderFlapping", "BknrFollowerLagging", "BknrReplicaDiverged",
            "BknrDiskError", "BknrCertificateExpiring"} <= alerts
    board = json.loads((ROOT / "configs" / "grafana-dashboard.json").read_text())
    exprs += [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]
    assert len(exprs) > 15
    for what, expr in exprs:
        names = metric_names(expr)
        assert names, (what, expr)
        assert names <= set(samples), (what, names - set(samples))

    # --- history: a transfer, recorded with its cause, kept across a full restart -----------
    other = next(n for n in ("n1", "n2", "n3") if n != leader)
    r = invoke(runner, path, "leader", "transfer", "--to", other)
    assert r.exit_code == 0, r.output
    r = invoke(runner, path, "history", "-o", "json")
    assert r.exit_code == 0, r.output
    last = json.loads(r.stdout)["changes"][-1]
    assert last["old_leader_name"] == leader and last["new_leader_name"] == other
    assert last["cause"].startswith("transfer requested") and last["seen_by"] == [1, 2, 3]
    assert invoke(runner, path, "stop").exit_code == 0
    assert invoke(runner, path, "history").exit_code == 3          # stopped: no node answers
    assert invoke(runner, path, "start").exit_code == 0
    track()
    wait_until(lambda: invoke(runner, path, "status").exit_code == 0, 20, "healthy after restart")
    changes = json.loads(invoke(runner, path, "history", "-o", "json").stdout)["changes"]
    assert any(c["term"] == last["term"] and c["new_leader_name"] == other
               and c["cause"] == last["cause"] for c in changes)
    r = invoke(runner, path, "history")
    assert r.exit_code == 0 and "transfer requested" in r.stdout

    # --- leader transfer --at: cancel one, let another fire --------------------------------
    now_leader = _status(runner, path)["leader"]
    target = next(n for n in ("n1", "n2", "n3") if n != now_leader)
    r = invoke(runner, path, "leader", "transfer", "--to", target, "--at", "+600s")
    assert r.exit_code == 0 and f"scheduled on {now_leader}" in r.stdout, r.output
    r = invoke(runner, path, "leader", "cancel")
    assert r.exit_code == 0 and f"{now_leader}: cancelled" in r.stderr, r.output
    assert invoke(runner, path, "leader", "cancel").stderr.strip() == "no scheduled transfer"
    r = invoke(runner, path, "leader", "transfer", "--to", target, "--at", "+1s", "-o", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["to"] == int(target[1:]), r.output
    wait_until(lambda: _status(runner, path).get("leader") == target, 20, "the scheduled transfer")
    wait_until(lambda: json.loads(invoke(runner, path, "history", "-o", "json").stdout)["changes"][-1]
               ["cause"] == f"scheduled transfer (to {int(target[1:])})", 10, "its cause recorded")
    assert invoke(runner, path, "leader", "transfer", "--at", "yesterday").exit_code == 2


def test_reinit_and_backup_check(runner, cluster, tmp_path: Path) -> None:
    path, track = cluster
    leader = _status(runner, path)["leader"]
    for i in range(30):
        client(path, leader).tx("open_account", f"r{i}", 10)
    victim = next(n for n in ("n1", "n2", "n3") if n != leader)
    r = invoke(runner, path, "reinit", victim)            # no terminal, no --yes: refused
    assert r.exit_code == 2 and "pass --yes" in r.stderr
    assert invoke(runner, path, "reinit", leader, "--yes").exit_code == 2   # the leader: refused
    r = invoke(runner, path, "reinit", victim, "--yes")
    track()
    assert r.exit_code == 0, r.output
    assert f"{victim}: rebuilt from {leader}'s snapshot" in r.stderr
    st = client(path, victim).status()
    assert int(st["snapshot_index"]) > 0                  # it got the leader's snapshot
    wait_until(lambda: len({s["digest"] for s in _status(runner, path)["nodes"]}) == 1
               and _status(runner, path)["summary"] == "healthy", 20, "equal digests again")
    assert client(path, victim).query("count")["result"]["accounts"] == 30

    out = tmp_path / "b.bak"
    assert invoke(runner, path, "backup", "--out", str(out), "-q").exit_code == 0
    r = invoke(runner, path, "backup", "--check", str(out), "-o", "json")
    assert r.exit_code == 0, r.output
    checked = json.loads(r.stdout)
    assert checked["checksum"] == "ok" and checked["loadable"] is True and checked["objects"] == 30
    data = bytearray(out.read_bytes())
    data[-5] ^= 0xFF
    bad = tmp_path / "bad.bak"
    bad.write_bytes(bytes(data))
    r = invoke(runner, path, "backup", "--check", str(bad))
    assert r.exit_code == 1 and "checksum mismatch" in r.stderr and len(r.stderr.splitlines()) == 1
    assert invoke(runner, path, "backup").exit_code == 2          # neither --out nor --check
