"""Process control of one node: the common interface and the choice local vs SSH.

``NodeControl`` is complete: every method a caller uses is declared here (abstract, or with a
default that is right for a node on another host), so callers never test what a controller
can do.

A node with an ``ssh`` section in the YAML is remote (``remote.SshControl``); every other node
runs on this machine (``local.LocalControl``). Both speak the node process command line only:
``python -m bknr_cluster.node --config FILE --node NAME [--init|--recover]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import PurePosixPath

from bknr_cluster.cluster.config import ClusterConfig, NodeConfig
from bknr_cluster.errors import AlreadyBootstrapped, BknrError, Timeout
from bknr_cluster.vocabulary import DataDirLayout

from .poll import poll

NODE_MODULE = "bknr_cluster.node"
# The phrase ``bknr-node --init`` prints (with exit 2) on a data directory that holds Raft state.
ALREADY_BOOTSTRAPPED = "is already bootstrapped"


class NodeControl(ABC):
    """Start/stop/signal one node process and read its log."""

    def __init__(self, cfg: ClusterConfig, node: NodeConfig):
        self.cfg = cfg
        self.node = node

    # paths as seen by the host that runs the node
    @property
    def data_dir(self) -> PurePosixPath:
        return PurePosixPath(str(self.node.data_dir))

    @property
    def layout(self) -> DataDirLayout[PurePosixPath]:
        return DataDirLayout(self.data_dir)

    @property
    def pid_file(self) -> PurePosixPath:
        return self.layout.pid_file

    @property
    def log_file(self) -> PurePosixPath:
        return self.layout.log_file

    @property
    def out_file(self) -> PurePosixPath:
        return self.layout.out_file

    @property
    def raft_dir(self) -> PurePosixPath:
        return self.layout.raft_dir

    @abstractmethod
    def pid(self) -> int | None:
        """The pid of the running node process, or None."""

    @abstractmethod
    def spawn(self) -> int:
        """Start the node detached (logs appended to node.log); return its pid."""

    @abstractmethod
    def signal(self, sig: int) -> None:
        """Send ``sig`` to the running node (no-op when it is not running)."""

    @abstractmethod
    def run_node(self, *extra: str, timeout: float = 120.0) -> tuple[int, str]:
        """Run the node command line to completion (``--init``, ``--recover``): (rc, output)."""

    @abstractmethod
    def has_raft_state(self) -> bool:
        ...

    @abstractmethod
    def wipe_raft_state(self) -> None:
        ...

    @abstractmethod
    def tail(self, lines: int = 50) -> str:
        ...

    @abstractmethod
    def follow(self, lines: int = 20) -> Iterator[str]:
        ...

    @abstractmethod
    def retain_snapshots(self, keep: int) -> dict[str, int]:
        """Archive the engine's snapshots and keep the ``keep`` newest archived (retention.py)."""

    def close(self) -> None:  # noqa: B027 (optional hook: only SSH holds a connection)
        """Release connections (SSH)."""

    def exited_early(self) -> int | None:
        """The exit status of a node this controller spawned that has already exited, else None
        (also None when the controller cannot know, e.g. a node started over SSH)."""
        return None

    def tail_out(self, lines: int = 5) -> str:
        """The last lines of the node's raw stdout/stderr (where a crash before logging starts
        is written); the log itself where the two are not kept apart."""
        return self.tail(lines)

    # --- composed operations ----------------------------------------------------------------
    def running(self) -> bool:
        return self.pid() is not None

    def wait_stopped(self, timeout: float) -> bool:
        return poll(lambda: True if self.pid() is None else None, timeout) is not None

    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM (the node hands leadership over first), SIGKILL after ``timeout``.

        Returns False when the node was not running.
        """
        import signal as sig

        if self.pid() is None:
            return False
        self.signal(sig.SIGCONT)  # a frozen node (drill --fault stop) cannot handle SIGTERM
        self.signal(sig.SIGTERM)
        if not self.wait_stopped(timeout):
            self.signal(sig.SIGKILL)
            if not self.wait_stopped(5.0):
                raise Timeout(f"{self.node.name}: process {self.pid()} did not exit")
        return True

    def init(self, force: bool = False) -> str:
        """Bootstrap this node's engine state with the configuration's initial membership."""
        if self.running():
            raise BknrError(f"{self.node.name} is running; stop it before init")
        if force and self.has_raft_state():
            self.wipe_raft_state()
        rc, out = self.run_node("--init")
        if rc != 0:
            last = [ln for ln in out.strip().splitlines() if ln.strip()]
            msg = last[-1] if last else f"exit status {rc}"
            # Only the node's own "already bootstrapped" answer means that: every usage error of
            # bknr-node also exits 2, and "already used by" (a port clash) contains "already".
            if rc == 2 and ALREADY_BOOTSTRAPPED in msg:
                raise AlreadyBootstrapped(f"{self.node.name}: {msg}")
            raise BknrError(f"{self.node.name}: init failed: {msg}")
        return out


def controller(cfg: ClusterConfig, node: NodeConfig) -> NodeControl:
    if node.ssh is not None:
        from .remote import SshControl

        return SshControl(cfg, node)
    from .local import LocalControl

    return LocalControl(cfg, node)
