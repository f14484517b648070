"""The parts of a ClusterStore on their own: settings (one place for defaults, one mapping to
the engine), the submitter's one retry/forward policy, and the store's install seam."""

from __future__ import annotations

import inspect
import io
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from bknr_cluster import defaults
from bknr_cluster.cluster.config import ClusterConfig
from bknr_cluster.cluster.settings import ClusterSettings
from bknr_cluster.cluster.store import ClusterStore
from bknr_cluster.cluster.submit import DONE, FORWARD, RETRY, Submitter
from bknr_cluster.errors import CorruptData, NotLeader, TransactionFailed, UsageError
from bknr_cluster.store import Store
from examples.bank.app import definition, open_account
from tests.cluster.fake_engine import FakeEngine


def _yaml(tmp_path: Path, **sections) -> Path:
    data = {"group": "bank", "store": "examples.bank.app:definition", "insecure": True,
            "nodes": [{"id": i, "name": f"n{i}", "host": "127.0.0.1", "raft_port": 7100 + i,
                       "api_port": 8100 + i, "data_dir": f"data/n{i}"} for i in (1, 2, 3)],
            **sections}
    p = tmp_path / "cluster.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


# --- settings --------------------------------------------------------------------------------

def test_the_yaml_the_settings_and_the_engine_share_one_set_of_defaults(tmp_path):
    from bknr_cluster.engine import RaftNode

    cfg = ClusterConfig.load(_yaml(tmp_path))
    built = ClusterSettings(1, "127.0.0.1:7001:1", tmp_path)
    from_yaml = ClusterSettings.from_config(cfg, "n1")
    engine = inspect.signature(RaftNode).parameters
    for name, value in (("election_timeout_ms", defaults.ELECTION_TIMEOUT_MS),
                        ("heartbeat_ms", defaults.HEARTBEAT_MS),
                        ("snapshot_threshold", defaults.SNAPSHOT_THRESHOLD),
                        ("snapshot_trailing", defaults.SNAPSHOT_TRAILING)):
        assert getattr(built, name) == getattr(from_yaml, name) == getattr(cfg, name) == value
        assert engine[name].default == value, name
    assert built.batch_max_count == from_yaml.batch_max_count == defaults.BATCH_MAX_COUNT
    assert built.checkpoint_every == from_yaml.checkpoint_every == defaults.CHECKPOINT_EVERY


def test_yaml_values_reach_the_engine_of_the_store_and_of_bknr_node_init_alike(tmp_path, monkeypatch):
    path = _yaml(tmp_path, timing={"election_timeout_ms": 400, "heartbeat_ms": 40},
                 snapshot={"threshold": 77, "trailing": 11}, batch={"max_bytes": 1 << 27})
    raw = yaml.safe_load(path.read_text())
    raw["nodes"][1]["priority"] = 1
    path.write_text(yaml.safe_dump(raw))
    cs = ClusterStore.from_config(path, "n2", definition=definition, engine_factory=FakeEngine,
                                  start=False)
    opts = cs.engine.options
    assert (opts["election_timeout_ms"], opts["heartbeat_ms"]) == (400, 40)
    assert (opts["snapshot_threshold"], opts["snapshot_trailing"]) == (77, 11)
    assert opts["max_entry_bytes"] == (1 << 27) + 4096
    assert opts["priority"] == 1 and opts["peer_priorities"] == {1: 0, 3: 0}
    assert cs.name == "n2" and cs.address == "127.0.0.1:7102"
    assert cs.api_url(3) == "http://127.0.0.1:8103" and cs.node_name(3) == "n3"

    # bknr-node --init builds its engine from the same mapping
    import bknr_cluster.engine
    from bknr_cluster import node

    monkeypatch.setattr(bknr_cluster.engine, "RaftNode", FakeEngine)
    cfg = ClusterConfig.load(path)
    init_engine = node._engine(cfg, cfg.node("n2"))
    assert init_engine.options == opts


def test_from_config_refuses_an_override_that_is_not_a_setting(tmp_path):
    with pytest.raises(UsageError, match="heartbeat"):
        ClusterStore.from_config(_yaml(tmp_path), "n1", definition=definition,
                                 engine_factory=FakeEngine, start=False, heartbeat=5)


def test_settings_are_frozen_and_replace_validates_again(tmp_path):
    s = ClusterSettings(1, {1: "127.0.0.1:7001"}, tmp_path)
    with pytest.raises(TypeError):
        s.peers[2] = "127.0.0.1:7002"  # type: ignore[index]
    assert s.replace(heartbeat_ms=50).heartbeat_ms == 50
    with pytest.raises(UsageError):
        s.replace(heartbeat_ms=5000)
    with pytest.raises(UsageError, match="python_cpu"):
        s.replace(python_cpu="fast")


# --- the submitter's one policy --------------------------------------------------------------

def _submitter(node_id: int = 1) -> Submitter:
    directory = SimpleNamespace(api_url=lambda i: f"http://n{i}", node_name=lambda i: f"n{i}")
    return Submitter(node_id, store=None, committer=None, halt_state=None, capabilities=None,
                     directory=directory, clients=None, election_timeout_ms=200)


def _resolved(error=None, tx_error=False):
    return SimpleNamespace(error=error, tx_error=tx_error, result="r", index=7)


def test_the_policy_decides_done_forward_retry_or_raise():
    sub = _submitter(node_id=1)
    later = time.monotonic() + 10
    assert sub.next_step(_resolved(), forward=False, raise_tx=True, deadline=later) == (DONE, None)
    own = ValueError("insufficient funds")
    with pytest.raises(ValueError):
        sub.next_step(_resolved(own, tx_error=True), forward=True, raise_tx=True, deadline=later)
    with pytest.raises(TransactionFailed):
        sub.next_step(_resolved(own, tx_error=True), forward=True, raise_tx=False, deadline=later)
    to_n2 = NotLeader(2, "127.0.0.1:7002", leader_api="http://n2")
    with pytest.raises(NotLeader):  # without forward the caller gets the hint
        sub.next_step(_resolved(to_n2), forward=False, raise_tx=True, deadline=later)
    assert sub.next_step(_resolved(to_n2), forward=True, raise_tx=True, deadline=later) == (FORWARD, to_n2)
    # a NotLeader naming ourselves (a hand-over in progress) or no API: wait, then try again
    to_me = NotLeader(1, "127.0.0.1:7001", leader_api="http://n1")
    step, pause = sub.next_step(_resolved(to_me), forward=True, raise_tx=True, deadline=later)
    assert step == RETRY and 0 < pause <= 0.05
    with pytest.raises(NotLeader):  # ... unless the deadline is closer than the pause
        sub.next_step(_resolved(to_me), forward=True, raise_tx=True, deadline=time.monotonic())


def test_a_hand_over_is_retried_every_millisecond_an_election_at_the_slow_pace():
    """During a hand-over the new leader is known within a millisecond or so of its election:
    the refusals naming us, and the leaderless ones right after them, retry at the short pause;
    an election with no hand-over behind it keeps the slower pace (no retry storm)."""
    sub = _submitter(node_id=1)
    later = time.monotonic() + 10
    nobody = NotLeader(0, "")
    assert sub.next_step(_resolved(nobody), forward=True, raise_tx=True, deadline=later) == \
        (RETRY, sub.no_leader_pause)
    to_me = NotLeader(1, "127.0.0.1:7001", leader_api="http://n1")
    assert sub.next_step(_resolved(to_me), forward=True, raise_tx=True, deadline=later) == \
        (RETRY, sub.handover_pause)
    assert sub.next_step(_resolved(nobody), forward=True, raise_tx=True, deadline=later) == \
        (RETRY, sub.handover_pause)
    assert sub.handover_pause < sub.no_leader_pause
    sub._handover_until = time.monotonic() - 1      # an election timeout later
    assert sub.next_step(_resolved(nobody), forward=True, raise_tx=True, deadline=later) == \
        (RETRY, sub.no_leader_pause)


def test_a_leader_handing_over_is_not_a_write_target():
    from bknr_cluster.cluster.api import _leads

    assert _leads({"state": "leader", "transferee": 0})
    assert not _leads({"state": "leader", "transferee": 2})
    assert not _leads({"state": "follower", "transferee": 0})


# --- the store's install seam ----------------------------------------------------------------

class CountingStore(Store):
    installs = 0
    resets = 0

    def install_state(self, state) -> None:
        type(self).installs += 1
        super().install_state(state)

    def reset_to_empty(self) -> None:
        type(self).resets += 1
        super().reset_to_empty()


def test_a_snapshot_replaces_the_state_through_the_install_seam_only(tmp_path):
    src = Store(None, definition=definition, bind=False)
    src.bind()
    open_account("ann", 5)
    snap = src.snapshot_bytes()
    dst = CountingStore(None, definition=definition, bind=False)
    with pytest.raises(CorruptData):
        dst.load_snapshot(io.BytesIO(snap[:-3]))  # damaged: nothing installed
    assert CountingStore.installs == 0 and len(dst) == 0
    assert dst.load_snapshot(io.BytesIO(snap)) == 1
    assert CountingStore.installs == 1 and dst.digest() == src.digest()
    assert dst.load_snapshot(io.BytesIO(b"")) == 0
    assert CountingStore.resets == 1 and len(dst) == 0 and dst.last_index == 0


def test_the_yaml_directory_finds_a_node_added_to_the_file_after_the_start(tmp_path):
    from bknr_cluster.cluster.directory import YamlDirectory

    path = _yaml(tmp_path)
    directory = YamlDirectory(ClusterConfig.load(path), path)
    assert directory.node_name(4) == "" and directory.api_url(0) == ""
    raw = yaml.safe_load(path.read_text())
    raw["nodes"].append({"id": 4, "name": "n4", "host": "127.0.0.1", "raft_port": 7104,
                         "api_port": 8104, "data_dir": "data/n4"})
    path.write_text(yaml.safe_dump(raw))
    assert directory.node_name(4) == "n4" and directory.api_url(4) == "http://127.0.0.1:8104"
    path.write_text("not: [valid")  # a broken file answers "" instead of raising
    assert directory.node_name(5) == ""
