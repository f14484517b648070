"""The system namespace every store has: records of the cluster layer, not of the application.

``store.system`` is a mapping of string keys to plain values, changed only by the built-in
transactions below (names start with ``bknr.sys.``; every ``StoreDefinition`` registers them
under their full names only, so they never clash with an application's short names). Contract:

- invisible to the application: no class, no extent, no index, so the application's objects,
  queries and ``len(store)`` never see it;
- replicated and durable like any transaction: in the log, in Raft snapshots and standalone
  snapshots (a ``system`` frame, written only when the namespace is non-empty);
- covered by the state digest (again only when non-empty, so a store that never used it keeps
  the digest it had before the namespace existed);
- left out of backups (``write_snapshot(include_system=False)``): a backup is the application's
  state.

The failover drill (``bknrctl failover --drill``) is its user: a bank-like workload with
at-most-once transfers under ``drill.``, removed with ``drill_clear`` when the drill ends.
"""

from __future__ import annotations

from typing import Any

from bknr_cluster.store.model import LOCAL
from bknr_cluster.store.tx import Query, Transaction

PREFIX = "bknr.sys."
_ACCT = "drill.acct."
_REF = "drill.ref."


def _space() -> dict[str, Any]:
    return LOCAL.store.system  # set while a transaction or a query runs (core.py)


def drill_open(name: str, balance: int) -> bool:
    """Open drill account ``name`` with ``balance``; False when it exists already."""
    space, key = _space(), _ACCT + str(name)
    if key in space:
        return False
    space[key] = int(balance)
    return True


def drill_transfer(source: str, target: str, amount: int, ref: str) -> bool:
    """Move ``amount`` once per ``ref`` (a retry of an applied ref is a no-op returning False)."""
    space = _space()
    if _REF + ref in space:
        return False
    a, b = _ACCT + str(source), _ACCT + str(target)
    if a not in space or b not in space:
        raise KeyError(f"no drill account {source!r} or {target!r}")
    if not isinstance(amount, int) or amount <= 0 or space[a] < amount:
        raise ValueError(f"drill transfer of {amount!r} refused")
    space[a] -= amount
    space[b] += amount
    space[_REF + ref] = 1
    return True


def drill_clear() -> int:
    """Remove every drill record; returns how many keys went."""
    space = _space()
    gone = [k for k in space if k.startswith("drill.")]
    for k in gone:
        del space[k]
    return len(gone)


def drill_total() -> int:
    return sum(v for k, v in _space().items() if k.startswith(_ACCT))


def drill_applied() -> list[str]:
    return sorted(k[len(_REF):] for k in _space() if k.startswith(_REF))


def system_keys(prefix: str = "") -> int:
    """How many system keys start with ``prefix`` (tests and tools)."""
    return sum(1 for k in _space() if k.startswith(prefix))


TRANSACTIONS = {t.name: t for t in (Transaction(fn, PREFIX + fn.__name__)
                                    for fn in (drill_open, drill_transfer, drill_clear))}
QUERIES = {q.name: q for q in (Query(fn, PREFIX + fn.__name__)
                               for fn in (drill_total, drill_applied, system_keys))}
