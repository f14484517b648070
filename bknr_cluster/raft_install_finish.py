"""Pre-start completion of a snapshot install that a crash interrupted (libraft 0.22.1 disk format).

Why: a follower that receives InstallSnapshot at index S (libraft's ``UvSnapshotPut`` with
``trailing == 0``) first closes its open segments, then writes and renames the snapshot and its
``.meta`` file, syncs the directory, and only then deletes *every* closed segment; appends stay
blocked until that is done. A node killed between the rename and the deletes keeps closed
segments that all end before S plus libraft's prepared (empty) open segments. libraft's loader
keeps closed segments behind the snapshot whenever an open segment exists ("hoping" the open
ones carry the log on), finds they do not, and fails the start with RAFT_CORRUPT: "last entry
on disk has index L, which is behind last snapshot's index S" (that failed load removes the empty
open segment, so a second start would pass; a node must not need one). The chaos suite hit this
(``restart_then_crash``: a restarted node was installed a snapshot and killed 0.7 s later).

Every entry at or below S is superseded by the snapshot, which only ever holds committed state,
so this module does, before ``raft_start``, what the interrupted install had left to do: when
the snapshot libraft will load (the newest one whose files libraft accepts) is past the last
entry libraft would load, and libraft would refuse to start because of that, it deletes the
closed segments and any open segment holding entries (all behind the snapshot), syncs the
directory and logs one WARNING naming them. Anything else is left to libraft: a log that reaches
the snapshot, no open segment (libraft then drops the closed segments itself), or a newest
snapshot whose metadata is damaged (libraft falls back to an older snapshot, which may need
those segments).

Metadata format (uv_snapshot.c ``uvSnapshotLoadMeta``; little-endian u64s): format version (1),
CRC, configuration index, configuration length, then the encoded configuration; the CRC is
libraft's ``byteCrc32`` over the last two header words and the configuration.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from dataclasses import dataclass

from bknr_cluster.raft_repair import DISK_FORMAT, crc32, open_segments, scan_open_segment

log = logging.getLogger("bknr.raft_repair")

META_MAX_CONFIGURATION_SIZE = 1024 * 1024           # UV__META_MAX_CONFIGURATION_SIZE
_META = re.compile(r"^snapshot-(\d+)-(\d+)-(\d+)\.meta$")
_CLOSED = re.compile(r"^(\d{16})-(\d{16})$")


@dataclass(frozen=True, order=True)
class SnapshotFile:
    term: int
    index: int
    timestamp: int
    meta: str


def _meta_is_valid(path: str) -> bool:
    """What libraft's uvSnapshotLoadMeta accepts (format, sizes, checksum)."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(32)
            if len(header) < 32:
                return False
            fmt, crc, _conf_index, conf_len = struct.unpack("<4Q", header)
            if fmt != DISK_FORMAT or not 0 < conf_len <= META_MAX_CONFIGURATION_SIZE:
                return False
            conf = fh.read(conf_len)
    except OSError:
        return False
    return len(conf) == conf_len and crc32(header[16:] + conf) == crc & 0xFFFFFFFF


def loadable_snapshot(raft_dir: str) -> SnapshotFile | None:
    """The snapshot libraft's load picks: the newest (term, index, timestamp) whose data file
    exists and is not empty and whose metadata is valid; None if there is none."""
    names = set(os.listdir(raft_dir))
    found = []
    for name in names:
        m = _META.match(name)
        if m and name[:-len(".meta")] in names:
            found.append(SnapshotFile(int(m.group(1)), int(m.group(2)), int(m.group(3)), name))
    for snap in sorted(found, reverse=True):
        data = os.path.join(raft_dir, snap.meta[:-len(".meta")])
        if os.path.getsize(data) > 0 and _meta_is_valid(os.path.join(raft_dir, snap.meta)):
            return snap
    return None


def finish_interrupted_install(raft_dir: str) -> list[str]:
    """Delete the log segments an interrupted snapshot install left behind (module docstring).

    Must run before libraft opens ``raft_dir`` and after ``raft_repair.repair_open_segments``
    (which cuts torn tails, so every open segment scans as intact). Returns the warnings logged.
    """
    if not os.path.isdir(raft_dir):
        return []
    snap = loadable_snapshot(raft_dir)
    if snap is None:
        return []
    closed = sorted((int(m.group(1)), int(m.group(2)), name) for name in os.listdir(raft_dir)
                    if (m := _CLOSED.match(name)))
    opened = open_segments(raft_dir)
    if not closed or not opened or closed[-1][1] >= snap.index:
        return []                       # the log reaches the snapshot, or libraft copes alone
    holding = []
    open_entries = 0
    for name in opened:
        with open(os.path.join(raft_dir, name), "rb") as fh:
            scan = scan_open_segment(fh.read())
        if scan.verdict != "ok":
            return []                   # damage: leave it to repair_open_segments / libraft
        if scan.entries:
            holding.append(name)
            open_entries += scan.entries
    # libraft numbers open-segment entries on from the last closed segment.
    last = closed[-1][1] + open_entries
    if last >= snap.index:
        return []
    doomed = [name for _, _, name in closed] + holding
    for name in doomed:
        os.unlink(os.path.join(raft_dir, name))
    fd = os.open(raft_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    msg = (f"finished an interrupted snapshot install in {raft_dir}: snapshot at index "
           f"{snap.index} ({snap.meta}), log entries on disk end at {last}; deleted "
           f"{len(doomed)} segment(s) the install had left to delete ({', '.join(doomed)}); "
           f"every entry in them is covered by the snapshot")
    log.warning(msg)
    return [msg]
