"""Holding a forked snapshot writer (store/snapshot_fork.py) still, for tests.

``HeldChildren`` wraps ``fork_snapshot`` so that the next ``hold`` children are stopped with
SIGSTOP the moment they are forked: a test can then prove the store keeps serving while a
snapshot is "being written", kill the writer mid-way, or let it go on (``release``). Records,
for each fork, the child and the store's digest at that moment (the state the image must hold).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from bknr_cluster.store import snapshot_fork
from tests.support import wait_until


class HeldChildren:
    def __init__(self, monkeypatch: Any, target: Any, hold: int = 1) -> None:
        """``target``: the module whose ``fork_snapshot`` name is replaced."""
        self.hold = hold
        self.forks: list[tuple[snapshot_fork.SnapshotChild, str]] = []  # child, digest
        self.held: list[snapshot_fork.SnapshotChild] = []
        self._mu = threading.Lock()
        real = snapshot_fork.fork_snapshot

        def fork(store: Any, path: str, **kw: Any) -> snapshot_fork.SnapshotChild:
            digest = store.digest()  # the state the child's image must hold
            child = real(store, path, **kw)
            with self._mu:
                self.forks.append((child, digest))
                if self.hold > 0:
                    self.hold -= 1
                    os.kill(child.pid, signal.SIGSTOP)
                    self.held.append(child)
            return child

        monkeypatch.setattr(target, "fork_snapshot", fork)

    def wait_held(self, n: int = 1, timeout: float = 30) -> snapshot_fork.SnapshotChild:
        wait_until(lambda: len(self.held) >= n, timeout, f"{n} snapshot writer(s) forked")
        child = self.held[n - 1]
        wait_until(lambda: _state(child.pid) == "T", timeout, "snapshot writer stopped")
        return child

    def release(self, child: snapshot_fork.SnapshotChild) -> None:
        os.kill(child.pid, signal.SIGCONT)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"
