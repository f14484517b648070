"""Three hosts for real: three network namespaces on a bridge (tests/chaos/netns.py), each with
its own IP address and its own sshd (Debian's openssh-server), and bknrctl in the root namespace
doing over SSH what an operator does: init (CA and node certificates, uploaded per host), start,
status, failover --drill, rolling restart, certs rotate, snapshot with retention, backup,
restore into a second cluster on the same hosts, logs, stop. Raft and API traffic between the
namespaces is TLS: a raw capture on the bridge while a transaction carrying a marker is written
never contains the marker in clear (and does contain TLS application-data records).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bknr_cluster.cluster.client import ApiClient
from bknr_cluster.cluster.config import ClusterConfig
from bknr_cluster.cluster.tls_config import client_ssl_context
from tests.chaos.netns import Network, NetworkUnavailable
from tests.cli.realcluster import invoke, kill_started
from tests.cli.sshd import SSHD, write_sshd_config
from tests.security.capture import PacketCapture
from tests.support import wait_until

HOSTS = ["h1", "h2", "h3"]
RAFT_PORT, API_PORT = 7101, 8101
pytestmark = pytest.mark.skipif(
    not (os.path.exists(SSHD) and shutil.which("ssh-keygen") and shutil.which("ip") and os.geteuid() == 0),
    reason="needs openssh-server, iproute2 and root")


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return Path(str(path) + ".pub").read_text().strip()


def _start_sshds(net: Network, procs, d: Path) -> dict:
    """One sshd per namespace, listening on that host's address, port 22."""
    d.mkdir()
    host_pub = _keygen(d / "host_key")
    user_pub = _keygen(d / "user_key")
    (d / "authorized_keys").write_text(user_pub + "\n")
    os.chmod(d / "authorized_keys", 0o600)
    kind, key = host_pub.split()[:2]
    known = d / "known_hosts"
    known.write_text("".join(f"{net.addr(h)} {kind} {key}\n" for h in HOSTS))
    for h in HOSTS:
        conf = d / f"sshd_{h}.conf"
        write_sshd_config(conf, d, net.addr(h), 22, d / f"sshd_{h}.pid")
        p = procs.start([*net.exec_prefix(h), SSHD, "-D", "-e", "-f", str(conf)], log=d / f"sshd_{h}.log")

        def listening(h: str = h, p=p) -> bool:
            if p.poll() is not None:
                raise AssertionError((d / f"sshd_{h}.log").read_text())
            with socket.socket() as s:
                s.settimeout(1)
                return s.connect_ex((net.addr(h), 22)) == 0
        wait_until(listening, 15, f"sshd in {h}")
    return {"key_file": str(d / "user_key"), "known_hosts": str(known)}


def _yaml(path: Path, net: Network, ssh: dict, root: Path, group: str, port_offset: int) -> Path:
    nodes = []
    for i, h in enumerate(HOSTS):
        home = root / "hosts" / h  # each "machine"'s own directory
        nodes.append({"id": i + 1, "name": h, "host": net.addr(h), "raft_port": RAFT_PORT + port_offset,
                      "api_port": API_PORT + port_offset, "data_dir": str(home / group / "data"),
                      "ssh": {"user": "root", "port": 22, **ssh, "workdir": str(home / group),
                              "python": sys.executable}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "group": group, "store": "examples.bank.app:definition", "token_file": "token", "tls_dir": "tls",
        "timing": {"election_timeout_ms": 1000, "heartbeat_ms": 100},
        "snapshot": {"threshold": 200, "trailing": 50, "keep": 2}, "nodes": nodes}, sort_keys=False))
    return path


def _ok(r) -> str:
    assert r.exit_code == 0, r.output
    return r.stdout


def _status(runner, path: Path) -> dict | None:
    r = invoke(runner, path, "status", "-o", "json")
    return json.loads(r.stdout) if r.exit_code == 0 and r.stdout.strip() else None


def _leader_api(runner, path: Path) -> ApiClient:
    cfg = ClusterConfig.load(path)
    st = wait_until(lambda: _status(runner, path), 60, "a healthy cluster")
    return ApiClient(cfg.node(st["leader"]).api_url, cfg.token(), ssl_context=client_ssl_context(cfg))


def _pids(path: Path) -> set[int]:
    out = set()
    for n in ClusterConfig.load(path).nodes:
        try:
            out.add(int(Path(n.data_dir, "node.pid").read_text().strip()))
        except (OSError, ValueError):
            pass
    return out


def test_three_hosts_over_ssh_with_tls(runner, tmp_path: Path, procs) -> None:
    try:
        net = Network(HOSTS).setup()
    except NetworkUnavailable as exc:
        pytest.fail(f"cannot build the three-host network: {exc}")
    started: set[int] = set()
    main = tmp_path / "operator" / "cluster.yaml"
    second = tmp_path / "operator2" / "cluster.yaml"
    try:
        ssh = _start_sshds(net, procs, tmp_path / "ssh")
        _yaml(main, net, ssh, tmp_path, "bank3h", 0)
        _ok(invoke(runner, main, "validate"))
        _ok(invoke(runner, main, "init"))
        for h in HOSTS:  # each host got the CA certificate and its own pair, never the CA key
            tls = tmp_path / "hosts" / h / "bank3h" / "tls"
            assert sorted(p.name for p in tls.iterdir()) == ["ca.crt", f"{h}.crt", f"{h}.key"]
        _ok(invoke(runner, main, "start"))
        started |= _pids(main)
        api = _leader_api(runner, main)

        # TLS between the namespaces: the marker never crosses the bridge in clear
        cap = PacketCapture(net.bridge, {RAFT_PORT, API_PORT})
        marker = "MARKER-3h-5c1d-in-clear"
        try:
            index = api.tx("open_account", marker, 100)["index"]
            wait_until(lambda: all((s.get("applied_index") or 0) >= index
                                   for s in _status(runner, main)["nodes"]), 30, "the marker on every host")
        finally:
            seen = cap.close()
        assert cap.segments > 0 and marker.encode() not in seen
        assert b"\x17\x03\x03" in seen  # TLS application-data records

        drill = json.loads(_ok(invoke(runner, main, "failover", "--drill", "--rounds", "1", "--writers", "2",
                                      "--yes", "-o", "json")))
        started |= _pids(main)
        assert drill["rounds"] and all(r["lost"] == 0 for r in drill["rounds"]), drill
        _ok(invoke(runner, main, "restart"))
        started |= _pids(main)
        _ok(invoke(runner, main, "certs", "rotate"))
        started |= _pids(main)
        api = _leader_api(runner, main)
        for _ in range(30):
            api.tx("deposit", marker, 1)
        _ok(invoke(runner, main, "snapshot", "--all", "--keep", "1"))
        for h in HOSTS:
            # retention keeps the node's archive (libraft keeps its own two in raft/)
            archive = tmp_path / "hosts" / h / "bank3h" / "data" / "snapshots"
            assert len([p for p in archive.glob("snapshot-*") if not p.name.endswith(".meta")]) <= 1
        backup = tmp_path / "bank3h.bak"
        _ok(invoke(runner, main, "backup", "--out", str(backup)))
        logs = _ok(invoke(runner, main, "logs", "h2", "-n", "50"))
        assert "node h2 (id 2) started" in logs
        total = api.query("total_balance", consistent=True)["result"]

        # restore into a second cluster on the same three hosts (other ports and directories)
        _yaml(second, net, ssh, tmp_path, "restored3h", 100)
        _ok(invoke(runner, second, "restore", "--from", str(backup), "--yes"))
        started |= _pids(second)
        restored = _leader_api(runner, second)
        assert restored.query("total_balance", consistent=True)["result"] == total
        _ok(invoke(runner, second, "stop"))
        _ok(invoke(runner, main, "stop"))
    finally:
        started |= _pids(main) | (_pids(second) if second.exists() else set())
        kill_started(main, started)
        procs.stop_all()
        net.teardown()
