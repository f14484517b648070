"""CliRunner tests of every command's happy and error paths against fake nodes (fast)."""

from __future__ import annotations

import json
from pathlib import Path

from bknrctl.backup import read_backup, write_backup
from bknrctl.main import app

from tests.cli.conftest import write_yaml
from tests.support import free_ports


def run(runner, *args: str, env: dict | None = None):
    return runner.invoke(app, list(args), env=env or {})


# --- validate -----------------------------------------------------------------------------------


def test_validate_ok(runner, tmp_path: Path) -> None:
    path = write_yaml(tmp_path, free_ports(6))
    r = run(runner, "-c", str(path), "validate")
    assert r.exit_code == 0, r.output
    assert "ok (group test-cluster, 3 nodes)" in r.stderr
    r = run(runner, "validate", "-c", str(path), "--output", "json")
    assert json.loads(r.stdout)["valid"] is True


def test_validate_reports_every_problem_with_path(runner, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("group: g\nstore: nope\nnodes:\n"
                    "  - {id: 1, name: n1, host: 127.0.0.1, raft_port: 7001, api_port: 8001, data_dir: a}\n"
                    "  - {id: 1, name: n2, host: 127.0.0.1, raft_port: 7001, api_port: 99999, data_dir: b}\n")
    r = run(runner, "-c", str(path), "validate")
    assert r.exit_code == 2
    # like every other command: problems on stderr, one "error: PATH: MESSAGE" line each
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert all(ln.startswith("error: ") for ln in lines), lines
    for where in ("store", "nodes[1].id", "nodes[1].raft_port", "nodes[1].api_port"):
        assert any(ln.startswith(f"error: {where}: ") for ln in lines), (where, lines)
    j = json.loads(run(runner, "-c", str(path), "validate", "-o", "json").stdout)
    assert {p["path"] for p in j["problems"]} >= {"store", "nodes[1].id", "nodes[1].api_port"}


def test_invalid_yaml_syntax_exit_2_for_any_command(runner, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("group: [unclosed\n")
    for cmd in (["validate"], ["status"], ["start"], ["failover", "--drill"]):
        r = run(runner, "-c", str(path), *cmd)
        assert r.exit_code == 2, (cmd, r.output)
        assert "not valid YAML" in r.output


def test_missing_config_uses_env_and_default(runner, tmp_path: Path) -> None:
    r = run(runner, "validate", env={"BKNR_CONFIG": str(tmp_path / "none.yaml")})
    assert r.exit_code == 2 and "none.yaml" in r.output
    path = write_yaml(tmp_path, free_ports(6))
    r = run(runner, "validate", env={"BKNR_CONFIG": str(path)})
    assert r.exit_code == 0
    # an explicit -c, before or after the command, beats the environment
    for args in (["-c", str(path), "validate"], ["validate", "-c", str(path)]):
        r = run(runner, *args, env={"BKNR_CONFIG": str(tmp_path / "none.yaml")})
        assert r.exit_code == 0, args


# --- status -------------------------------------------------------------------------------------


def test_status_healthy_table_and_json(runner, fake) -> None:
    path, cluster, _ = fake
    r = run(runner, "-c", str(path), "status", env={"NO_COLOR": "1"})
    assert r.exit_code == 0, r.output
    assert "healthy: leader n1" in r.stdout and "\x1b[" not in r.stdout
    for name in ("n1", "n2", "n3", "n4"):
        assert name in r.stdout
    j = json.loads(run(runner, "-c", str(path), "status", "-o", "json").stdout)
    assert j["leader"] == "n1" and j["quorum"] is True
    rows = {n["name"]: n for n in j["nodes"]}
    assert rows["n1"]["role"] == "leader" and rows["n2"]["lag"] == 0
    assert rows["n2"]["digest_match"] is True and rows["n4"]["reachable"] is False
    assert rows["n4"]["member_role"] == "not a member"
    assert j["summary"] == "healthy"  # n4 is in the YAML but not a member
    cluster.down = {2, 4}
    j = json.loads(run(runner, "-c", str(path), "status", "-o", "json").stdout)
    assert j["summary"] == "degraded" and j["quorum"] is True


def test_status_no_quorum_exit_3(runner, fake) -> None:
    path, cluster, _ = fake
    cluster.leader = None
    cluster.down = {2, 3, 4}
    r = run(runner, "-c", str(path), "status", "-o", "json")
    assert r.exit_code == 3
    j = json.loads(r.stdout)
    assert j["summary"] == "no quorum" and j["leader"] is None
    r = run(runner, "-c", str(path), "status", "--watch", "--count", "2", "--interval", "0.01")
    assert r.exit_code == 3 and r.stdout.count("no quorum") == 2


def test_wrong_token_is_reported(runner, fake) -> None:
    path, cluster, _ = fake
    (path.parent / "token").write_text("wrong\n")
    for cmd in (["snapshot"], ["status"], ["leader", "transfer"]):
        r = run(runner, "-c", str(path), *cmd)
        assert r.exit_code == 1, (cmd, r.output)
        assert "token" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# --- unknown node / membership ------------------------------------------------------------------


def test_unknown_node_exit_2(runner, fake) -> None:
    path, *_ = fake
    for cmd in (["logs", "n9"], ["start", "n9"], ["peer", "add", "n9"], ["leader", "transfer", "--to", "n9"],
                ["snapshot", "--node", "n9"]):
        r = run(runner, "-c", str(path), *cmd)
        assert r.exit_code == 2, (cmd, r.output)
        assert "unknown node 'n9'" in r.stderr


def test_peer_add_promote_remove(runner, fake) -> None:
    path, cluster, nodes = fake
    r = run(runner, "-c", str(path), "peer", "add", "n4", "--role", "standby", "--no-wait")
    assert r.exit_code == 1 and "n4 is not running; start it first" in r.stderr and not cluster.added
    cluster.down = set()
    r = run(runner, "-c", str(path), "peer", "add", "n4", "--role", "standby", "--no-wait")
    assert r.exit_code == 0, r.output
    assert cluster.added == [(4, f"127.0.0.1:{_raft_port(path, 4)}", "standby")]
    r = run(runner, "-c", str(path), "peer", "promote", "n4")
    assert r.exit_code == 0 and cluster.members[4] == "voter"
    r = run(runner, "-c", str(path), "peer", "remove", "n4")
    assert r.exit_code == 2 and "--yes" in r.stderr and cluster.removed == []
    r = run(runner, "-c", str(path), "peer", "remove", "n4", "--yes")
    assert r.exit_code == 0 and cluster.removed == [4]
    r = run(runner, "-c", str(path), "peer", "remove", "n4", "--yes")
    assert r.exit_code == 2 and "not a member" in r.stderr
    r = run(runner, "-c", str(path), "peer", "add", "n4", "--role", "boss")
    assert r.exit_code == 2


def _raft_port(path: Path, node_id: int) -> int:
    from bknr_cluster.cluster.config import ClusterConfig

    return ClusterConfig.load(path).node(node_id).raft_port


def test_removing_the_last_voter_is_refused(runner, fake) -> None:
    path, cluster, _ = fake
    cluster.members = {1: "voter", 2: "spare", 3: "standby"}
    r = run(runner, "-c", str(path), "peer", "remove", "n1", "--yes")
    assert r.exit_code == 2
    assert "last voter" in r.stderr and cluster.removed == []


def test_leader_transfer(runner, fake) -> None:
    path, cluster, _ = fake
    r = run(runner, "-c", str(path), "leader", "transfer", "--to", "n4")
    assert r.exit_code == 2 and "not a member" in r.stderr and cluster.transfers == []
    cluster.members[3] = "spare"
    r = run(runner, "-c", str(path), "leader", "transfer", "--to", "n3")
    assert r.exit_code == 2 and "not a voter" in r.stderr
    r = run(runner, "-c", str(path), "leader", "transfer", "--to", "n2", "-o", "json")
    assert r.exit_code == 0, r.output
    j = json.loads(r.stdout)
    assert j["from"] == "n1" and j["to"] == "n2" and j["gap_ms"] >= 0
    assert cluster.transfers == [2] and cluster.leader == 2
    r = run(runner, "-c", str(path), "leader", "transfer", "--to", "n2")
    assert r.exit_code == 0 and "already the leader" in r.stderr


def test_commands_needing_a_leader_exit_3_without_one(runner, fake) -> None:
    path, cluster, _ = fake
    cluster.leader = None
    for cmd in (["leader", "transfer"], ["snapshot", "-q"], ["peer", "add", "n4"],
                ["backup", "--out", str(path.parent / "b.bak")]):
        r = run(runner, "-c", str(path), *cmd)
        assert r.exit_code == 3, (cmd, r.output)
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error:")


# --- snapshot / backup / restore ----------------------------------------------------------------


def test_snapshot_quiet_and_all(runner, fake) -> None:
    path, cluster, _ = fake
    r = run(runner, "-c", str(path), "snapshot", "-q")
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == ""
    assert cluster.snapshots == [(1, 42)]
    r = run(runner, "-c", str(path), "snapshot", "--node", "n2")
    assert r.exit_code == 0 and "n2: snapshot at index 42" in r.stdout
    r = run(runner, "-c", str(path), "snapshot", "--all", "-q")  # members only: n4 is not one
    assert r.exit_code == 0 and r.stderr == ""
    assert sorted(cluster.snapshots[-3:]) == [(1, 42), (2, 42), (3, 42)]
    cluster.down = {3, 4}
    r = run(runner, "-c", str(path), "snapshot", "--all", "-q")
    assert r.exit_code == 1 and "n3" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_snapshot_retention_archives_and_never_touches_the_engine_dir(tmp_path: Path) -> None:
    from bknr_cluster.cluster.retention import archive

    raft = tmp_path / "raft"
    raft.mkdir()

    def engine_snapshot(idx: int) -> None:
        (raft / f"snapshot-1-{idx}-{idx * 7}").write_bytes(b"x%d" % idx)
        (raft / f"snapshot-1-{idx}-{idx * 7}.meta").write_bytes(b"m")

    for idx in (10, 20):
        engine_snapshot(idx)
    (raft / "snapshot-1-25-175").write_bytes(b"half written: no .meta yet")
    (raft / "open-1").write_bytes(b"log")
    before = sorted(p.name for p in raft.iterdir())
    assert archive(tmp_path, 2) == {"archived": 2, "removed": 0, "kept": 2}
    for idx in (30, 40):             # libraft drops the older ones itself (keeps the last two)
        engine_snapshot(idx)
        assert archive(tmp_path, 3)["archived"] == 1
    engine_snapshot(100)             # a higher index sorts after 40 although "100" < "40" as text
    assert archive(tmp_path, 3) == {"archived": 1, "removed": 2, "kept": 3}
    assert sorted((tmp_path / "snapshots").iterdir(), key=lambda p: p.name) and sorted(
        p.name for p in (tmp_path / "snapshots").iterdir()) == [
        "snapshot-1-100-700", "snapshot-1-100-700.meta", "snapshot-1-30-210",
        "snapshot-1-30-210.meta", "snapshot-1-40-280", "snapshot-1-40-280.meta"]
    # the engine's directory only ever grew: nothing there was deleted
    assert set(before) <= {p.name for p in raft.iterdir()}
    assert (tmp_path / "snapshots" / "snapshot-1-100-700").read_bytes() == b"x100"


def test_backup_and_restore_refuses_live_cluster(runner, fake, tmp_path: Path) -> None:
    path, cluster, _ = fake
    out = tmp_path / "b.bak"
    r = run(runner, "-c", str(path), "backup", "--out", str(out), "-o", "json")
    assert r.exit_code == 0, r.output
    j = json.loads(r.stdout)
    assert j["index"] == 42 and j["group"] == "fake" and j["bytes"] == len(cluster.backup_bytes)
    header, payload = read_backup(out)
    assert payload == cluster.backup_bytes and header["index"] == 42
    r = run(runner, "-c", str(path), "restore", "--from", str(out), "--yes")
    assert r.exit_code == 2 and "live cluster" in r.stderr
    # a damaged file is refused before anything else happens
    bad = tmp_path / "bad.bak"
    write_backup(bad, header, payload)
    bad.write_bytes(bad.read_bytes()[:-2])
    r = run(runner, "-c", str(path), "restore", "--from", str(bad), "--yes")
    assert r.exit_code == 1 and "checksum" in r.stderr


# --- destructive commands without a TTY ----------------------------------------------------------


def test_init_refuses_existing_state_and_prompts_never_without_tty(runner, tmp_path: Path) -> None:
    path = write_yaml(tmp_path, free_ports(6))
    raft = tmp_path / "data" / "n1" / "raft"
    raft.mkdir(parents=True)
    (raft / "metadata1").write_bytes(b"x")
    r = run(runner, "-c", str(path), "init")
    assert r.exit_code == 2 and "already bootstrapped: n1" in r.stderr
    r = run(runner, "-c", str(path), "init", "--force")
    assert r.exit_code == 2 and "--yes" in r.stderr
    assert (raft / "metadata1").exists()


def test_recover_guards(runner, fake) -> None:
    path, cluster, _ = fake
    r = run(runner, "-c", str(path), "recover", "--node", "n1", "--yes")
    assert r.exit_code == 2 and "--force" in r.stderr
    r = run(runner, "-c", str(path), "recover", "--node", "n1", "--force", "--yes")
    assert r.exit_code == 2 and "quorum is reachable" in r.stderr
    cluster.leader = None
    cluster.down = {2, 3, 4}
    r = run(runner, "-c", str(path), "recover", "--node", "n2", "--force", "--yes")
    assert r.exit_code == 2 and "not reachable" in r.stderr
    r = run(runner, "-c", str(path), "recover", "--node", "n1", "--force")
    assert r.exit_code == 2 and "without a terminal" in r.stderr


def test_failover_requires_drill_and_a_healthy_cluster(runner, fake) -> None:
    path, cluster, _ = fake
    r = run(runner, "-c", str(path), "failover")
    assert r.exit_code == 2 and "--drill" in r.stderr
    r = run(runner, "-c", str(path), "failover", "--drill", "--fault", "explode")
    assert r.exit_code == 2
    r = run(runner, "-c", str(path), "failover", "--drill")  # kill drill, no TTY, no --yes
    assert r.exit_code == 2 and "pass --yes" in r.stderr
    r = run(runner, "-c", str(path), "failover", "--drill", "--yes")  # n4 in the YAML is not running
    assert r.exit_code == 1 and "unreachable node(s) n4" in r.stderr
    cluster.leader = None
    r = run(runner, "-c", str(path), "failover", "--drill", "--yes")
    assert r.exit_code == 3


def test_logs_of_a_node_without_log(runner, fake) -> None:
    path, *_ = fake
    r = run(runner, "-c", str(path), "logs", "n2")
    assert r.exit_code == 1 and "no log yet" in r.stderr
    log = path.parent / "data" / "n2" / "node.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    r = run(runner, "-c", str(path), "logs", "n2", "-n", "3")
    assert r.exit_code == 0 and r.stdout == "line 97\nline 98\nline 99\n"


def test_help_lists_every_command(runner) -> None:
    r = run(runner, "--help")
    for cmd in ("validate", "init", "start", "stop", "restart", "status", "peer", "leader", "snapshot",
                "backup", "restore", "failover", "failback", "recover", "logs", "demo"):
        assert cmd in r.stdout


def test_token_file_is_created_private_and_never_overwritten(tmp_path: Path) -> None:
    from bknrctl.provision import ensure_token

    from bknr_cluster.cluster.config import ClusterConfig

    path = write_yaml(tmp_path, free_ports(6))
    (tmp_path / "token").unlink()
    cfg = ClusterConfig.load(path)
    assert ensure_token(cfg) is True
    token = (tmp_path / "token").read_text()
    assert len(token.strip()) >= 40 and (tmp_path / "token").stat().st_mode & 0o077 == 0
    assert ensure_token(cfg) is False and (tmp_path / "token").read_text() == token


def test_local_log_follow_yields_history_then_new_lines(tmp_path: Path) -> None:
    from bknrctl.control import controller

    from bknr_cluster.cluster.config import ClusterConfig

    path = write_yaml(tmp_path, free_ports(6))
    cfg = ClusterConfig.load(path)
    ctl = controller(cfg, cfg.node("n1"))
    log = Path(str(ctl.log_file))
    log.parent.mkdir(parents=True)
    log.write_text("old 1\nold 2\nold 3\n")
    it = ctl.follow(lines=2)
    assert [next(it), next(it)] == ["old 2", "old 3"]
    with open(log, "a") as f:
        f.write("new 1\npartial")
    assert next(it) == "new 1"       # a partial line is held back until it is complete
    with open(log, "a") as f:
        f.write(" line\n")
    assert next(it) == "partial line"
