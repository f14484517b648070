"""Operation histories recorded by the chaos workloads and read by the checkers.

An operation is recorded once it completes, with both its invocation and completion times on the
same monotonic clock, so real-time order between operations is exact.  Its ``status`` says what
the client learned:

* ``ok``      — acknowledged; it took effect exactly once, between invoke and complete.
* ``fail``    — definitely did not take effect (rejected before submission, or the transaction
                raised on every replica and changed nothing).
* ``unknown`` — the client cannot tell (``LeadershipLost``, timeouts, connection cut): it may
                take effect at any time after its invocation, or never.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OK, FAIL, UNKNOWN = "ok", "fail", "unknown"
STATUSES = (OK, FAIL, UNKNOWN)


@dataclass
class Op:
    """One completed client operation."""

    client: int
    f: str                      # workload-specific: "read", "write", "cas", "transfer", "append", ...
    key: Any = None             # the register / list the operation touches (None when global)
    value: Any = None           # the argument (write value, (expected, new) for cas, ...)
    result: Any = None          # what the client saw (read value, cas bool, ...); None if unknown
    status: str = OK
    invoke: float = 0.0
    complete: float | None = None   # None when unknown: it may take effect at any later time
    error: str | None = None        # the error type the client saw, for the report
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"bad status {self.status!r}")
        if self.status == UNKNOWN:
            self.complete = None
        elif self.complete is None:
            raise ValueError("a completed operation needs a completion time")

    def to_json(self) -> dict:
        return asdict(self)


class History:
    """A thread-safe append-only list of operations plus a shared clock."""

    def __init__(self) -> None:
        self._ops: list[Op] = []
        self._lock = threading.Lock()

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def add(self, op: Op) -> Op:
        with self._lock:
            self._ops.append(op)
        return op

    def record(self, client: int, f: str, key: Any, value: Any, invoke: float, status: str,
               result: Any = None, error: str | None = None, **meta: Any) -> Op:
        complete = None if status == UNKNOWN else self.now()
        return self.add(Op(client=client, f=f, key=key, value=value, result=result, status=status,
                           invoke=invoke, complete=complete, error=error, meta=meta))

    @property
    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for op in self.ops:
            out[op.status] += 1
        return out

    def dump(self, path: Path) -> None:
        """JSON lines, one operation each: for post-mortem reading of a failed run."""
        with open(path, "w") as fh:
            for op in self.ops:
                fh.write(json.dumps(op.to_json(), default=repr) + "\n")


def ops_from(rows: Iterable[tuple]) -> list[Op]:
    """Hand-written histories for the checker tests: ``(client, f, key, value, result, status,
    invoke, complete)`` tuples."""
    out = []
    for client, f, key, value, result, status, invoke, complete in rows:
        out.append(Op(client=client, f=f, key=key, value=value, result=result, status=status,
                      invoke=invoke, complete=complete))
    return out
