"""A real HAProxy (Debian's package) in front of the hosted bank application, configured by
``bknrctl lb haproxy``: writes reach the leader, reads reach caught-up replicas, and the
routing follows a leadership transfer."""

from __future__ import annotations

import dataclasses
import shutil
import socket
from pathlib import Path

import pytest
from bknrctl.main import app as cli
from typer.testing import CliRunner

from tests.cluster.harness import LocalCluster
from tests.support import free_ports, wait_until
from tests.web.test_hosted_app import http

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
pytestmark = pytest.mark.skipif(not Path(HAPROXY).exists(), reason="needs haproxy "
                                "(scripts/install-deps.sh installs it)")


def start_haproxy(procs, config: Path, port: int) -> None:
    p = procs.start([HAPROXY, "-f", str(config), "-db"], log=config.with_suffix(".log"))

    def up() -> bool:
        if p.poll() is not None:
            raise AssertionError(config.with_suffix(".log").read_text())
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    wait_until(up, 10, "haproxy listening")


def lb_haproxy(config: Path, conf: Path, write: int, read: int = 0) -> str:
    """``bknrctl lb haproxy`` for the YAML ``config`` into ``conf``; returns its text."""
    r = CliRunner().invoke(cli, ["-c", str(config), "lb", "haproxy", "-o", str(conf),
                                 "--write-port", str(write), "--read-port", str(read)])
    assert r.exit_code == 0, r.output
    return conf.read_text()


def test_haproxy_routes_writes_to_the_leader_and_reads_to_replicas(tmp_path: Path, procs) -> None:
    cluster = LocalCluster(tmp_path, procs, 3, app={"asgi": "examples.bank.web:app"},
                           election_timeout_ms=300, heartbeat_ms=30)
    write, read = free_ports(2)
    conf = tmp_path / "haproxy.cfg"
    text = lb_haproxy(cluster.config_path, conf, write, read)
    assert "option httpchk GET /leader" in text and "GET /replica?lag=100" in text
    assert "inter 30ms" in text   # a tenth of the election timeout
    # the read backend is checked once per election timeout (docs/load-balancing.md)
    assert text.split("\nbackend bknr_replicas")[1].count("default-server inter 300ms fastinter 75ms") == 1
    cluster.init()
    cluster.start_all()
    leader = cluster.wait_leader()
    start_haproxy(procs, conf, write)
    front, replicas = f"http://127.0.0.1:{write}", f"http://127.0.0.1:{read}"

    def served_by(url: str) -> str:
        st, body, _ = http(url + "/accounts")
        return body["node"] if st == 200 else ""
    wait_until(lambda: served_by(front) == leader, 10, "the write frontend on the leader")
    assert http(front + "/accounts", {"owner": "ann", "balance": 10})[0] == 200
    assert http(front + "/accounts", {"owner": "bob", "balance": 10})[0] == 200
    st, body, _ = http(front + "/transfers", {"from": "ann", "to": "bob", "amount": 3},
                       {"Idempotency-Key": "lb-1"})
    assert st == 200 and body["duplicate"] is False
    cluster.wait_converged()
    followers = set(cluster.names) - {leader}
    wait_until(lambda: {served_by(replicas) for _ in range(6)} == followers, 10,
               "reads spread over both replicas")

    # a planned switchover: the write frontend follows the new leader, the old one serves reads
    new = cluster.client(leader).call("POST", "/transfer", {"to": 0})["leader_id"]
    new_name = cluster.name_of(new)
    wait_until(lambda: served_by(front) == new_name, 10, "the write frontend on the new leader")
    wait_until(lambda: leader in {served_by(replicas) for _ in range(6)}, 10,
               "the old leader serving reads")
    st, body, _ = http(front + "/transfers", {"from": "ann", "to": "bob", "amount": 3},
                       {"Idempotency-Key": "lb-1"})
    assert st == 200 and body["duplicate"] is True   # the same key, through the new leader


@pytest.mark.parametrize("shutdown_sessions", [False, True])
def test_generated_config_passes_haproxy_check(tmp_path: Path, shutdown_sessions: bool) -> None:
    import subprocess

    from bknrctl.lb import haproxy_config

    from bknr_cluster.cluster.certs import create_ca
    from bknr_cluster.cluster.config import ClusterConfig
    from tests.support import ROOT

    cfg = ClusterConfig.load(ROOT / "configs" / "local-3.yaml")
    # the shipped YAML is a TLS cluster: the checks verify the API against the cluster CA,
    # which bknrctl init would create; here a CA of the test's own
    cfg = dataclasses.replace(cfg, tls_dir=tmp_path / "tls")
    create_ca(cfg.tls_dir, cfg.group)
    text = haproxy_config(cfg, write_port=18080, read_port=18081, shutdown_sessions=shutdown_sessions)
    assert ("on-marked-down shutdown-sessions" in text) is shutdown_sessions
    assert ("server n2 127.0.0.1:8102 check addr 127.0.0.1 port 8102 check-ssl ssl verify required ca-file "
            f"{cfg.tls_dir / 'ca.crt'}") in text   # no app: the API, over HTTPS
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(text)
    r = subprocess.run([HAPROXY, "-c", "-f", str(conf)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
