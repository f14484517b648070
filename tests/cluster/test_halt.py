"""Halting, the definition gate and consistency checkpoints, in-process over the fake engine
(apply.py, definition.py, monitor.py; DESIGN.md "Halting a replica")."""

from __future__ import annotations

import io
import threading
import time
from enum import Enum

import pytest

from bknr_cluster.cluster.batch import encode_batch, encode_system
from bknr_cluster.cluster.definition import Capabilities, describe
from bknr_cluster.cluster.settings import ClusterSettings
from bknr_cluster.cluster.snapshot_meta import split_snapshot, store_snapshot_of
from bknr_cluster.cluster.store import ClusterStore
from bknr_cluster.errors import NotCapable, ReplicaHalted
from bknr_cluster.store import Store, StoreDefinition, StoreObject, transaction
from tests.cluster.fake_engine import FakeEngine
from tests.cluster.versioned_app import make_definition
from tests.support import sample_for, wait_until

V1, V2 = make_definition(1), make_definition(2)


def make(tmp_path, definition=V1, **kw) -> ClusterStore:
    kw.setdefault("monitor_interval", 0.05)
    return ClusterStore(definition, ClusterSettings(1, "127.0.0.1:7001:1", tmp_path, **kw),
                        engine_factory=FakeEngine)


def record(definition, tx, *args) -> bytes:
    return Store(None, definition=definition, bind=False).encode_transaction(tx, *args)


def settle(cs: ClusterStore, index: int) -> None:
    wait_until(lambda: cs.applied_index >= index or cs.halted, 5, f"index {index} handled")


@pytest.fixture
def cs(tmp_path):
    store = make(tmp_path)
    yield store
    store.stop()


def test_an_unknown_transaction_halts_the_replica_at_the_entry_before(cs):
    cs.execute("put", "a", 1)
    ok_index = cs.applied_index
    bad = cs.engine.inject("entry", encode_batch(9, 9, [(1, record(V1, "put", "b", 2)),
                                                        (2, record(V2, "incr", "a"))]))
    later = cs.engine.inject("entry", encode_batch(9, 9, [(3, record(V1, "put", "c", 3))]))
    wait_until(lambda: cs.halted, 5, "halted")
    # the entry after it is in the engine's queue: it must stay unapplied
    assert set(sample_for(lambda: cs.applied_index, 0.2)) == {ok_index}
    h = cs.halted
    assert h["index"] == bad and h["kind"] == "unknown_transaction" and h["transaction"] == "incr"
    assert h["records_applied"] == 1 and h["applied_index"] == ok_index
    assert cs.applied_index == ok_index < bad < later  # nothing after it either
    assert cs.engine.halted is True                    # the engine neither campaigns nor votes
    assert cs.store.run_query("get", "c") is None
    st = cs.status()
    assert st["halted"] == h and st["failed_records"] == 0
    with pytest.raises(ReplicaHalted):
        cs.execute("put", "d", 4)
    with pytest.raises(ReplicaHalted):
        cs.barrier()
    n = len(cs.engine.log)
    with pytest.raises(ReplicaHalted):
        cs.backup()
    assert len(cs.engine.log) == n  # nothing logged


def test_after_an_upgrade_the_same_log_applies_in_full(tmp_path):
    """The restart of a halted node: a new definition replays the same entries from scratch."""
    entries = [encode_batch(9, 9, [(1, record(V2, "put", "a", 1))]),
               encode_batch(9, 9, [(2, record(V2, "incr", "a"))]),
               encode_batch(9, 9, [(3, record(V2, "incr", "a"))])]
    old = make(tmp_path / "old", V1)
    new = make(tmp_path / "new", V2)
    try:
        for e in entries:
            old.engine.inject("entry", e)
            new.engine.inject("entry", e)
        wait_until(lambda: old.halted and new.applied_index == 3, 5, "applied / halted")
        assert old.applied_index == 1 and old.halted["index"] == 2
        assert new.store.run_query("get", "a") == 3 and new.halted is None
    finally:
        old.stop()
        new.stop()


class Color(Enum):
    RED = "red"
    GREEN = "green"


class Paint(StoreObject):
    color: str = ""


class Reference(StoreObject):
    to: object = None


@transaction("paint")
def paint(color: Color) -> str:
    Paint(color=color.value)
    return color.value


@transaction("point")
def point(obj: object) -> None:
    Reference(to=obj)


def test_arguments_this_definition_cannot_decode_halt(tmp_path):
    new = StoreDefinition("paint", classes=[Paint, Reference], transactions=[paint, point],
                          enums=[Color])
    old = StoreDefinition("paint", classes=[Paint, Reference], transactions=[paint, point])
    cs = make(tmp_path, old)
    try:
        i = cs.engine.inject("entry", encode_batch(9, 9, [(1, record(new, "paint", Color.GREEN))]))
        wait_until(lambda: cs.halted, 5, "halted")
        assert cs.halted["index"] == i and cs.halted["kind"] == "codec"
        assert "Color" in cs.halted["reason"] and cs.applied_index == i - 1
    finally:
        cs.stop()


def test_what_fails_the_same_everywhere_is_still_skipped(tmp_path):
    """The transaction's own exception, a reference to a missing object, bytes that are not
    msgpack: identical on every replica, so skipped and counted as before."""
    d = StoreDefinition("paint", classes=[Paint, Reference], transactions=[paint, point],
                        enums=[Color])
    cs = make(tmp_path, d)
    src = Store(None, definition=d, bind=False)
    src.execute("paint", Color.RED)
    src.execute("paint", Color.RED)
    dangling = src.encode_transaction("point", src.find(2))  # object 2 does not exist in cs
    try:
        cs.execute("paint", Color.RED)
        cs.engine.inject("entry", encode_batch(9, 9, [(1, dangling)]))
        last = cs.engine.inject("entry", encode_batch(9, 9, [(2, b"\xc1\xc1")]))
        settle(cs, last)
        assert cs.halted is None and cs.failed_records == 2
        with pytest.raises(AttributeError):
            cs.execute("paint", "not a color")  # the transaction's own exception
        assert cs.halted is None and cs.execute("paint", Color.GREEN) == "green"
    finally:
        cs.stop()


def _snapshot(definition, tx: str, *args) -> bytes:
    s = Store(None, definition=definition, bind=False)
    if tx:
        s.execute(tx, *args)
    return s.snapshot_bytes()


def test_a_snapshot_with_objects_of_an_unknown_class_halts_an_empty_one_does_not(tmp_path):
    cs = make(tmp_path, V1)
    try:
        cs.engine.inject("restore", _snapshot(V2, "put", "a", 1), index=5)  # Tag class, empty
        wait_until(lambda: cs.applied_index == 5, 5, "restore applied")
        assert cs.halted is None and cs.store.run_query("get", "a") == 1
        cs.engine.inject("restore", _snapshot(V2, "tag", "t"), index=8)      # one Tag object
        wait_until(lambda: cs.halted, 5, "halted")
        assert cs.halted["kind"] == "snapshot" and "Tag" in cs.halted["reason"]
        assert cs.applied_index == 5
    finally:
        cs.stop()


def test_checkpoints_record_each_replicas_digest_and_a_verdict_that_differs_halts(cs):
    cs.execute("put", "a", 1)
    c = cs.engine.inject("entry", encode_system(9, 9, 0, "checkpoint", {}))
    settle(cs, c)
    mine = cs.checkpoints[c]
    assert mine["digest"] == cs.store.digest() and mine["schema"] == describe(V1)["schema"]
    assert cs.last_checkpoint == c and cs.status()["checkpoints"][str(c)]["digest"] == mine["digest"]
    v = cs.engine.inject("entry", encode_system(9, 9, 0, "verdict", {
        "index": c, "digest": mine["digest"], "schema": mine["schema"], "agree": [1, 2]}))
    settle(cs, v)
    assert cs.verdicts[c]["result"] == "agree" and cs.halted is None
    v = cs.engine.inject("entry", encode_system(9, 9, 0, "verdict", {
        "index": c, "digest": "0" * 64, "schema": "another", "agree": [2, 3]}))
    settle(cs, v)
    assert cs.verdicts[c]["result"] == "not comparable" and cs.halted is None
    v = cs.engine.inject("entry", encode_system(9, 9, 0, "verdict", {
        "index": c, "digest": "0" * 64, "schema": mine["schema"], "agree": [2, 3]}))
    wait_until(lambda: cs.halted, 5, "halted")
    assert cs.halted["index"] == v and cs.halted["kind"] == "checkpoint"
    assert cs.applied_index == v - 1


def test_a_full_checkpoint_compares_the_incremental_digest_with_a_full_walk(cs):
    cs.execute("put", "a", 1)
    c = cs.engine.inject("entry", encode_system(9, 9, 0, "checkpoint", {"full": True}))
    settle(cs, c)
    assert cs.checkpoints[c]["full"] == cs.checkpoints[c]["digest"]


def test_the_gate_refuses_what_a_voter_does_not_know_and_logs_nothing(tmp_path):
    cs = make(tmp_path, V2)
    try:
        cs.engine.members = [{"id": i, "address": f"127.0.0.1:700{i}", "role": "voter"}
                             for i in (1, 2, 3)]
        wait_until(lambda: cs.capabilities.voters == (1, 2, 3), 5, "voters seen")
        # nothing published yet: the own definition is the baseline
        assert cs.execute("incr", "a") == 1
        for node, d in ((2, V2), (3, V1)):
            cs.engine.inject("entry", encode_system(9, 9, 0, "definition",
                                                    {"node": node, "definition": describe(d)}))
        wait_until(lambda: set(cs.capabilities.members) == {1, 2, 3}, 5, "published")
        n = len(cs.engine.log)
        with pytest.raises(NotCapable) as info:
            cs.execute("incr", "a")
        assert [x["name"] for x in info.value.nodes] == ["n3"] and info.value.nodes[0]["version"] == "1.0"
        assert len(cs.engine.log) == n
        assert cs.execute("put", "b", 1) == 1
        assert cs.status()["definitions"]["refused_transactions"] == ["incr", "tag"]
        # n3 leaves the configuration: the gate opens
        cs.engine.members = cs.engine.members[:2]
        wait_until(lambda: cs.capabilities.voters == (1, 2), 5, "voters seen")
        assert cs.execute("incr", "a") == 2
    finally:
        cs.stop()


def test_a_voter_whose_definition_is_unknown_is_assumed_to_know_only_the_common_part():
    caps = Capabilities(describe(V2), 1)
    caps.set_voters([1, 2, 3])
    assert caps.capable("incr")                       # nothing known: our own definition
    caps.publish(2, describe(V2), 10)
    assert caps.capable("incr")                       # every published definition has it
    caps.publish(4, describe(V1), 11)                 # a spare once ran version 1
    assert not caps.capable("incr") and caps.capable("put")
    err = caps.refusal("incr", lambda i: f"n{i}")
    assert "n3 (definition not published yet)" in str(err)
    caps.publish(3, describe(V2), 12)
    assert caps.capable("incr")


def test_the_view_of_definitions_travels_in_the_snapshots(tmp_path):
    cs = make(tmp_path, V2)
    other = make(tmp_path / "other", V2)
    try:
        cs.engine.inject("entry", encode_system(9, 9, 0, "definition",
                                                {"node": 3, "definition": describe(V1)}))
        cs.execute("put", "a", 1)
        m = cs.engine.inject("snapshot_request", index=cs.engine.index)
        wait_until(lambda: cs.engine.store_snapshots, 5, "store snapshot")
        index, data = cs.engine.store_snapshots[0]
        meta, off = split_snapshot(data)
        assert index == m and meta["capabilities"]["members"]["3"]["version"] == "1.0"
        plain = Store(None, definition=V2, bind=False)
        plain.load_snapshot(io.BytesIO(store_snapshot_of(data)))
        assert plain.digest() == cs.store.digest()
        other.engine.inject("restore", data, index=m)
        wait_until(lambda: other.applied_index == m, 5, "restored")
        assert other.capabilities.members[3]["fingerprint"] == describe(V1)["fingerprint"]
        assert other.store.digest() == cs.store.digest()
    finally:
        cs.stop()
        other.stop()


def test_a_cheap_digest_is_published_by_the_applier_and_read_without_the_apply_lock(cs):
    cs.applier.cheap_digest = True  # what a store with an incremental digest (digest_full) gets
    cs.execute("put", "a", 1)
    wait_until(lambda: cs.applier.published_digest, 5, "published")
    assert cs.applier.published_digest == (cs.applied_index, cs.store.digest())
    held = threading.Event()
    release = threading.Event()

    def hold():
        with cs.applier.paused():
            held.set()
            release.wait(5)
    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    t0 = time.monotonic()
    assert cs.digest()[0] == cs.applied_index
    assert time.monotonic() - t0 < 0.5
    release.set()
    t.join()


def spin(seconds: float) -> None:
    """Burn ``seconds`` of this thread's CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_dear_digest_is_published_spaced_and_still_read_at_the_applied_index(cs, monkeypatch):
    """A digest that costs more than DIGEST_FREE_S (the system namespace of a failover drill)
    is not computed after every slice; readers between two publications get the current
    (index, digest) pair from the locked path, never a stale one."""
    from bknr_cluster.cluster import apply

    monkeypatch.setattr(apply, "DIGEST_SPACING", 100_000)  # after one publication: none for long
    cs.applier.cheap_digest = True
    real = cs.store.digest
    applier_calls = []

    def dear() -> str:
        if threading.current_thread() is cs.applier.thread:
            applier_calls.append(cs.applied_index)
        spin(0.002)  # > DIGEST_FREE_S of CPU time
        return real()
    monkeypatch.setattr(cs.store, "digest", dear)
    cs.execute("put", "a", 1)
    wait_until(lambda: applier_calls, 5, "the first publication")
    published = len(applier_calls)
    for i in range(5):
        cs.execute("put", f"k{i}", i)
    assert len(applier_calls) == published  # spaced: no publication for these slices
    assert cs.applier.published_stale
    assert cs.digest() == (cs.applied_index, real())  # the locked path: current
    # which publishes it: the next reader needs no lock until the applier moves on
    assert not cs.applier.published_stale
    assert cs.applier.published_digest == (cs.applied_index, real())
    cs.execute("put", "b", 2)
    assert cs.applier.published_stale and len(applier_calls) == published
    assert cs.digest() == (cs.applied_index, real())


def test_a_cheap_digest_is_published_after_every_slice(cs, monkeypatch):
    from bknr_cluster.cluster import apply

    # "cheap": within DIGEST_FREE_S of CPU time (a first fold can take longer on a busy host)
    monkeypatch.setattr(apply, "DIGEST_FREE_S", 10.0)
    cs.applier.cheap_digest = True
    for i in range(5):
        cs.execute("put", f"k{i}", i)
        assert not cs.applier.published_stale
    wait_until(lambda: cs.applier.published_digest == (cs.applied_index, cs.store.digest()), 5,
               "the last slice's digest published")
