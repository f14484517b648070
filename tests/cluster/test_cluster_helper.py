"""The one test cluster helper (tests/cluster_helper.py) without processes: the YAML it writes
is a valid cluster configuration, and the agreed-leader wait accepts exactly an agreed leader."""

from __future__ import annotations

import pytest

from bknr_cluster.cluster.config import ClusterConfig
from tests.cluster_helper import NodeProcesses, YamlCluster
from tests.support import Processes


def test_yaml_is_a_valid_configuration_on_distinct_free_ports(tmp_path):
    c = YamlCluster(tmp_path, Processes(), 3, store="examples.bank.app:definition",
                    checkpoint_every=7, raft_secret=True, data_dirs={"n2": tmp_path / "elsewhere"})
    c.add_entry()
    c.write()
    cfg = ClusterConfig.load(c.config_path)
    assert [n.name for n in cfg.nodes] == ["n1", "n2", "n3", "n4"] == c.names
    ports = [p for e in c.data["nodes"] for p in (e["raft_port"], e["api_port"])]
    assert len(set(ports)) == len(ports)
    assert c.nodes["n2"].data_dir == tmp_path / "elsewhere"
    assert c.nodes["n1"].data_dir == tmp_path / "data" / "n1"
    assert c.nodes["n1"].log == tmp_path / "data" / "n1" / "stdout.log"
    assert (tmp_path / "raft.secret").stat().st_mode & 0o777 == 0o600
    assert c.data["checkpoint"] == {"every": 7} and c.token == cfg.token()


def test_namespaced_nodes_get_their_hosts_and_the_exec_prefix(tmp_path):
    hosts = {"n1": "10.213.9.1", "n2": "10.213.9.2"}
    c = YamlCluster(tmp_path, Processes(), 2, store="examples.bank.app:definition", hosts=hosts,
                    exec_prefix=lambda name: ["ip", "netns", "exec", f"ns-{name}"])
    assert c.nodes["n2"].url == "http://10.213.9.2:8000"
    assert c.nodes["n1"].raft_address == "10.213.9.1:7000"
    assert c.node_cmd("n2", "--init")[:4] == ["ip", "netns", "exec", "ns-n2"]
    assert c.node_cmd("n2", "--init")[-3:] == ["--node", "n2", "--init"]


VIEWS = {
    "agreed": {"n1": (True, "n1"), "n2": (False, "n1"), "n3": (False, "n1")},
    "two_named": {"n1": (True, "n1"), "n2": (False, "n1"), "n3": (False, "n2")},
    "one_knows_none": {"n1": (True, "n1"), "n2": (False, "n1"), "n3": (False, None)},
    "leader_does_not_say_so": {"n1": (False, "n1"), "n2": (False, "n1"), "n3": (False, "n1")},
}


@pytest.mark.parametrize("case", VIEWS)
def test_agreed_leader_wait(case):
    views = VIEWS[case]
    nodes = NodeProcesses(Processes())
    if case == "agreed":
        assert nodes.wait_agreed_leader(views.__getitem__, views, 1) == "n1"
    else:
        with pytest.raises(AssertionError, match="one agreed leader"):
            nodes.wait_agreed_leader(views.__getitem__, views, 0.1)


def test_agreed_leader_outside_the_asked_nodes_must_be_a_candidate():
    views = {"n1": (True, "n1"), "n2": (False, "n1"), "n3": (False, "n1")}
    nodes = NodeProcesses(Processes())
    # n2 and n3 agree on n1, which is asked itself only because it is a candidate
    assert nodes.wait_agreed_leader(views.__getitem__, ["n2", "n3"], 1, candidates=["n1", "n2", "n3"]) == "n1"
    with pytest.raises(AssertionError):
        nodes.wait_agreed_leader(views.__getitem__, ["n2", "n3"], 0.1)
