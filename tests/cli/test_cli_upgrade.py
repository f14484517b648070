"""bknrctl upgrade / verify / status against real nodes running two versions of one application
(tests/cluster/versioned_app.py; the nodes read BKNR_TEST_APP_VERSION at import, and bknrctl
starts them with its own environment, as a deployment picks up the installed code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bknr_cluster.errors import UnknownTransaction
from tests.cli.conftest import write_yaml
from tests.cli.realcluster import client, invoke, kill_started, node_pids
from tests.support import free_ports, wait_until

STORE = "tests.cluster.versioned_app:definition"


@pytest.fixture
def cluster3(tmp_path: Path):
    path = write_yaml(tmp_path, free_ports(6), n=3, store=STORE)
    seen: set[int] = set()

    def track() -> None:
        seen.update(node_pids(path).values())
    yield path, track
    track()
    kill_started(path, seen)


def _status(runner, path: Path) -> tuple[int, dict]:
    r = invoke(runner, path, "status", "-o", "json")
    return r.exit_code, json.loads(r.stdout) if r.stdout.strip() else {}


def test_upgrade_verify_and_a_halted_node(runner, cluster3, monkeypatch) -> None:
    path, track = cluster3
    monkeypatch.setenv("BKNR_TEST_APP_VERSION", "1")
    assert invoke(runner, path, "init").exit_code == 0
    r = invoke(runner, path, "start")
    track()
    assert r.exit_code == 0, r.output
    wait_until(lambda: _status(runner, path)[0] == 0, 20, "a leader")
    code, st = _status(runner, path)
    assert {n["version"] for n in st["nodes"]} == {"1.0"}
    c = client(path, st["leader"])
    c.tx("put", "a", 0)
    with pytest.raises(UnknownTransaction):
        c.tx("incr", "a")

    # upgrade to version 2: before/after per node, one fingerprint at the end
    monkeypatch.setenv("BKNR_TEST_APP_VERSION", "2")
    r = invoke(runner, path, "upgrade")
    track()
    assert r.exit_code == 0, r.output
    for name in ("n1", "n2", "n3"):
        assert f"{name}: 1.0 (" in r.stderr and ") -> 2.0 (" in r.stderr
    assert "every member runs version 2.0" in r.stderr
    leader = _status(runner, path)[1]["leader"]
    assert client(path, leader).tx("incr", "a")["result"] == 1

    r = invoke(runner, path, "verify")
    assert r.exit_code == 0, r.output
    assert "all 3 replicas agree" in r.stderr

    # roll n3 back: it halts on `incr`; upgrade stops there (exit 4), status exits 4
    follower = next(n for n in ("n1", "n2", "n3") if n != leader)
    monkeypatch.setenv("BKNR_TEST_APP_VERSION", "1")
    r = invoke(runner, path, "upgrade", follower)
    track()
    assert r.exit_code == 4, r.output
    assert "HALTED" in r.stderr and "stopped here" in r.stderr
    code, st = _status(runner, path)
    assert code == 4 and st["halted"] == [follower] and st["summary"] == "degraded"
    r = invoke(runner, path, "status")
    assert r.exit_code == 4 and "HALTED@" in r.stdout and f"{follower} HALTED at entry" in r.stdout
    r = invoke(runner, path, "verify", "--quick")
    assert r.exit_code == 4 and "HALTED" in r.stdout

    # and forward again: it resumes with nothing lost
    monkeypatch.setenv("BKNR_TEST_APP_VERSION", "2")
    r = invoke(runner, path, "upgrade", follower)
    track()
    assert r.exit_code == 0, r.output
    wait_until(lambda: _status(runner, path)[0] == 0, 20, "healthy again")
    assert client(path, follower).query("get", "a")["result"] == 1
    r = invoke(runner, path, "stop")
    assert r.exit_code == 0
