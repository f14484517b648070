"""The replication seam used by the cluster layer (docs/interfaces.md section 2)."""

import io
import json
import subprocess
import sys
import threading

import pytest

from bknr_cluster.errors import CorruptData
from bknr_cluster.store import Store, TxContext, from_json, to_json
from tests.store.models import Boom, Person, definition
from tests.support import ROOT

SCRIPT = """
import sys
from bknr_cluster.store import Store, TxContext
from tests.store.models import definition
s = Store(None, definition=definition)
for i, rec in enumerate(sys.stdin.buffer.read().split(b"\\n--\\n")):
    try:
        s.apply_record(bytes.fromhex(rec.decode()), TxContext(index=i + 1))
    except Exception:
        pass
print(s.digest())
"""


def _records(store):
    return [
        store.encode_transaction_at(10, "add_person", "ann", "Oslo", 3),
        store.encode_transaction_at(11, "add_employee", "eve", 5),
        store.encode_transaction_at(12, "set_attr", "ann", "tags", {"b": {1, 2}, "a": (1, 2)}),
        store.encode_transaction_at(13, "befriend", "ann", "eve"),
        store.encode_transaction_at(14, "mess_then_fail", "ann"),
        store.encode_transaction_at(15, "stamp", "zed"),
        store.encode_transaction_at(16, "delete_person", "eve"),
    ]


def test_apply_records_in_two_stores_and_another_process(mem):
    recs = _records(mem)
    twin = Store(None, definition=definition, bind=False)
    for i, rec in enumerate(recs, 1):
        for s in (mem, twin):
            try:
                s.apply_record(rec, TxContext(index=i))
            except Boom:
                pass
    assert mem.digest() == twin.digest()
    out = subprocess.run([sys.executable, "-c", SCRIPT], input=b"\n--\n".join(r.hex().encode() for r in recs),
                         capture_output=True, cwd=ROOT, timeout=60, check=True,
                         env={"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "123"})
    assert out.stdout.decode().strip() == mem.digest()


def test_digest_is_canonical(mem):
    a = Store(None, definition=definition, bind=False)
    b = Store(None, definition=definition, bind=False)
    a.apply_record(a.encode_transaction_at(1, "add_person", "x"))
    b.apply_record(b.encode_transaction_at(1, "add_person", "x"))
    a.apply_record(a.encode_transaction_at(2, "set_attr", "x", "tags", {"k1": 1, "k2": {3, 4}}))
    b.apply_record(b.encode_transaction_at(2, "set_attr", "x", "tags", {"k2": {4, 3}, "k1": 1}))
    assert a.digest() == b.digest()
    b.apply_record(b.encode_transaction_at(3, "set_attr", "x", "age", 1))
    assert a.digest() != b.digest()


def test_snapshot_round_trip_and_empty_stream(mem):
    for i, rec in enumerate(_records(mem), 1):
        try:
            mem.apply_record(rec, TxContext(index=i))
        except Boom:
            pass
    buf = io.BytesIO()
    assert mem.write_snapshot(buf) == mem.count()
    other = Store(None, definition=definition, bind=False)
    other.load_snapshot(io.BytesIO(buf.getvalue()))
    assert other.digest() == mem.digest() and other.last_index == 7
    ann = other.lookup(Person, "name", "ann")
    assert ann.tags == {"b": {1, 2}, "a": (1, 2)} and ann.friend is None      # eve was deleted
    buf2 = io.BytesIO()
    other.write_snapshot(buf2)
    assert buf2.getvalue() == buf.getvalue()              # snapshots are a function of the state
    other.load_snapshot(io.BytesIO(b""))
    assert other.count() == 0 and other.digest() == Store(None, definition=definition, bind=False).digest()


def test_corrupt_snapshot_is_refused_and_state_kept(mem):
    mem.execute("add_person", "ann")
    data = bytearray(mem.snapshot_bytes())
    other = Store(None, definition=definition, bind=False)
    other.apply_record(other.encode_transaction("add_person", "keep"))
    before = other.digest()
    bad = bytearray(data)
    bad[-20] ^= 0xFF
    with pytest.raises(CorruptData, match="checksum"):
        other.load_snapshot(io.BytesIO(bytes(bad)))
    with pytest.raises(CorruptData, match="truncated"):
        other.load_snapshot(io.BytesIO(bytes(data[:-3])))
    with pytest.raises(CorruptData, match="bad magic"):
        other.load_snapshot(io.BytesIO(b"NOTASNAPSHOT"))
    assert other.digest() == before


def test_reading_lock_holds_off_transactions(mem):
    mem.execute("add_person", "ann")
    entered, done = threading.Event(), threading.Event()

    def writer():
        entered.set()
        mem.execute("set_attr", "ann", "age", 99)
        done.set()

    with mem.reading():
        t = threading.Thread(target=writer)
        t.start()
        assert entered.wait(5)
        assert not done.wait(0.2)                 # blocked behind the reader
        assert Person.by_name("ann").age == 0
    t.join(10)
    assert done.is_set() and Person.by_name("ann").age == 99


def test_run_query_uses_this_store(mem):
    other = Store(None, definition=definition, bind=False)
    other.apply_record(other.encode_transaction("add_person", "ann", "Oslo"))
    mem.execute("add_person", "bob", "Oslo")
    assert other.run_query("names") == ["ann"] and mem.run_query("names") == ["bob"]
    assert other.run_query("by_city", "Oslo") == ["ann"]
    assert Person.all()[0].name == "bob"                  # class accessors: the bound store


def test_json_mapping_round_trip(mem):
    ann = mem.execute("add_person", "ann")
    value = {"p": ann, "t": (1, 2), "s": {3}, "b": b"\x01", "$x": 1, 5: None, "l": [1, "a"]}
    encoded = json.loads(json.dumps(to_json(value)))
    assert encoded["$dict"][0] == ["p", {"$ref": ["Person", 1]}]
    assert from_json(encoded, mem) == value
    assert to_json({"plain": [1, 2.5, None, True]}) == {"plain": [1, 2.5, None, True]}


def _split(snapshot: bytes) -> tuple[bytes, list[bytes]]:
    import struct
    head, pos, frames = snapshot[:12], 12, []
    while pos < len(snapshot):
        n, _ = struct.unpack_from("<II", snapshot, pos)
        frames.append(snapshot[pos + 8:pos + 8 + n])
        pos += 8 + n
    return head, frames


def _join(head: bytes, frames: list[bytes]) -> bytes:
    import struct
    import zlib
    return head + b"".join(struct.pack("<II", len(f), zlib.crc32(f)) + f for f in frames)


@pytest.mark.parametrize("damage", ["drop_cols", "dup_ids", "trailing", "swap"])
def test_structurally_damaged_snapshot_is_refused(mem, damage):
    mem.execute("add_person", "ann")
    mem.execute("add_employee", "eve", 3)
    head, frames = _split(mem.snapshot_bytes())
    kinds = [f[1:6] for f in frames]
    cols = next(i for i, k in enumerate(kinds) if b"cols" in k)
    if damage == "drop_cols":
        del frames[cols]
    elif damage == "dup_ids":
        frames.insert(1, frames[1])
    elif damage == "swap":
        frames[1], frames[cols] = frames[cols], frames[1]
    data = _join(head, frames) + (b"x" if damage == "trailing" else b"")
    other = Store(None, definition=definition, bind=False)
    with pytest.raises(CorruptData):
        other.load_snapshot(io.BytesIO(data))
    assert other.count() == 0
    assert _join(head, _split(mem.snapshot_bytes())[1]) == mem.snapshot_bytes()
