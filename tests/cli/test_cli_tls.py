"""TLS everywhere and secure by default, through bknrctl against real node processes:
``init`` makes the CA and node certificates (mode 0600), the admin API is HTTPS verified against
the cluster CA, ``certs show``/``certs rotate`` (rolling, the cluster keeps a leader and its
data), optional client certificates, and a YAML without TLS or token refused unless it says
``insecure: true`` (docs/security.md)."""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bknr_cluster.cluster import certs
from bknr_cluster.cluster.client import ApiClient
from bknr_cluster.cluster.config import ClusterConfig
from bknr_cluster.cluster.tls_config import client_ssl_context
from bknr_cluster.errors import BknrError, Unreachable
from tests.cli.conftest import write_yaml
from tests.cli.realcluster import invoke, tracked_nodes
from tests.support import ROOT, free_ports, wait_until


def secure_yaml(tmp_path: Path, *extra: str) -> Path:
    path = write_yaml(tmp_path, free_ports(6), n=3)
    text = path.read_text().replace("insecure: true", "\n".join(["tls_dir: tls", *extra]))
    path.write_text(text)
    (tmp_path / "token").unlink()  # init makes a strong one, mode 0600
    return path


@pytest.fixture
def secure3(tmp_path: Path):
    path = secure_yaml(tmp_path)
    with tracked_nodes(path) as track:
        yield path, track


def _status(runner, path: Path) -> tuple[int, dict]:
    r = invoke(runner, path, "status", "-o", "json")
    return r.exit_code, json.loads(r.stdout) if r.stdout.strip() else {}


def _leader_client(runner, path: Path) -> ApiClient:
    cfg = ClusterConfig.load(path)
    leader = cfg.node(_status(runner, path)[1]["leader"])
    return ApiClient(leader.api_url, cfg.token(), ssl_context=client_ssl_context(cfg))


def test_init_tls_https_and_rolling_rotation(runner, secure3) -> None:
    path, track = secure3
    r = invoke(runner, path, "init")
    assert r.exit_code == 0, r.output
    tls = path.parent / "tls"
    files = sorted(p.name for p in tls.iterdir())
    assert files == ["ca.crt", "ca.key", "client.crt", "client.key", "n1.crt", "n1.key", "n2.crt", "n2.key",
                     "n3.crt", "n3.key"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in tls.iterdir())
    assert stat.S_IMODE((path.parent / "token").stat().st_mode) == 0o600
    assert certs.read_cert(tls / "n2.crt").hosts == ("127.0.0.1", "localhost")
    r = invoke(runner, path, "validate")
    assert r.exit_code == 0, r.output

    r = invoke(runner, path, "start")
    track()
    assert r.exit_code == 0, r.output
    assert "https://127.0.0.1:" in r.stderr
    wait_until(lambda: _status(runner, path)[0] == 0, 30, "a leader over HTTPS")
    c = _leader_client(runner, path)
    c.tx("open_account", "ann", 100)

    cfg = ClusterConfig.load(path)
    n1 = cfg.node("n1")
    # a client that does not know the cluster CA refuses the node (verification is on)
    with pytest.raises(Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
        ApiClient(n1.api_url, cfg.token()).health()
    # and plain HTTP gets nowhere on the HTTPS port
    with pytest.raises(Unreachable):
        ApiClient(n1.api_url.replace("https", "http"), cfg.token(), timeout=2).health()
    st = c.status()
    assert st["auth"]["tls"] is True and st["auth"]["cert_rejected"] == 0

    r = invoke(runner, path, "certs", "show", "-o", "json")
    assert r.exit_code == 0, r.output
    shown = {row["name"]: row for row in json.loads(r.stdout)["certificates"]}
    assert set(shown) == {"ca", "n1", "n2", "n3", "client"}
    assert 364 < shown["n1"]["days_left"] <= 365 and not shown["n1"]["expired"]

    before = {n: (tls / f"{n}.crt").read_bytes() for n in ("n1", "n2", "n3")}
    writer = RotationWriter(cfg)
    try:
        r = invoke(runner, path, "certs", "rotate")
    finally:
        writer.finish()
    track()
    assert r.exit_code == 0, r.output
    assert r.stderr.count("restarted and caught up") == 3
    assert all((tls / f"{n}.crt").read_bytes() != before[n] for n in before)
    # no downtime: writes went on during the rotation, none gave up
    assert writer.acked > 0 and writer.gave_up == 0, (writer.acked, writer.gave_up)
    wait_until(lambda: _status(runner, path)[0] == 0, 30, "a healthy cluster after rotation")
    c = _leader_client(runner, path)
    # a deposit retried after an ambiguous failure may have landed twice, never zero times
    assert c.query("total_balance", consistent=True)["result"] >= 100 + writer.acked


class RotationWriter:
    """Deposits 1 into 'ann' in a loop (bounded) through any node that answers (forwarded to the
    leader), retrying another node for up to RETRY_S when one is restarting."""

    RETRY_S = 15.0

    def __init__(self, cfg: ClusterConfig) -> None:
        ctx = client_ssl_context(cfg)
        self.clients = [ApiClient(n.api_url, cfg.token(), timeout=3, ssl_context=ctx) for n in cfg.nodes]
        self.acked = self.gave_up = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        k = 0
        for _ in range(5000):
            if self.stop.is_set():
                return
            deadline = time.monotonic() + self.RETRY_S
            while True:
                try:
                    self.clients[k % len(self.clients)].tx("deposit", "ann", 1, forward=True)
                    self.acked += 1
                    break
                except BknrError:
                    k += 1
                    if time.monotonic() > deadline:
                        self.gave_up += 1
                        break
                    self.stop.wait(0.05)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(self.RETRY_S + 10)


def test_client_certificates_required_when_asked(runner, tmp_path: Path) -> None:
    path = secure_yaml(tmp_path, "api_client_certs: true")
    with tracked_nodes(path) as track:
        assert invoke(runner, path, "init").exit_code == 0
        r = invoke(runner, path, "start")
        track()
        assert r.exit_code == 0, r.output
        wait_until(lambda: _status(runner, path)[0] == 0, 30, "bknrctl (with client.crt) sees a leader")
        cfg = ClusterConfig.load(path)
        n1 = cfg.node("n1")
        bare = ssl.create_default_context(cafile=str(cfg.tls_dir / "ca.crt"))  # no client cert
        with pytest.raises(Unreachable):
            ApiClient(n1.api_url, cfg.token(), ssl_context=bare).health()
        assert ApiClient(n1.api_url, cfg.token(), ssl_context=client_ssl_context(cfg)).health()


def _node_refuses(path: Path) -> str:
    p = subprocess.run([sys.executable, "-m", "bknr_cluster.node", "--config", str(path), "--node", "n1"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode != 0
    return p.stderr


def test_no_tls_no_token_is_refused_unless_insecure(runner, tmp_path: Path) -> None:
    path = write_yaml(tmp_path, free_ports(6), n=3)
    path.write_text(path.read_text().replace("insecure: true\n", "").replace("token_file: token\n", ""))
    r = invoke(runner, path, "validate")
    assert r.exit_code == 2
    assert "token_file: required" in r.output and "tls_dir: required" in r.output
    err = _node_refuses(path)
    assert "tls_dir: required" in err and "token_file: required" in err


def test_validate_reports_bad_security_files(runner, tmp_path: Path) -> None:
    path = secure_yaml(tmp_path)
    assert invoke(runner, path, "init").exit_code == 0
    tls = path.parent / "tls"
    (tls / "n1.key").chmod(0o644)
    certs.issue_node_cert(tls, "n2", ["10.1.2.3"])  # does not name 127.0.0.1
    certs.issue_node_cert(tls, "n3", ["127.0.0.1"], days=1,
                          not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    tok = path.parent / "token"
    tok.write_text("short\n")
    r = invoke(runner, path, "validate", "-o", "json")
    assert r.exit_code == 2
    problems = [p["message"] for p in json.loads(r.stdout)["problems"]]
    text = "\n".join(problems)
    assert "n1.key has mode 0644" in text
    assert "n2.crt does not name 127.0.0.1" in text
    assert "n3.crt expired on" in text
    assert "token holds 5 bytes; at least 32" in text
    os.chmod(tls / "n1.key", 0o600)
    (tls / "n1.crt").unlink()
    r = invoke(runner, path, "validate")
    assert "n1.crt is missing" in r.output
