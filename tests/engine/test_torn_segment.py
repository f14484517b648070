"""Damaged open segments at start-up (bknr_cluster/raft_repair.py).

A follower of a 3-node cluster is killed -9 (its open segment keeps its data), its segment is
damaged the way an interrupted write on a full disk leaves it, and it is started again: it must
start, log one WARNING naming what was dropped, and catch up to exactly the leader's state.
Damage that is not a torn tail (a bad checksum with complete batches after it, a damaged closed
segment) must be refused with an error naming the file.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from bknr_cluster.engine import RaftNode
from bknr_cluster.errors import EngineIOError
from bknr_cluster.raft_repair import crc32, repair_open_segments, scan_open_segment
from tests.engine.harness import Cluster, digest_of
from tests.support import free_ports, wait_until

N = 300


def batches(buf: bytes) -> list[tuple[int, int, int]]:
    """(start, header end, end) of every valid batch of a segment, written independently of
    the module under test: count, then 16-byte records whose last 4 bytes are the entry size."""
    out, x = [], 8
    while x + 16 <= len(buf):
        (n,) = struct.unpack_from("<Q", buf, x + 8)
        if n == 0:
            break
        h = x + 16 + 16 * n
        sizes = [struct.unpack_from("<I", buf, x + 16 + 16 * i + 12)[0] for i in range(n)]
        out.append((x, h, h + sum(sizes)))
        x = h + sum(sizes)
    return out


def open_segments(d: Path) -> list[Path]:
    return sorted((p for p in d.iterdir() if re.fullmatch(r"open-\d+", p.name)),
                  key=lambda p: int(p.name[5:]))


def open_segment_with_data(d: Path) -> Path:
    full = [p for p in open_segments(d) if batches(p.read_bytes())]
    assert full, f"no open segment with data in {d}: {sorted(p.name for p in d.iterdir())}"
    return full[-1]


def new_batch(term: int, sizes: list[int], claim_extra: int = 0) -> tuple[bytes, int]:
    """An encoded batch of command entries that were never acknowledged (the follower had not
    finished writing them). ``claim_extra`` grows the last entry's size in the header only: its
    data then runs past the end of what is written. Returns (bytes, header length)."""
    claimed = sizes[:-1] + [sizes[-1] + claim_extra]
    header = struct.pack("<Q", len(sizes)) + b"".join(
        struct.pack("<QB3xI", term, 1, n) for n in claimed)
    data = b"".join(bytes([0x41 + i % 26]) * (n - 1) + b"\x08" for i, n in enumerate(sizes))
    return struct.pack("<II", crc32(header), crc32(data)) + header + data, 8 + len(header)


def tear(d: Path, how: str) -> Path:
    """Append a torn write after the follower's last (acknowledged) batch, as a crash in the
    middle of writing it leaves the file; returns the damaged file.

    Only never-acknowledged data may be torn: a leader never moves a follower's match index
    back, so a follower that lost an entry it had acknowledged would be stuck (and unsafe)."""
    seg = open_segment_with_data(d)
    buf = seg.read_bytes()
    intact = scan_open_segment(buf)            # libraft's own file, checksums and all
    assert (intact.verdict, intact.batches) == ("ok", len(batches(buf))), intact
    x, _h, end = batches(buf)[-1]
    (term,) = struct.unpack_from("<Q", buf, x + 16)
    batch, hlen = new_batch(term, [64, 4096, 1024])
    if how == "cut_in_header":
        buf = buf[:end] + batch[:hlen - 20]
    elif how == "cut_in_data":
        buf = buf[:end] + batch[:hlen + 2000]
    elif how == "zeroed_data":          # the rest of the preallocated file stays zero
        cut = batch[:hlen + 2000]
        buf = buf[:end] + cut + bytes(max(0, len(buf) - end - len(cut)))
    elif how == "data_past_eof":        # "read data: short read"
        batch, hlen = new_batch(term, [64, 4096, 1024], claim_extra=1 << 20)
        buf = buf[:end] + batch
    elif how == "first_batch_past_eof":
        # The chaos suite's case: a batch larger than a segment, written at byte 8 of the next
        # (preallocated) segment, cut where the preallocation ended: "entries batch 1 starting
        # at byte 8: read data: short read: ... bytes instead of ...".
        spare = [p for p in open_segments(d) if int(p.name[5:]) > int(seg.name[5:])]
        seg = spare[0] if spare else d / f"open-{int(seg.name[5:]) + 1}"
        size = seg.stat().st_size if spare else 1 << 20
        batch, hlen = new_batch(term, [64, 4096, 1024], claim_extra=3 * size)
        buf = (struct.pack("<Q", 1) + batch).ljust(size, b"\x33")
    else:
        raise ValueError(how)
    seg.write_bytes(buf)
    return seg


@pytest.fixture
def killed_follower(procs, tmp_path):
    c = Cluster(procs, tmp_path, 3)
    c.start_all()
    lid = c.leader()
    assert c.call(lid, "submit", n=N, prefix="a", window=8)["error"] is None
    fid = next(i for i in (1, 2, 3) if i != lid)
    wait_until(lambda: c.call(fid, "state")["count"] == N, 30, "the follower to apply everything")
    c.kill(fid)
    return c, lid, fid


def converged(c: Cluster, lid: int, ids: list[int]) -> None:
    """More writes, then every node in ``ids`` holds exactly every entry, in order."""
    assert c.call(lid, "submit", n=20, prefix="b", window=4)["error"] is None
    payloads = [f"a-{i}".encode() for i in range(N)] + [f"b-{i}".encode() for i in range(20)]
    c.wait_state(ids, digest_of(payloads), N + 20, 60)


@pytest.mark.parametrize("how", ["cut_in_header", "cut_in_data", "zeroed_data", "data_past_eof",
                                 "first_batch_past_eof"])
def test_torn_tail_is_cut_and_the_node_catches_up(killed_follower, how):
    c, lid, fid = killed_follower
    seg = tear(c.root / f"n{fid}", how)
    assert scan_open_segment(seg.read_bytes()).verdict == "torn"
    c.start(fid)
    converged(c, lid, [1, 2, 3])
    log = (c.root / f"n{fid}.log").read_text()
    warnings = [line for line in log.splitlines() if "torn tail of open segment" in line]
    assert len(warnings) == 1, log
    assert seg.name in warnings[0] and "dropped" in warnings[0] and "entries" in warnings[0]
    assert c.call(fid, "status")["off_loop_callbacks"] == 0


def refused(c: Cluster, fid: int) -> str:
    """Start the damaged follower in this process: it must refuse; returns the message."""
    node = RaftNode(fid, c.address(fid), str(c.root / f"n{fid}"), **c.options)
    try:
        with pytest.raises(EngineIOError) as info:
            node.start()
    finally:
        node.stop()
    return str(info.value)


def flip(path: Path, at: int) -> None:
    buf = bytearray(path.read_bytes())
    buf[at] ^= 0x5A
    path.write_bytes(bytes(buf))


@pytest.mark.parametrize("which", ["middle", "last"])
def test_bad_checksum_in_an_open_segment_is_refused(killed_follower, which):
    """libraft alone would silently truncate the segment there, dropping complete batches
    (possibly acknowledged ones) after the damage: that must stop the node instead."""
    c, lid, fid = killed_follower
    seg = open_segment_with_data(c.root / f"n{fid}")
    bs = batches(seg.read_bytes())
    _x, h, e = bs[len(bs) // 2] if which == "middle" else bs[-1]
    flip(seg, h + (e - h) // 2)
    before = seg.read_bytes()
    for _ in range(2):        # nothing was moved aside or cut: refused again
        msg = refused(c, fid)
        assert seg.name in msg and "checksum mismatch" in msg, msg
    assert seg.read_bytes() == before
    converged(c, lid, [i for i in (1, 2, 3) if i != fid])


def test_bad_checksum_in_a_closed_segment_is_refused(killed_follower):
    c, lid, fid = killed_follower
    c.start(fid)              # libraft closes the open segments at load...
    wait_until(lambda: c.call(fid, "state")["count"] == N, 30, "the follower to restart")
    c.stop(fid)               # ...and on a clean stop
    d = c.root / f"n{fid}"
    closed = [p for p in d.iterdir() if re.fullmatch(r"\d{16}-\d{16}", p.name)]
    assert closed, sorted(p.name for p in d.iterdir())
    seg = max(closed, key=lambda p: p.stat().st_size)
    bs = batches(seg.read_bytes())
    _x, h, e = bs[len(bs) // 2]
    flip(seg, h + (e - h) // 2)
    for _ in range(2):        # refused again on a second attempt: never silently started
        msg = refused(c, fid)
        assert seg.name in msg and "checksum mismatch" in msg, msg


# -- the classification itself, on hand-made segments ---------------------------------------

def segment(*batches_: bytes, pad_to: int = 0) -> bytes:
    return (struct.pack("<Q", 1) + b"".join(batches_)).ljust(pad_to, b"\0")


def test_scan_classifies_hand_made_segments():
    b1, _ = new_batch(2, [8, 16])
    b2, h2 = new_batch(2, [64, 4096])
    whole = segment(b1, b2)
    ok = scan_open_segment(whole)
    assert (ok.verdict, ok.batches, ok.entries, ok.end) == ("ok", 2, 4, len(whole))
    assert scan_open_segment(segment(b1, b2, pad_to=1 << 16)).end == len(whole)   # preallocated
    assert scan_open_segment(bytes(1 << 16)).verdict == "ok"                       # never written
    assert scan_open_segment(b"").verdict == "ok"
    torn = {
        "preamble": segment(b1, b2[:10]),
        "header": segment(b1, b2[:h2 - 3]),
        "data": segment(b1, b2[:h2 + 100]),
        "data, zeros after": segment(b1, b2[:h2 + 100], pad_to=1 << 16),
        "header, zeros after": segment(b1, b2[:20], pad_to=1 << 16),
        "format only": b"\x01\0\0",
    }
    for what, buf in torn.items():
        s = scan_open_segment(buf)
        assert s.verdict == "torn" and s.end == (len(segment(b1)) if what != "format only" else 0), what
    flipped = bytearray(segment(b1, b2, b1))
    flipped[len(segment(b1)) + h2 + 10] ^= 1                  # data of batch 2, batch 3 follows
    s = scan_open_segment(bytes(flipped))
    assert (s.verdict, s.batches, s.reason) == ("corrupt", 1, "data checksum mismatch")
    complete = bytearray(segment(b1, b2))
    complete[len(segment(b1)) + h2 + 10] ^= 1                  # last batch complete but damaged
    assert scan_open_segment(bytes(complete)).verdict == "corrupt"
    garbled = bytearray(segment(b1, b2))
    garbled[8 + 8] = 200                                       # batch 1's count: header runs into data
    assert scan_open_segment(bytes(garbled)).verdict == "corrupt"
    struct.pack_into("<Q", garbled, 16, 100_000)              # ...and past the end of the file
    assert "cut by the end of the file and malformed" in scan_open_segment(bytes(garbled)).reason
    assert scan_open_segment(b"\x02" + bytes(15)).verdict == "corrupt"          # unknown format


def test_repair_cuts_only_the_last_open_segment_with_data(tmp_path):
    b1, _ = new_batch(2, [8, 16])
    b2, h2 = new_batch(2, [64, 4096])
    closed = tmp_path / "0000000000000001-0000000000000002"
    closed.write_bytes(segment(b1, b2[:h2 + 100]))            # closed segments: never touched
    (tmp_path / "open-7").write_bytes(segment(b1, b2[:h2 + 100], pad_to=1 << 16))
    (tmp_path / "open-8").write_bytes(bytes(1 << 16))          # preallocated, never written
    (tmp_path / "open-10").write_bytes(segment(b1, b1, b2[:h2 - 5]))
    with pytest.raises(EngineIOError, match="open-7.*later open segment holds data"):
        repair_open_segments(str(tmp_path))
    (tmp_path / "open-7").write_bytes(segment(b1, pad_to=1 << 16))
    [warning] = repair_open_segments(str(tmp_path))
    assert "open-10" in warning and f"from byte {len(segment(b1, b1))}" in warning
    assert (tmp_path / "open-10").read_bytes() == segment(b1, b1)
    assert repair_open_segments(str(tmp_path)) == []           # idempotent
    assert closed.read_bytes() == segment(b1, b2[:h2 + 100])
    (tmp_path / "open-11").write_bytes(segment(b2[:h2 + 100]))  # nothing complete: emptied
    repair_open_segments(str(tmp_path))
    assert (tmp_path / "open-11").stat().st_size == 0


def test_recover_cuts_a_torn_tail_too(tmp_path):
    """raft_recover (forced reconfiguration) loads the log like start does."""
    (port,) = free_ports(1)
    addr, d = f"127.0.0.1:{port}", tmp_path / "n1"
    opts = {"election_timeout_ms": 300, "heartbeat_ms": 30}
    node = RaftNode(1, addr, str(d), **opts)
    node.bootstrap([(1, addr, "voter")])
    node.start()
    wait_until(lambda: node.status()["state"] == "leader", 10, "self election")
    for i in range(5):
        node.submit(f"x{i}".encode()).result(10)
    node.stop()                                 # the open segment is closed on a clean stop
    last = max((p for p in d.iterdir() if re.fullmatch(r"\d{16}-\d{16}", p.name)), key=lambda p: p.name)
    (term,) = struct.unpack_from("<Q", last.read_bytes(), 8 + 16)
    batch, _ = new_batch(term, [64, 4096, 1024], claim_extra=1 << 20)
    (d / "open-1").write_bytes(segment(batch))  # a fresh segment whose first batch was cut short
    node = RaftNode(1, addr, str(d), **opts)
    node.recover([(1, addr, "voter")])
    assert not (d / "open-1").exists() or (d / "open-1").stat().st_size == 0
    node.start()
    try:
        got: list[bytes] = []
        wait_until(lambda: got.extend(x[3] for x in node.next_committed(64, 0.1) if x[0] == "entry")
                   or b"x4" in got, 10, "the entries to be applied again")
        assert got == [f"x{i}".encode() for i in range(5)]
    finally:
        node.stop()
