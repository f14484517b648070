"""Membership, leadership, snapshots, backup/restore and quorum-loss recovery."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from bknr_cluster.errors import (
    BknrError,
    CorruptData,
    MembershipError,
    NoLeader,
    UnknownNode,
    Unreachable,
    UsageError,
)

from .app import ConfigOpt, OutputFormat, OutputOpt, YesOpt, app, cluster_for, leader_app, peer_app
from .client import parallel
from .cluster import Cluster
from .control import controller
from .drill import transfer_with_retry
from .lifecycle import ensure_token, start_nodes, stop_nodes
from .output import confirm, confirm_typed, emit_json, guarded, info, progress

ROLES = ("voter", "standby", "spare")
BACKUP_MAGIC = b"BKNRBACKUP1\n"


def _members(cluster: Cluster) -> dict[int, str]:
    """id -> role, as the current leader reports its configuration."""
    st = cluster.leader_client().status()
    return {int(c["id"]): str(c.get("role", "voter")) for c in st.get("configuration") or []}


# --- peer ---------------------------------------------------------------------------------------


@peer_app.command("add")
@guarded
def peer_add(ctx: typer.Context, node: Annotated[str, typer.Argument(help="Node name from the YAML.")],
             config: ConfigOpt = None,
             role: Annotated[str, typer.Option(help="voter, standby or spare.")] = "voter",
             wait: Annotated[bool, typer.Option(help="Wait until the node has caught up.")] = True,
             timeout: Annotated[float, typer.Option(help="Catch-up timeout (s).")] = 120.0) -> None:
    """Add a node (already in the YAML and started) to the cluster configuration."""
    if role not in ROLES:
        raise UsageError(f"--role must be one of {', '.join(ROLES)}")
    cluster = cluster_for(ctx, config)
    n = cluster.cfg.node(node)
    members = _members(cluster)
    if members.get(n.id) == role:
        info(f"{n.name} is already a {role}")
        return
    if role != "spare":
        try:
            cluster.clients[n.name].health(timeout=2.0)
        except Unreachable:
            # a voter that is not running shrinks the fault tolerance the moment it is added
            raise BknrError(f"{n.name} is not running; start it first: bknrctl start {n.name}") from None
    leader = cluster.leader_client()
    if n.id in members:
        leader.set_role(n.id, role)
    else:
        leader.add_peer(n.id, n.raft_address, role)
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
    members = _members(cluster)
    if n.id not in members:
        raise UnknownNode(f"{n.name} is not a member of the cluster")
    voters = [i for i, r in members.items() if r == "voter"]
    if members[n.id] == "voter" and len(voters) == 1:
        raise MembershipError(f"refusing to remove {n.name}: it is the last voter")
    confirm(f"Remove {n.name} from the cluster?", yes)
    cluster.leader_client().remove_peer(n.id)
    info(f"{n.name}: removed (stop it with: bknrctl stop {n.name})")


@peer_app.command("promote")
@guarded
def peer_promote(ctx: typer.Context, node: Annotated[str, typer.Argument(help="Node name or id.")],
                 config: ConfigOpt = None,
                 role: Annotated[str, typer.Option(help="Target role.")] = "voter") -> None:
    """Change a member's role (default: make it a voter)."""
    if role not in ROLES:
        raise UsageError(f"--role must be one of {', '.join(ROLES)}")
    cluster = cluster_for(ctx, config)
    n = cluster.cfg.node(node)
    members = _members(cluster)
    if n.id not in members:
        raise UnknownNode(f"{n.name} is not a member; add it with: bknrctl peer add {n.name}")
    cluster.leader_client().set_role(n.id, role)
    info(f"{n.name}: now {role}")


# --- leader transfer ----------------------------------------------------------------------------


class LeaderWatch:
    """Polls /leader on every node in parallel and records when each one answered 200."""

    def __init__(self, cluster: Cluster, period: float = 0.005):
        self.cluster = cluster
        self.period = period
        self.samples: list[tuple[float, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        nodes = list(self.cluster.cfg.nodes)
        while not self._stop.is_set():
            res = parallel(lambda n: self.cluster.clients[n.name].is_leader(timeout=0.2), nodes)
            now = time.monotonic()
            leader = next((n.id for n, r in zip(nodes, res, strict=True)
                           if isinstance(r, tuple) and r[0]), None)
            self.samples.append((now, leader))
            self._stop.wait(self.period)

    def __enter__(self) -> LeaderWatch:
        self._thread.start()
        # the gap is only meaningful once the current leader has been seen at least once
        deadline = time.monotonic() + 2.0
        while not self.samples and time.monotonic() < deadline:
            time.sleep(0.002)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def gap_ms(self, old: int, new: int) -> float | None:
        """From the last sample with ``old`` leading to the first with ``new`` leading."""
        last_old = max((t for t, ld in self.samples if ld == old), default=None)
        first_new = min((t for t, ld in self.samples if ld == new and (last_old is None or t > last_old)),
                        default=None)
        if first_new is None:
            return None
        start = last_old if last_old is not None else self.samples[0][0]
        return (first_new - start) * 1000.0


def transfer_leadership(cluster: Cluster, to: int = 0, timeout: float = 15.0) -> dict:
    """Switch over; returns old/new leader names and the leaderless gap seen on /leader."""
    old = cluster.leader_node()
    if to == old.id:
        return {"from": old.name, "to": old.name, "gap_ms": 0.0, "changed": False}
    with LeaderWatch(cluster) as watch:
        t0 = time.monotonic()
        new_id = transfer_with_retry(cluster, old, to)
        new = cluster.wait_for_leader(timeout=timeout, exclude=old.id)
        if to and new.id != to:
            raise BknrError(f"leadership went to {new.name}, not the requested node")
        total_ms = (time.monotonic() - t0) * 1000.0
        # a few more samples so the first /leader 200 of the new leader is recorded
        end = time.monotonic() + 0.05
        while time.monotonic() < end:
            time.sleep(0.005)
    gap = watch.gap_ms(old.id, new.id)
    return {"from": old.name, "to": new.name, "gap_ms": round(gap if gap is not None else total_ms, 1),
            "elapsed_ms": round(total_ms, 1), "changed": True, "reported_leader_id": new_id}


@leader_app.command("transfer")
@guarded
def leader_transfer(ctx: typer.Context, config: ConfigOpt = None,
                    to: Annotated[str | None, typer.Option("--to", help="Target voter.")] = None,
                    output: OutputOpt = OutputFormat.table) -> None:
    """Planned switchover to ``--to`` (or the best candidate); waits and reports the gap."""
    cluster = cluster_for(ctx, config)
    target = 0
    if to is not None:
        n = cluster.cfg.node(to)
        members = _members(cluster)
        if n.id not in members:
            raise MembershipError(f"cannot transfer to {n.name}: it is not a member of the cluster")
        if members[n.id] != "voter":
            raise MembershipError(f"cannot transfer to {n.name}: it is a {members[n.id]}, not a voter")
        target = n.id
    result = transfer_leadership(cluster, target)
    if output is OutputFormat.json:
        emit_json(result)
    elif not result["changed"]:
        info(f"{result['to']} is already the leader")
    else:
        typer.echo(f"leader: {result['from']} -> {result['to']}, gap {result['gap_ms']:.0f} ms "
                   f"(/leader on all nodes)")


# --- snapshot -----------------------------------------------------------------------------------


def prune_snapshots(raft_dir: Path, keep: int) -> int:
    """Delete all but the ``keep`` newest engine snapshot files (``snapshot-T-I-TS`` + ``.meta``)."""
    groups: dict[str, list[Path]] = {}
    for p in raft_dir.glob("snapshot-*"):
        base = p.name[:-5] if p.name.endswith(".meta") else p.name
        groups.setdefault(base, []).append(p)

    def order(base: str) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in base.split("-")[1:4])
        except ValueError:
            return (0,)
    removed = 0
    for base in sorted(groups, key=order)[:-keep] if keep > 0 else []:
        for p in groups[base]:
            p.unlink(missing_ok=True)
            removed += 1
    return removed


@app.command()
@guarded
def snapshot(ctx: typer.Context, config: ConfigOpt = None,
             node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
             all_: Annotated[bool, typer.Option("--all", help="Every node.")] = False,
             quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Silent on success.")] = False,
             keep: Annotated[int | None, typer.Option(help="Keep N snapshot files per node.")] = None,
             output: OutputOpt = OutputFormat.table) -> None:
    """Take an engine snapshot now (default: on the leader). For cron: ``-q``."""
    if node and all_:
        raise UsageError("use either --node or --all")
    if keep is not None and keep < 1:
        raise UsageError("--keep must be at least 1")
    cluster = cluster_for(ctx, config)
    if all_:
        # voters and standbys: spares and YAML nodes not (yet) added are not expected to answer
        roles = cluster.probe(timeout=1.0).member_roles()
        targets = [n for n in cluster.cfg.nodes if roles.get(n.id, "voter" if not roles else "") in
                   ("voter", "standby")]
    else:
        targets = [cluster.cfg.node(node) if node else cluster.leader_node()]
    results = parallel(lambda n: cluster.clients[n.name].snapshot(), targets)
    failed = [(n, r) for n, r in zip(targets, results, strict=True) if isinstance(r, BaseException)]
    if failed:
        raise BknrError("; ".join(f"snapshot on {n.name} failed: {r}" for n, r in failed))
    removed = 0
    if keep is not None:
        for n in targets:
            if n.ssh is None:
                removed += prune_snapshots(Path(n.data_dir) / "raft", keep)
            else:  # over SSH, on the node's host
                ctl = controller(cluster.cfg, n)
                try:
                    removed += ctl.prune_snapshots(keep)  # type: ignore[attr-defined]
                finally:
                    ctl.close()
    report = {n.name: r.get("index") for n, r in zip(targets, results, strict=True)}
    if output is OutputFormat.json:
        emit_json({"snapshots": report, "removed_files": removed})
    elif not quiet:
        for name, idx in report.items():
            typer.echo(f"{name}: snapshot at index {idx}")


# --- backup / restore ---------------------------------------------------------------------------


def write_backup(path: Path, header: dict, payload: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(BACKUP_MAGIC)
        f.write(json.dumps(header, sort_keys=True).encode() + b"\n")
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_backup(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    if not data.startswith(BACKUP_MAGIC):
        raise CorruptData(f"{path} is not a bknrctl backup file")
    head, sep, payload = data[len(BACKUP_MAGIC):].partition(b"\n")
    try:
        header = json.loads(head)
    except ValueError:
        raise CorruptData(f"{path}: damaged backup header") from None
    if not sep or hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CorruptData(f"{path}: checksum mismatch (the file is damaged or truncated)")
    return header, payload


@app.command()
@guarded
def backup(ctx: typer.Context, out: Annotated[Path, typer.Option("--out", help="Backup file to write.")],
           config: ConfigOpt = None, quiet: Annotated[bool, typer.Option("-q", "--quiet")] = False,
           output: OutputOpt = OutputFormat.table) -> None:
    """Write a consistent store snapshot from the leader (index, checksum, cluster identity)."""
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


@app.command()
@guarded
def restore(ctx: typer.Context, from_: Annotated[Path, typer.Option("--from", help="Backup file.")],
            config: ConfigOpt = None, yes: YesOpt = False) -> None:
    """Seed a NEW cluster (the YAML's, not yet initialised) from a backup; refuses a live one."""
    cluster = cluster_for(ctx, config)
    header, payload = read_backup(from_)
    live = [n.name for n, r in zip(cluster.cfg.nodes, parallel(
        lambda n: cluster.clients[n.name].health(timeout=1.0), list(cluster.cfg.nodes)), strict=True)
        if not isinstance(r, BaseException)]
    if live:
        raise UsageError(f"refusing to restore over a live cluster ({', '.join(live)} answering); "
                         "restore seeds a new cluster")
    ctls = [controller(cluster.cfg, n) for n in cluster.cfg.nodes]
    try:
        existing = [c.node.name for c in ctls if c.has_raft_state()]
        if existing:
            raise UsageError(f"refusing to restore: {', '.join(existing)} already hold Raft state; "
                             "restore seeds a new cluster (use a fresh YAML / data dirs)")
        if header.get("store") and header["store"] != cluster.cfg.store:
            raise UsageError(f"backup is of store {header['store']}, the YAML runs {cluster.cfg.store}")
        confirm(f"Seed cluster {cluster.cfg.group} from {from_} (index {header['index']})?", yes)
        ensure_token(cluster.cfg)
        cluster = Cluster(cluster.cfg)  # re-read the token that may just have been created
        for c in ctls:
            c.init()
    finally:
        for c in ctls:
            c.close()
    start_nodes(cluster, list(cluster.cfg.nodes))
    leader = cluster.wait_for_leader(timeout=30.0)
    r = cluster.clients[leader.name].request("POST", "/restore", None, timeout=120.0,
                                             raw_body=payload, headers={"X-Bknr-Sha256": header["sha256"]})
    if r.status != 200:
        from .client import error_from_body

        raise error_from_body(r.status, r.body, leader.name)
    info(f"restored {header['group']}@{header['index']} into {cluster.cfg.group} (leader {leader.name})")


# --- recover ------------------------------------------------------------------------------------


@app.command()
@guarded
def recover(ctx: typer.Context, node: Annotated[str, typer.Option("--node", help="Surviving node.")],
            force: Annotated[bool, typer.Option("--force", help="Required: rewrites membership.")] = False,
            config: ConfigOpt = None, yes: YesOpt = False) -> None:
    """Quorum loss: force a new configuration of the surviving nodes (longest log first).

    Refuses while a quorum is reachable. Every reachable node with a running process is a
    survivor; the new configuration makes them the voters. ``--node`` must be a survivor and
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
    conf = [{"id": s.node.id, "address": s.node.raft_address, "role": "voter"} for s in survivors]
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
