"""Leadership operations: planned switchover (now or scheduled) and measuring its gap."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from typing import Any

from bknr_cluster.errors import BknrError, UsageError

from .client import parallel
from .cluster import Cluster
from .poll import poll


def transfer_with_retry(cluster: Cluster, leader: Any, to: int = 0, attempts: int = 3) -> int:
    """POST /transfer to ``leader``; a timed-out attempt is retried while it still leads."""
    last: BknrError | None = None
    for _ in range(attempts):
        try:
            return int(cluster.clients[leader.name].transfer(to).get("leader_id") or 0)
        except BknrError as exc:
            last = exc
            ok, _ = cluster.clients[leader.name].is_leader(timeout=1.0)
            if not ok:
                return 0  # it did hand over after all
    assert last is not None
    raise last


class LeaderWatch:
    """Polls /leader on every node in parallel and records when each one answered 200."""

    def __init__(self, cluster: Cluster, period: float = 0.005):
        self.cluster = cluster
        self.period = period
        self.samples: list[tuple[float, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        nodes = list(self.cluster.cfg.nodes)
        while not self._stop.is_set():
            res = parallel(lambda n: self.cluster.clients[n.name].is_leader(timeout=0.2), nodes)
            now = time.monotonic()
            leader = next((n.id for n, r in zip(nodes, res, strict=True)
                           if isinstance(r, tuple) and r[0]), None)
            self.samples.append((now, leader))
            self._stop.wait(self.period)

    def __enter__(self) -> LeaderWatch:
        self._thread.start()
        # the gap is only meaningful once the current leader has been seen at least once
        poll(lambda: True if self.samples else None, 2.0, interval=0.002)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def gap_ms(self, old: int, new: int) -> float | None:
        """From the last sample with ``old`` leading to the first with ``new`` leading."""
        last_old = max((t for t, ld in self.samples if ld == old), default=None)
        first_new = min((t for t, ld in self.samples if ld == new and (last_old is None or t > last_old)),
                        default=None)
        if first_new is None:
            return None
        start = last_old if last_old is not None else self.samples[0][0]
        return (first_new - start) * 1000.0


def transfer_leadership(cluster: Cluster, to: int = 0, timeout: float = 15.0) -> dict:
    """Switch over; returns old/new leader names and the leaderless gap seen on /leader."""
    old = cluster.leader_node()
    if to == old.id:
        return {"from": old.name, "to": old.name, "gap_ms": 0.0, "changed": False}
    with LeaderWatch(cluster) as watch:
        t0 = time.monotonic()
        new_id = transfer_with_retry(cluster, old, to)
        new = cluster.wait_for_leader(timeout=timeout, exclude=old.id)
        if to and new.id != to:
            raise BknrError(f"leadership went to {new.name}, not the requested node")
        total_ms = (time.monotonic() - t0) * 1000.0
        # let the watcher take a few more samples so the new leader's first /leader 200 is
        # recorded (a pause of a few of its periods, not a wait for a condition)
        time.sleep(0.05)
    gap = watch.gap_ms(old.id, new.id)
    return {"from": old.name, "to": new.name, "gap_ms": round(gap if gap is not None else total_ms, 1),
            "elapsed_ms": round(total_ms, 1), "changed": True, "reported_leader_id": new_id}


def parse_when(text: str, now: float | None = None) -> float:
    """``+90s`` / ``+15m`` / ``+2h``, ``HH:MM`` (the next one, local time) or an ISO 8601 time
    (local when it has no offset) -> seconds since the epoch."""
    now = time.time() if now is None else now
    m = re.fullmatch(r"\+(\d+)([smh]?)", text.strip())
    if m:
        return now + int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if m and int(m.group(1)) < 24 and int(m.group(2)) < 60:
        base = dt.datetime.fromtimestamp(now).replace(hour=int(m.group(1)), minute=int(m.group(2)),
                                                      second=0, microsecond=0)
        when = base if base.timestamp() > now else base + dt.timedelta(days=1)
        return when.timestamp()
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at {text!r}: use +SECONDS, +Nm, +Nh, HH:MM or an ISO 8601 time") from None
    return when.timestamp()


def schedule_transfer(cluster: Cluster, target: int, at: float) -> dict:
    if at <= time.time():
        raise UsageError("--at is in the past")
    leader = cluster.leader_node()
    plan = cluster.clients[leader.name].call("POST", "/transfer/schedule", {"to": target, "at": at})
    return {"leader": leader.name, **plan["scheduled"]}
