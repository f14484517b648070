"""The failover drill against a store that is not the bank (real node processes on loopback).

The notes application has no transfer transaction; the drill's workload runs in the store's
system namespace, loses nothing, leaves the application's objects exactly as they were and
removes its own records when it ends.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import write_yaml
from tests.cli.realcluster import client, invoke, kill_started, node_pids
from tests.support import free_ports, wait_until

NOTES = "tests.cli.notes_app:definition"


def _status(runner, path: Path) -> tuple[int, dict]:
    r = invoke(runner, path, "status", "-o", "json")
    return r.exit_code, json.loads(r.stdout) if r.stdout.strip() else {}


def test_drill_on_an_application_without_transfers(runner, tmp_path: Path) -> None:
    path = write_yaml(tmp_path, free_ports(6), n=3, store=NOTES)
    seen: set[int] = set()
    try:
        assert invoke(runner, path, "validate", "--strict").exit_code == 0
        assert invoke(runner, path, "init").exit_code == 0
        r = invoke(runner, path, "start")
        seen |= set(node_pids(path).values())
        assert r.exit_code == 0, r.output
        wait_until(lambda: _status(runner, path)[0] == 0, 20, "a healthy cluster")
        leader = _status(runner, path)[1]["leader"]
        for i in range(20):
            client(path, leader).tx("add_note", f"k{i}", f"text {i}")
        before = client(path, leader).query("notes", consistent=True)["result"]
        assert len(before) == 20

        r = invoke(runner, path, "failover", "--drill", "--rounds", "2", "-o", "json", "--yes")
        seen |= set(node_pids(path).values())
        assert r.exit_code == 0, r.output
        rep = json.loads(r.stdout)
        assert rep["workload"] == "system"
        assert all(rnd["acked"] > 0 for rnd in rep["rounds"])
        assert rep["lost_total"] == 0 and rep["digests_match"] and rep["bank_total_ok"]
        # the drill's records are removed: accounts + one record per acknowledged transfer
        assert rep["drill_records_removed"] >= 16 + rep["acked_total"]

        wait_until(lambda: _status(runner, path)[0] == 0, 20, "healthy after the drill")
        for n in ("n1", "n2", "n3"):
            c = client(path, n)
            wait_until(lambda c=c: c.query("bknr.sys.system_keys", "drill.")["result"] == 0, 20,
                       f"drill records gone on {n}")
            assert c.query("notes")["result"] == before   # the application's objects, unchanged
    finally:
        seen |= set(node_pids(path).values())
        kill_started(path, seen)
