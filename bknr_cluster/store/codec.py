"""The store codec: msgpack plus extension types. Never pickle.

Supported: None, bool, int (any size), float, str, bytes, list, tuple, dict, set, frozenset,
datetime (tz-aware only), date, timedelta, Decimal, UUID, members of registered Enum
classes, ``Blob`` values, and references to store objects (by id). Anything else raises
``CodecError`` while *encoding*, so a bad argument is rejected before a record exists.

msgpack packs the common types in C; ``strict_types=True`` makes every subclass and every
non-native type (tuple, big int, Enum members...) come through ``_default`` so nothing is
silently coerced (a tuple must stay a tuple or replay would differ from the live run).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal
from enum import Enum
from typing import Any

import msgpack

from bknr_cluster.errors import CodecError
from bknr_cluster.store.blobs import Blob
from bknr_cluster.store.model import StoreObject

EXT_BIGINT = 1
EXT_TUPLE = 2
EXT_SET = 3
EXT_FROZENSET = 4
EXT_DATETIME = 5
EXT_DATE = 6
EXT_DECIMAL = 7
EXT_UUID = 8
EXT_ENUM = 9
EXT_REF = 10
EXT_BLOB = 11
EXT_TIMEDELTA = 12

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_Ext = msgpack.ExtType
_Packer = msgpack.Packer
_packb = msgpack.packb
_POOL_MAX_OUTPUT = 1 << 16      # a packer that produced more keeps a big buffer: drop it
_unpackb = unpackb = msgpack.unpackb
_UNPACK_ERRORS = UNPACK_ERRORS = (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
                                  msgpack.StackError, OverflowError, UnicodeDecodeError)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Codec:
    """Encoder/decoder bound to one store's registered enums and object lookup.

    ``resolve(oid)`` returns the live object with that id or None; ``is_live(obj)`` tells whether
    a referenced object belongs to the store. ``lenient`` encoders (snapshots, digests) write a
    reference to a deleted object as None, so a snapshot can never fail on a dangling reference.
    """

    def __init__(self, enums: Iterable[type[Enum]], resolve: Callable[[int], Any],
                 is_live: Callable[[Any], bool], *, lenient: bool = False,
                 on_blob: Callable[[Blob], None] | None = None):
        self.enums: dict[type[Enum], str] = {}
        self.enum_by_name: dict[str, type[Enum]] = {}
        for e in enums:
            name = e.__dict__.get("__store_name__", e.__name__)
            if name in self.enum_by_name and self.enum_by_name[name] is not e:
                raise CodecError(f"two enums registered under the name {name!r}")
            self.enums[e] = name
            self.enum_by_name[name] = e
        self.resolve = resolve
        self.is_live = is_live
        self.lenient = lenient
        self.on_blob = on_blob
        # Idle msgpack Packers. ``packb`` builds (and frees) a Packer with a 256 KiB buffer per
        # call, which is a third of the cost of encoding a small record. A packer is popped for
        # one pack and pushed back after, so concurrent threads and the nested packs that
        # ``_default`` makes each hold their own (list.pop/append are atomic under the GIL).
        self._idle: list[Any] = []

    # --- encoding -----------------------------------------------------------------------------

    def pack(self, value: Any) -> bytes:
        idle = self._idle
        try:
            packer = idle.pop()
        except IndexError:
            packer = _Packer(default=self._default, strict_types=True, use_bin_type=True,
                             buf_size=4096)
        try:
            data = packer.pack(value)
        except CodecError:
            raise                       # the failed packer is not reused
        except (TypeError, ValueError, OverflowError) as exc:
            raise CodecError(f"cannot encode value: {exc}") from exc
        if len(data) <= _POOL_MAX_OUTPUT:
            idle.append(packer)
        return data

    def _default(self, o: Any) -> Any:
        t = type(o)
        if t is tuple:
            return _Ext(EXT_TUPLE, self.pack(list(o)))
        if t is int:        # only reached when the value does not fit in 64 bits
            n = (o.bit_length() + 8) // 8
            return _Ext(EXT_BIGINT, o.to_bytes(n, "big", signed=True))
        if isinstance(o, StoreObject):
            if not self.is_live(o):
                if self.lenient:
                    return None
                raise CodecError(f"cannot encode a reference to {type(o).__name__} #{o.id}: "
                                 "it is deleted or belongs to another store")
            return _Ext(EXT_REF, _packb(o.id))
        if t is set or t is frozenset:
            items = list(o)
            if len(items) > 1:
                try:        # canonical order where the elements allow it
                    items.sort()
                except TypeError:
                    pass
            return _Ext(EXT_SET if t is set else EXT_FROZENSET, self.pack(items))
        if t is dt.datetime:
            off = o.utcoffset()
            if off is None:
                raise CodecError(f"cannot encode naive datetime {o.isoformat()}: use a timezone-aware one")
            delta = o - _EPOCH
            micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
            key = getattr(o.tzinfo, "key", None)     # zoneinfo name survives the round trip
            return _Ext(EXT_DATETIME, _packb([micros, int(off.total_seconds() * 1_000_000), key]))
        if t is dt.date:
            return _Ext(EXT_DATE, _packb(o.toordinal()))
        if t is dt.timedelta:
            return _Ext(EXT_TIMEDELTA, _packb([o.days, o.seconds, o.microseconds]))
        if t is Decimal:
            return _Ext(EXT_DECIMAL, str(o).encode())
        if t is uuid.UUID:
            return _Ext(EXT_UUID, o.bytes)
        if t is Blob:
            if self.on_blob is not None:
                self.on_blob(o)
            return _Ext(EXT_BLOB, _packb([o.sha256, o.size]))
        if isinstance(o, Enum):
            name = self.enums.get(t)
            if name is None:
                raise CodecError(f"cannot encode {o!r}: enum {t.__qualname__} is not registered "
                                 "with the store definition (enums=[...])")
            return _Ext(EXT_ENUM, self.pack([name, o.value]))
        raise CodecError(f"cannot encode value of type {t.__module__}.{t.__qualname__}: {_short(o)} "
                         "(supported: None, bool, int, float, str, bytes, list, tuple, dict, set, "
                         "frozenset, datetime (tz-aware), date, timedelta, Decimal, UUID, registered "
                         "Enum, Blob, store objects)")

    # --- decoding -----------------------------------------------------------------------------

    def unpack(self, data: bytes) -> Any:
        """Decode; malformed bytes raise CodecError, a dangling reference raises CodecError.
        (``Store._decode_record`` inlines this call: keep the two in step.)"""
        try:
            return _unpackb(data, ext_hook=self._ext_hook, strict_map_key=False, raw=False)
        except CodecError:
            raise
        except _UNPACK_ERRORS as exc:
            raise CodecError(f"cannot decode value: {exc}") from exc

    def _ext_hook(self, code: int, data: bytes) -> Any:
        try:
            return self._decode_ext(code, data)
        except CodecError:
            raise
        except Exception as exc:     # hostile bytes: any failure is a decoding failure
            raise CodecError(f"cannot decode extension type {code}: {type(exc).__name__}: {exc}") from None

    def _decode_ext(self, code: int, data: bytes) -> Any:
        if code == EXT_REF:
            oid = _unpackb(data)
            obj = self.resolve(oid)
            if obj is None and not self.lenient:
                raise CodecError(f"reference to object #{oid}, which does not exist in this store")
            return obj
        if code == EXT_TUPLE:
            return tuple(self.unpack(data))
        if code == EXT_BIGINT:
            return int.from_bytes(data, "big", signed=True)
        if code == EXT_SET:
            return set(self.unpack(data))
        if code == EXT_FROZENSET:
            return frozenset(self.unpack(data))
        if code == EXT_DATETIME:
            micros, off, key = _unpackb(data)
            tz: dt.tzinfo = dt.timezone(dt.timedelta(microseconds=off)) if off else dt.UTC
            if key:
                try:
                    from zoneinfo import ZoneInfo
                    tz = ZoneInfo(key)
                except Exception:   # zone database missing: the fixed offset is still exact
                    pass
            return (_EPOCH + dt.timedelta(microseconds=micros)).astimezone(tz)
        if code == EXT_DATE:
            return dt.date.fromordinal(_unpackb(data))
        if code == EXT_TIMEDELTA:
            d, s, us = _unpackb(data)
            return dt.timedelta(days=d, seconds=s, microseconds=us)
        if code == EXT_DECIMAL:
            return Decimal(data.decode())
        if code == EXT_UUID:
            return uuid.UUID(bytes=data)
        if code == EXT_BLOB:
            sha, size = _unpackb(data)
            return Blob(sha, size)
        if code == EXT_ENUM:
            name, value = self.unpack(data)
            cls = self.enum_by_name.get(name)
            if cls is None:
                raise CodecError(f"cannot decode enum {name!r}: not registered with this store")
            return cls(value)
        raise CodecError(f"cannot decode unknown extension type {code}")
