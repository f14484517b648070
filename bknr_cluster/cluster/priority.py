"""Leadership priority: the leader hands leadership to a caught-up node it should yield to.

Each node carries a priority (YAML ``nodes[i].priority``): 1 is a preferred leader, which takes
leadership back when it can; 0 has no preference; -1 hands leadership away whenever another node
can take it. Elections honour it in the engine (native/fast_election.cpp: head-start order and
timer ranges). This module adds the other half, a *planned* transfer (``raft_transfer``: the few
milliseconds of a switchover, not an election) run by the leader only:

- the leader looks for voters of a strictly higher priority than its own (for a -1 leader: any
  priority >= 0) that have been *caught up* — their match index at or past the commit index the
  leader saw one check earlier — continuously for the settle time;
- it transfers to the best of them (highest priority, then lowest id), at most once per settle
  time, and logs the cause at INFO.

Why it cannot flap: transfers only ever go to a strictly higher priority, so without failures
there are at most two in a row (-1 -> 0 -> 1); a node that keeps restarting is never caught up
for the settle time, so it is never handed leadership until it stays up; and each leader waits
the settle time after its own previous transfer. Runs on its own thread and only calls
``engine.status()`` / ``engine.transfer()``: the engine loop never waits for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bknr_cluster.vocabulary import Role

log = logging.getLogger("bknr.priority")


@dataclass
class PriorityTransfer:
    """One automatic transfer, for ``/status`` and the log."""

    at: float
    from_id: int
    to_id: int
    cause: str


class PriorityKeeper:
    def __init__(self, node_id: int, priorities: Mapping[int, int], engine: Any,
                 election_timeout_ms: int, *, settle_s: float | None = None,
                 name_of: Callable[[int], str] | None = None) -> None:
        self.node_id = node_id
        self.priorities = dict(priorities)
        self.engine = engine
        self.election_timeout_s = election_timeout_ms / 1000
        # Long enough that a node restarting in a loop never qualifies, short enough that a
        # repaired preferred node gets leadership back soon: 10 election timeouts, >= 1 s.
        self.settle_s = settle_s if settle_s is not None else max(1.0, 10 * self.election_timeout_s)
        self.period_s = max(0.02, min(0.25, self.election_timeout_s / 2))
        self.name_of = name_of or (lambda i: f"n{i}")
        self.transfers: list[PriorityTransfer] = []
        self._caught_up_since: dict[int, float] = {}
        self._last_commit = 0
        self._last_transfer = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def priority(self, node_id: int) -> int:
        return self.priorities.get(node_id, 0)

    @property
    def active(self) -> bool:
        """Some node has a priority: otherwise there is nothing to keep."""
        return any(self.priorities.values())

    # --- decision (pure over a status dict; unit-testable) --------------------------------------

    def choose(self, status: dict, now: float) -> tuple[int, str] | None:
        """The node to hand leadership to now, with the cause, or None."""
        if status.get("state") != "leader":
            self._caught_up_since.clear()
            self._last_commit = 0
            return None
        mine = self.priority(self.node_id)
        voters = {int(c["id"]) for c in status.get("configuration") or [] if c.get("role") == Role.voter}
        commit_before, self._last_commit = self._last_commit, int(status.get("commit_index") or 0)
        for f in status.get("followers") or []:
            fid, match = int(f["id"]), int(f["match_index"])
            if fid in voters and commit_before and match >= commit_before:
                self._caught_up_since.setdefault(fid, now)
            else:
                self._caught_up_since.pop(fid, None)
        if now - self._last_transfer < self.settle_s:
            return None
        # a -1 leader yields to anyone who can lead; others only to a strictly better node
        settle = min(self.settle_s, 2 * self.election_timeout_s) if mine < 0 else self.settle_s
        ready = [i for i, since in self._caught_up_since.items()
                 if self.priority(i) > mine and now - since >= settle]
        if not ready:
            return None
        target = min(ready, key=lambda i: (-self.priority(i), i))
        cause = (f"priority: {self.name_of(target)} (priority {self.priority(target)}) caught up for "
                 f"{now - self._caught_up_since[target]:.1f} s, {self.name_of(self.node_id)} has "
                 f"priority {mine}")
        return target, cause

    # --- thread ----------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.active or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bknr-priority", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self._step()
            except Exception as exc:  # a failed transfer is retried after the settle time
                log.warning("priority check failed: %s", exc)

    def _step(self) -> None:
        now = time.monotonic()
        choice = self.choose(self.engine.status(), now)
        if choice is None:
            return
        target, cause = choice
        self._last_transfer = now
        log.info("leadership transfer to %s: %s", self.name_of(target), cause)
        self.engine.transfer(target).result(max(1.0, 3 * self.election_timeout_s))
        self.transfers.append(PriorityTransfer(time.time(), self.node_id, target, cause))
        self._caught_up_since.clear()

    def stats(self) -> dict[str, Any]:
        last = self.transfers[-1] if self.transfers else None
        return {"priority": self.priority(self.node_id), "priority_transfers": len(self.transfers),
                "last_priority_transfer": None if last is None else {
                    "at": last.at, "from": last.from_id, "to": last.to_id, "cause": last.cause}}
