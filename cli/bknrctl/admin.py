"""Commands: membership (peer), leadership (leader transfer), snapshot, backup/restore, recover."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Annotated

import typer

from bknr_cluster.cluster.config import NodeConfig
from bknr_cluster.errors import (
    BknrError,
    CorruptData,
    MembershipError,
    NoLeader,
    UnknownNode,
    Unreachable,
    UsageError,
)
from bknr_cluster.vocabulary import Role

from .app import (
    DEFAULT_CATCHUP_S,
    CatchupOpt,
    ConfigOpt,
    NodeOpt,
    OutputFormat,
    OutputOpt,
    QuietOpt,
    RoleOpt,
    YesOpt,
    app,
    chosen_path,
    cluster_for,
    leader_app,
    peer_app,
)
from .backup import check_backup, read_backup, seed_new_cluster, write_backup
from .client import parallel
from .cluster import Cluster
from .control import controller
from .leadership import parse_when, schedule_transfer, transfer_leadership
from .nodes import start_nodes, stop_nodes
from .output import confirm, confirm_typed, emit_json, guarded, info, progress

# --- peer ---------------------------------------------------------------------------------------


@peer_app.command("add")
@guarded
def peer_add(ctx: typer.Context, node: Annotated[str, typer.Argument(help="Node name from the YAML.")],
             config: ConfigOpt = None,
             role: RoleOpt = Role.voter,
             wait: Annotated[bool, typer.Option(help="Wait until the node has caught up.")] = True,
             timeout: CatchupOpt = DEFAULT_CATCHUP_S) -> None:
    """Add a node (already in the YAML and started) to the cluster configuration."""
    cluster = cluster_for(ctx, config)
    n = cluster.cfg.node(node)
    members = cluster.members()
    if members.get(n.id) == role:
        info(f"{n.name} is already a {role}")
        return
    if role is not Role.spare:
        try:
            cluster.clients[n.name].health(timeout=2.0)
        except Unreachable:
            # a voter that is not running shrinks the fault tolerance the moment it is added
            raise BknrError(f"{n.name} is not running; start it first: bknrctl start {n.name}") from None
    leader = cluster.leader_client()
    if n.id in members:
        leader.set_role(n.id, role.value)
    else:
        leader.add_peer(n.id, n.raft_address, role.value)
    if wait:
        with progress(f"{n.name}: catching up") as bar:
            cluster.wait_caught_up(n, timeout, lambda f, a, t: bar.update(
                description=f"{n.name}: applied {a}/{t}"))
    info(f"{n.name}: added as {role}")


@peer_app.command("remove")
@guarded
def peer_remove(ctx: typer.Context, node: Annotated[str, typer.Argument(help="Node name or id.")],
                config: ConfigOpt = None, yes: YesOpt = False) -> None:
    """Remove a node from the cluster configuration (it keeps running until stopped)."""
    cluster = cluster_for(ctx, config)
    n = cluster.cfg.node(node)
    members = cluster.members()
    if n.id not in members:
        raise UnknownNode(f"{n.name} is not a member of the cluster")
    voters = [i for i, r in members.items() if r == Role.voter]
    if members[n.id] == Role.voter and len(voters) == 1:
        raise MembershipError(f"refusing to remove {n.name}: it is the last voter")
    confirm(f"Remove {n.name} from the cluster?", yes)
    cluster.leader_client().remove_peer(n.id)
    info(f"{n.name}: removed (stop it with: bknrctl stop {n.name})")


@peer_app.command("promote")
@guarded
def peer_promote(ctx: typer.Context, node: Annotated[str, typer.Argument(help="Node name or id.")],
                 config: ConfigOpt = None,
                 role: RoleOpt = Role.voter) -> None:
    """Change a member's role (default: make it a voter)."""
    cluster = cluster_for(ctx, config)
    n = cluster.cfg.node(node)
    members = cluster.members()
    if n.id not in members:
        raise UnknownNode(f"{n.name} is not a member; add it with: bknrctl peer add {n.name}")
    cluster.leader_client().set_role(n.id, role.value)
    info(f"{n.name}: now {role}")


# --- leader transfer ----------------------------------------------------------------------------


@leader_app.command("transfer")
@guarded
def leader_transfer(ctx: typer.Context, config: ConfigOpt = None,
                    to: Annotated[str | None, typer.Option("--to", help="Target voter.")] = None,
                    at: Annotated[str | None, typer.Option(
                        "--at", help="Schedule it: +SECONDS, +Nm, +Nh, HH:MM or ISO 8601 time "
                                     "(held by the leader; bknrctl leader cancel).")] = None,
                    output: OutputOpt = OutputFormat.table) -> None:
    """Planned switchover to --to (or the best candidate); waits and reports the gap."""
    when = parse_when(at) if at is not None else None
    cluster = cluster_for(ctx, config)
    target = 0
    if to is not None:
        n = cluster.cfg.node(to)
        members = cluster.members()
        if n.id not in members:
            raise MembershipError(f"cannot transfer to {n.name}: it is not a member of the cluster")
        if members[n.id] != Role.voter:
            raise MembershipError(f"cannot transfer to {n.name}: it is a {members[n.id]}, not a voter")
        target = n.id
    if when is not None:
        plan = schedule_transfer(cluster, target, when)
        if output is OutputFormat.json:
            emit_json(plan)
        else:
            at_text = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(plan["at"]))
            typer.echo(f"scheduled on {plan['leader']}: transfer to {to or 'the best candidate'} "
                       f"at {at_text} (cancel: bknrctl leader cancel)")
        return
    result = transfer_leadership(cluster, target)
    if output is OutputFormat.json:
        emit_json(result)
    elif not result["changed"]:
        info(f"{result['to']} is already the leader")
    else:
        typer.echo(f"leader: {result['from']} -> {result['to']}, gap {result['gap_ms']:.0f} ms "
                   f"(/leader on all nodes)")


# --- snapshot -----------------------------------------------------------------------------------


@app.command()
@guarded
def snapshot(ctx: typer.Context, config: ConfigOpt = None,
             node: NodeOpt = None,
             all_: Annotated[bool, typer.Option("--all", help="Every node.")] = False,
             quiet: QuietOpt = False,
             keep: Annotated[int | None, typer.Option(
                 help="Then keep the N newest archived snapshots per node (local or SSH; the node "
                      "itself keeps snapshot.keep).")] = None,
             output: OutputOpt = OutputFormat.table) -> None:
    """Take an engine snapshot now (default: on the leader). For cron: -q.

    -q prints nothing on success; a failure is one line on stderr and a non-zero exit.
    """
    if node and all_:
        raise UsageError("use either --node or --all")
    if keep is not None and keep < 1:
        raise UsageError("--keep must be at least 1")
    cluster = cluster_for(ctx, config)
    if all_:
        # voters and standbys: spares and YAML nodes not (yet) added are not expected to answer
        state = cluster.probe(timeout=1.0)
        if not any(s.reachable for s in state.nodes):
            # the same answer as every other command on a stopped cluster (exit 3), not exit 1
            raise NoLeader(message="no node of the cluster is reachable")
        roles = state.member_roles()
        targets = [n for n in cluster.cfg.nodes if roles.get(n.id, Role.voter if not roles else "") in
                   (Role.voter, Role.standby)]
    else:
        targets = [cluster.cfg.node(node) if node else cluster.leader_node()]
    results = parallel(lambda n: cluster.clients[n.name].snapshot(), targets)
    failed = [(n, r) for n, r in zip(targets, results, strict=True) if isinstance(r, BaseException)]
    if failed:
        raise BknrError("; ".join(f"snapshot on {n.name} failed: {r}" for n, r in failed))
    removed = 0
    if keep is not None:
        for n, r in zip(targets, parallel(lambda n: _retain(cluster, n, keep), targets), strict=True):
            if isinstance(r, BaseException):
                raise BknrError(f"snapshot retention on {n.name} failed: {r}")
            removed += int(r.get("removed", 0))
    report = {n.name: r.get("index") for n, r in zip(targets, results, strict=True)}
    if output is OutputFormat.json:
        emit_json({"snapshots": report, "removed_files": removed})
    elif not quiet:
        for name, idx in report.items():
            typer.echo(f"{name}: snapshot at index {idx}")


def _retain(cluster: Cluster, n: NodeConfig, keep: int) -> dict[str, int]:
    c = controller(cluster.cfg, n)
    try:
        return c.retain_snapshots(keep)
    finally:
        c.close()


# --- backup / restore ---------------------------------------------------------------------------


@app.command()
@guarded
def backup(ctx: typer.Context,
           out: Annotated[Path | None, typer.Option("--out", help="Backup file to write.")] = None,
           check: Annotated[Path | None, typer.Option(
               "--check", help="Verify this backup file instead (checksum; loads it with the YAML's "
                               "store when a YAML is found); contacts no node.")] = None,
           config: ConfigOpt = None, quiet: QuietOpt = False,
           output: OutputOpt = OutputFormat.table) -> None:
    """Write a consistent store snapshot from the leader (index, checksum, cluster identity)."""
    if (out is None) == (check is None):
        raise UsageError("give exactly one of --out FILE (write a backup) or --check FILE (verify one)")
    if check is not None:
        _check_backup(ctx, config, check, quiet, output)
        return
    cluster = cluster_for(ctx, config)
    leader = cluster.leader_node()
    r = cluster.clients[leader.name].backup()
    payload: bytes = r.body
    sha = hashlib.sha256(payload).hexdigest()
    if r.headers.get("x-bknr-sha256") and r.headers["x-bknr-sha256"] != sha:
        raise CorruptData("backup checksum mismatch in transit")
    header = {"group": r.headers.get("x-bknr-group", cluster.cfg.group), "index": int(r.headers.get(
        "x-bknr-index", 0)), "sha256": sha, "bytes": len(payload), "store": cluster.cfg.store,
        "leader": leader.name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_backup(out, header, payload)
    if output is OutputFormat.json:
        emit_json({**header, "file": str(out)})
    elif not quiet:
        typer.echo(f"backup of {header['group']} at index {header['index']} -> {out} "
                   f"({len(payload)} bytes, sha256 {sha[:16]})")


def _check_backup(ctx: typer.Context, config: str | None, path: Path, quiet: bool,
                  output: OutputFormat) -> None:
    yaml_path = chosen_path(ctx, config)
    result = check_backup(path, cluster_for(ctx, config) if yaml_path.exists() else None)
    if output is OutputFormat.json:
        emit_json(result)
    elif not quiet:
        loaded = (f", loads: {result['objects']} objects, digest {result['digest'][:16]}"
                  if result.get("loadable") else " (no YAML: not loaded)")
        typer.echo(f"{path}: ok: {result['group']} at index {result['index']}, {result['bytes']} bytes, "
                   f"sha256 {result['sha256'][:16]}{loaded}")


@app.command()
@guarded
def restore(ctx: typer.Context, from_: Annotated[Path, typer.Option("--from", help="Backup file.")],
            config: ConfigOpt = None, yes: YesOpt = False) -> None:
    """Seed a NEW cluster (the YAML's, not yet initialised) from a backup; refuses a live one."""
    cluster = cluster_for(ctx, config)
    header, payload = read_backup(from_)
    if header.get("store") and header["store"] != cluster.cfg.store:
        raise UsageError(f"backup is of store {header['store']}, the YAML runs {cluster.cfg.store}")
    leader, index = seed_new_cluster(cluster, payload, f"{from_} (index {header['index']})", yes)
    info(f"restored {header['group']}@{header['index']} into {cluster.cfg.group} (leader {leader})")


# --- recover ------------------------------------------------------------------------------------


@app.command()
@guarded
def recover(ctx: typer.Context, node: Annotated[str, typer.Option("--node", help="Surviving node.")],
            force: Annotated[bool, typer.Option("--force", help="Required: rewrites membership.")] = False,
            config: ConfigOpt = None, yes: YesOpt = False) -> None:
    """Quorum loss: force a new configuration of the surviving nodes (longest log first).

    Refuses while a quorum is reachable. Every reachable node with a running process is a
    survivor; the new configuration makes them the voters. --node must be a survivor and
    names the node that is started first (the one with the longest log is preferred).
    """
    if not force:
        raise UsageError("recover rewrites the cluster membership; pass --force")
    cluster = cluster_for(ctx, config)
    chosen = cluster.cfg.node(node)
    state = cluster.probe(timeout=1.0)
    if state.leader is not None or state.quorum:
        raise UsageError(f"refusing: a quorum is reachable ({state.reachable_voters}/{len(state.voters)} "
                         "voters); remove dead nodes with 'bknrctl peer remove' instead")
    survivors = [s for s in state.nodes if s.reachable]
    if chosen.name not in {s.node.name for s in survivors}:
        raise UsageError(f"{chosen.name} is not reachable; recover from a surviving node")
    longest = max(survivors, key=lambda s: int((s.status or {}).get("last_log_index") or 0))
    mine = next(s for s in survivors if s.node.name == chosen.name)
    chosen_log = int((mine.status or {}).get("last_log_index") or 0)
    if int(longest.status.get("last_log_index") or 0) > chosen_log:
        raise UsageError(f"{longest.node.name} has a longer log than {chosen.name}; "
                         f"recover with --node {longest.node.name}")
    conf = [{"id": s.node.id, "address": s.node.raft_address, "role": Role.voter.value} for s in survivors]
    names = ", ".join(s.node.name for s in survivors)
    confirm(f"Force a new configuration with voters {names}? Nodes left out must be wiped before rejoining.",
            yes)
    confirm_typed("This cannot be undone.", cluster.cfg.group, yes)
    stop_nodes(cluster, [s.node for s in survivors])
    ordered = [chosen] + [s.node for s in survivors if s.node.name != chosen.name]
    for n in ordered:
        c = controller(cluster.cfg, n)
        try:
            rc, out = c.run_node("--recover", json.dumps(conf))
        finally:
            c.close()
        if rc != 0:
            why = out.strip().splitlines()[-1] if out.strip() else f"exit status {rc}"
            raise BknrError(f"{n.name}: recover failed: {why}")
    start_nodes(cluster, ordered)
    try:
        leader = cluster.wait_for_leader(timeout=30.0)
    except NoLeader:
        raise BknrError("recovered nodes did not elect a leader; see bknrctl logs") from None
    info(f"recovered: voters {names}; leader {leader.name}")
