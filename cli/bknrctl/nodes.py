"""Operations on node processes: start (and wait for /health), stop (leader last), rolling restart."""

from __future__ import annotations

from collections.abc import Callable

from bknr_cluster.cluster.config import NodeConfig
from bknr_cluster.errors import BknrError, ReplicaHalted

from .client import parallel
from .cluster import Cluster
from .control import controller
from .output import info, progress
from .poll import poll


def start_nodes(cluster: Cluster, nodes: list[NodeConfig], timeout: float = 30.0,
                quiet: bool = False) -> dict[str, int]:
    """Start the nodes that are not running and wait until each answers /health."""
    pids: dict[str, int] = {}
    ctls = [controller(cluster.cfg, n) for n in nodes]
    try:
        for c in ctls:
            pid = c.pid()
            if pid is not None:
                if not quiet:
                    info(f"{c.node.name}: already running (pid {pid})")
                pids[c.node.name] = pid
                continue
            pids[c.node.name] = c.spawn()
        pending = {c.node.name: c for c in ctls}
        with progress(f"starting {len(pending)} node(s)", total=len(pending), quiet=quiet) as bar:

            def all_healthy() -> bool | None:
                for name, c in list(pending.items()):
                    rc = c.exited_early()
                    if rc is not None:
                        tail = [ln for ln in c.tail_out(5).splitlines() if ln.strip()]
                        raise BknrError(f"{name}: node exited with status {rc}: "
                                        f"{tail[-1] if tail else 'see ' + str(c.log_file)}")
                    try:
                        cluster.clients[name].health(timeout=0.5)
                        del pending[name]
                        if not quiet:
                            info(f"{name}: running (pid {pids[name]}, {c.node.api_url})")
                    except ReplicaHalted as exc:
                        # up, but it met a committed entry its definition cannot apply
                        raise ReplicaHalted(f"{name}: started but HALTED: {exc}") from None
                    except BknrError:
                        pass
                bar.update(completed=len(ctls) - len(pending))
                return True if not pending else None

            if pending and poll(all_healthy, timeout) is None:
                raise BknrError(f"{', '.join(pending)}: no /health answer within {timeout:.0f}s "
                                f"(see bknrctl logs {next(iter(pending))})")
    finally:
        for c in ctls:
            c.close()
    return pids


def stop_nodes(cluster: Cluster, nodes: list[NodeConfig], quiet: bool = False) -> None:
    """Followers first (in parallel), the leader last: one leadership change at most."""
    state = cluster.probe(timeout=1.0)
    leader_id = state.leader.node.id if state.leader else None
    followers = [n for n in nodes if n.id != leader_id]
    leaders = [n for n in nodes if n.id == leader_id]

    def stop_one(n: NodeConfig) -> bool:
        c = controller(cluster.cfg, n)
        try:
            return c.stop()
        finally:
            c.close()

    for group in (followers, leaders):
        for n, r in zip(group, parallel(stop_one, group), strict=True):
            if isinstance(r, BaseException):
                raise r
            if not quiet:
                info(f"{n.name}: {'stopped' if r else 'not running'}")


def rolling_restart(cluster: Cluster, targets: list[NodeConfig], catchup_timeout: float = 120.0,
                    before_start: Callable[[NodeConfig], None] | None = None) -> None:
    """Restart `targets` one at a time, followers first, each caught up before the next;
    `before_start(node)` runs while the node is down (e.g. certs rotate installs new files)."""
    state = cluster.probe(timeout=1.0)
    leader_id = state.leader.node.id if state.leader else None
    targets = sorted(targets, key=lambda n: n.id == leader_id)
    for n in targets:
        stop_nodes(cluster, [n])
        if before_start is not None:
            before_start(n)
        start_nodes(cluster, [n])
        try:
            cluster.wait_for_leader(timeout=30.0)
            cluster.wait_caught_up(n, timeout=catchup_timeout)
        except BknrError as exc:
            raise BknrError(f"{n.name} restarted but did not rejoin: {exc}") from None
        info(f"{n.name}: restarted and caught up")
