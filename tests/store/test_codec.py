"""Codec: every supported type round-trips; unsupported values fail at encode time."""

import datetime as dt
import enum
import uuid
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from bknr_cluster.errors import CodecError, CorruptData
from bknr_cluster.store import Blob
from tests.store.models import Color, Person

VALUES = [
    None, True, False, 0, -1, 2**63 - 1, -2**63, 2**64, -(2**200) + 7, 1.5, float("inf"), "", "héllo",
    b"\x00\xff", [], [1, [2, "x"]], (), (1, (2, 3)), {"a": 1, 2: "b", (1, 2): [3]}, set(), {1, 2, 3},
    frozenset({"a", "b"}), {frozenset({1}): {2}},
    dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC),
    dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))),
    dt.date(1999, 12, 31), dt.timedelta(days=-2, seconds=5, microseconds=7),
    Decimal("1.10"), Decimal("-0.000001"), uuid.UUID("12345678-1234-5678-1234-567812345678"),
    Color.RED, [Color.BLUE, (Color.RED,)], Blob("ab" * 32, 3),
]


@pytest.mark.parametrize("value", VALUES, ids=[repr(v)[:30] for v in VALUES])
def test_round_trip(mem, value):
    back = mem.decode_value(mem.encode_value(value))
    assert back == value and type(back) is type(value)


def test_tuple_inside_list_keeps_its_type(mem):
    back = mem.decode_value(mem.encode_value([(1, 2), {"k": (3,)}]))
    assert type(back[0]) is tuple and type(back[1]["k"]) is tuple


def test_zoneinfo_datetime_keeps_zone(mem):
    value = dt.datetime(2024, 7, 1, 12, 0, tzinfo=ZoneInfo("Europe/Oslo"))
    back = mem.decode_value(mem.encode_value(value))
    assert back == value and back.utcoffset() == value.utcoffset() and str(back.tzinfo) == "Europe/Oslo"


def test_object_references(mem):
    ann = mem.execute("add_person", "ann")
    assert mem.decode_value(mem.encode_value({"who": ann})) == {"who": ann}
    mem.execute("delete_person", "ann")
    with pytest.raises(CodecError, match="reference to Person #1: it is deleted"):
        mem.encode_value(ann)


def test_reference_to_missing_object_fails_decoding(mem):
    ann = mem.execute("add_person", "ann")
    data = mem.encode_value(ann)
    mem.execute("delete_person", "ann")
    with pytest.raises(CodecError, match="object #1, which does not exist"):
        mem.decode_value(data)


class Mood(enum.Enum):
    HAPPY = 1


class Local:
    pass


@pytest.mark.parametrize("bad, message", [
    (Local(), "cannot encode value of type tests.store.test_codec.Local"),
    (dt.datetime(2024, 1, 1), "naive datetime"),
    (Mood.HAPPY, "enum Mood is not registered"),
    ([1, {"x": object()}], "cannot encode value of type builtins.object"),
    (1 + 2j, "complex"),
])
def test_unsupported_values_fail_at_encode(mem, bad, message):
    with pytest.raises(CodecError, match=message):
        mem.encode_value(bad)
    with pytest.raises(CodecError, match=message):
        mem.encode_transaction("echo", bad)


def test_unsupported_argument_is_not_logged(disk):
    s = disk()
    s.execute("add_person", "ann")
    with pytest.raises(CodecError):
        s.execute("echo", Local())
    assert s._durable.seq == 1                    # nothing was appended to the log
    s.close()
    assert disk().count() == 1


def test_malformed_bytes(mem):
    with pytest.raises(CodecError, match="cannot decode"):
        mem.decode_value(b"\xc1")
    with pytest.raises(CorruptData, match="malformed transaction record"):
        mem.apply_record(b"\xc1garbage")
    with pytest.raises(CorruptData, match="not a version-1 transaction record"):
        mem.apply_record(mem.encode_value([2, "echo", 0, [], None]))


def test_results_are_live_objects(mem):
    p = mem.execute("add_person", "ann")
    assert isinstance(p, Person) and mem.find(p.id) is p
