"""What each member's store definition can apply, and the leader's gate on it.

``describe(definition)`` is what a node reports (``/status`` ``definition``) and publishes through
the log: the application's version label, the transaction / query / class names, and two
fingerprints:

* ``fingerprint`` over everything that decides how a record is applied or a snapshot read: the
  definition's name and version label, each transaction's and query's name and parameters
  (name, kind, whether it has a default), each class's stored name, its persistent attributes
  and their index kind, the enums and their members, the class renames. Two nodes with equal
  fingerprints run (as far as we can tell without comparing code) the same definition.
* ``schema`` over what the state digest is made of (class names and persistent attributes,
  enums, and this build's digest scheme). Checkpoint digests are only compared between replicas
  with the same ``schema``: a replica whose definition added an (empty) class or an attribute
  (at its default), or whose build hashes with another scheme, computes a
  different digest for the same data (DESIGN.md, "Consistency checkpoints").

``Capabilities`` is the replicated view of every member's definition, built from ``definition``
system entries in log order (so every replica holds the same view at the same index) and carried
in the engine's snapshots (``apply.py``). The leader's gate (``refusal``) uses it: a transaction
that some current voter does not know is refused before anything is logged (``NotCapable``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import threading
from collections.abc import Iterable
from typing import Any

from bknr_cluster.errors import NotCapable
from bknr_cluster.store.digest import SCHEME as DIGEST_SCHEME

# What this build reads, published with the definition so that anything new can be gated on
# every member knowing it: the entry kinds the cluster layer applies (batch.py), and "SNZ1",
# engine snapshots whose store image is a zstd frame (native/fsm.cpp, format 2; apply.py).
FEATURES = ("BKB1", "BKR1", "BKS1", "SNZ1")
COMPRESSED_SNAPSHOTS = "SNZ1"


def _params(fn: Any) -> list[list[Any]]:
    """Parameters as [name, kind, has default]: stable across processes (no reprs, no ids)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    return [[p.name, p.kind.name, p.default is not p.empty] for p in sig.parameters.values()]


def _hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe(definition: Any) -> dict[str, Any]:
    """The JSON-able description of a ``StoreDefinition`` (see the module docstring)."""
    classes = {}
    for c in definition.classes:
        meta = c._meta
        classes[meta.name] = [[s.name, "unique" if s.unique else "index" if s.indexed else ""]
                              for s in meta.persistent]
    enums = {}
    for e in getattr(definition, "enums", ()):
        name = e.__dict__.get("__store_name__", e.__name__)
        enums[name] = sorted([m.name, repr(m.value)] for m in e)
    # the digest scheme too: builds with different schemes give different digests for one state
    schema = {"classes": {k: sorted(a for a, _ in v) for k, v in classes.items()}, "enums": enums,
              "digest": DIGEST_SCHEME}
    body = {
        "name": definition.name,
        "version": getattr(definition, "version", "") or "",
        "transactions": {n: _params(t.fn) for n, t in definition.transactions.items()},
        "queries": {n: _params(q.fn) for n, q in definition.queries.items()},
        "classes": classes,
        "enums": enums,
        "class_renames": dict(getattr(definition, "class_renames", {}) or {}),
    }
    return {
        "name": definition.name,
        "version": body["version"],
        "fingerprint": _hash(body),
        "schema": _hash(schema),
        "transactions": sorted(definition.transactions),
        "queries": sorted(definition.queries),
        "classes": sorted(classes),
        "features": list(FEATURES),
    }


def _clean(d: Any) -> dict[str, Any] | None:
    """A published description as it is kept (defensive: entries come from other versions)."""
    if not isinstance(d, dict):
        return None
    names = d.get("transactions")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    out = {k: d.get(k) for k in ("name", "version", "fingerprint", "schema")}
    out = {k: (v if isinstance(v, str) else "") for k, v in out.items()}
    out["transactions"] = sorted(names)
    for key in ("queries", "classes", "features"):
        v = d.get(key)
        out[key] = sorted(x for x in v if isinstance(x, str)) if isinstance(v, list) else []
    return out


class Capabilities:
    """Every member's published definition (replicated state) plus the gate derived from it.

    ``members``: node id -> description (``describe`` output plus ``index``, the log index it was
    published at). ``baseline``: the transactions known to *every* definition ever published in
    this cluster (a running intersection); a voter whose definition is unknown is assumed to
    know only those. Mutated only by the applier (``publish``/``load``); the gate is read by
    submitting threads through one immutable frozenset swap (``_capable``).
    """

    def __init__(self, own: dict[str, Any], node_id: int) -> None:
        self.own = own
        self.node_id = node_id
        self.members: dict[int, dict[str, Any]] = {}
        self.baseline: set[str] | None = None  # None: nothing published yet
        self.voters: tuple[int, ...] = ()
        self._capable: frozenset[str] = frozenset(own["transactions"])
        self._unknown: tuple[int, ...] = ()
        self._lock = threading.Lock()  # the applier (publish) and the monitor (voters) recompute

    # --- replicated state (applier thread) -------------------------------------------------

    def publish(self, node_id: int, description: Any, index: int) -> bool:
        """Apply a ``definition`` entry; False when the description is malformed (skipped)."""
        d = _clean(description)
        if d is None or not isinstance(node_id, int) or node_id <= 0:
            return False
        d["index"] = index
        self.members[node_id] = d
        names = set(d["transactions"])
        self.baseline = names if self.baseline is None else self.baseline & names
        self._recompute()
        return True

    def dump(self) -> dict[str, Any]:
        return {"members": {str(k): v for k, v in sorted(self.members.items())},
                "baseline": sorted(self.baseline) if self.baseline is not None else None}

    def load(self, data: Any) -> None:
        """Replace the view with one carried in a snapshot (``dump`` output; None: empty)."""
        self.members = {}
        self.baseline = None
        if isinstance(data, dict):
            for k, v in (data.get("members") or {}).items():
                d = _clean(v)
                if d is not None and str(k).isdigit():
                    d["index"] = int(v.get("index") or 0) if isinstance(v.get("index"), int) else 0
                    self.members[int(k)] = d
            base = data.get("baseline")
            if isinstance(base, list):
                self.baseline = {x for x in base if isinstance(x, str)}
        self._recompute()

    # --- the gate (any thread) -------------------------------------------------------------

    def set_voters(self, voters: Iterable[int]) -> None:
        v = tuple(sorted(int(x) for x in voters))
        if v != self.voters:
            self.voters = v
            self._recompute()

    def _known(self, node_id: int) -> set[str] | None:
        if node_id == self.node_id:
            return set(self.own["transactions"])  # our own definition is always current
        d = self.members.get(node_id)
        return set(d["transactions"]) if d is not None else None

    def _recompute(self) -> None:
        with self._lock:
            self._recompute_locked()

    def _recompute_locked(self) -> None:
        capable = set(self.own["transactions"])
        unknown = []
        for v in self.voters:
            known = self._known(v)
            if known is None:
                unknown.append(v)
                # Conservative: a voter we know nothing about is assumed to know only what every
                # definition ever published here knew (own definition when nothing was).
                if self.baseline is not None:
                    capable &= self.baseline
            else:
                capable &= known
        self._unknown = tuple(unknown)
        self._capable = frozenset(capable)

    def all_have(self, feature: str) -> bool:
        """Whether every current voter and every member that ever published reads ``feature``.
        False while a voter has not published yet (its build is unknown: assume the oldest)."""
        with self._lock:
            voters, members = self.voters, dict(self.members)
        if not voters:
            return False
        for v in voters:
            if v != self.node_id and v not in members:
                return False
        return feature in self.own.get("features", ()) and all(
            feature in d.get("features", ()) for d in members.values())

    def capable(self, name: str) -> bool:
        return name in self._capable

    def refusal(self, name: str, node_name: Any = str) -> NotCapable:
        """The error for a transaction some voter cannot apply (call when ``capable`` is False)."""
        lacking = []
        for v in self.voters:
            known = self._known(v)
            if known is not None and name in known:
                continue
            if known is None and (self.baseline is None or name in self.baseline):
                continue
            d = self.members.get(v) or {}
            lacking.append({"id": v, "name": node_name(v) or f"n{v}",
                            "version": d.get("version", "") if known is not None else None,
                            "fingerprint": d.get("fingerprint", "") if known is not None else None})
        who = ", ".join(
            f"{x['name']} (version {x['version'] or '-'}, fingerprint {x['fingerprint'][:12] or '-'})"
            if x["fingerprint"] is not None else f"{x['name']} (definition not published yet)"
            for x in lacking) or "a voter"
        return NotCapable(f"transaction {name!r} is not known to every voter: {who} cannot apply "
                          "it; nothing was logged. Upgrade those nodes first (docs/administration.md, "
                          "Upgrades)", nodes=lacking)

    def view(self, node_name: Any = str) -> dict[str, Any]:
        """For ``/status``: each member's published definition, and what the gate refuses."""
        return {
            "members": {str(k): {"name": node_name(k) or f"n{k}", "version": v["version"],
                                 "fingerprint": v["fingerprint"], "schema": v["schema"],
                                 "index": v.get("index", 0), "transactions": len(v["transactions"])}
                        for k, v in sorted(self.members.items())},
            "voters": list(self.voters),
            "unknown_voters": list(self._unknown),
            "refused_transactions": sorted(set(self.own["transactions"]) - self._capable),
        }
