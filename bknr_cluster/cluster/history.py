"""Leader changes as this node saw them, kept across restarts (``data_dir/history.jsonl``).

One observer thread per node polls the engine's status (cheap: no digest) every ``period`` and
appends a record when a leader different from the last one it saw is elected:
``{"time", "ts", "term", "old_leader", "new_leader", "observer", "cause"}`` (leaders as node
ids, 0 when none was known). ``cause`` is a free string, given beforehand with ``expect(cause)``
by whoever starts a change (an operator's transfer, a node stopping, a priority rule): the next
change seen within ``window`` seconds carries it; otherwise it is null (an election after a
failure). Every node keeps its own file; ``bknrctl history`` merges them by (term, leader).

The same observer counts ``leader_changes`` for ``/metrics`` and calls ``on_tick`` (retention)
once a second, so a node runs one polling thread for both.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bknr_cluster.vocabulary import HISTORY_FILE

log = logging.getLogger("bknr.history")

FILE = HISTORY_FILE
MAX_RECORDS = 10_000  # older records are dropped when the file is rewritten (bounded disk use)


def read_history(path: str | os.PathLike) -> list[dict]:
    """Every well-formed record of a history file, oldest first (a torn last line is skipped)."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and "term" in rec and "new_leader" in rec:
                    out.append(rec)
    except FileNotFoundError:
        pass
    return out


class LeaderHistory:
    """The observer thread; see the module docstring."""

    def __init__(self, engine: Any, data_dir: str | os.PathLike, node_id: int, *,
                 period: float = 0.05, window: float = 30.0,
                 on_tick: Callable[[], Any] | None = None) -> None:
        self.engine, self.node_id, self.period, self.window = engine, node_id, period, window
        self.path = Path(data_dir) / FILE
        self.on_tick = on_tick
        self.leader_changes = 0          # seen by this process (metrics: a counter)
        self.has_leader = False
        past = read_history(self.path)
        self._end_torn_line()
        self._last = (int(past[-1]["term"]), int(past[-1]["new_leader"])) if past else (0, 0)
        self._expected: tuple[str, float] | None = None
        self._lock = threading.Lock()       # the expected cause
        self._observing = threading.Lock()  # one observation (compare, append) at a time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bknr-history", daemon=True)

    def _end_torn_line(self) -> None:
        """A crash mid-append leaves a line without newline: end it, or the next record joins it."""
        try:
            with open(self.path, "rb+") as f:
                if f.seek(0, os.SEEK_END) and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                    f.write(b"\n")
        except FileNotFoundError:
            pass

    def start(self) -> LeaderHistory:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def expect(self, cause: str) -> None:
        """The next leader change (within ``window`` s) happens because of ``cause``."""
        with self._lock:
            self._expected = (cause, time.monotonic() + self.window)

    def records(self) -> list[dict]:
        return read_history(self.path)

    def observe(self, st: dict) -> dict | None:
        """Record a change if ``st`` (engine status) shows a new leader; returns the record.
        Thread-safe: the observer thread and a stopping node may both call it."""
        with self._observing:
            return self._observe(st)

    def _observe(self, st: dict) -> dict | None:
        leader, term = int(st.get("leader_id") or 0), int(st.get("term") or 0)
        self.has_leader = leader != 0
        if not leader or leader == self._last[1] or term < self._last[0]:
            return None
        with self._lock:
            expected, self._expected = self._expected, None
        cause = expected[0] if expected and expected[1] >= time.monotonic() else None
        now = time.time()
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
               "ts": round(now, 3), "term": term, "old_leader": self._last[1], "new_leader": leader,
               "observer": self.node_id, "cause": cause}
        self._last = (term, leader)
        self.leader_changes += 1
        self._append(rec)
        return rec

    def _append(self, rec: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.leader_changes % 1000 == 0:
            past = read_history(self.path)
            if len(past) > MAX_RECORDS:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in past[-MAX_RECORDS:]))
                os.replace(tmp, self.path)

    def _run(self) -> None:
        next_tick = time.monotonic() + 1.0
        while not self._stop.wait(self.period):
            try:
                self.observe(self.engine.status())
                if self.on_tick is not None and time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + 1.0
                    self.on_tick()
            except Exception:  # observing must never take the node down
                log.exception("leader history observer failed")
