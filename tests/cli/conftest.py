"""Fixtures for the bknrctl tests: YAML files on free loopback ports, fake nodes, the CLI runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.cli.fakenode import FakeCluster, FakeNodes
from tests.support import free_ports

TOKEN = "test-token-123"


def write_yaml(dirpath: Path, ports: list[int], n: int = 3, election_ms: int = 200,
               store: str = "examples.bank.app:definition", extra_nodes: int = 0,
               ssh: dict | None = None) -> Path:
    """A cluster YAML with ``n`` nodes (+ ``extra_nodes`` listed as spares for peer add)."""
    (dirpath / "token").write_text(TOKEN + "\n")
    (dirpath / "token").chmod(0o600)  # as bknrctl init creates it (validate warns otherwise)
    lines = ["group: test-cluster", f"store: {store}", "token_file: token", "insecure: true",
             f"timing: {{election_timeout_ms: {election_ms}, heartbeat_ms: {max(5, election_ms // 10)}}}",
             "nodes:"]
    for i in range(1, n + extra_nodes + 1):
        role = "" if i <= n else ", role: spare"
        node = (f"  - {{id: {i}, name: n{i}, host: 127.0.0.1, raft_port: {ports[2 * i - 2]}, "
                f"api_port: {ports[2 * i - 1]}, data_dir: data/n{i}{role}")
        if ssh and i == 1:
            node += ", ssh: " + json.dumps(ssh)
        lines.append(node + "}")
    path = dirpath / "cluster.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def fake(tmp_path: Path):
    """Three fake nodes (n1 leader) plus n4 in the YAML but not a member."""
    ports = free_ports(8)
    path = write_yaml(tmp_path, ports, n=3, extra_nodes=1)
    cluster = FakeCluster(TOKEN, [1, 2, 3], down={4})   # n4 serves only when a test says so
    with FakeNodes(cluster, {i: ports[2 * i - 1] for i in (1, 2, 3, 4)}) as nodes:
        yield path, cluster, nodes
