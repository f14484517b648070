"""Batch codec: round trip, and defensive decoding of anything malformed."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bknr_cluster.cluster.batch import MAGIC, decode_batch, encode_batch
from bknr_cluster.errors import CorruptData


def test_round_trip_keeps_order_and_markers():
    items = [(1, b"a"), (2, b""), (3, b"\x00" * 1000)]
    assert decode_batch(encode_batch(7, 2**40, items)) == (7, 2**40, items)


@pytest.mark.parametrize("data", [
    b"", b"BKB", b"XXXX" + msgpack.packb([1, 2, []]), MAGIC + b"\xc1",
    MAGIC + msgpack.packb([1, 2]), MAGIC + msgpack.packb({"a": 1}),
    MAGIC + msgpack.packb([-1, 2, []]), MAGIC + msgpack.packb([1, 2, [[1, "text"]]]),
    MAGIC + msgpack.packb([1, 2, [[1]]]), MAGIC + msgpack.packb([1, 2, "x"]),
    MAGIC + msgpack.packb([True, 2, []]), MAGIC + msgpack.packb([1, 2, [[1, b"a"]]])[:-1],
    MAGIC + msgpack.packb([1, 2, [msgpack.ExtType(5, b"x")]]),
])
def test_malformed_batches_raise_corrupt_data(data):
    with pytest.raises(CorruptData):
        decode_batch(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzzed_bytes_only_ever_raise_corrupt_data(tail):
    try:
        decode_batch(MAGIC + tail)
    except CorruptData:
        pass
