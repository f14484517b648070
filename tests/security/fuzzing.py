"""Shared pieces of the decoder fuzzing: budgets, input strategies and the checked properties.

The properties are plain functions so the bounded hypothesis tests (``make test``) and the long
campaign (``python -m tests.security.fuzz_campaign``) check exactly the same thing.

Budget: ``BKNR_FUZZ_EXAMPLES`` (default 150) examples per fuzz test; the whole fuzz set stays
well under 60 s on the 2-core test machine.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Any

import msgpack
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from bknr_cluster.cluster.batch import MAGIC as BATCH_MAGIC
from bknr_cluster.cluster.batch import decode_batch, encode_batch
from bknr_cluster.errors import BknrError, CorruptData
from bknr_cluster.store import Store, TxContext
from bknr_cluster.store.snapshot import MAGIC as SNAP_MAGIC

EXAMPLES = int(os.environ.get("BKNR_FUZZ_EXAMPLES", "150"))
# No example database: runs are reproducible from the seed hypothesis prints on failure, and
# nothing is written into the working tree.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

# --- strategies -------------------------------------------------------------------------------

_ints = st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1)
_scalars = (st.none() | st.booleans() | _ints | st.floats() | st.text(max_size=12)
            | st.binary(max_size=16))
# Extension types, weighted towards the codes the store codec gives meaning to (1..12).
_ext = st.builds(msgpack.ExtType, st.integers(0, 14) | st.integers(0, 127),
                 st.binary(max_size=24) | st.builds(lambda v: msgpack.packb(v), _scalars
                                                    | st.lists(_scalars, max_size=4)))
values = st.recursive(
    _scalars | _ext,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6) | _ints, inner,
                                                               max_size=4),
    max_leaves=16)


def packs(strategy: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    return strategy.map(lambda v: msgpack.packb(v, use_bin_type=True))


@st.composite
def mutated(draw: Any, base: bytes) -> bytes:
    """``base`` with a few random edits: byte flips, truncation, insertion, deletion."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0, 0x7F, 0x80, 0xC1, 0xD4, 0xDC, 0xFF]))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 8))]
    return bytes(data)


# --- group-commit batches ------------------------------------------------------------------------

def batch_inputs() -> st.SearchStrategy[bytes]:
    valid = st.builds(encode_batch, st.integers(0, 2 ** 32), st.integers(0, 2 ** 63),
                      st.lists(st.tuples(st.integers(0, 2 ** 40), st.binary(max_size=16)), max_size=4))
    return st.one_of(
        st.binary(max_size=64),
        st.builds(lambda b: BATCH_MAGIC + b, st.binary(max_size=64)),
        st.builds(lambda b: BATCH_MAGIC + b, packs(values)),
        st.builds(lambda n, s, items: BATCH_MAGIC + msgpack.packb([n, s, items], use_bin_type=True),
                  values, values, st.lists(values, max_size=4) | values),
        valid.flatmap(mutated),
    )


def check_batch(data: bytes) -> None:
    """decode_batch returns well-typed items or raises CorruptData; nothing else escapes."""
    try:
        node_id, session, items = decode_batch(data)
    except CorruptData:
        return
    assert type(node_id) is int and node_id >= 0 and type(session) is int and session >= 0
    for seq, record in items:
        assert type(seq) is int and seq >= 0 and type(record) is bytes
    # What decodes re-encodes to something that decodes the same (no lossy acceptance).
    assert decode_batch(encode_batch(node_id, session, items)) == (node_id, session, items)


# --- transaction records -------------------------------------------------------------------------

TX_NAMES = ["open_account", "deposit", "transfer", "no_such_tx", ""]


def record_inputs(store: Store) -> st.SearchStrategy[bytes]:
    valid = st.one_of(
        st.builds(lambda o, b: store.encode_transaction("open_account", o, b),
                  st.text(max_size=8), st.integers(0, 1000)),
        st.builds(lambda o, a: store.encode_transaction("deposit", o, a),
                  st.sampled_from(["ann", "bob", "zed"]), st.integers(-5, 1000)),
        st.builds(lambda s, d, a, t: store.encode_transaction("transfer", s, d, a, t),
                  st.sampled_from(["ann", "bob"]), st.sampled_from(["ann", "bob"]),
                  st.integers(-5, 500), st.text(max_size=6)),
    )
    fields = st.tuples(
        st.sampled_from([1]) | values,
        st.sampled_from(TX_NAMES) | values,
        st.integers(0, 2 ** 63) | values,
        st.lists(values, max_size=5) | values,
        st.none() | st.dictionaries(st.text(max_size=10), values, max_size=3) | values,
    )
    return st.one_of(
        st.binary(max_size=64),
        packs(values),
        packs(fields.map(list)),
        packs(st.lists(values, max_size=7)),
        valid.flatmap(mutated),
    )


def well_typed(store: Store, record: bytes) -> bool:
    """Does the record decode to [1, registered name, int ts, list args, dict|None kwargs]?"""
    try:
        f = store.decode_value(record)
    except BknrError:
        return False
    if not (type(f) is list and len(f) == 5 and type(f[0]) is int and f[0] == 1):
        return False
    _, name, ts, args, kwargs = f
    try:
        store.definition.transaction(name)
    except BknrError:
        return False
    return (type(ts) is int and type(args) is list
            and (kwargs is None or (type(kwargs) is dict and all(type(k) is str for k in kwargs))))


def check_record(store: Store, record: bytes, index: int) -> None:
    """apply_record: a malformed record raises a BknrError; any failure leaves the state as it
    was (same digest, same object count)."""
    before = store.digest()
    count = len(store)
    try:
        store.apply_record(record, TxContext(index=index))
    except BknrError:
        pass
    except Exception as exc:
        # Only a well-formed record may fail with a non-bknr exception: the transaction's own.
        if not well_typed(store, record):
            raise AssertionError(f"malformed record {record!r} escaped as "
                                 f"{type(exc).__name__}: {exc}") from exc
    else:
        return
    assert store.digest() == before, f"failed record {record!r} changed the state"
    assert len(store) == count


# --- snapshots -----------------------------------------------------------------------------------

_FRAME = struct.Struct("<II")


def frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def split_frames(snapshot: bytes) -> list[bytes]:
    """Payloads of a well-formed snapshot (after the 12-byte magic + version prefix)."""
    out, pos = [], len(SNAP_MAGIC) + 4
    while pos < len(snapshot):
        n, _ = _FRAME.unpack_from(snapshot, pos)
        out.append(snapshot[pos + 8:pos + 8 + n])
        pos += 8 + n
    return out


@st.composite
def reframed(draw: Any, snapshot: bytes) -> bytes:
    """A snapshot whose frames pass their checksums but whose *content* is damaged: one frame
    replaced by random msgpack or a mutated payload, dropped, duplicated or swapped."""
    frames = split_frames(snapshot)
    i = draw(st.integers(0, len(frames) - 1))
    op = draw(st.sampled_from(["random", "mutate", "drop", "dup", "swap", "edit"]))
    if op == "random":
        frames[i] = msgpack.packb(draw(values), use_bin_type=True)
    elif op == "mutate":
        frames[i] = draw(mutated(frames[i]))
    elif op == "drop":
        del frames[i]
    elif op == "dup":
        frames.insert(i, frames[i])
    elif op == "swap":
        j = draw(st.integers(0, len(frames) - 1))
        frames[i], frames[j] = frames[j], frames[i]
    else:  # decode, change one element of the top-level structure, re-encode
        obj = msgpack.unpackb(frames[i], raw=False, strict_map_key=False)
        if isinstance(obj, dict) and obj:
            key = draw(st.sampled_from(sorted(obj, key=repr)))
            obj[key] = draw(values)
        elif isinstance(obj, list) and obj:
            obj[draw(st.integers(0, len(obj) - 1))] = draw(values)
        frames[i] = msgpack.packb(obj, use_bin_type=True)
    return snapshot[:len(SNAP_MAGIC) + 4] + b"".join(frame(p) for p in frames)


def snapshot_inputs(snapshot: bytes) -> st.SearchStrategy[bytes]:
    head = snapshot[:len(SNAP_MAGIC) + 4]
    return st.one_of(
        st.binary(min_size=1, max_size=64),
        st.builds(lambda b: SNAP_MAGIC + b, st.binary(max_size=64)),
        st.builds(lambda ps: head + b"".join(frame(p) for p in ps), st.lists(packs(values), max_size=4)),
        mutated(snapshot),
        reframed(snapshot),
    )


def check_snapshot(store: Store, data: bytes, restore: bytes) -> None:
    """load_snapshot either loads something self-consistent or raises CorruptData with the old
    state intact. ``restore`` is the store's original snapshot, reloaded after a success."""
    before = store.digest()
    try:
        store.load_snapshot(io.BytesIO(data))
    except CorruptData:
        assert store.digest() == before, "a rejected snapshot changed the state"
        return
    # Accepted: the loaded state must survive its own round trip.
    again = store.snapshot_bytes()
    digest = store.digest()
    store.load_snapshot(io.BytesIO(again))
    assert store.digest() == digest
    store.load_snapshot(io.BytesIO(restore))
    assert store.digest() == before
