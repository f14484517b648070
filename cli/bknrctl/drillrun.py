"""Running a failover drill from the CLI: preconditions, progress, the verdict."""

from __future__ import annotations

from bknr_cluster.errors import BknrError, NoLeader

from .cluster import Cluster
from .drill import DrillOptions, RoundResult, run_drill
from .failback import save_state
from .output import info, progress


def drill_ok(rep: dict) -> bool:
    """Nothing acknowledged was lost, the replicas agree and the workload's total held."""
    return rep["lost_total"] == 0 and rep["digests_match"] and rep["bank_total_ok"]


def execute_drill(cluster: Cluster, opts: DrillOptions,
                  quiet: bool = False) -> tuple[dict, list[RoundResult]]:
    """Run the drill on a healthy cluster (every node up, a leader) with progress on stderr; a
    victim left down is recorded for ``failback``. The caller renders and plots the results."""
    if opts.target != "leader":
        cluster.cfg.node(opts.target)  # an unknown name is a usage error, whatever the cluster does
    state = cluster.probe()
    if state.leader is None:
        raise NoLeader(message="the cluster has no leader; a drill needs a healthy cluster")
    down = [s.node.name for s in state.nodes if not s.reachable]
    if down:
        raise BknrError(f"unreachable node(s) {', '.join(down)}: a drill needs every node up")
    with progress(f"drill: {opts.rounds} round(s), fault {opts.fault}", total=opts.rounds,
                  quiet=quiet) as bar:
        done = [0]

        def step(msg: str) -> None:
            done[0] += 1
            bar.update(completed=done[0], description=msg)
            if not quiet:
                info(msg)
        rep, results, drill = run_drill(cluster, opts, step)
    if drill.down:
        save_state(cluster, down=drill.down, failed_leader=drill.down)
    return rep, results
