"""Bounded fuzzing of every decoder that reads bytes written by someone else.

* group-commit batch entries (``decode_batch``), the first thing a replica does with a log entry;
* transaction records (``Store.apply_record``): decode + run, on a populated bank store;
* store snapshots (``Store.load_snapshot``), including frames that pass their CRC but carry
  damaged content;
* the cluster applier as a whole: garbage log entries are skipped and counted, the replica keeps
  applying, its digest is unchanged.

Malformed input must raise the project's errors (``CorruptData`` and friends), never another
exception, and a rejected input must leave the state exactly as it was.
"""

from __future__ import annotations

import io
import itertools

import msgpack
import pytest
from hypothesis import example, given

from bknr_cluster.cluster.batch import encode_batch
from bknr_cluster.store import Store
from examples.bank.app import definition as bank
from tests.security import fuzzing
from tests.support import wait_until


def _populated(prefix: str = "") -> Store:
    s = Store(None, definition=bank, bind=False)
    for i, owner in enumerate(["ann", "bob", "cyd"]):
        s.apply_record(s.encode_transaction("open_account", prefix + owner, 100 * (i + 1)))
    s.apply_record(s.encode_transaction("transfer", prefix + "ann", prefix + "bob", 30, prefix + "t1"))
    return s


@fuzzing.FUZZ
@given(fuzzing.batch_inputs())
def test_batch_decoder(data: bytes) -> None:
    fuzzing.check_batch(data)


_record_store = _populated()
_index = itertools.count(1000)


def _rec(*fields) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


# Regression examples: one per defect class the fuzzer found (each must raise a BknrError).
@fuzzing.FUZZ
@given(fuzzing.record_inputs(_record_store))
@example(_rec(1, "deposit", None, ["ann", 5], None))            # timestamp not an int
@example(_rec(1, "deposit", 0, {"ann": 5}, None))               # args a map (keys became args)
@example(_rec(1, "deposit", 0, ["ann", 5], [1]))                # kwargs not a map
@example(_rec(1, "deposit", 0, [msgpack.ExtType(7, b"x!"), 5], None))  # Decimal ext, bad text
def test_record_decoder_and_apply(record: bytes) -> None:
    fuzzing.check_record(_record_store, record, next(_index))


_snapshot_source = _populated("src-").snapshot_bytes()


def _snap(frames: list[bytes]) -> bytes:
    return _snapshot_source[:12] + b"".join(fuzzing.frame(p) for p in frames)


_src_frames = fuzzing.split_frames(_snapshot_source)


@pytest.fixture(scope="module")
def snapshot_target():
    s = _populated("dst-")
    return s, s.snapshot_bytes()


@fuzzing.FUZZ
@given(data=fuzzing.snapshot_inputs(_snapshot_source))
@example(data=_snap([msgpack.packb([1, 2])] + _src_frames[1:]))     # header frame not a map
@example(data=_snap([f for f in _src_frames if not f.startswith(b"\x94\xa4cols")]))  # no columns
def test_snapshot_loader(snapshot_target, data: bytes) -> None:
    store, original = snapshot_target
    fuzzing.check_snapshot(store, data, original)


def test_snapshot_fuzzer_reaches_the_decoder():
    """The damaged-content strategy really produces frames that pass the CRC (otherwise the
    snapshot fuzz would only ever test the checksum)."""
    frames = fuzzing.split_frames(_snapshot_source)
    assert len(frames) >= 4
    rebuilt = _snapshot_source[:12] + b"".join(fuzzing.frame(p) for p in frames)
    assert rebuilt == _snapshot_source


def test_garbage_log_entries_are_skipped_and_the_replica_keeps_applying(tmp_path):
    """End to end through ClusterStore's applier (fake single-node engine)."""
    from bknr_cluster.cluster.settings import ClusterSettings
    from bknr_cluster.cluster.store import ClusterStore
    from tests.cluster.fake_engine import FakeEngine

    cs = ClusterStore(bank, ClusterSettings(1, "127.0.0.1:7001:1", tmp_path), engine_factory=FakeEngine)
    cs.start()
    try:
        cs.execute("open_account", "ann", 10)
        before_idx, before = cs.digest()
        garbage = [b"", b"BKB1", b"BKB1\xc1", b"\x00" * 40, b"BKB1" + b"\x93\x01\x02\x91\x92\x01\xa1x",
                   encode_batch(1, 2, [(1, b"\xc1\xc1")]), encode_batch(9, 9, [(0, b"\x95\x01")])]
        last = 0
        for g in garbage:
            last = cs.engine.inject("entry", g)
        wait_until(lambda: cs.applied_index >= last, 10, "garbage entries applied")
        assert cs.digest()[1] == before
        assert cs.corrupt_entries >= 4 and cs.failed_records >= 2
        assert cs.execute("deposit", "ann", 5) == 15  # still applying
        assert cs.digest()[1] != before and cs.applied_index > before_idx
    finally:
        cs.stop()


def test_empty_snapshot_means_empty_store():
    s = _populated()
    s.load_snapshot(io.BytesIO(b""))
    assert len(s) == 0
