"""A secure (not ``insecure``) 3-node cluster hosting the bank web application, set up the way an
operator does it: ``bknrctl init`` (CA, node certificates, token), ``bknrctl start``; the
application ports then serve HTTPS with the node certificates. Teardown SIGKILLs exactly the
node pids bknrctl started (tests/cli/realcluster.py)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from typer.testing import CliRunner

from bknr_cluster.cluster.config import ClusterConfig
from tests.cli.realcluster import invoke, tracked_nodes
from tests.support import free_ports, wait_until

YAML = """\
group: secure-web
store: examples.bank.app:definition
token_file: token
tls_dir: tls
timing: {{election_timeout_ms: 300, heartbeat_ms: 30}}
app: {{asgi: "examples.bank.web:app"}}
nodes:
{nodes}
"""


def write_secure_yaml(root: Path) -> Path:
    ports = free_ports(9)
    nodes = "\n".join(
        f"  - {{id: {i}, name: n{i}, host: 127.0.0.1, raft_port: {ports[3 * i - 3]}, "
        f"api_port: {ports[3 * i - 2]}, app_port: {ports[3 * i - 1]}, data_dir: data/n{i}}}"
        for i in (1, 2, 3))
    path = root / "cluster.yaml"
    path.write_text(YAML.format(nodes=nodes))
    return path


def leader_name(runner: CliRunner, path: Path) -> str | None:
    r = invoke(runner, path, "status", "-o", "json")
    return json.loads(r.stdout).get("leader") if r.exit_code == 0 and r.stdout.strip() else None


@contextmanager
def secure_app_cluster(root: Path) -> Iterator[ClusterConfig]:
    """``bknrctl init`` + ``start`` of a TLS cluster with the bank application; yields its
    configuration once a leader is elected."""
    runner = CliRunner()
    path = write_secure_yaml(root)
    with tracked_nodes(path) as track:
        r = invoke(runner, path, "init")
        assert r.exit_code == 0, r.output
        r = invoke(runner, path, "start")
        track()
        assert r.exit_code == 0, r.output
        wait_until(lambda: leader_name(runner, path), 30, "a leader over HTTPS")
        yield ClusterConfig.load(path)


def ca_context(cfg: ClusterConfig) -> ssl.SSLContext:
    """A customer's client that trusts the cluster CA (and checks the host name)."""
    return ssl.create_default_context(cafile=str(cfg.tls_dir / "ca.crt"))


def https(url: str, ctx: ssl.SSLContext, body: dict | None = None,
          headers: dict | None = None, timeout: float = 15) -> tuple[int, dict | str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            status, raw = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read().decode()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw
