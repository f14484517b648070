"""snapshot.keep honoured by the nodes themselves, and ``snapshot --keep`` (real node processes)."""

from __future__ import annotations

import json
from pathlib import Path

from bknr_cluster.cluster.retention import complete_snapshots
from tests.cli.conftest import write_yaml
from tests.cli.realcluster import client, invoke, kill_started, node_pids
from tests.support import free_ports, wait_until


def _archived(path: Path, name: str) -> list[int]:
    return [key[0] for key, _ in complete_snapshots(path.parent / "data" / name / "snapshots")]


def test_nodes_keep_snapshot_keep_snapshots_without_cron_options(runner, tmp_path: Path) -> None:
    path = write_yaml(tmp_path, free_ports(6), n=3)
    path.write_text(path.read_text().replace("nodes:", "snapshot: {threshold: 100000, keep: 2}\nnodes:"))
    seen: set[int] = set()
    try:
        assert invoke(runner, path, "init").exit_code == 0
        r = invoke(runner, path, "start")
        seen |= set(node_pids(path).values())
        assert r.exit_code == 0, r.output
        wait_until(lambda: invoke(runner, path, "status").exit_code == 0, 20, "a healthy cluster")
        leader = json.loads(invoke(runner, path, "status", "-o", "json").stdout)["leader"]
        indexes = []
        for i in range(4):
            client(path, leader).tx("open_account", f"a{i}", 10)
            r = invoke(runner, path, "snapshot", "--all", "-q")    # no --keep: the nodes retain
            assert r.exit_code == 0 and r.stdout == "" and r.stderr == "", r.output
            st = client(path, leader).status()
            indexes.append(int(st["snapshot_index"]))
        names = ("n1", "n2", "n3")
        # every node archived its snapshots and kept the 2 newest (keep: 2), the newest included
        for n in names:
            wait_until(lambda n=n: len(_archived(path, n)) == 2
                       and _archived(path, n)[-1] == int(client(path, n).status()["snapshot_index"]),
                       20, f"{n} keeping 2 snapshots")
        assert _archived(path, leader) == indexes[-2:]
        # the engine's own directory still holds its snapshots: retention never deletes there
        for n in names:
            assert complete_snapshots(path.parent / "data" / n / "raft")

        r = invoke(runner, path, "snapshot", "--all", "--keep", "1", "-o", "json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["removed_files"] >= 6           # one pair per node at least
        for n in names:
            assert len(_archived(path, n)) == 1
        # a node restarted from its snapshot still works: retention left the engine's files alone
        assert invoke(runner, path, "restart", "n1").exit_code == 0
        seen |= set(node_pids(path).values())
        wait_until(lambda: invoke(runner, path, "status").exit_code == 0, 20, "healthy again")
    finally:
        seen |= set(node_pids(path).values())
        kill_started(path, seen)


def test_snapshot_quiet_failure_is_one_line_and_non_zero(runner, tmp_path: Path) -> None:
    path = write_yaml(tmp_path, free_ports(6), n=3)
    r = invoke(runner, path, "snapshot", "-q", "--keep", "2")
    assert r.exit_code == 3 and r.stdout == "" and len(r.stderr.splitlines()) == 1
