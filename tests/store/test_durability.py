"""Standalone durability: log + fsync + group commit, snapshots, restart, torn tails, corruption."""

import logging
import os
import threading

import pytest

from bknr_cluster.errors import CorruptData, NonDeterminism, StoreError
from bknr_cluster.store import log as txlog
from tests.store.models import Boom, Person
from tests.support import wait_until


def _logs(path):
    return sorted(p for p in os.listdir(path) if p.endswith(".log"))


def test_restart_replays_the_log(disk, tmp_path):
    s = disk()
    s.execute("add_person", "ann", "Oslo")
    s.execute("add_employee", "eve", 7)
    s.execute("befriend", "ann", "eve")
    with pytest.raises(Boom):
        s.execute("mess_then_fail", "ann")            # failures are not logged
    digest = s.digest()
    s.close()
    s2 = disk()
    assert s2.digest() == digest and s2.last_index == 3
    assert Person.by_name("ann").friend is Person.by_name("eve")


def test_snapshot_then_more_records(disk, tmp_path):
    s = disk()
    s.execute("add_person", "ann")
    path = s.snapshot()
    assert os.path.basename(path) == "snapshot-00000000000000000001.snap"
    s.execute("add_person", "bob")
    digest = s.digest()
    s.close()
    assert _logs(tmp_path / "store") == ["log-00000000000000000002.log"]
    s2 = disk()
    assert s2.digest() == digest and s2.run_query("names") == ["ann", "bob"]
    s2.snapshot()
    s2.snapshot()                                     # back-to-back snapshots are fine
    s2.close()
    names = sorted(os.listdir(tmp_path / "store"))
    assert [n for n in names if n.startswith("snapshot")] == ["snapshot-00000000000000000002.snap"]
    assert disk().digest() == digest


def test_crash_after_snapshot_rename_before_new_log(disk, tmp_path):
    s = disk()
    s.execute("add_person", "ann")
    s.execute("add_person", "bob")
    digest = s.digest()
    with open(tmp_path / "snap.bin", "wb") as f:
        s.write_snapshot(f, include_blobs=False)
    s.close()
    os.rename(tmp_path / "snap.bin", tmp_path / "store" / "snapshot-00000000000000000002.snap")
    s2 = disk()                                       # old log's records are in the snapshot
    assert s2.digest() == digest
    s2.execute("add_person", "cid")
    digest = s2.digest()
    s2.close()
    assert disk().digest() == digest


def test_torn_tail_is_truncated_with_warning(disk, tmp_path, caplog):
    s = disk()
    s.execute("add_person", "ann")
    digest = s.digest()
    s.execute("add_person", "bob")
    s.close()
    log_path = tmp_path / "store" / _logs(tmp_path / "store")[0]
    size = os.path.getsize(log_path)
    with open(log_path, "r+b") as f:
        f.truncate(size - 3)
    with caplog.at_level(logging.WARNING, logger="bknr_cluster.store"):
        s2 = disk()
    assert "torn tail truncated" in caplog.text and str(log_path) in caplog.text
    assert s2.digest() == digest and s2.run_query("names") == ["ann"]
    s2.execute("add_person", "cid")                   # appends after the truncation point
    digest = s2.digest()
    s2.close()
    assert disk().digest() == digest


def test_zero_filled_tail_is_torn(disk, tmp_path):
    s = disk()
    s.execute("add_person", "ann")
    s.close()
    log_path = tmp_path / "store" / _logs(tmp_path / "store")[0]
    with open(log_path, "ab") as f:
        f.write(b"\0" * 100)
    assert disk().run_query("names") == ["ann"]


def test_corruption_before_tail_refuses_to_open(disk, tmp_path):
    s = disk()
    s.execute("add_person", "ann")
    s.execute("add_person", "bob")
    s.close()
    log_path = tmp_path / "store" / _logs(tmp_path / "store")[0]
    data = bytearray(log_path.read_bytes())
    offset = txlog.HEADER_SIZE
    data[offset + txlog._FRAME.size + 2] ^= 0x55      # inside the first record's payload
    log_path.write_bytes(bytes(data))
    with pytest.raises(CorruptData, match=rf"{log_path}: record fails its checksum at offset {offset}"):
        disk()
    data[offset + txlog._FRAME.size + 2] ^= 0x55
    data[offset] ^= 0x01                              # damaged length field
    log_path.write_bytes(bytes(data))
    with pytest.raises(CorruptData, match=f"record header fails its checksum at offset {offset}"):
        disk()


def test_corrupt_snapshot_names_the_file(disk, tmp_path):
    s = disk()
    s.execute("add_person", "ann")
    snap = s.snapshot()
    s.close()
    data = bytearray(open(snap, "rb").read())
    data[30] ^= 0xFF
    open(snap, "wb").write(bytes(data))
    with pytest.raises(CorruptData, match=snap):
        disk()


def test_store_directory_is_locked(disk):
    disk()
    with pytest.raises(StoreError, match="already open"):
        disk()


def test_replay_failure_is_nondeterminism(disk, tmp_path, monkeypatch):
    s = disk()
    s.execute("add_person", "ann")
    s.close()
    from tests.store import models

    def broken(*a, **k):
        raise RuntimeError("changed behaviour")
    monkeypatch.setattr(models.add_person, "fn", broken)
    with pytest.raises(NonDeterminism, match="record 1 at offset 20 succeeded when logged"):
        disk()


def test_group_commit_shares_one_fsync(disk, monkeypatch):
    s = disk()
    s.execute("add_person", "seed")
    calls = []
    release = threading.Event()
    real = os.fdatasync

    def slow_fdatasync(fd):
        calls.append(fd)
        if len(calls) == 1:          # hold the first fsync until 15 more records are waiting
            release.wait(30)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    errors = []

    def worker(i):
        try:
            s.execute("add_person", f"p{i}")
        except Exception as exc:     # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    threads[0].start()
    wait_until(lambda: calls, 10, "first fsync")
    for t in threads[1:]:
        t.start()
    wait_until(lambda: s._durable.log._appended - s._durable.log._durable == 16, 10, "15 queued records")
    release.set()
    for t in threads:
        t.join(30)
    assert not errors and len(calls) == 2                 # 16 transactions, 2 fsyncs
    assert s.count() == 17


def test_execute_returns_after_fsync(disk, monkeypatch):
    s = disk()
    synced = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (real(fd), synced.append(fd)))
    s.execute("add_person", "ann")
    assert len(synced) == 1


def test_log_write_failure_makes_store_read_only(disk, monkeypatch):
    s = disk()

    def failing(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(StoreError, match="No space left"):
        s.execute("add_person", "ann")
    monkeypatch.undo()
    with pytest.raises(StoreError, match="read-only"):
        s.execute("add_person", "bob")


def test_unsynced_mode_still_logs(disk):
    s = disk(sync=False)
    s.execute("add_person", "ann")
    s.close()
    assert disk().count() == 1


def test_issue_spelling_without_a_definition(tmp_path):
    from bknr_cluster.store import Store
    from tests.store.models import Color, Doc, Employee, add_person
    with Store(tmp_path / "s", classes=[Person, Employee, Doc], transactions=[add_person],
               enums=[Color]) as s:
        acct = s.execute(add_person, "ann", "Oslo")
        assert add_person("bob").id == 2 and Person.by_name("ann") is acct
    with Store(tmp_path / "s", classes=[Person, Employee, Doc], transactions=[add_person]) as s:
        assert [p.name for p in Person.where(city="Oslo")] == ["ann"] and s.count() == 2


def test_closed_store_refuses_writes(disk):
    s = disk()
    s.execute("add_person", "ann")
    s.close()
    s.close()                                          # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.execute("add_person", "bob")
    with pytest.raises(StoreError, match="closed"):
        s.snapshot()
    assert s.run_query("names") == ["ann"]
