"""Commands: failover --drill, failback, demo."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bknr_cluster.errors import BknrError, NoLeader, UsageError

from .app import ConfigOpt, OutputFormat, OutputOpt, YesOpt, app, cluster_for
from .cluster import Cluster, engine_applied
from .drill import DrillOptions, RoundResult, run_drill
from .lifecycle import start_nodes
from .output import confirm, emit_json, guarded, info, progress, stdout_console

STATE_FILE = ".bknrctl-state.json"


class DrillWorkload(StrEnum):
    system = "system"
    bank = "bank"


class Fault(StrEnum):
    kill = "kill"
    stop = "stop"
    transfer = "transfer"


def _state_path(cluster: Cluster) -> Path:
    return cluster.cfg.base_dir / STATE_FILE


def save_state(cluster: Cluster, **values: Any) -> None:
    p = _state_path(cluster)
    data = load_state(cluster)
    data.update(values)
    p.write_text(json.dumps(data, sort_keys=True) + "\n")


def load_state(cluster: Cluster) -> dict:
    try:
        return json.loads(_state_path(cluster).read_text())
    except (OSError, ValueError):
        return {}


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.0f}{unit}"
    return f"{v}{unit}"


def drill_table(rep: dict) -> Table:
    t = Table(box=None, header_style="bold", title=f"failover drill (election timeout "
              f"{rep['election_timeout_ms']} ms)")
    for c in ("round", "fault", "victim", "new leader", "detect", "new leader at", "write gap",
              "acked", "lost", "digests", "total"):
        t.add_column(c)
    for r in rep["rounds"]:
        t.add_row(str(r["round"]), r["fault"], r["victim"], _fmt(r["new_leader"]),
                  _fmt(r["time_to_detect_ms"], " ms"), _fmt(r["time_to_leader_ms"], " ms"),
                  _fmt(r["write_gap_ms"], " ms"), str(r["acked"]), str(r["lost"]),
                  _fmt(r["digests_match"]), _fmt(r["bank_total_ok"]))
    return t


def drill_summary(rep: dict) -> str:
    met = "met" if rep["write_gap_target_met"] else "NOT met"
    return (f"median write gap {_fmt(rep['median_write_gap_ms'], ' ms')} (target "
            f"<= {rep['write_gap_target_ms']:.0f} ms: {met}); lost {rep['lost_total']} of "
            f"{rep['acked_total']} acknowledged; digests match: {_fmt(rep['digests_match'])}; "
            f"{rep.get('workload', 'bank')} total unchanged: {_fmt(rep['bank_total_ok'])}")


def drill_ok(rep: dict) -> bool:
    return rep["lost_total"] == 0 and rep["digests_match"] and rep["bank_total_ok"]


def execute_drill(cluster: Cluster, opts: DrillOptions, plot: Path | None,
                  quiet: bool = False) -> tuple[dict, list[RoundResult]]:
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
    if plot is not None:
        from .plot import plot_drill

        plot_drill(results, plot, cluster.cfg.election_timeout_ms)
        rep["plot"] = str(plot)
    return rep, results


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
        from .appdrill import AppDrillOptions, failover_app

        opts_app = AppDrillOptions(rounds=rounds, fault=fault.value, clients=clients, via=via)
        if not failover_app(cluster, opts_app, plot, output is OutputFormat.json):
            raise typer.Exit(1)
        return
    opts = DrillOptions(rounds=rounds, fault=fault.value, target=node, writers=writers,
                        leave_down=leave_down, via=via, workload=workload.value)
    rep, _ = execute_drill(cluster, opts, plot, quiet=output is OutputFormat.json)
    if output is OutputFormat.json:
        emit_json(rep)
    else:
        console = stdout_console()
        console.print(drill_table(rep))
        console.print(drill_summary(rep))
    if not drill_ok(rep):
        raise typer.Exit(1)


def do_failback(cluster: Cluster, to: str | None, quiet: bool = False, timeout: float = 120.0) -> dict:
    """Start nodes that are down, wait until each caught up, optionally transfer leadership."""
    from .admin import transfer_leadership

    state = cluster.probe(timeout=1.0)
    roles = state.member_roles()
    # YAML nodes that are not members of the configuration are not "failed": leave them alone
    down = [s.node for s in state.nodes if not s.reachable and (not roles or s.node.id in roles)]
    if down:
        start_nodes(cluster, down, quiet=quiet)
    cluster.wait_for_leader(timeout=30.0)
    caught: dict[str, int] = {}
    for n in down or [s.node for s in state.nodes]:
        with progress(f"{n.name}: catching up", total=1.0, quiet=quiet) as bar:
            st = cluster.wait_caught_up(n, timeout, lambda f, a, t, bar=bar, n=n: bar.update(
                completed=f, description=f"{n.name}: applied {a}/{t}"))
        caught[n.name] = engine_applied(st)
    out: dict[str, Any] = {"restarted": [n.name for n in down], "caught_up": caught}
    if to:
        target = cluster.cfg.node(to)
        out["transfer"] = transfer_leadership(cluster, target.id)
    save_state(cluster, down=None)
    return out


@app.command()
@guarded
def failback(ctx: typer.Context, config: ConfigOpt = None,
             to: Annotated[str | None, typer.Option("--to", help="Transfer leadership to this node.")] = None,
             timeout: Annotated[float, typer.Option(help="Catch-up timeout (s).")] = 120.0,
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
    from .demo import run_demo, stop_demo

    if stop:
        stop_demo(directory)
        info(f"demo in {directory} stopped")
        return
    rep = run_demo(directory, keep=keep, rounds=rounds, base_port=base_port,
                   quiet=output is OutputFormat.json)
    if output is OutputFormat.json:
        emit_json(rep)
    from .appdemo import users_ok

    if not drill_ok(rep) or not users_ok(rep["end_user"]):
        raise typer.Exit(1)
