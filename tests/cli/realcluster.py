"""Helpers for CLI tests against real node processes started by bknrctl itself."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bknrctl.client import NodeClient
from bknrctl.main import app

from bknr_cluster.cluster.config import ClusterConfig


def invoke(runner, path: Path, *args: str):
    return runner.invoke(app, ["-c", str(path), *args])


def node_pids(path: Path) -> dict[str, int]:
    """Pids from the nodes' pid files (the processes bknrctl started)."""
    cfg = ClusterConfig.load(path)
    out = {}
    for n in cfg.nodes:
        try:
            out[n.name] = int(n.pid_file.read_text().strip())
        except (OSError, ValueError):
            pass
    return out


def start_cluster(runner, path: Path) -> set[int]:
    """``bknrctl init`` and ``start``, then wait for a leader; returns the pids bknrctl started
    (the caller passes them, and any started later, to ``kill_started``)."""
    from tests.support import wait_until

    assert invoke(runner, path, "init").exit_code == 0
    r = invoke(runner, path, "start")
    pids = set(node_pids(path).values())
    assert r.exit_code == 0, r.output
    wait_until(lambda: invoke(runner, path, "status").exit_code == 0, 20, "a leader")
    return pids


def kill_started(path: Path, pids: set[int]) -> None:
    """Teardown: SIGKILL exactly the node pids this test saw bknrctl start."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextmanager
def tracked_nodes(path: Path) -> Iterator[Callable[[], None]]:
    """Yields ``track()``, to call after each command that may start nodes; on exit every node
    pid it saw (and the current ones) is SIGKILLed."""
    seen: set[int] = set()

    def track() -> None:
        seen.update(node_pids(path).values())
    try:
        yield track
    finally:
        track()
        kill_started(path, seen)


def client(path: Path, name: str) -> NodeClient:
    cfg = ClusterConfig.load(path)
    n = cfg.node(name)
    return NodeClient(n.name, n.api_url, cfg.token(), timeout=5.0)
