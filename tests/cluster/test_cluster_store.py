"""ClusterStore submit/apply paths in-process, over the fake engine (no processes, no network)."""

from __future__ import annotations

import io
import threading
from dataclasses import FrozenInstanceError

import pytest

from bknr_cluster.cluster.batch import MAGIC, encode_batch
from bknr_cluster.cluster.directory import StaticDirectory
from bknr_cluster.cluster.settings import ClusterSettings, parse_peers
from bknr_cluster.cluster.snapshot_meta import store_snapshot_of
from bknr_cluster.cluster.store import ClusterStore
from bknr_cluster.errors import CodecError, NoLeader, NotLeader, Timeout, UnknownTransaction, UsageError
from bknr_cluster.store import Store
from examples.bank.app import definition, open_account, transfer
from tests.cluster.fake_engine import FakeEngine
from tests.support import wait_until


@pytest.fixture
def cs(tmp_path):
    store = ClusterStore(definition, ClusterSettings(1, "127.0.0.1:7001:1,127.0.0.1:7002:2", tmp_path),
                         engine_factory=FakeEngine,
                         directory=StaticDirectory(
                             api_urls={1: "http://127.0.0.1:8001", 2: "http://127.0.0.1:8002"}))
    yield store
    store.stop()


def test_parse_peers_forms():
    assert parse_peers("127.0.0.1:7001:1, 127.0.0.1:7002:2") == {1: "127.0.0.1:7001", 2: "127.0.0.1:7002"}
    assert parse_peers([(3, "h:1")]) == {3: "h:1"}
    with pytest.raises(UsageError):
        parse_peers("127.0.0.1:7001")


def test_results_exceptions_and_direct_calls_go_through_the_log(cs):
    assert cs.execute(open_account, "ann", 50)["balance"] == 50
    assert open_account("bob")["owner"] == "bob"  # a direct call replicates too
    assert len(cs.engine.log) == 2
    digest = cs.digest()[1]
    with pytest.raises(ValueError, match="insufficient"):
        cs.execute(transfer, "bob", "ann", 5, "t1")
    assert len(cs.engine.log) == 3 and cs.digest()[1] == digest
    assert cs.status()["failed_records"] == 1


def test_codec_and_argument_errors_are_raised_before_anything_is_logged(cs):
    with pytest.raises(CodecError):
        cs.execute(open_account, object())
    with pytest.raises(UsageError):
        cs.execute(open_account)
    with pytest.raises(UnknownTransaction):
        cs.execute("nope")
    assert cs.engine.log == []


def test_not_leader_carries_the_api_hint_and_no_leader_is_distinct(cs):
    cs.engine.leader = False
    cs.engine.leader_hint = (2, "127.0.0.1:7002")
    with pytest.raises(NotLeader) as info:
        cs.execute(open_account, "ann")
    assert info.value.leader_api == "http://127.0.0.1:8002" and not isinstance(info.value, NoLeader)
    cs.engine.leader_hint = (0, "")
    with pytest.raises(NoLeader):
        cs.execute(open_account, "ann")
    with pytest.raises(NoLeader):  # forward waits for a leader, but only until the deadline
        cs.execute(open_account, "ann", forward=True, timeout=0.3)
    with pytest.raises(NotLeader):
        with cs.read(consistent=True):
            pass


def test_timeout_when_nothing_commits_and_a_late_apply_is_ignored(cs):
    never = threading.Event()

    class Pending:
        def result(self, timeout=None):
            never.wait(timeout)
            return 0

    cs.committer._submit = lambda data: (cs.engine.log.append(data), Pending())[1]
    with pytest.raises(Timeout):
        cs.execute(open_account, "ann", timeout=0.2)
    cs.engine.inject("entry", cs.engine.log[0])  # it commits after all: applied, nobody waits
    wait_until(lambda: cs.applied_index >= 1, 5, "late entry applied")
    assert cs.store.run_query("account", "ann")["owner"] == "ann"
    never.set()


def test_malformed_entries_are_skipped_and_counted(cs):
    cs.execute(open_account, "ann", 10)
    digest = cs.digest()[1]
    for bad in (b"junk", MAGIC + b"\xc1", encode_batch(9, 9, [(1, b"\x00not a record")])):
        cs.engine.inject("entry", bad)
    cs.execute(open_account, "bob", 1)
    st = cs.status()
    assert st["corrupt_entries"] == 2 and st["failed_records"] == 1
    assert cs.store.run_query("count") == {"accounts": 2, "transfers": 0}
    assert digest != cs.digest()[1]


def test_snapshot_request_and_restore_at_an_exact_index(cs):
    cs.execute(open_account, "ann", 10)
    cs.execute(open_account, "bob", 20)
    m = cs.engine.inject("snapshot_request", index=cs.engine.index)
    wait_until(lambda: cs.engine.store_snapshots, 5, "store snapshot handed back")
    index, data = cs.engine.store_snapshots[0]
    assert index == m
    copy = Store(None, definition=definition, bind=False)
    copy.load_snapshot(io.BytesIO(store_snapshot_of(data)))  # behind the cluster layer's meta
    assert copy.digest() == cs.digest()[1]
    cs.execute(open_account, "carol", 30)
    cs.engine.inject("restore", data, index=cs.engine.index + 1)
    wait_until(lambda: cs.status()["restores"] == 1, 5, "restore applied")
    assert cs.digest()[1] == copy.digest()
    cs.engine.inject("restore", b"", index=cs.engine.index + 2)
    wait_until(lambda: cs.status()["restores"] == 2, 5, "empty restore applied")
    assert cs.store.run_query("count") == {"accounts": 0, "transfers": 0}


def test_concurrent_callers_share_entries(cs):
    results = []

    def caller(k):
        for i in range(25):
            results.append(cs.execute(open_account, f"c{k}-{i}")["id"])
    threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == list(range(1, 201))
    assert cs.status()["batched_records"] == 200


def test_settings_reach_the_engine_and_bad_settings_fail_before_anything_starts(tmp_path):
    settings = ClusterSettings(node_id=2, peers="127.0.0.1:7001:1,127.0.0.1:7002:2",
                               data_dir=tmp_path, group="MyGroup", election_timeout_ms=100,
                               heartbeat_ms=10, snapshot_threshold=64)
    cs = ClusterStore(definition, settings, engine_factory=FakeEngine)
    try:
        assert cs.address == "127.0.0.1:7002" and cs.group == "MyGroup" and cs.name == "n2"
        assert cs.engine.options == settings.engine_options()
        assert cs.engine.options["election_timeout_ms"] == 100
        assert cs.engine.options["snapshot_threshold"] == 64
        cs.execute(open_account, "ann", 3)
        assert cs.query("account", "ann")["balance"] == 3
    finally:
        cs.stop()
    with pytest.raises(UsageError, match="not among the peers"):
        ClusterSettings(node_id=3, peers="127.0.0.1:7001:1", data_dir=tmp_path)
    with pytest.raises(UsageError, match="heartbeat_ms"):
        ClusterSettings(node_id=1, peers="127.0.0.1:7001:1", data_dir=tmp_path,
                        election_timeout_ms=100, heartbeat_ms=100)
    with pytest.raises(FrozenInstanceError):
        settings.heartbeat_ms = 5  # type: ignore[misc]


def test_leadership_lost_is_distinct_from_not_leader(cs):
    from bknr_cluster.cluster.client import error_body, error_from_body, error_status
    from bknr_cluster.errors import LeadershipLost
    cs.engine.submit_error = LeadershipLost("lost leadership mid-request")
    with pytest.raises(LeadershipLost) as info:
        cs.execute(open_account, "ann")
    assert not isinstance(info.value, NotLeader)
    exc = info.value
    assert error_status(exc) == 503
    back = error_from_body(503, error_body(exc))
    assert type(back) is LeadershipLost and not isinstance(back, NotLeader)
    hint = NotLeader(2, "127.0.0.1:7002", leader_api="http://127.0.0.1:8002")
    back = error_from_body(503, error_body(hint))
    assert type(back) is NotLeader and back.leader_api == hint.leader_api and back.leader_id == 2


def test_execute_async_results_failures_and_timeout(cs):
    import asyncio

    from bknr_cluster.errors import TransactionFailed

    async def main():
        results = await asyncio.gather(*(cs.execute_async("open_account", [f"x{i}"], {})
                                         for i in range(50)))
        assert sorted(r[0]["id"] for r in results) == list(range(1, 51))
        with pytest.raises(TransactionFailed) as info:
            await cs.execute_async("deposit", ["nobody", 1], {})
        assert info.value.exception == "KeyError"
        cs.committer._submit = lambda data: never_commits
        with pytest.raises(Timeout):
            await cs.execute_async("open_account", ["late"], {}, timeout=0.2)

    class Never:
        def result(self, timeout=None):
            threading.Event().wait(timeout if timeout is not None else 0.5)
            raise Timeout("never")
    never_commits = Never()
    asyncio.run(main())


def test_an_entry_replayed_by_the_engine_is_refused_and_counted(cs):
    cs.execute(open_account, "ann", 10)
    cs.execute(open_account, "bob", 20)
    before = cs.status()
    entry = cs.engine.log[-1]
    # The engine hands the last entry over again at its old index: a replay (a transaction
    # run twice on this replica only). It must not reach the store.
    cs.engine.inject("entry", entry, index=cs.engine.index)
    wait_until(lambda: cs.status()["replayed_entries"] == 1, 5, "replay refused")
    after = cs.status()
    assert (after["applied_entries"], after["applied_records"], after["digest"]) == \
        (before["applied_entries"], before["applied_records"], before["digest"])
    # A restore resets the floor: the entry after the restored index is applied again.
    r = cs.engine.inject("restore", b"", index=cs.engine.index)
    cs.engine.inject("entry", entry, index=r + 1)
    wait_until(lambda: cs.status()["applied_index"] == r + 1, 5, "entry after restore applied")
    assert cs.status()["replayed_entries"] == 1
    assert cs.status()["applied_records"] == before["applied_records"] + 1


def test_freeze_gc_moves_the_store_out_of_the_collectors_reach_after_snapshots(tmp_path):
    import gc
    gc.unfreeze()
    store = ClusterStore(definition, ClusterSettings(1, "127.0.0.1:7001:1", tmp_path, freeze_gc=True),
                         engine_factory=FakeEngine)
    try:
        store.execute(open_account, "ann", 10)
        assert gc.get_freeze_count() == 0       # nothing happens before a snapshot
        store.engine.inject("snapshot_request", index=store.engine.index)
        wait_until(lambda: store.engine.store_snapshots, 5, "store snapshot handed back")
        wait_until(lambda: gc.get_freeze_count() > 0, 5, "objects frozen after the snapshot")
        gc.unfreeze()
        data = store.engine.store_snapshots[0][1]
        store.engine.inject("restore", data, index=store.engine.index + 1)
        wait_until(lambda: store.status()["restores"] == 1, 5, "restore applied")
        wait_until(lambda: gc.get_freeze_count() > 0, 5, "objects frozen after the restore")
    finally:
        store.stop()
        gc.unfreeze()
