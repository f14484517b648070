"""Snapshot format (version 1) and snapshot loading with schema evolution.

Layout: ``b"BKNRSNAP"`` + u32 format version, then frames ``<u32 length><u32 crc32><msgpack>``:

1. header  ``{"format", "store", "next_id", "last_ts", "last_index", "objects",
   "classes": [[name, [attr...]]...]}``
2. ``["ids", class, start, [id...]]``      every class, ascending ids, <= CHUNK per frame
3. ``["cols", class, start, count, [[v...]...]]`` one column per attribute in the header
4. ``["blob", sha256, bytes]``             contents of referenced blobs (optional)
5. ``["end", objects, frames]``            a snapshot without it is truncated

All id frames precede all column frames, so while columns decode every object already exists
and references (by id) resolve in one pass. Columns let the loader fill slots with ``map`` over
C-level slot setters instead of a Python loop per object. Indices are not stored: they are
rebuilt on load. The output is a function of the state only (no wall-clock time in it).
"""

from __future__ import annotations

import gc
import logging
import operator
import struct
import zlib
from collections import deque
from itertools import repeat
from typing import IO, TYPE_CHECKING, Any

import msgpack

from bknr_cluster.errors import CorruptData
from bknr_cluster.store.blobs import Blob
from bknr_cluster.store.codec import Codec
from bknr_cluster.store.model import StoreObject
from bknr_cluster.store.protocols import LoadedState, SnapshotTarget

if TYPE_CHECKING:
    from bknr_cluster.store.core import Store

log = logging.getLogger("bknr_cluster.store")

MAGIC = b"BKNRSNAP"
FORMAT = 1
CHUNK = 65536
_FRAME = struct.Struct("<II")
_set_id = StoreObject.__dict__["id"].__set__


def _frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_FRAME.pack(len(payload), zlib.crc32(payload)) + payload)


def write(store: Store, stream: IO[bytes], include_blobs: bool = True,
          include_system: bool = True) -> int:
    blobs: set[Blob] = set()
    codec = Codec(store.definition.enums, store.find, store._is_live, lenient=True,
                  on_blob=blobs.add if include_blobs else None)
    classes = store._classes
    total = sum(len(store._extent[c]) for c in classes)
    header = {"format": FORMAT, "store": store.definition.name, "next_id": store._next_id,
              "last_ts": store._last_ts, "last_index": store.last_index, "objects": total,
              "classes": [[c._meta.name, list(c._meta.attrs)] for c in classes]}
    stream.write(MAGIC + struct.pack("<I", FORMAT))
    _frame(stream, msgpack.packb(header))
    frames = 1
    for c in classes:
        ids = list(store._sorted_extent(c))
        for start in range(0, len(ids), CHUNK):
            _frame(stream, msgpack.packb(["ids", c._meta.name, start, ids[start:start + CHUNK]]))
            frames += 1
    for c in classes:
        objs = list(store._extent[c].values())
        getters = [s.getter for s in c._meta.persistent]
        for start in range(0, len(objs), CHUNK):
            chunk = objs[start:start + CHUNK]
            cols = [list(map(g, chunk)) for g in getters]
            _frame(stream, codec.pack(["cols", c._meta.name, start, len(chunk), cols]))
            frames += 1
    for blob in sorted(blobs, key=lambda b: b.sha256):
        _frame(stream, msgpack.packb(["blob", blob.sha256, store.blobs.get(blob)], use_bin_type=True))
        frames += 1
    if include_system and store.system:
        # only when non-empty: a snapshot of a store that never used it is unchanged (system.py)
        _frame(stream, msgpack.packb(["system", sorted(store.system.items())]))
        frames += 1
    _frame(stream, msgpack.packb(["end", total, frames]))
    return total


def _read_exact(stream: IO[bytes], n: int, what: str) -> bytes:
    parts = []
    need = n
    while need:
        chunk = stream.read(need)
        if not chunk:
            raise CorruptData(f"snapshot truncated while reading {what}")
        parts.append(chunk)
        need -= len(chunk)
    return b"".join(parts)


def _frames(stream: IO[bytes]):
    count = 0
    while True:
        head = _read_exact(stream, _FRAME.size, f"frame {count} header")
        length, crc = _FRAME.unpack(head)
        payload = _read_exact(stream, length, f"frame {count}")
        if zlib.crc32(payload) != crc:
            raise CorruptData(f"snapshot frame {count} fails its checksum")
        yield count, payload
        count += 1


def load(store: SnapshotTarget, stream: IO[bytes]) -> int:
    """Replace ``store``'s state with the snapshot; on any error the old state is kept.

    The input may be hostile (a backup from elsewhere, a damaged disk): every structural
    property the writer guarantees is checked, and any failure is reported as CorruptData.
    """
    magic = stream.read(len(MAGIC))
    if not magic:
        store.reset_to_empty()
        return 0
    if magic != MAGIC:
        raise CorruptData("not a bknr store snapshot (bad magic)")
    (fmt,) = struct.unpack("<I", _read_exact(stream, 4, "version"))
    if fmt != FORMAT:
        raise CorruptData(f"snapshot format {fmt} is not supported (this version reads {FORMAT})")
    frames = _frames(stream)
    # Loading creates millions of objects that are all live: without this, the cyclic GC
    # re-scans the growing heap again and again and loading runs at half speed.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        _, payload = next(frames)
        header = _check_header(msgpack.unpackb(payload, raw=False))
        if header["store"] != store.definition.name:
            raise CorruptData(f"snapshot belongs to store {header['store']!r}, "
                              f"not {store.definition.name!r}")
        n, install = _load_body(store, header, frames)
        if stream.read(1):
            raise CorruptData("snapshot has data after its end frame")
        install()           # only now does the store change
        return n
    except CorruptData:
        raise
    except Exception as exc:     # hostile bytes: any failure to interpret them is corruption
        raise CorruptData(f"snapshot cannot be decoded: {type(exc).__name__}: {exc}") from None
    finally:
        if gc_was_enabled:
            gc.enable()


def _bad(message: str) -> CorruptData:
    return CorruptData(f"snapshot is inconsistent: {message}")


def _check_header(h: Any) -> dict:
    ints = ("format", "next_id", "last_ts", "last_index", "objects")
    if type(h) is not dict or any(type(h.get(k)) is not int or h[k] < 0 for k in ints) or \
            type(h.get("store")) is not str or type(h.get("classes")) is not list:
        raise _bad("malformed header")
    names = set()
    for entry in h["classes"]:
        if not (type(entry) is list and len(entry) == 2 and type(entry[0]) is str
                and type(entry[1]) is list and all(type(a) is str for a in entry[1])
                and len(set(entry[1])) == len(entry[1]) and entry[0] not in names):
            raise _bad("malformed class list in header")
        names.add(entry[0])
    return h


def _load_body(store: SnapshotTarget, header: dict, frames: Any) -> tuple[int, Any]:
    definition = store.definition
    current = {c._meta.name: c for c in definition.classes}
    report: list[str] = []
    extent: dict[type, dict[int, Any]] = {c: {} for c in definition.classes}
    shells: dict[str, list] = {}           # objects per snapshot class, in frame order
    counts: dict[str, int] = {}            # ids seen per snapshot class (dropped classes too)
    filled: dict[str, int] = {}            # objects whose columns have been read
    last_id: dict[str, int] = {}
    target: dict[str, type | None] = {}
    setters: dict[str, list] = {}
    seen_attrs: dict[type, set[str]] = {c: set() for c in definition.classes}
    for cname, attrs in header["classes"]:
        cls = current.get(definition.class_renames.get(cname, cname))
        shells[cname], counts[cname], filled[cname], last_id[cname] = [], 0, 0, 0
        target[cname] = cls
        if cls is None:
            report.append(f"class {cname}: not in the store definition; its objects are dropped")
            setters[cname] = [None] * len(attrs)
            continue
        if any(target[o] is cls for o in target if o != cname):
            raise _bad(f"two snapshot classes map to {cls._meta.name}")
        meta = cls._meta
        row = []
        for a in attrs:
            spec = meta.by_name.get(meta.renames.get(a, a))
            if spec is None or spec.transient:
                report.append(f"{meta.name}.{a}: no longer declared; values dropped")
                row.append(None)
            elif spec.name in seen_attrs[cls]:
                raise _bad(f"two snapshot attributes map to {meta.name}.{spec.name}")
            else:
                seen_attrs[cls].add(spec.name)
                row.append(spec.setter)
        setters[cname] = row
        for spec in meta.persistent:
            if spec.name not in seen_attrs[cls]:
                report.append(f"{meta.name}.{spec.name}: not in the snapshot; set to default "
                              f"{spec.default!r}")

    def resolve(oid: int) -> Any:
        for d in extent.values():
            obj = d.get(oid)
            if obj is not None:
                return obj
        return None

    codec = Codec(definition.enums, resolve, lambda o: True, lenient=True)
    next_id = header["next_id"]
    announced = 0
    columns_started = False
    end: Any = None
    system: dict[str, Any] = {}
    for n, payload in frames:
        item = codec.unpack(payload)
        if type(item) is not list or not item or item[0] not in ("ids", "cols", "blob", "system", "end"):
            raise _bad(f"frame {n} is not a snapshot frame")
        kind = item[0]
        if kind == "ids":
            _, cname, start, ids = item
            if columns_started or cname not in counts or start != counts[cname] or type(ids) is not list:
                raise _bad(f"frame {n}: unexpected id frame for {cname!r} at {start!r}")
            if set(map(type, ids)) - {int} or (ids and (ids[0] <= last_id[cname] or ids[-1] >= next_id)):
                raise _bad(f"frame {n}: ids out of range or order")
            if not all(map(operator.lt, ids, ids[1:])):
                raise _bad(f"frame {n}: ids not strictly ascending")
            announced += len(ids)
            counts[cname] += len(ids)
            if ids:
                last_id[cname] = ids[-1]
            cls = target[cname]
            if cls is None:
                continue
            objs = list(map(object.__new__, repeat(cls, len(ids))))
            deque(map(_set_id, objs, ids), 0)
            extent[cls].update(zip(ids, objs, strict=True))
            shells[cname].extend(objs)
        elif kind == "cols":
            columns_started = True
            _, cname, start, count, cols = item
            row = setters.get(cname)
            if (row is None or start != filled[cname] or type(count) is not int or count <= 0
                    or start + count > counts[cname] or type(cols) is not list or len(cols) != len(row)
                    or any(type(c) is not list or len(c) != count for c in cols)):
                raise _bad(f"frame {n}: unexpected column frame for {cname!r} at {start!r}")
            filled[cname] = start + count
            if target[cname] is None:
                continue
            objs = shells[cname][start:start + count]
            for setter, col in zip(row, cols, strict=True):
                if setter is not None:
                    deque(map(setter, objs, col), 0)
        elif kind == "system":
            pairs = item[1] if len(item) == 2 and type(item[1]) is list else None
            if pairs is None or any(type(p) is not list or len(p) != 2 or type(p[0]) is not str
                                    for p in pairs):
                raise _bad(f"frame {n}: malformed system frame")
            system = dict(pairs)
        elif kind == "blob":
            _, sha, data = item
            if type(sha) is not str or type(data) is not bytes:
                raise _bad(f"frame {n}: malformed blob")
            store.blobs.put(data, sha)
        else:
            end = item
            break
    if end is None:
        raise CorruptData("snapshot has no end frame")
    if end != ["end", announced, n] or announced != header["objects"]:
        raise _bad(f"header announces {header['objects']} objects, frames hold {announced}")
    if filled != counts:
        raise _bad("column frames do not cover every object")
    loaded = sum(len(d) for d in extent.values())
    if len(set().union(*(d.keys() for d in extent.values()))) != loaded:
        raise _bad("an id is used by two objects")
    # attributes the snapshot did not carry (added since) and transients get their defaults
    for cls, d in extent.items():
        if not d:
            continue
        objs = list(d.values())
        for spec in cls._meta.specs:
            if spec.transient or spec.name not in seen_attrs[cls]:
                if type(spec.default) in (list, dict, set, bytearray):
                    deque(map(spec.setter, objs, [spec.make_default() for _ in objs]), 0)
                else:
                    deque(map(spec.setter, objs, repeat(spec.default)), 0)
    index = _build_indices(extent)

    def install() -> None:
        store.install_state(LoadedState(extent, index, header["next_id"], header["last_ts"],
                                        header["last_index"], report, system))
        for line in report:
            log.warning("schema change while loading snapshot: %s", line)
    return loaded, install


def _build_indices(extent: dict[type, dict[int, Any]]) -> dict:
    index: dict = {}
    for cls in extent:
        for spec in cls._meta.indexed:
            index.setdefault(spec, {})
    for cls, d in extent.items():
        objs = list(d.values())
        for spec in cls._meta.indexed:
            idx = index[spec]
            keys = list(map(spec.getter, objs))
            if spec.unique:
                pairs = zip(keys, objs, strict=True)
                if None in keys:
                    pairs = ((k, o) for k, o in pairs if k is not None)
                    expected = len(idx) + sum(1 for k in keys if k is not None)
                else:
                    expected = len(idx) + len(keys)
                idx.update(pairs)
                if len(idx) != expected:
                    raise CorruptData(f"snapshot violates the unique index {cls._meta.name}.{spec.name}")
            else:
                for k, o in zip(keys, objs, strict=True):
                    if k is None:
                        continue
                    bucket = idx.get(k)
                    if bucket is None:
                        idx[k] = {o.id: o}
                    else:
                        bucket[o.id] = o
    return index


def referenced_blobs(store: Store) -> set[str]:
    found: set[Blob] = set()
    codec = Codec(store.definition.enums, store.find, store._is_live, lenient=True, on_blob=found.add)
    for cls in store._classes:
        objs = list(store._extent[cls].values())
        for spec in cls._meta.persistent:
            codec.pack(list(map(spec.getter, objs)))
    return {b.sha256 for b in found}
