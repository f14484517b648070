"""Commands that manage node processes: validate, init, start, stop, restart."""

from __future__ import annotations

from typing import Annotated

import typer

from bknr_cluster.cluster.config import ClusterConfig
from bknr_cluster.cluster.preflight import Preflight, preflight
from bknr_cluster.cluster.tls_config import check_security
from bknr_cluster.errors import AlreadyBootstrapped, ConfigError, UsageError

from .app import (
    CatchupPerNodeOpt,
    ConfigOpt,
    NodesArg,
    OutputFormat,
    OutputOpt,
    YesOpt,
    app,
    chosen_path,
    cluster_for,
    select,
)
from .control import controller
from .nodes import rolling_restart, start_nodes, stop_nodes
from .output import confirm, emit_json, guarded, info, progress
from .provision import ensure_certs, ensure_token

# --- validate -----------------------------------------------------------------------------------


@app.command()
@guarded
def validate(ctx: typer.Context, config: ConfigOpt = None, output: OutputOpt = OutputFormat.table,
             strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors (exit 2).")]
             = False) -> None:
    """Run every check a node runs at start: the YAML, token and secret files, the store import.

    Problems go to stderr as 'error: PATH: MESSAGE' (exit 2), warnings as 'warning: ...' (exit 0,
    or 2 with --strict). With -o json the verdict is one object on stdout.
    """
    path = chosen_path(ctx, config)
    try:
        cfg = ClusterConfig.load(path)
        found = preflight(cfg)
    except ConfigError as exc:
        cfg, found = None, Preflight(errors=list(exc.problems))
    if cfg is not None:  # TLS files, modes, certificates, secure by default (tls_config.py)
        reported = {p for p, _ in found.errors + found.warnings}
        for p, m, missing in check_security(cfg):
            if p not in reported:  # a token/secret problem preflight already named
                (found.warnings if missing else found.errors).append((p, m))
    failed = bool(found.errors) or (strict and bool(found.warnings))
    if output is OutputFormat.json:
        emit_json({"valid": not failed, "problems": [{"path": p, "message": m} for p, m in found.errors],
                   "warnings": [{"path": p, "message": m} for p, m in found.warnings],
                   **({"group": cfg.group, "nodes": len(cfg.nodes)} if cfg else {})})
    for kind, items in (("error", found.errors), ("warning", found.warnings)):
        for p, m in items:
            info(f"{kind}: {p}: {m}" if p else f"{kind}: {m}")
    if failed:
        raise typer.Exit(2)
    if output is not OutputFormat.json:
        info(f"{path}: ok (group {cfg.group}, {len(cfg.nodes)} nodes)")


# --- init ---------------------------------------------------------------------------------------


@app.command()
@guarded
def init(ctx: typer.Context, nodes: NodesArg = None, config: ConfigOpt = None,
         force: Annotated[bool, typer.Option("--force", help="Wipe existing Raft state first.")] = False,
         yes: YesOpt = False) -> None:
    """Create data dirs and bootstrap every node's engine with the initial configuration."""
    cluster = cluster_for(ctx, config)
    cfg = cluster.cfg
    targets = select(cfg, nodes)
    ctls = [controller(cfg, n) for n in targets]
    try:
        running = [c.node.name for c in ctls if c.running()]
        if running:
            raise UsageError(f"running node(s) {', '.join(running)}: stop them before init")
        existing = [c.node.name for c in ctls if c.has_raft_state()]
        if existing and not force:
            raise AlreadyBootstrapped(
                f"already bootstrapped: {', '.join(existing)} (use --force to wipe and re-initialise)")
        if existing:
            confirm(f"Wipe the Raft state (all data) of {', '.join(existing)}?", yes)
        if ensure_token(cfg):
            info(f"created token file {cfg.token_file}")
        with progress("bootstrapping", total=len(ctls)) as bar:
            for i, c in enumerate(ctls):
                c.init(force=bool(existing))
                bar.update(completed=i + 1)
                info(f"{c.node.name}: bootstrapped ({c.data_dir})")
    finally:
        for c in ctls:
            c.close()


# --- start / stop / restart ---------------------------------------------------------------------


@app.command()
@guarded
def start(ctx: typer.Context, nodes: NodesArg = None, config: ConfigOpt = None,
          timeout: Annotated[float, typer.Option(help="Seconds to wait for /health.")] = 30.0) -> None:
    """Start nodes as detached processes (locally, or over SSH for nodes with an ssh section)."""
    cluster = cluster_for(ctx, config)
    ensure_certs(cluster.cfg)  # e.g. a machine added to the YAML since init
    start_nodes(cluster, select(cluster.cfg, nodes), timeout)


@app.command()
@guarded
def stop(ctx: typer.Context, nodes: NodesArg = None, config: ConfigOpt = None) -> None:
    """Stop nodes with SIGTERM (a leader hands over first); SIGKILL after 15 s."""
    cluster = cluster_for(ctx, config)
    stop_nodes(cluster, select(cluster.cfg, nodes))


@app.command()
@guarded
def restart(ctx: typer.Context, nodes: NodesArg = None, config: ConfigOpt = None,
            catchup_timeout: CatchupPerNodeOpt = 120.0) -> None:
    """Rolling restart: one node at a time, followers first, each caught up before the next."""
    cluster = cluster_for(ctx, config)
    rolling_restart(cluster, select(cluster.cfg, nodes), catchup_timeout)
