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

# Set in the parent just around a held fork; the child inherits the value and stops itself
# before it runs a line of the writer. A SIGSTOP from the parent after fork() returned came too
# late on a busy host: a child with a small store had already written it and exited.
_stop_in_child = False


def _maybe_stop_self() -> None:
    if _stop_in_child:
        os.kill(os.getpid(), signal.SIGSTOP)


os.register_at_fork(after_in_child=_maybe_stop_self)


class HeldChildren:
    def __init__(self, monkeypatch: Any, target: Any, hold: int = 1) -> None:
        """``target``: the module whose ``fork_snapshot`` name is replaced."""
        self.hold = hold
        self.forks: list[tuple[snapshot_fork.SnapshotChild, str]] = []  # child, digest
        self.held: list[snapshot_fork.SnapshotChild] = []
        self._mu = threading.Lock()
        real = snapshot_fork.fork_snapshot

        def fork(store: Any, path: str, **kw: Any) -> snapshot_fork.SnapshotChild:
            global _stop_in_child
            digest = store.digest()  # the state the child's image must hold
            with self._mu:
                hold = self.hold > 0
                self.hold -= hold
            _stop_in_child = hold
            try:
                child = real(store, path, **kw)
            finally:
                _stop_in_child = False
            with self._mu:
                self.forks.append((child, digest))
                if hold:
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
