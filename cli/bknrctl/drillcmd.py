"""Commands: failover --drill, failback, demo."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from bknr_cluster.errors import UsageError

from .app import DEFAULT_CATCHUP_S, CatchupOpt, ConfigOpt, OutputFormat, OutputOpt, YesOpt, app, cluster_for
from .appdemo import users_ok
from .appdrill import AppDrillOptions, failover_app
from .cluster import Cluster, ClusterState
from .demo import run_demo, stop_demo
from .drill import DrillOptions, RoundResult
from .drillrun import drill_ok, execute_drill
from .failback import do_failback
from .output import confirm, emit_json, guarded, info, stdout_console
from .plot import plot_drill
from .render import drill_summary, drill_table, side_by_side, status_table, summary_line


class DrillWorkload(StrEnum):
    system = "system"
    bank = "bank"


class Fault(StrEnum):
    kill = "kill"
    stop = "stop"
    transfer = "transfer"


def plot_report(cluster: Cluster, rep: dict, results: list[RoundResult], path: Path) -> None:
    """The drill's timeline PNG; the report names the file."""
    plot_drill(results, path, cluster.cfg.election_timeout_ms)
    rep["plot"] = str(path)


@app.command()
@guarded
def failover(ctx: typer.Context, config: ConfigOpt = None,
             drill: Annotated[bool, typer.Option("--drill", help="Run a failover drill.")] = False,
             rounds: Annotated[int, typer.Option(min=1, max=100)] = 5,
             fault: Annotated[Fault, typer.Option(help="kill (SIGKILL), stop (SIGSTOP freeze) or "
                                                     "transfer (planned).")] = Fault.kill,
             node: Annotated[str, typer.Option("--node", help="'leader' or a node name.")] = "leader",
             writers: Annotated[int, typer.Option(min=1, max=64)] = 4,
             plot: Annotated[Path | None, typer.Option(help="Write a timeline PNG.")] = None,
             leave_down: Annotated[bool, typer.Option(help="Leave the last victim down (see failback).")]
             = False,
             via: Annotated[str | None, typer.Option("--via", help="Send the workload through this "
                                                     "load balancer URL.")] = None,
             workload: Annotated[DrillWorkload, typer.Option(
                 help="system: the store's system namespace (any application, records removed "
                      "after the drill); bank: the bank example's transactions.")] = DrillWorkload.system,
             yes: YesOpt = False,
             app_users: Annotated[bool, typer.Option("--app", help="End-user drill: HTTP clients "
                                                     "against the hosted application through a "
                                                     "load balancer (HAProxy, or --via).")] = False,
             clients: Annotated[int, typer.Option(min=1, max=1024, help="--app: concurrent "
                                                  "clients.")] = 64,
             output: OutputOpt = OutputFormat.table) -> None:
    """Inject faults on the leader under a write workload; measure and verify (exit 1 on loss).

    The workload runs in the store's system namespace, so any application works and its own
    objects are not touched. kill and stop faults are destructive: confirm, or pass --yes.
    """
    if not drill:
        raise UsageError("only drills are supported: add --drill (planned switchover: bknrctl leader "
                         "transfer)")
    cluster = cluster_for(ctx, config)
    if node != "leader":
        cluster.cfg.node(node)  # an unknown node is a usage error before anything is asked
    if fault is not Fault.transfer:
        confirm(f"Drill: {fault.value} the {node if node != 'leader' else 'leader'} of "
                f"{cluster.cfg.group} {rounds} time(s)?", yes)
    if app_users:
        opts_app = AppDrillOptions(rounds=rounds, fault=fault.value, clients=clients, via=via)
        if not failover_app(cluster, opts_app, plot, output is OutputFormat.json):
            raise typer.Exit(1)
        return
    opts = DrillOptions(rounds=rounds, fault=fault.value, target=node, writers=writers,
                        leave_down=leave_down, via=via, workload=workload.value)
    rep, results = execute_drill(cluster, opts, quiet=output is OutputFormat.json)
    if plot is not None:
        plot_report(cluster, rep, results, plot)
    if output is OutputFormat.json:
        emit_json(rep)
    else:
        console = stdout_console()
        console.print(drill_table(rep))
        console.print(drill_summary(rep))
    if not drill_ok(rep):
        raise typer.Exit(1)


@app.command()
@guarded
def failback(ctx: typer.Context, config: ConfigOpt = None,
             to: Annotated[str | None, typer.Option("--to", help="Transfer leadership to this node.")] = None,
             timeout: CatchupOpt = DEFAULT_CATCHUP_S,
             output: OutputOpt = OutputFormat.table) -> None:
    """Restart the failed node(s), wait until caught up, transfer leadership back if asked."""
    cluster = cluster_for(ctx, config)
    if to:
        cluster.cfg.node(to)
    out = do_failback(cluster, to, quiet=output is OutputFormat.json, timeout=timeout)
    if output is OutputFormat.json:
        emit_json(out)
        return
    if not out["restarted"]:
        info("no node was down")
    for name, idx in out["caught_up"].items():
        typer.echo(f"{name}: caught up at index {idx}")
    if "transfer" in out:
        t = out["transfer"]
        typer.echo(f"leader: {t['from']} -> {t['to']}, gap {t['gap_ms']:.0f} ms")


@app.command()
@guarded
def demo(keep: Annotated[bool, typer.Option("--keep", help="Leave the cluster and HAProxy running.")]
         = False,
         stop: Annotated[bool, typer.Option("--stop", help="Stop a demo left running with --keep.")]
         = False,
         directory: Annotated[Path, typer.Option("--dir", help="Where the demo cluster lives.")]
         = Path("demo-cluster"),
         rounds: Annotated[int, typer.Option(min=1, max=20)] = 5,
         base_port: Annotated[int, typer.Option(
             help="Raft ports base+1.., API ports base+1001.., application ports base+2001.., "
                  "HAProxy base+980 (writes) and base+981 (reads)")] = 7100,
         output: OutputOpt = OutputFormat.table) -> None:
    """A local 3-node bank cluster with its web app behind HAProxy: init, start, load, drills
    (admin API and end users), failback, status, stop."""
    if stop:
        stop_demo(directory)
        info(f"demo in {directory} stopped")
        return
    quiet = output is OutputFormat.json

    def show(cluster: Cluster, rep: dict, state: ClusterState) -> None:
        if quiet:
            return
        console = stdout_console()
        console.print(drill_table(rep))
        console.print(drill_summary(rep))
        console.print(f"planned switchover under load: write gap {rep['planned_transfer_gap_ms']} ms")
        console.print(side_by_side(rep, rep["end_user"]))
        console.print(status_table(state, cluster.cfg))
        console.print(summary_line(state))

    rep = run_demo(directory, keep=keep, rounds=rounds, base_port=base_port, quiet=quiet,
                   on_drill=plot_report, show=show)
    if output is OutputFormat.json:
        emit_json(rep)
    if not drill_ok(rep) or not users_ok(rep["end_user"]):
        raise typer.Exit(1)
