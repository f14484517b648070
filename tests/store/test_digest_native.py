"""The native fold (native/digest.cpp) computes exactly the digest's definition (digest.py):
checked against an independent Python rendering of it (the store codec's msgpack, a Python
SipHash-c-d-128 checked against the published SipHash-2-4 test vectors) over values of every codec type and
every msgpack length and integer boundary."""

import datetime as dt
import random
import uuid
from decimal import Decimal
from hashlib import blake2s

import msgpack
import pytest

from bknr_cluster.store import Store, StoreDefinition, TxContext, transaction
from bknr_cluster.store import _digest as native
from bknr_cluster.store import digest as digest_mod
from bknr_cluster.store.codec import Codec
from tests.store import models
from tests.store.models import Color, Employee, Person

INTS = [0, 1, 31, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
        2**64, 2**100, -1, -31, -32, -33, -127, -128, -129, -32768, -32769, -2**31, -2**31 - 1,
        -2**63, -2**63 - 1, -2**100]
LENGTHS = [0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536]
FLOATS = [0.0, -0.0, 1.5, -2.25e300, float("inf"), 5e-324]


_M64 = (1 << 64) - 1


def _siphash128(key: bytes, data: bytes, c: int = 2, d: int = 4) -> int:
    """SipHash-c-d with 128-bit output, as in its reference implementation (little-endian int)."""
    def rotl(x: int, b: int) -> int:
        return ((x << b) | (x >> (64 - b))) & _M64

    def rounds(v: list[int], n: int) -> None:
        for _ in range(n):
            v[0] = (v[0] + v[1]) & _M64; v[1] = rotl(v[1], 13) ^ v[0]; v[0] = rotl(v[0], 32)  # noqa: E702
            v[2] = (v[2] + v[3]) & _M64; v[3] = rotl(v[3], 16) ^ v[2]                           # noqa: E702
            v[0] = (v[0] + v[3]) & _M64; v[3] = rotl(v[3], 21) ^ v[0]                           # noqa: E702
            v[2] = (v[2] + v[1]) & _M64; v[1] = rotl(v[1], 17) ^ v[2]; v[2] = rotl(v[2], 32)  # noqa: E702

    k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
    v = [0x736F6D6570736575 ^ k0, 0x646F72616E646F6D ^ k1 ^ 0xEE,
         0x6C7967656E657261 ^ k0, 0x7465646279746573 ^ k1]
    tail = len(data) % 8
    words = [int.from_bytes(data[i:i + 8], "little") for i in range(0, len(data) - tail, 8)]
    words.append((len(data) & 0xFF) << 56 | int.from_bytes(data[len(data) - tail:], "little"))
    for m in words:
        v[3] ^= m
        rounds(v, c)
        v[0] ^= m
    v[2] ^= 0xEE
    rounds(v, d)
    lo = v[0] ^ v[1] ^ v[2] ^ v[3]
    v[1] ^= 0xDD
    rounds(v, d)
    return (v[0] ^ v[1] ^ v[2] ^ v[3]) << 64 | lo


def test_siphash_matches_the_reference_vectors():
    key = bytes(range(16))
    vectors = {0: "a3817f04ba25a8e66df67214c7550293", 15: "5493e99933b0a8117e08ec0f97cfc3d9"}
    for n, expected in vectors.items():
        assert _siphash128(key, bytes(range(n))).to_bytes(16, "little").hex() == expected
        assert native.siphash128(key, bytes(range(n))) == _siphash128(key, bytes(range(n)))
    rng = random.Random(3)
    key = digest_mod.ROW_KEY
    for n in [*range(70), 255, 256, 4097]:
        data = rng.randbytes(n)
        assert native.siphash128(key, data) == _siphash128(key, data), n
        # the digest's variant: the same code with fewer rounds
        assert native.siphash128(key, data, 1, 3) == _siphash128(key, data, 1, 3), n
    with pytest.raises(ValueError):
        native.siphash128(key, b"", 3, 5)


def _values(rng: random.Random, people: list[Person]) -> list:
    vals: list = [None, True, False, *INTS, *FLOATS]
    vals += ["x" * n for n in LENGTHS] + [b"\x00" * n for n in LENGTHS] + ["é€😀"]
    vals += [[], [1, "a"], list(range(20)), (), (1, (2, 3)), {"b": 1, "a": [2]}, {3: "c", 1: "d"},
             {1, 2, 3}, frozenset({"z", "y"}), set(), {"k": {5, 4}},
             dt.datetime(2026, 12, 4, 9, 0, tzinfo=dt.UTC), dt.date(2026, 12, 4),
             dt.timedelta(days=1, microseconds=5), Decimal("1.50"), uuid.UUID(int=12345),
             Color.RED, [Color.BLUE, Decimal("2")]]
    vals += people[:3] + [[people[0], (people[1],)], {people[2]: people[0]}, {people[1]}]
    return vals


@transaction("t.set_any")
def set_any(name: str, attr: str, value) -> None:
    setattr(Person.by_name(name), attr, value)


definition = StoreDefinition("people", classes=models.definition.classes,
                             transactions=[*models.definition.transactions.values(), set_any],
                             enums=models.definition.enums)


def _reference_h(store: Store, obj) -> int:
    """h(o) by the definition, in Python: t(o) plus one t(o, i) per attribute, each the
    SipHash-1-3-128 of the codec's msgpack of its row."""

    def is_live(o) -> bool:
        extent = store._extent.get(type(o))
        return extent is not None and extent.get(o.id) is o

    codec = Codec(store.definition.enums, store.find, is_live, lenient=True)
    specs = sorted(type(obj)._meta.persistent, key=lambda s: s.name)
    tag = blake2s(msgpack.packb([type(obj)._meta.name, [s.name for s in specs]]), digest_size=8).digest()
    rows = [[tag, obj.id]]
    rows += [[tag, obj.id, i, digest_mod._canon(codec.pack, getattr(obj, s.name))]
             for i, s in enumerate(specs)]
    return sum(_siphash128(digest_mod.ROW_KEY, codec.pack(row), 1, 3) & digest_mod._MASK
               for row in rows) & digest_mod._MASK


def _reference_digest(store: Store) -> str:
    total = 0
    for cls in store._classes:
        for obj in store._extent[cls].values():
            total += _reference_h(store, obj)
    return digest_mod.finish(total & digest_mod._MASK, store._next_id, store._last_ts, store.system)


def _apply(store: Store, tx: str, *args) -> None:
    store.apply_record(store.encode_transaction_at(store.last_index + 10, tx, *args),
                       TxContext(store.last_index + 1))


@pytest.mark.parametrize("fold_at", [1, 7, 1 << 30])
def test_native_hashes_match_the_definition(fold_at):
    rng = random.Random(fold_at)
    store = Store(None, definition=definition, bind=False)
    store._fold_at = fold_at
    for i in range(40):
        _apply(store, "add_person", f"p{i}", rng.choice([None, "Berlin", "Paris"]), i)
    _apply(store, "add_employee", "e1", 10, Color.BLUE)
    with store.reading():
        people = [Person.by_name(f"p{i}") for i in range(40)]
    values = _values(rng, people)
    for k, value in enumerate(values):
        attr = "tags" if k % 2 else "friend"
        _apply(store, "set_any", f"p{k % 40}", attr, value)
    assert store.digest() == _reference_digest(store) == store.digest_full()
    # deleting referenced objects turns their references into None in the referrers' hashes
    _apply(store, "delete_person", "p0")
    _apply(store, "delete_person", "p2")
    assert store.digest() == _reference_digest(store) == store.digest_full()
    with store.reading():
        objs = [*store.all(Person), *store.all(Employee)]
        assert native.hashes(store._digests._hasher.plan(Person), store.all(Person, subclasses=False),
                             store._extent, None, store._digests._hasher.fallback) == \
            [_reference_h(store, o) for o in store.all(Person, subclasses=False)]
        # sticky marks: every object some live value still references is marked
        assert {o.id for o in objs if getattr(o, "_referenced", None)} >= {
            o.friend.id for o in objs if getattr(o, "friend", None) is not None and o.friend in objs}


def test_a_value_the_codec_refuses_fails_the_fold_and_changes_nothing():
    store = Store(None, definition=definition, bind=False)
    _apply(store, "add_person", "ann")
    before = store.digest()
    with store.reading():
        ann = Person.by_name("ann")
    tags = Person.__dict__["tags"]                  # the slot: writes bypass the store
    store._digests.pending.append([(0, ann, Person._persistent_specs["tags"], ann.tags)])
    total = store._digests.total
    tags.__set__(ann, object())     # as a bug would
    with pytest.raises(Exception, match="cannot encode"):
        store._digests.fold()
    assert store._digests.total == total and store._digests.pending
    tags.__set__(ann, None)
    store._digests.fold()
    assert store._digests.value() == before
