"""bknrctl against real node processes on loopback: lifecycle, membership, drill, recovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bknrctl.backup import read_backup

from tests.cli.conftest import write_yaml
from tests.cli.realcluster import client, invoke, kill_started, node_pids, tracked_nodes
from tests.support import free_ports, wait_until


@pytest.fixture
def cluster3(tmp_path: Path):
    """A YAML with n1..n3 voters and n4 (spare, not bootstrapped); every started pid is killed."""
    path = write_yaml(tmp_path, free_ports(8), n=3, extra_nodes=1)
    with tracked_nodes(path) as track:
        yield path, track


def _status(runner, path: Path) -> tuple[int, dict]:
    r = invoke(runner, path, "status", "-o", "json")
    return r.exit_code, json.loads(r.stdout) if r.stdout.strip() else {}


def test_lifecycle_membership_snapshot_backup(runner, cluster3) -> None:
    path, track = cluster3
    # n4 is listed for "peer add" below; the bootstrap configuration is n1..n3
    r = invoke(runner, path, "init", "n1", "n2", "n3")
    assert r.exit_code == 0, r.output
    assert all((path.parent / "data" / f"n{i}" / "raft").is_dir() for i in (1, 2, 3))
    r = invoke(runner, path, "init", "n1")
    assert r.exit_code == 2 and "already bootstrapped: n1" in r.stderr

    r = invoke(runner, path, "start", "n1", "n2", "n3")
    track()
    assert r.exit_code == 0, r.output
    assert "n1: running" in r.stderr
    r = invoke(runner, path, "start", "n1")
    assert r.exit_code == 0 and "already running" in r.stderr
    wait_until(lambda: _status(runner, path)[0] == 0, 20, "a leader")

    # some writes through the leader's API
    code, st = _status(runner, path)
    leader = st["leader"]
    c = client(path, leader)
    for i in range(3):
        c.tx("open_account", f"acct-{i}", 100)
    c.tx("transfer", "acct-0", "acct-1", 7, "t-1")

    r = invoke(runner, path, "snapshot", "--all", "-q")
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == "", r.output
    out = path.parent / "b.bak"
    r = invoke(runner, path, "backup", "--out", str(out))
    assert r.exit_code == 0, r.output
    header, payload = read_backup(out)
    assert header["group"] == "test-cluster" and header["index"] > 0 and payload

    r = invoke(runner, path, "logs", "n1", "-n", "5")
    assert r.exit_code == 0 and r.stdout.strip()

    # membership: start n4 (not bootstrapped), add it as a voter, see it caught up, remove it
    r = invoke(runner, path, "start", "n4")
    track()
    assert r.exit_code == 0, r.output
    r = invoke(runner, path, "peer", "add", "n4", "--role", "voter", "--timeout", "60")
    assert r.exit_code == 0, r.output
    code, st = _status(runner, path)
    rows = {n["name"]: n for n in st["nodes"]}
    assert rows["n4"]["member_role"] == "voter" and code == 0
    assert wait_until(lambda: client(path, "n4").query("count")["result"]["transfers"] == 1, 20,
                      "n4 replicated the transfer")
    r = invoke(runner, path, "peer", "remove", "n4", "--yes")
    assert r.exit_code == 0, r.output
    code, st = _status(runner, path)
    assert {n["name"]: n for n in st["nodes"]}["n4"]["member_role"] == "not a member"

    # planned switchover to a named voter
    target = next(n for n in ("n1", "n2", "n3") if n != st["leader"])
    r = invoke(runner, path, "leader", "transfer", "--to", target, "-o", "json")
    assert r.exit_code == 0, r.output
    j = json.loads(r.stdout)
    assert j["to"] == target and j["changed"] is True
    r = invoke(runner, path, "leader", "transfer", "--to", "n4")
    assert r.exit_code == 2 and "not a member" in r.stderr

    # rolling restart of one node, then stop everything
    r = invoke(runner, path, "restart", "n2")
    track()
    assert r.exit_code == 0, r.output
    assert "n2: restarted and caught up" in r.stderr
    r = invoke(runner, path, "stop")
    assert r.exit_code == 0, r.output
    assert not node_pids(path)  # every node removed its pid file on a clean stop
    code, st = _status(runner, path)
    assert code == 3 and st["summary"] == "no quorum"

    # init --force --yes wipes and re-bootstraps: the restarted cluster is empty
    r = invoke(runner, path, "init", "n1", "n2", "n3", "--force", "--yes")
    assert r.exit_code == 0, r.output
    assert invoke(runner, path, "start", "n1", "n2", "n3").exit_code == 0
    track()
    wait_until(lambda: _status(runner, path)[0] == 0, 20, "a leader after re-init")
    assert client(path, "n1").query("count")["result"] == {"accounts": 0, "transfers": 0}


def test_drill_json_plot_and_failback(runner, cluster3, tmp_path: Path) -> None:
    path, track = cluster3
    assert invoke(runner, path, "init", "n1", "n2", "n3").exit_code == 0
    assert invoke(runner, path, "start", "n1", "n2", "n3").exit_code == 0
    track()
    # n4 is in the YAML only; the drill needs every listed node, so use a 3-node YAML copy
    three = tmp_path / "three.yaml"
    three.write_text("\n".join(ln for ln in path.read_text().splitlines() if "name: n4" not in ln) + "\n")
    wait_until(lambda: _status(runner, three)[0] == 0, 20, "a leader")
    plot = tmp_path / "drill.png"
    r = invoke(runner, three, "failover", "--drill", "--rounds", "2", "--output", "json",
               "--plot", str(plot), "--leave-down", "--yes")
    track()
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["election_timeout_ms"] == 200 and len(rep["rounds"]) == 2
    for rnd in rep["rounds"]:
        assert rnd["acked"] > 0 and rnd["lost"] == 0
        assert rnd["write_gap_ms"] is not None and rnd["time_to_leader_ms"] is not None
        assert rnd["new_leader"] != rnd["victim"]
    assert rep["lost_total"] == 0 and rep["digests_match"] and rep["bank_total_ok"]
    assert rep["median_write_gap_ms"] > 0
    assert plot.stat().st_size > 10_000
    victim = rep["rounds"][-1]["victim"]
    code, st = _status(runner, three)
    assert code == 4 and st["summary"] == "degraded"  # the last victim was left down
    assert st["problems"] == [f"{victim} unreachable"]

    r = invoke(runner, three, "failback", "--to", victim)
    track()
    assert r.exit_code == 0, r.output
    assert f"{victim}: caught up" in r.stdout and f"-> {victim}" in r.stdout
    code, st = _status(runner, three)
    assert code == 0 and st["leader"] == victim and st["summary"] == "healthy"

    r = invoke(runner, three, "failover", "--drill", "--rounds", "1", "--fault", "stop", "-o", "json",
               "--yes")
    track()
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["lost_total"] == 0 and rep["digests_match"] and rep["bank_total_ok"]


def test_quorum_loss_recover(runner, cluster3) -> None:
    path, track = cluster3
    assert invoke(runner, path, "init", "n1", "n2", "n3").exit_code == 0
    assert invoke(runner, path, "start", "n1", "n2", "n3").exit_code == 0
    track()
    wait_until(lambda: _status(runner, path)[0] == 0, 20, "a leader")
    leader = _status(runner, path)[1]["leader"]
    c = client(path, leader)
    c.tx("open_account", "ann", 50)
    idx = c.tx("open_account", "bob", 50)["index"]
    # forced recovery keeps what the survivor has: make sure n1 holds both accounts first
    wait_until(lambda: client(path, "n1").status()["applied_index"] >= idx, 10, "n1 applied")
    pids = node_pids(path)
    # lose two of three voters for good
    r = invoke(runner, path, "recover", "--node", "n1", "--force", "--yes")
    assert r.exit_code == 2 and "quorum is reachable" in r.stderr
    kill_started(path, {pids["n2"], pids["n3"]})
    wait_until(lambda: _status(runner, path)[0] == 3, 20, "no leader after losing two voters")
    r = invoke(runner, path, "recover", "--node", "n1", "--force", "--yes")
    track()
    assert r.exit_code == 0, r.output
    assert "leader n1" in r.stderr
    code, st = _status(runner, path)
    assert code == 0 and st["leader"] == "n1"
    assert client(path, "n1").tx("transfer", "ann", "bob", 5, "after-recover")["index"] > 0
    assert client(path, "n1").query("total_balance")["result"] == 100


def test_backup_restore_into_a_new_cluster(runner, cluster3, tmp_path: Path) -> None:
    path, track = cluster3
    assert invoke(runner, path, "init", "n1", "n2", "n3").exit_code == 0
    assert invoke(runner, path, "start", "n1", "n2", "n3").exit_code == 0
    track()
    wait_until(lambda: _status(runner, path)[0] == 0, 20, "a leader")
    c = client(path, _status(runner, path)[1]["leader"])
    c.tx("open_account", "ann", 70)
    c.tx("open_account", "bob", 30)
    c.tx("transfer", "ann", "bob", 20, "t-before-backup")
    bak = tmp_path / "cluster.bak"
    assert invoke(runner, path, "backup", "--out", str(bak)).exit_code == 0
    # restoring over the live source cluster is refused
    r = invoke(runner, path, "restore", "--from", str(bak), "--yes")
    assert r.exit_code == 2 and "live cluster" in r.stderr

    new_dir = tmp_path / "new"
    new_dir.mkdir()
    new = write_yaml(new_dir, free_ports(6), n=3)
    new_seen: set[int] = set()
    try:
        r = invoke(runner, new, "restore", "--from", str(bak), "--yes")
        new_seen |= set(node_pids(new).values())
        assert r.exit_code == 0, r.output
        for name in ("n1", "n2", "n3"):
            wait_until(lambda name=name: client(new, name).query("total_balance")["result"] == 100, 20,
                       f"{name} holds the restored state")
            assert client(new, name).query("has_transfer", "t-before-backup")["result"] is True
        r = invoke(runner, new, "restore", "--from", str(bak), "--yes")
        assert r.exit_code == 2 and "live cluster" in r.stderr
    finally:
        new_seen |= set(node_pids(new).values())
        kill_started(new, new_seen)
