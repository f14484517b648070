"""What the node, its clients and bknrctl must agree on, spelled out once.

Three things cross process boundaries by name, so every side imports them from here instead of
writing its own copy:

- the member roles of a Raft configuration (``Role``): the YAML, the engine, the HTTP API, the
  ``--recover`` JSON and ``bknrctl peer`` all use these spellings;
- the error <-> HTTP mapping (``error_status``, ``error_body``, ``error_from_body``): the node
  answers an ``errors.py`` exception with a status and a JSON body, and every client (the
  follower forwarding to its leader, tests, the CLI) rebuilds the same exception from them;
- the data-directory layout (``DataDirLayout``) and the engine's snapshot file names
  (``parse_engine_snapshot``): the node writes them, ``bknrctl`` reads them (locally or over
  SSH) and the snapshot archive prunes by them.

The module depends on ``errors.py`` only, so any layer may import it.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import PurePath
from typing import Any, Generic, TypeVar

from bknr_cluster import errors
from bknr_cluster.errors import (
    BknrError,
    LeadershipLost,
    NoLeader,
    NotCapable,
    NotLeader,
    ReplicaHalted,
    Shutdown,
    Timeout,
    TransactionFailed,
    Unauthorized,
    UnknownNode,
    UnknownTransaction,
    UsageError,
)

# --- member roles -------------------------------------------------------------------------------


class Role(StrEnum):
    """A member's role in the Raft configuration (libraft's voter / standby / spare).

    voter: votes and counts for the commit quorum; standby: receives the log, does not vote
    (promotable at once); spare: a member that neither votes nor receives the log."""

    voter = "voter"
    standby = "standby"
    spare = "spare"


# The spellings as plain strings, in this order (messages list them as "voter, standby, spare").
ROLES: tuple[str, ...] = tuple(r.value for r in Role)
ROLE_CHOICES = ", ".join(ROLES)

# --- error <-> HTTP (docs/interfaces.md section 4) -----------------------------------------------


def error_status(exc: BaseException) -> int:
    """The HTTP status the node answers ``exc`` with."""
    explicit = getattr(exc, "http_status", None)  # e.g. 409 for "restore into a non-empty store"
    if isinstance(explicit, int):
        return explicit
    if isinstance(exc, Unauthorized):
        return 401
    if isinstance(exc, UnknownTransaction | UnknownNode):
        return 404
    if isinstance(exc, TransactionFailed):
        return 409
    if isinstance(exc, NotLeader | LeadershipLost | Shutdown | ReplicaHalted):
        return 503
    if isinstance(exc, Timeout):
        return 504
    if isinstance(exc, UsageError):
        return 400
    return 500


def error_body(exc: BaseException) -> dict[str, Any]:
    """The JSON error body: one line, the errors.py class name, and the class's hints."""
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    body: dict[str, Any] = {"error": msg, "type": type(exc).__name__}
    if isinstance(exc, NotLeader):
        body.update(leader_id=exc.leader_id, leader_address=exc.leader_address,
                    leader_api=exc.leader_api)
    if isinstance(exc, TransactionFailed):
        body["exception"] = exc.exception
    if isinstance(exc, NotCapable):
        body["nodes"] = exc.nodes
    if isinstance(exc, errors.ConfigError):
        body["problems"] = [list(p) for p in exc.problems]
    return body


def error_from_body(status: int, body: Any, where: str = "") -> BknrError:
    """The errors.py exception an error answer stands for (the inverse of ``error_body``).

    ``where`` (a node name) prefixes the messages that do not name their source themselves: an
    authentication failure and answers without a known ``type``."""
    at = f"{where}: " if where else ""
    kind = str(body.get("type") or "") if isinstance(body, dict) else ""
    if status == 401 or kind == "Unauthorized":
        msg = str(body.get("error") or "unauthorized") if isinstance(body, dict) else "unauthorized"
        return Unauthorized(f"{at}{msg} (check token_file)")
    if not isinstance(body, dict):
        # not the API's error format (the HTTP server's own page, a proxy): say what came back
        return BknrError(f"{at}HTTP {status}: {str(body)[:200]}")
    msg = str(body.get("error") or f"HTTP {status}")
    if kind in ("NotLeader", "NoLeader"):
        cls = NoLeader if kind == "NoLeader" else NotLeader
        return cls(int(body.get("leader_id") or 0), str(body.get("leader_address") or ""),
                   message=msg, leader_api=str(body.get("leader_api") or ""))
    if kind == "TransactionFailed":
        exc = TransactionFailed(str(body.get("exception") or "Exception"))
        exc.args = (msg,)  # the node's message already reads "transaction failed: ..."
        return exc
    if kind == "NotCapable":
        nodes = body.get("nodes")
        return NotCapable(msg, nodes if isinstance(nodes, list) else [])
    cls = getattr(errors, kind, None) if kind else None
    # a ConfigError's one line is rebuilt as a usage error below (its problem list stays remote)
    if isinstance(cls, type) and issubclass(cls, BknrError) and cls is not errors.ConfigError:
        try:
            return cls(msg)
        except TypeError:
            pass
    if status == 404:
        return UnknownTransaction(f"{at}{msg}")
    if 400 <= status < 500:
        return UsageError(f"{at}{msg}")
    return BknrError(f"{at}{msg}")


# --- data directory layout and snapshot file names -----------------------------------------------

RAFT_DIR = "raft"              # libraft's log, metadata and snapshots (the engine owns it)
BLOB_DIR = "blobs"             # the store's blob files
SNAPSHOT_ARCHIVE_DIR = "snapshots"  # archived copies of engine snapshots (cluster/retention.py)
PID_FILE = "node.pid"
LOG_FILE = "node.log"          # the node's own log
OUT_FILE = "node.out"          # raw stdout/stderr of a node bknrctl started (crashes before logging)
LOCK_FILE = "LOCK"             # one process per Raft directory (datadir_lock.py)
HISTORY_FILE = "history.jsonl"  # the leader changes this node saw (cluster/history.py)
STORE_SNAPSHOT_DIR = "store-snapshot"  # store snapshots and backups a forked child writes

P = TypeVar("P", bound=PurePath)


def _under_root(name: str) -> Any:
    """A read-only attribute: ``root / name`` (of the layout's own path type)."""
    return property(lambda self: self.root / name, doc=f"``data_dir/{name}``")


class DataDirLayout(Generic[P]):
    """The files of one node under its ``data_dir``.

    Generic in the path type: ``Path`` on the node's own host, ``PurePosixPath`` for a node bknrctl
    reaches over SSH; every attribute is ``root / <name above>`` of that type."""

    def __init__(self, root: P) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"DataDirLayout({self.root!r})"

    raft_dir = _under_root(RAFT_DIR)
    blob_dir = _under_root(BLOB_DIR)
    snapshot_archive = _under_root(SNAPSHOT_ARCHIVE_DIR)
    store_snapshot_dir = _under_root(STORE_SNAPSHOT_DIR)
    history_file = _under_root(HISTORY_FILE)
    pid_file = _under_root(PID_FILE)
    log_file = _under_root(LOG_FILE)
    out_file = _under_root(OUT_FILE)


# libraft names a snapshot ``snapshot-TERM-INDEX-MILLISECONDS`` and writes its metadata next to
# it with this suffix; a snapshot is complete only when both files exist.
ENGINE_SNAPSHOT_META_SUFFIX = ".meta"
_ENGINE_SNAPSHOT = re.compile(r"^snapshot-(\d+)-(\d+)-(\d+)$")


def parse_engine_snapshot(name: str) -> tuple[int, int, int] | None:
    """``(term, index, ms)`` of an engine snapshot's data file name, else None (``.meta`` too)."""
    m = _ENGINE_SNAPSHOT.match(name)
    if m is None:
        return None
    term, index, ms = (int(x) for x in m.groups())
    return term, index, ms
