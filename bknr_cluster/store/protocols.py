"""The narrow faces of a ``Store`` that its helper modules are written against.

``snapshot.load`` (snapshot.py), the standalone log (durable.py) and the JSON mapping
(jsonmap.py) each need a few things of a store; they are typed against these protocols instead
of ``Store``, and the store's private state is changed only by the store itself: a loaded
snapshot is handed over as one ``LoadedState`` to ``install_state`` (or ``reset_to_empty``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum
from typing import IO, Any, Protocol


@dataclass
class LoadedState:
    """A store state decoded from a snapshot and checked, ready to replace the store's."""

    extent: dict[type, dict[int, Any]]   # class -> {id: object}, ascending ids
    index: dict                           # AttrSpec -> index dict (state.py)
    next_id: int
    last_ts: int
    last_index: int
    schema_report: list[str]
    system: dict[str, Any]


class SnapshotTarget(Protocol):
    """What ``snapshot.load`` uses of the store it loads into."""

    definition: Any
    blobs: Any

    def find(self, oid: int) -> Any: ...

    def install_state(self, state: LoadedState) -> None: ...

    def reset_to_empty(self) -> None: ...


class DurableTarget(Protocol):
    """What the standalone log (durable.py) uses of its store."""

    last_index: int

    @property
    def lock(self) -> threading.RLock: ...

    def load_snapshot(self, stream: IO[bytes]) -> int: ...

    def apply_record(self, record: bytes, ctx: Any) -> Any: ...


class JsonTarget(Protocol):
    """What ``from_json`` uses of a store: objects by id, enums by registered name."""

    def find(self, oid: int) -> Any: ...

    def enum_class(self, name: str) -> type[Enum] | None: ...


__all__ = ["DurableTarget", "JsonTarget", "LoadedState", "SnapshotTarget"]
