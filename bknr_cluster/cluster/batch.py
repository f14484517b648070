"""Group-commit batch codec: several encoded transaction records packed into one log entry.

Layout of one entry (version 1)::

    b"BKB1" + msgpack([node_id, session, [[seq, record], ...]])

``node_id`` and ``session`` identify the ClusterStore instance that submitted the batch (the
session is random per process start, so a restarted node never confuses a replayed entry from its
previous life with one of its current callers). ``seq`` identifies the waiting caller. An empty
``record`` is a *read marker*: it changes nothing and only tells the submitter that everything
before it has been applied (used for linearizable reads).

Every replica decodes entries written by others, so decoding trusts nothing: any deviation raises
``CorruptData`` instead of an arbitrary exception.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

from bknr_cluster.errors import CorruptData

MAGIC = b"BKB1"
# Fixed framing overhead per batch and per item, an upper bound used to keep entries below the
# engine's size limit without encoding twice.
BATCH_OVERHEAD = 64
ITEM_OVERHEAD = 16


def encode_batch(node_id: int, session: int, items: Sequence[tuple[int, bytes]]) -> bytes:
    """Pack ``(seq, record)`` items submitted by ``(node_id, session)`` into one entry."""
    return MAGIC + msgpack.packb([node_id, session, [[s, r] for s, r in items]], use_bin_type=True)


def decode_batch(data: bytes) -> tuple[int, int, list[tuple[int, bytes]]]:
    """Inverse of :func:`encode_batch`; raises ``CorruptData`` on anything malformed."""
    obj = _unpack(data, MAGIC, "batch entry")
    if not (isinstance(obj, list) and len(obj) == 3):
        raise CorruptData("batch entry must be [node_id, session, items]")
    node_id, session, items = obj
    if not _is_uint(node_id) or not _is_uint(session):
        raise CorruptData("batch entry node_id/session must be non-negative integers")
    if not isinstance(items, list):
        raise CorruptData("batch entry items must be a list")
    # Runs for every record on every replica: exact type checks inline (msgpack only makes
    # list, int and bytes here; ``type(x) is int`` also refuses bool), no call per item.
    out: list[tuple[int, bytes]] = []
    append = out.append
    for item in items:
        if type(item) is not list or len(item) != 2:
            break
        seq, record = item
        if type(seq) is not int or seq < 0 or type(record) is not bytes:
            break
        append((seq, record))
    else:
        return node_id, session, out
    raise CorruptData(f"batch item {len(out)} must be [seq, record bytes]")


def _unpack(data: object, magic: bytes, what: str) -> object:
    """Check the magic and decode the msgpack body of an entry; CorruptData on anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CorruptData(f"{what} must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if data[:4] != magic:
        raise CorruptData(f"{what} has unknown header {data[:4]!r} (expected {magic!r})")
    try:
        # raw=False + strict map keys: strings must be valid UTF-8; ext types are not allowed.
        return msgpack.unpackb(data[4:], raw=False, use_list=True, strict_map_key=True,
                               ext_hook=_no_ext)
    except CorruptData:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for malformed input
        raise CorruptData(f"{what} is not valid msgpack: {exc}") from None


def _is_uint(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _no_ext(code: int, data: bytes) -> object:
    raise CorruptData(f"batch entry contains a msgpack extension type {code}")


# --- restore entries ------------------------------------------------------------------------
#
# ``POST /restore`` seeds an empty cluster from a backup: the whole store snapshot travels as one
# log entry (so a node that joins later replays it too)::
#
#     b"BKR1" + msgpack([node_id, session, seq, sha256(snapshot), snapshot])

RESTORE_MAGIC = b"BKR1"


def encode_restore(node_id: int, session: int, seq: int, sha256: bytes, snapshot: bytes) -> bytes:
    return RESTORE_MAGIC + msgpack.packb([node_id, session, seq, sha256, snapshot], use_bin_type=True)


def decode_restore(data: bytes) -> tuple[int, int, int, bytes, bytes]:
    """Inverse of :func:`encode_restore`; raises ``CorruptData`` on anything malformed."""
    obj = _unpack(data, RESTORE_MAGIC, "restore entry")
    if not (isinstance(obj, list) and len(obj) == 5 and all(_is_uint(v) for v in obj[:3])
            and isinstance(obj[3], bytes) and len(obj[3]) == 32 and isinstance(obj[4], bytes)):
        raise CorruptData("restore entry must be [node_id, session, seq, sha256, snapshot]")
    return obj[0], obj[1], obj[2], obj[3], obj[4]


# --- system entries -------------------------------------------------------------------------
#
# Entries of the cluster layer itself, applied by every replica in log order (apply.py)::
#
#     b"BKS1" + msgpack([node_id, session, seq, kind, body])
#
# ``kind`` is ``"definition"`` (a member's store definition, cluster/definition.py),
# ``"checkpoint"`` (every replica records its state digest at this index) or ``"verdict"`` (the
# digest a majority of voters reported for a checkpoint; a replica that disagrees halts).
# ``body`` is a map with string keys. ``seq`` 0 means nobody waits for the entry.

SYSTEM_MAGIC = b"BKS1"
SYSTEM_KINDS = ("definition", "checkpoint", "verdict")


def encode_system(node_id: int, session: int, seq: int, kind: str, body: dict) -> bytes:
    if kind not in SYSTEM_KINDS:
        raise ValueError(f"unknown system entry kind {kind!r}")
    return SYSTEM_MAGIC + msgpack.packb([node_id, session, seq, kind, body], use_bin_type=True)


def decode_system(data: bytes) -> tuple[int, int, int, str, dict]:
    """Inverse of :func:`encode_system`; raises ``CorruptData`` on anything malformed. A kind
    this version does not know is returned as is (the applier decides what to do with it)."""
    obj = _unpack(data, SYSTEM_MAGIC, "system entry")
    if not (isinstance(obj, list) and len(obj) == 5 and all(_is_uint(v) for v in obj[:3])
            and isinstance(obj[3], str) and isinstance(obj[4], dict)):
        raise CorruptData("system entry must be [node_id, session, seq, kind, body]")
    return obj[0], obj[1], obj[2], obj[3], obj[4]
