"""Commands: history, leader cancel, reinit."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.table import Table

from bknr_cluster.errors import MembershipError, NoLeader, UsageError

from .app import CatchupOpt, ConfigOpt, OutputFormat, OutputOpt, YesOpt, app, cluster_for, leader_app
from .client import parallel
from .cluster import Cluster
from .control import controller
from .nodes import start_nodes, stop_nodes
from .output import confirm_typed, emit_json, guarded, info, progress, stdout_console

# --- history ------------------------------------------------------------------------------------


def merged_history(cluster: Cluster) -> list[dict]:
    """Every node's recorded leader changes, one row per (term, new leader), oldest first.

    A change is seen by every node that was up; the row keeps the earliest time, the first cause
    any node recorded, and which nodes saw it."""
    nodes = list(cluster.cfg.nodes)
    answers = parallel(lambda n: cluster.clients[n.name].call("GET", "/history"), nodes)
    if all(isinstance(a, BaseException) for a in answers):
        raise NoLeader(message="no node of the cluster is reachable")
    rows: dict[tuple[int, int], dict] = {}
    for a in answers:
        if isinstance(a, BaseException):
            continue
        for rec in a.get("changes") or []:
            key = (int(rec["term"]), int(rec["new_leader"]))
            row = rows.get(key)
            if row is None:
                row = rows[key] = {**rec, "seen_by": []}
            elif rec.get("ts", 0) < row.get("ts", 0):
                row.update({k: rec[k] for k in ("time", "ts", "old_leader") if k in rec})
            row["cause"] = row.get("cause") or rec.get("cause")
            row["seen_by"].append(int(rec.get("observer") or 0))
    out = sorted(rows.values(), key=lambda r: (r["term"], r.get("ts", 0)))
    for r in out:
        r.pop("observer", None)
        r["seen_by"] = sorted(set(r["seen_by"]))
        for k in ("old_leader", "new_leader"):
            n = cluster.cfg.node_by_id(int(r.get(k) or 0))
            r[f"{k}_name"] = n.name if n else (str(r.get(k)) if r.get(k) else None)
    return out


@app.command()
@guarded
def history(ctx: typer.Context, config: ConfigOpt = None, output: OutputOpt = OutputFormat.table,
            last: Annotated[int, typer.Option("--last", "-n", min=0, help="Only the N newest (0: all).")]
            = 0) -> None:
    """The leader changes the nodes recorded: time, term, old and new leader, cause if known."""
    cluster = cluster_for(ctx, config)
    rows = merged_history(cluster)
    rows = rows[-last:] if last else rows
    if output is OutputFormat.json:
        emit_json({"changes": rows})
        return
    t = Table(box=None, header_style="bold")
    for c in ("time", "term", "from", "to", "cause"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["time"], str(r["term"]), r["old_leader_name"] or "-", r["new_leader_name"] or "-",
                  r.get("cause") or "-")
    stdout_console().print(t)


@leader_app.command("cancel")
@guarded
def leader_cancel(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Cancel a scheduled leadership transfer (leader transfer --at), wherever it is held."""
    cluster = cluster_for(ctx, config)
    nodes = list(cluster.cfg.nodes)
    answers = parallel(lambda n: cluster.clients[n.name].call("DELETE", "/transfer/schedule"), nodes)
    if all(isinstance(a, BaseException) for a in answers):
        raise NoLeader(message="no node of the cluster is reachable")
    cancelled = [(n, a["cancelled"]) for n, a in zip(nodes, answers, strict=True)
                 if isinstance(a, dict) and a.get("cancelled")]
    if not cancelled:
        info("no scheduled transfer")
    for n, plan in cancelled:
        at = dt.datetime.fromtimestamp(plan["at"]).isoformat(timespec="seconds")
        info(f"{n.name}: cancelled the transfer scheduled for {at}")


# --- reinit -------------------------------------------------------------------------------------


@app.command()
@guarded
def reinit(ctx: typer.Context, node: Annotated[str, typer.Argument(help="The broken replica.")],
           config: ConfigOpt = None, yes: YesOpt = False,
           timeout: CatchupOpt = 300.0) -> None:
    """Wipe a broken replica's Raft state and rejoin it from the leader (snapshot install).

    The node stays a member; the leader sends it a fresh snapshot and the log after it. Refuses on
    the leader (transfer first) and without a quorum of the other nodes."""
    cluster = cluster_for(ctx, config)
    n = cluster.cfg.node(node)
    state = cluster.probe(timeout=1.0)
    if state.leader is None:
        raise NoLeader(message="the cluster has no leader; reinit needs the others healthy")
    if state.leader.node.id == n.id:
        raise UsageError(f"{n.name} is the leader: move leadership first (bknrctl leader transfer)")
    roles = state.member_roles()
    if n.id not in roles:
        raise MembershipError(f"{n.name} is not a member of the cluster (use peer add)")
    confirm_typed(f"Wipe the Raft state of {n.name} and rebuild it from {state.leader.node.name}?",
                  n.name, yes)
    leader_client = cluster.clients[state.leader.node.name]
    stop_nodes(cluster, [n], quiet=True)
    c = controller(cluster.cfg, n)
    try:
        c.wipe_raft_state()
    finally:
        c.close()
    # a fresh leader snapshot: the wiped node's empty log is then rebuilt by installing it
    snap = leader_client.snapshot()
    start_nodes(cluster, [n], quiet=True)
    with progress(f"{n.name}: installing the snapshot and catching up") as bar:
        st = cluster.wait_caught_up(n, timeout, lambda f, a, t: bar.update(
            description=f"{n.name}: applied {a}/{t}"))
    info(f"{n.name}: rebuilt from {state.leader.node.name}'s snapshot at {snap.get('index')} and "
         f"caught up at {st.get('applied_index')} (its snapshot index {st.get('snapshot_index')})")
