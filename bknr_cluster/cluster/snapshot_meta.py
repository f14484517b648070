"""The engine store snapshot format of the cluster layer: its replicated state in front.

The snapshots this layer hands to the engine carry the cluster layer's own replicated state
(the members' published definitions, the last checkpoint) in front of the store snapshot:
    b"BKCLSNP1" + u32 length + msgpack(meta) + store snapshot
A snapshot without the prefix (older builds) is a plain store snapshot with empty meta.
"""

from __future__ import annotations

import struct

import msgpack

from bknr_cluster.errors import CorruptData

SNAPSHOT_PREFIX = b"BKCLSNP1"
_LEN = struct.Struct("<I")


def snapshot_prefix(meta: dict) -> bytes:
    """``SNAPSHOT_PREFIX`` + meta: what goes in front of the store snapshot in an engine store
    snapshot (the forked writer writes it first, snapshot_writer.py)."""
    body = msgpack.packb(meta, use_bin_type=True)
    return SNAPSHOT_PREFIX + _LEN.pack(len(body)) + body


def split_snapshot(data: bytes) -> tuple[dict | None, int]:
    """(meta or None, offset of the store snapshot) of an engine store snapshot."""
    n = len(SNAPSHOT_PREFIX)
    if data[:n] != SNAPSHOT_PREFIX:
        return None, 0
    if len(data) < n + _LEN.size:
        raise CorruptData("cluster snapshot prefix truncated")
    (length,) = _LEN.unpack_from(data, n)
    start = n + _LEN.size
    if start + length > len(data):
        raise CorruptData("cluster snapshot prefix truncated")
    try:
        meta = msgpack.unpackb(data[start:start + length], raw=False, strict_map_key=False)
    except Exception as exc:
        raise CorruptData(f"cluster snapshot prefix is not valid msgpack: {exc}") from None
    return (meta if isinstance(meta, dict) else {}), start + length


def store_snapshot_of(data: bytes) -> bytes:
    """The plain store snapshot inside an engine store snapshot (for tools and tests)."""
    return data[split_snapshot(data)[1]:]


def snapshot_object_count(data: bytes, off: int) -> int | None:
    """The object count a store snapshot's header announces (dropped classes included)."""
    try:
        from bknr_cluster.store.snapshot import _FRAME, MAGIC
        head = off + len(MAGIC) + 4
        if data[off:off + len(MAGIC)] != MAGIC:
            return None
        length, _ = _FRAME.unpack_from(data, head)
        header = msgpack.unpackb(data[head + _FRAME.size:head + _FRAME.size + length], raw=False)
        n = header.get("objects") if isinstance(header, dict) else None
        return n if isinstance(n, int) else None
    except Exception:  # the loader itself reports damaged snapshots
        return None
