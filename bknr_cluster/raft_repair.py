"""Pre-start repair of a torn tail in libraft's *open* segments (libraft 0.22.1 disk format).

Why: when a node dies (kill -9, crash) while libraft is writing a batch that runs past the
preallocated end of an open segment on a full disk, the file ends inside that batch. libraft
0.22.1 then refuses to start ("load open segment open-1: entries batch 1 starting at byte 8:
read data: short read: ...") although such a batch was never completely written, so it was never
reported persisted nor acknowledged to the leader: dropping it is safe, the leader resends it.
Conversely libraft *silently* truncates an open segment at the first batch whose checksum does
not match, even when complete batches follow it (which may have been acknowledged): that is
corruption, not a torn write, and must stop the node instead.

So before ``raft_start`` this module reads the open segments (``open-N``; closed segments,
snapshots and metadata are never touched — libraft refuses damaged ones itself), finds the first
batch libraft would not load, and decides:

* the rest of the file is zeros: the normal end of a preallocated segment — nothing to do;
* the bad batch is a *torn tail*: the last data in the last open segment that holds data, and
  the file ends inside it or everything from where it stops being intact on is zeros (a write
  cut short) — the file is truncated right after the last complete batch (to 0 bytes when
  there is none, which libraft treats as an empty segment and removes), with one WARNING;
* anything else (a bad checksum followed by more data, a torn batch in an earlier open segment,
  a malformed header, an unknown format): ``EngineIOError`` naming the file, the batch and the
  byte offset. The node must then be rebuilt from its peers.

Truncating (rather than zero-filling) gives exactly the file libraft itself writes at load time:
every open segment is finalised on start (truncated after its last batch and renamed to a
closed segment), so libraft does not need the preallocated size back; truncation also needs no
free space, and running the repair twice is harmless.

Format (uv_segment.c, uv_encoding.c; little-endian): an 8-byte format version (1), then batches:
header CRC (u32), data CRC (u32), header = entry count n (u64) + n * [term u64, type u8,
3 unused bytes, size u32], then the entries' data back to back. The CRCs are libraft's
``byteCrc32``: CRC-32 polynomial 0x04C11DB7, MSB first, initial value 0, no final xor.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass

from bknr_cluster.errors import EngineIOError

log = logging.getLogger("bknr.raft_repair")

DISK_FORMAT = 1
MAX_SEGMENT_SIZE = 8 * 1024 * 1024                  # UV__MAX_SEGMENT_SIZE
MAX_BATCH_ENTRIES = MAX_SEGMENT_SIZE // (8 * 4)      # libraft's bound on a batch's entry count
ENTRY_TYPES = (1, 2, 3)                             # RAFT_COMMAND, RAFT_BARRIER, RAFT_CHANGE
_OPEN = re.compile(r"^open-(\d+)$")
_REVERSE_BITS = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def crc32(data: bytes | memoryview) -> int:
    """libraft's byteCrc32(data, len, 0), computed with zlib.

    zlib implements the bit-reflected form of the same polynomial; feeding it bit-reversed bytes
    with a zero register (``value`` 0xFFFFFFFF cancels zlib's initial inversion, ``~`` its
    final one) and reversing the 32-bit result gives the MSB-first CRC at C speed.
    """
    raw = ~zlib.crc32(bytes(data).translate(_REVERSE_BITS), 0xFFFFFFFF) & 0xFFFFFFFF
    return int(f"{raw:032b}"[::-1], 2)


@dataclass(frozen=True)
class Scan:
    """What libraft would make of one open segment."""

    size: int
    end: int                 # byte offset where the loadable batches end
    batches: int             # complete, valid batches before ``end``
    entries: int
    verdict: str             # "ok" | "torn" | "corrupt"
    reason: str = ""         # why the batch at ``end`` is torn or corrupt
    torn_entries: int = 0    # entry count the torn batch's header claims (0: unknown)

    @property
    def holds_data(self) -> bool:
        return self.batches > 0 or self.verdict != "ok"


class _Bad(Exception):
    def __init__(self, verdict: str, reason: str, entries: int = 0) -> None:
        super().__init__(reason)
        self.verdict, self.reason, self.entries = verdict, reason, entries


def _zero_from(buf: bytes) -> int:
    """Offset after the last non-zero byte (0 for an all-zero buffer)."""
    return len(buf.rstrip(b"\0"))


def _batch(buf: bytes, x: int, z: int) -> tuple[int, int]:
    """Check the batch at ``x`` like uvLoadEntriesBatch; ``z`` = offset after the last non-zero
    byte of the file. Returns (entries, end offset) or raises _Bad."""
    size = len(buf)
    if size - x < 16:
        raise _Bad("torn", f"batch preamble cut by the end of the file ({size - x} bytes)")
    crc_header, crc_data, n = struct.unpack_from("<IIQ", buf, x)
    if n == 0:
        if z <= x + 16:      # only (part of) the checksums were written
            raise _Bad("torn", "batch preamble partly written")
        raise _Bad("corrupt", "entries count in the batch preamble is zero")
    if n > MAX_BATCH_ENTRIES:
        # A write cut short leaves a prefix of n's little-endian bytes: never more than n.
        raise _Bad("corrupt", f"entries count {n} in the batch preamble is too high")
    header_end = x + 16 + 16 * n
    if header_end > size:
        # Cut by the end of the file: its checksum cannot be checked, so require every entry
        # record that was written (ends before the zeros) to be well-formed: a garbled count
        # in a mid-file batch would point the "header" into entry data, which does not look
        # like records.
        for i in range(max(0, (z - x - 16) // 16)):
            _term, kind, unused, _len = struct.unpack_from("<QB3sI", buf, x + 16 + 16 * i)
            if kind not in ENTRY_TYPES or unused != b"\0\0\0":
                raise _Bad("corrupt", f"batch header cut by the end of the file and malformed "
                                      f"(entry {i + 1} of {n})", n)
        raise _Bad("torn", "batch header cut by the end of the file", n)
    if crc32(buf[x + 8:header_end]) != crc_header:
        if z < header_end:
            raise _Bad("torn", "batch header partly written", n)
        raise _Bad("corrupt", "header checksum mismatch", n)
    sizes = []
    for i in range(n):
        _term, kind, _unused, length = struct.unpack_from("<QB3sI", buf, x + 16 + 16 * i)
        if kind not in ENTRY_TYPES:      # libraft fails the start with RAFT_MALFORMED
            raise _Bad("corrupt", f"entry {i + 1} of {n} has invalid type {kind}", n)
        sizes.append(length)
    end = header_end + sum(sizes)
    if end > size:
        raise _Bad("torn", f"batch data cut by the end of the file: {size - header_end} of "
                           f"{end - header_end} bytes", n)
    if crc32(buf[header_end:end]) != crc_data:
        if z < end:
            raise _Bad("torn", "batch data partly written", n)
        raise _Bad("corrupt", "data checksum mismatch", n)
    return n, end


def scan_open_segment(buf: bytes) -> Scan:
    """Classify the content of one open segment file (pure; see the module docstring)."""
    size, z = len(buf), _zero_from(buf)
    if z == 0:
        return Scan(size, 0, 0, 0, "ok")          # empty or all zeros: libraft removes it
    if size < 8:
        return Scan(size, 0, 0, 0, "torn", f"file has only {size} bytes")
    (fmt,) = struct.unpack_from("<Q", buf, 0)
    if fmt != DISK_FORMAT:
        return Scan(size, 0, 0, 0, "corrupt", f"unexpected format version {fmt}")
    offset, batches, entries = 8, 0, 0
    while offset < size and offset < z:
        try:
            n, offset_next = _batch(buf, offset, z)
        except _Bad as bad:
            return Scan(size, offset, batches, entries, bad.verdict, bad.reason, bad.entries)
        batches, entries, offset = batches + 1, entries + n, offset_next
    return Scan(size, offset, batches, entries, "ok")


def open_segments(raft_dir: str) -> list[str]:
    """Names of the open segments in libraft's load order (by counter)."""
    names = [(int(m.group(1)), name) for name in os.listdir(raft_dir) if (m := _OPEN.match(name))]
    return [name for _, name in sorted(names)]


def _truncate(path: str, length: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, length)
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_open_segments(raft_dir: str) -> list[str]:
    """Cut a torn tail off the last open segment holding data; refuse any other damage.

    Must run before libraft opens ``raft_dir`` (nothing may be writing to it). Returns the
    warnings logged (one per repaired file; at most one today). Raises EngineIOError.
    """
    if not os.path.isdir(raft_dir):
        return []
    scans = []
    for name in open_segments(raft_dir):
        path = os.path.join(raft_dir, name)
        with open(path, "rb") as fh:
            scans.append((name, path, scan_open_segment(fh.read())))
    with_data = [i for i, (_, _, s) in enumerate(scans) if s.holds_data]
    last = with_data[-1] if with_data else -1
    for i, (_name, path, s) in enumerate(scans):
        if s.verdict == "corrupt" or (s.verdict == "torn" and i != last):
            why = s.reason if s.verdict == "corrupt" else f"{s.reason}, but a later open segment holds data"
            raise EngineIOError(
                f"start: refusing damaged open segment {path}: batch {s.batches + 1} at byte "
                f"{s.end}: {why} (not the torn tail of an interrupted write: entries this node "
                f"acknowledged may be damaged); remove the node from the cluster, wipe its data "
                f"directory and add it back (docs/failover.md)")
    warnings = []
    if last >= 0 and scans[last][2].verdict == "torn":
        name, path, s = scans[last]
        keep = s.end if s.batches else 0
        entries = f"{s.torn_entries} entries" if s.torn_entries else "entry count unknown"
        msg = (f"torn tail of open segment {path}: dropped {s.size - keep} bytes from byte {keep} "
               f"(batch {s.batches + 1}, {entries}: {s.reason}); it was never completely "
               f"written, so never acknowledged: the node catches up from the leader")
        _truncate(path, keep)
        log.warning(msg)
        warnings.append(msg)
    return warnings
