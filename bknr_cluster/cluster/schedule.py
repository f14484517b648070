"""A scheduled leadership transfer (``bknrctl leader transfer --at TIME``), held by the leader.

At most one schedule per node, in memory: ``POST /transfer/schedule {"to", "at"}`` sets it (on the
leader only), ``DELETE`` cancels it, ``GET`` shows it. When the time comes the node transfers
leadership if it still leads; if it no longer does, the switchover already happened some other
way and the schedule is dropped (logged). A node restart drops its schedule: the operator sees it
gone in ``GET`` and sets it again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from bknr_cluster.errors import UsageError

log = logging.getLogger("bknr.schedule")


class ScheduledTransfer:
    def __init__(self, cs: Any) -> None:
        self.cs = cs
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.pending: dict | None = None
        self.last: dict | None = None   # what happened to the last schedule that fired

    def set(self, to: int, at: float) -> dict:
        if not self.cs.is_leader():
            raise UsageError("only the leader holds a scheduled transfer; ask the leader")
        delay = at - time.time()
        if delay < 0:
            raise UsageError("the scheduled time is in the past")
        with self._lock:
            self._cancel_locked()
            self.pending = {"to": int(to), "at": float(at), "set_at": time.time()}
            self._timer = threading.Timer(delay, self._fire, args=(self.pending,))
            self._timer.daemon = True
            self._timer.start()
            return dict(self.pending)

    def cancel(self) -> dict | None:
        with self._lock:
            return self._cancel_locked()

    def _cancel_locked(self) -> dict | None:
        was, self.pending = self.pending, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return was

    def show(self) -> dict:
        with self._lock:
            return {"pending": dict(self.pending) if self.pending else None, "last": self.last}

    def _fire(self, plan: dict) -> None:
        with self._lock:
            if self.pending is not plan:
                return  # cancelled or replaced meanwhile
            self.pending, self._timer = None, None
        outcome: dict[str, Any] = {**plan, "fired_at": time.time()}
        try:
            if not self.cs.is_leader():
                outcome["result"] = "skipped: no longer the leader"
            else:
                history = getattr(self.cs, "leader_history", None)
                if history is not None:
                    history.expect(f"scheduled transfer (to {plan['to'] or 'best candidate'})")
                outcome["result"] = f"leader is now {self.cs.transfer(plan['to'])}"
        except Exception as exc:  # reported through GET, never raised into the timer thread
            outcome["result"] = f"failed: {type(exc).__name__}: {exc}"
        self.last = outcome
        log.info("scheduled transfer: %s", outcome["result"])
