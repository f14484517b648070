"""``bknrctl demo --output json`` end to end, and the shipped configs."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from bknrctl.main import app

from tests.support import ROOT


def _free_base() -> int:
    """A base port whose demo ports (raft, API, application, HAProxy) are all free right now.

    Below the kernel's ephemeral range: the demo binds HAProxy's ports minutes after this check,
    and a port inside that range may meanwhile be handed to one of the drill's own client
    connections (seen as HAProxy exiting with status 1, "cannot bind")."""
    import random

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        base = random.randrange(10000, max(10001, min(low, 65536) - 2100))
        socks = []
        try:
            for p in (1, 2, 3, 1001, 1002, 1003, 2001, 2002, 2003, 980, 981):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port range for the demo")


def test_shipped_configs_validate(runner, tmp_path: Path) -> None:
    """Each shipped YAML passes validate once ``init`` made its token and secret files (a copy in
    a temporary folder, so nothing is written next to the shipped files)."""
    from bknrctl.provision import ensure_token

    from bknr_cluster.cluster.config import ClusterConfig

    for name in ("local-3.yaml", "local-4.yaml", "three-hosts.yaml", "restore-test.yaml"):
        copy = tmp_path / name.replace(".yaml", "") / name
        copy.parent.mkdir()
        copy.write_text((ROOT / "configs" / name).read_text())
        r = runner.invoke(app, ["-c", str(copy), "validate", "--strict"])
        # before init the token is missing: a warning where the nodes are local (not initialised
        # yet), an error where this machine cannot tell (every node over SSH)
        assert r.exit_code == 2 and "token_file: " in r.stderr, (name, r.output)
        ensure_token(ClusterConfig.load(copy))
        r = runner.invoke(app, ["-c", str(copy), "validate"])
        assert r.exit_code == 0, (name, r.output)


def test_demo_json(runner, tmp_path: Path) -> None:
    from bknr_cluster.cluster.config import ClusterConfig

    d = tmp_path / "demo-cluster"
    r = runner.invoke(app, ["demo", "--dir", str(d), "--rounds", "2", "--base-port", str(_free_base()),
                            "--output", "json"])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1  # exactly one JSON object on stdout
    rep = json.loads(lines[0])
    for key in ("election_timeout_ms", "rounds", "median_write_gap_ms", "lost_total", "digests_match",
                "bank_total_ok"):
        assert key in rep
    assert rep["election_timeout_ms"] == 200 and len(rep["rounds"]) == 2
    for rnd in rep["rounds"]:
        assert {"write_gap_ms", "time_to_leader_ms", "acked", "lost"} <= set(rnd)
        assert rnd["acked"] > 0 and rnd["lost"] == 0
    assert rep["lost_total"] == 0 and rep["digests_match"] and rep["bank_total_ok"]
    assert rep["failback"]["restarted"] == [rep["rounds"][-1]["victim"]]
    assert rep["status"]["summary"] == "healthy" and rep["kept_running"] is False
    assert (d / "drill.png").stat().st_size > 10_000
    users = rep["end_user"]   # the customers' side, through HAProxy
    for fault in ("kill", "transfer"):
        for key in ("requests", "user_errors", "p99_ms", "max_ms", "longest_stall_ms", "lost_total"):
            assert key in users[fault], (fault, key)
        assert users[fault]["requests"] > 0 and users[fault]["lost_total"] == 0
        assert users[fault]["digests_match"] and users[fault]["bank_total_ok"]
    assert not (d / "haproxy" / "haproxy.pid").exists()
    # stopped at the end: no pid file left behind
    cfg = ClusterConfig.load(d / "cluster.yaml")
    assert not any(n.pid_file.exists() for n in cfg.nodes)
