"""JSON mapping of codec values for the HTTP API.

JSON-native values pass through unchanged (str, int, float, bool, None, lists, dicts with string
keys). Everything else becomes a one-key object whose key starts with ``$``:

``{"$ref": ["Account", 12]}``  store object      ``{"$tuple": [...]}``   tuple
``{"$set": [...]}`` / ``{"$frozenset": [...]}``    ``{"$bytes": "<base64>"}``
``{"$datetime": "2024-01-02T03:04:05.000006+00:00"}``  ``{"$date": "2024-01-02"}``
``{"$timedelta": [days, seconds, microseconds]}``  ``{"$decimal": "1.10"}``  ``{"$uuid": "..."}``
``{"$enum": ["Color", "red"]}`` (registered name, value)   ``{"$blob": [sha256, size]}``
``{"$dict": [[key, value], ...]}`` a dict with a non-string key or a key starting with ``$``
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from decimal import Decimal
from enum import Enum
from typing import TYPE_CHECKING, Any

from bknr_cluster.errors import CodecError
from bknr_cluster.store.blobs import Blob
from bknr_cluster.store.model import StoreObject

if TYPE_CHECKING:
    from bknr_cluster.store.protocols import JsonTarget

_PLAIN = (str, int, float, bool, type(None))


def to_json(value: Any) -> Any:
    """A JSON-serialisable form of any codec value."""
    t = type(value)
    if t in _PLAIN:
        return value
    if t is list:
        return [to_json(v) for v in value]
    if t is dict:
        if all(type(k) is str and not k.startswith("$") for k in value):
            return {k: to_json(v) for k, v in value.items()}
        return {"$dict": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, StoreObject):
        return {"$ref": [value._meta.name, value.id]}
    if t is tuple:
        return {"$tuple": [to_json(v) for v in value]}
    if t is set or t is frozenset:
        return {"$set" if t is set else "$frozenset": [to_json(v) for v in value]}
    if t is bytes:
        return {"$bytes": base64.b64encode(value).decode()}
    if t is dt.datetime:
        if value.utcoffset() is None:
            raise CodecError(f"naive datetime {value.isoformat()} is not supported")
        return {"$datetime": value.isoformat()}
    if t is dt.date:
        return {"$date": value.isoformat()}
    if t is dt.timedelta:
        return {"$timedelta": [value.days, value.seconds, value.microseconds]}
    if t is Decimal:
        return {"$decimal": str(value)}
    if t is uuid.UUID:
        return {"$uuid": str(value)}
    if t is Blob:
        return {"$blob": [value.sha256, value.size]}
    if isinstance(value, Enum):
        return {"$enum": [t.__dict__.get("__store_name__", t.__name__), to_json(value.value)]}
    raise CodecError(f"cannot map a {t.__qualname__} to JSON")


def from_json(obj: Any, store: JsonTarget | None = None) -> Any:
    """The inverse of ``to_json``; ``$ref`` and ``$enum`` need the ``store``."""
    t = type(obj)
    if t in _PLAIN:
        return obj
    if t is list:
        return [from_json(v, store) for v in obj]
    if t is not dict:
        raise CodecError(f"not a JSON value: {t.__qualname__}")
    if len(obj) == 1:
        (key, val), = obj.items()
        if key.startswith("$"):
            return _tagged(key, val, store)
    return {k: from_json(v, store) for k, v in obj.items()}


def _tagged(key: str, val: Any, store: JsonTarget | None) -> Any:
    try:
        if key == "$ref":
            cname, oid = val
            if store is None:
                raise CodecError("a $ref needs a store to resolve against")
            found = store.find(int(oid))
            if found is None or found._meta.name != cname:
                raise CodecError(f"no {cname} #{oid} in the store")
            return found
        if key == "$tuple":
            return tuple(from_json(v, store) for v in val)
        if key == "$set":
            return {from_json(v, store) for v in val}
        if key == "$frozenset":
            return frozenset(from_json(v, store) for v in val)
        if key == "$bytes":
            return base64.b64decode(val, validate=True)
        if key == "$datetime":
            value = dt.datetime.fromisoformat(val)
            if value.utcoffset() is None:
                raise CodecError(f"$datetime {val!r} has no UTC offset")
            return value
        if key == "$date":
            return dt.date.fromisoformat(val)
        if key == "$timedelta":
            return dt.timedelta(days=val[0], seconds=val[1], microseconds=val[2])
        if key == "$decimal":
            return Decimal(val)
        if key == "$uuid":
            return uuid.UUID(val)
        if key == "$blob":
            return Blob(str(val[0]), int(val[1]))
        if key == "$enum":
            name, value = val
            enum = store.enum_class(name) if store is not None else None
            if enum is None:
                raise CodecError(f"enum {name!r} is not registered with the store")
            return enum(from_json(value, store))
        if key == "$dict":
            return {from_json(k, store): from_json(v, store) for k, v in val}
    except CodecError:
        raise
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise CodecError(f"malformed {key} value {val!r}: {exc}") from None
    return {key: from_json(val, store)}
