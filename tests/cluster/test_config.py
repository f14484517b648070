"""The cluster YAML: loading, defaults, and validation that reports every problem with its path."""

from pathlib import Path

import pytest
import yaml

from bknr_cluster.cluster.config import ClusterConfig, validate
from bknr_cluster.errors import ConfigError, UnknownNode

GOOD = {
    "group": "bank",
    "store": "examples.bank.app:definition",
    "token_file": "token",
    "timing": {"election_timeout_ms": 200, "heartbeat_ms": 20},
    "nodes": [
        {"id": i, "name": f"n{i}", "host": "127.0.0.1", "raft_port": 7100 + i,
         "api_port": 8100 + i, "data_dir": f"data/n{i}"}
        for i in (1, 2, 3)
    ],
}


def write(tmp_path: Path, data) -> Path:
    p = tmp_path / "cluster.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_load_good_config_resolves_paths_and_defaults(tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    cfg = ClusterConfig.load(write(tmp_path, GOOD))
    assert cfg.group == "bank" and cfg.election_timeout_ms == 200 and cfg.heartbeat_ms == 20
    assert cfg.snapshot_keep == 3  # default
    n2 = cfg.node("n2")
    assert n2 is cfg.node(2) is cfg.node("2")
    assert n2.data_dir == tmp_path / "data" / "n2"
    assert n2.raft_address == "127.0.0.1:7102" and n2.api_url == "http://127.0.0.1:8102"
    assert n2.pid_file == tmp_path / "data" / "n2" / "node.pid"
    assert cfg.token() == "s3cret"
    assert cfg.initial_configuration()[0] == (1, "127.0.0.1:7101", "voter")


def test_unknown_node_names_the_known_ones(tmp_path):
    cfg = ClusterConfig.load(write(tmp_path, GOOD))
    with pytest.raises(UnknownNode, match=r"unknown node 'n9' \(known: n1, n2, n3\)"):
        cfg.node("n9")


def test_every_problem_is_reported_with_its_path(tmp_path):
    bad = {
        "group": "has space",
        "colour": "blue",
        "timing": {"election_timeout_ms": 100, "heartbeat_ms": 80},
        "nodes": [
            {"id": 1, "name": "n1", "host": "127.0.0.1", "raft_port": 7001, "api_port": 8001,
             "data_dir": "d1"},
            {"id": 1, "name": "n1", "host": "127.0.0.1", "raft_port": 7001, "api_port": 70000,
             "data_dir": "d1", "role": "boss"},
            {"name": "n3", "host": "bad host!", "raft_port": "x", "api_port": 8003, "data_dir": "d3"},
        ],
    }
    with pytest.raises(ConfigError) as err:
        ClusterConfig.load(write(tmp_path, bad))
    paths = {p for p, _ in err.value.problems}
    assert {"group", "colour", "store", "timing.heartbeat_ms", "nodes[1].id", "nodes[1].name",
            "nodes[1].raft_port", "nodes[1].api_port", "nodes[1].data_dir", "nodes[1].role",
            "nodes[2].id", "nodes[2].host", "nodes[2].raft_port"} <= paths
    assert "id 1 already used by nodes[0]" in str(err.value)


def test_malformed_yaml_names_line(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 3"):
        ClusterConfig.load(write(tmp_path, "group: x\nnodes: [\n"))


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        ClusterConfig.load(tmp_path / "nope.yaml")
    assert validate([1, 2], tmp_path)[0][1].startswith("the configuration must be a mapping")


def test_needs_a_voter(tmp_path):
    data = {**GOOD, "nodes": [{**n, "role": "spare"} for n in GOOD["nodes"]]}
    assert ("nodes", "at least one node must be a voter") in validate(data, tmp_path)


def test_ssh_node_keeps_remote_absolute_data_dir(tmp_path):
    nodes = [dict(GOOD["nodes"][0], data_dir="/srv/bknr/n1",
                  ssh={"user": "bknr", "port": 2222, "known_hosts": "~/.ssh/known_hosts"})]
    cfg = ClusterConfig.load(write(tmp_path, {**GOOD, "nodes": nodes}))
    n1 = cfg.node("n1")
    assert not n1.is_local and n1.ssh.port == 2222 and n1.data_dir == Path("/srv/bknr/n1")
    assert n1.ssh.strict_host_key_checking is True


def test_python_cpu_cluster_default_node_override_and_bad_values(tmp_path):
    data = {**GOOD, "python_cpu": "auto",
            "nodes": [{**n, "python_cpu": 1} if n["id"] == 2 else n for n in GOOD["nodes"]]}
    cfg = ClusterConfig.load(write(tmp_path, data))
    assert [n.python_cpu for n in cfg.nodes] == ["auto", 1, "auto"]
    assert ClusterConfig.load(write(tmp_path, GOOD)).node("n1").python_cpu is None
    bad = {**GOOD, "python_cpu": "fast",
           "nodes": [{**n, "python_cpu": -1} if n["id"] == 3 else n for n in GOOD["nodes"]]}
    with pytest.raises(ConfigError) as err:
        ClusterConfig.load(write(tmp_path, bad))
    assert {p for p, _ in err.value.problems} == {"python_cpu", "nodes[2].python_cpu"}
