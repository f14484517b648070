"""An in-process stand-in for ``bknr_cluster.engine.RaftNode`` (docs/interfaces.md §1).

A single-node "log": ``submit`` commits at once and queues the entry for ``next_committed``.
Tests flip ``leader`` / inject raw items to exercise the ClusterStore's error and apply paths
without processes or a network.
"""

from __future__ import annotations

import threading
from collections import deque

from bknr_cluster.errors import NotLeader, Shutdown


class FakeFuture:
    def __init__(self, value=None, error=None):
        self.value, self.error = value, error

    def result(self, timeout=None):
        if self.error is not None:
            raise self.error
        return self.value

    def done(self):
        return True


class FakeEngine:
    def __init__(self, node_id, address, data_dir, **options):
        self.node_id, self.address, self.options = node_id, address, options
        self.leader = True
        self.leader_hint = (0, "")
        self.index = 0
        self.items: deque = deque()
        self.cond = threading.Condition()
        self.running = False
        self.log: list[bytes] = []
        self.store_snapshots: list[tuple[int, bytes]] = []
        self.failed_snapshots: list[int] = []
        self.compress_levels: list[int] = []  # per store_snapshot_file call
        self.submit_error: Exception | None = None
        self.wake_calls = 0  # next_committed calls that posted wake-ups
        self.halted = False
        self.members: list[dict] = []  # status()["configuration"] when set (default: just us)

    def bootstrap(self, configuration):
        self.configuration = configuration

    def start(self):
        self.running = True

    def stop(self):
        with self.cond:
            self.running = False
            self.cond.notify_all()

    def _queue(self, kind, data=b"", index=None):
        with self.cond:
            if index is None:
                self.index += 1
                index = self.index
            self.items.append((kind, index, 1 if kind == "entry" else 0, data))
            self.cond.notify_all()
            return index

    def submit(self, data):
        if not self.running:
            return FakeFuture(error=Shutdown("stopped"))
        if not self.leader:
            return FakeFuture(error=NotLeader(*self.leader_hint))
        if self.submit_error is not None:
            return FakeFuture(error=self.submit_error)
        self.log.append(data)
        return FakeFuture(self._queue("entry", data))

    def inject(self, kind, data=b"", index=None):
        return self._queue(kind, data, index)

    def next_committed(self, max_items=256, timeout=0.1, wake=None):
        self.wake_calls += bool(wake)
        for sig in wake or ():  # as the native engine: posted first, even if this raises
            sig.post()
        with self.cond:
            if not self.items and self.running:
                self.cond.wait(timeout)
            if not self.running and not self.items:
                raise Shutdown("stopped")
            out = []
            while self.items and len(out) < max_items:
                out.append(self.items.popleft())
            return out

    def set_halted(self, on=True):
        self.halted = bool(on)

    def store_snapshot_done(self, index, data):
        self.store_snapshots.append((index, data))

    def store_snapshot_file(self, index, path, compress_level=0):
        # the native engine maps it (or compresses it: restores then get the image back as it
        # was, so the level is only recorded); a copy does here
        self.compress_levels.append(compress_level)
        with open(path, "rb") as f:
            self.store_snapshots.append((index, f.read()))
        return True

    def store_snapshot_failed(self, index):
        self.failed_snapshots.append(index)
        return True

    def snapshot_now(self, store_wait=None):
        return FakeFuture(self.inject("snapshot_request", index=self.index))

    def status(self):
        return {"id": self.node_id, "address": self.address,
                "state": "leader" if self.leader else "follower", "term": 1,
                "leader_id": self.node_id if self.leader else self.leader_hint[0],
                "leader_address": self.address if self.leader else self.leader_hint[1],
                "commit_index": self.index, "last_applied": self.index,
                "last_log_index": self.index, "snapshot_index": 0, "snapshot_term": 0,
                "configuration": self.members or [{"id": self.node_id, "address": self.address,
                                                    "role": "voter"}],
                "followers": []}
