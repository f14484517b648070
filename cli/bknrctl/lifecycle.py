"""Commands that manage node processes: validate, init, start, stop, restart, status, logs."""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bknr_cluster.cluster.config import ClusterConfig, NodeConfig
from bknr_cluster.cluster.preflight import Preflight, preflight
from bknr_cluster.cluster.tls_config import check_security
from bknr_cluster.errors import AlreadyBootstrapped, BknrError, ConfigError, ReplicaHalted, UsageError

from .app import ConfigOpt, OutputFormat, OutputOpt, YesOpt, app, chosen_path, cluster_for
from .certscmd import ensure_certs
from .client import parallel
from .cluster import DEFAULT_MAX_LAG, Cluster, ClusterState, status_rows
from .control import NodeControl, controller
from .output import confirm, emit_json, guarded, info, progress, stdout_console

NodesArg = Annotated[list[str] | None, typer.Argument(help="Node names (default: all).",
                                                      show_default=False)]


def select(cfg: ClusterConfig, names: list[str] | None) -> list[NodeConfig]:
    """The named nodes (UnknownNode for a name not in the YAML), or all of them."""
    return [cfg.node(n) for n in names] if names else list(cfg.nodes)


def _create_secret(path: Path, content: str) -> bool:
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL + 0600: never overwrite a secret, never leave it readable by others
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content + "\n")
    return True


def ensure_token(cfg: ClusterConfig) -> bool:
    """Create the API token file (and the Raft transport secret and the TLS certificates,
    when the YAML names them)."""
    made = False
    secret = cfg.raw.get("raft_secret_file") if isinstance(cfg.raw, dict) else None
    if isinstance(secret, str) and secret:
        p = Path(os.path.expanduser(secret))
        p = p if p.is_absolute() else cfg.base_dir / p
        if _create_secret(p, secrets.token_hex(32)):
            info(f"created Raft transport secret {p}")
    if cfg.token_file is not None:
        made = _create_secret(cfg.token_file, secrets.token_urlsafe(32))
    ensure_certs(cfg)
    return made


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
        deadline = time.monotonic() + timeout
        pending = {c.node.name: c for c in ctls}
        with progress(f"starting {len(pending)} node(s)", total=len(pending), quiet=quiet) as bar:
            while pending:
                for name, c in list(pending.items()):
                    rc = c.exited_early()  # type: ignore[attr-defined]
                    if rc is not None:
                        tail_out = getattr(c, "tail_out", c.tail)
                        tail = [ln for ln in tail_out(5).splitlines() if ln.strip()]
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
                if pending and time.monotonic() > deadline:
                    raise BknrError(f"{', '.join(pending)}: no /health answer within {timeout:.0f}s "
                                    f"(see bknrctl logs {next(iter(pending))})")
                if pending:
                    time.sleep(0.05)
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
            catchup_timeout: Annotated[float, typer.Option(help="Seconds per node to catch up.")] = 120.0,
            ) -> None:
    """Rolling restart: one node at a time, followers first, each caught up before the next."""
    cluster = cluster_for(ctx, config)
    rolling_restart(cluster, select(cluster.cfg, nodes), catchup_timeout)


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


# --- status -------------------------------------------------------------------------------------


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if v is True:
        return "yes"
    if v is False:
        return "no"
    return str(v)


def status_table(state: ClusterState, cfg: ClusterConfig | None = None) -> Table:
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("name", "address", "role", "prio", "term", "leader", "commit", "applied", "lag",
                "snapshot", "digest", "match", "version", "reachable"):
        t.add_column(col)
    for r in status_rows(state, cfg):
        role = r["role"] if not r["member_role"] or r["member_role"] == "voter" \
            else f"{r['role']} ({r['member_role']})"
        if r["halted"]:
            role = f"{role} HALTED@{r['halted'].get('index')}"
        version = f"{r['version'] or '-'} {(r['fingerprint'] or '-')[:8]}" if r["reachable"] else "-"
        t.add_row(r["name"], r["address"], role, _fmt(r["priority"]), _fmt(r["term"]),
                  _fmt(r["leader"]),
                  _fmt(r["commit_index"]), _fmt(r["applied_index"]), _fmt(r["lag"]),
                  _fmt(r["snapshot_index"]), (r["digest"] or "-")[:12], _fmt(r["digest_match"]),
                  version, _fmt(r["reachable"]))
    return t


def status_json(cluster: Cluster, state: ClusterState, max_lag: int = DEFAULT_MAX_LAG) -> dict:
    return {
        "group": cluster.cfg.group,
        "summary": state.summary(max_lag),
        "problems": state.problems(max_lag),
        "exit_code": state.exit_code(max_lag),
        "leader": state.leader.node.name if state.leader else None,
        "quorum": state.quorum,
        "halted": [h.node.name for h in state.halted()],
        "nodes": status_rows(state, cluster.cfg),
    }


def summary_line(state: ClusterState, max_lag: int = DEFAULT_MAX_LAG) -> str:
    s = state.summary(max_lag)
    n_ok = sum(1 for x in state.nodes if x.reachable)
    lead = f"leader {state.leader.node.name}" if state.leader else "no leader"
    line = f"{s}: {lead}, {n_ok}/{len(state.nodes)} nodes reachable, " \
           f"{state.reachable_voters}/{len(state.voters)} voters"
    for h in state.halted():
        line += (f"; {h.node.name} HALTED at entry {h.halted.get('index')}: "
                 f"{h.halted.get('reason')}")
    return line


@app.command()
@guarded
def status(ctx: typer.Context, config: ConfigOpt = None, output: OutputOpt = OutputFormat.table,
           watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until interrupted.")] = False,
           interval: Annotated[float, typer.Option(min=0.0, help="Seconds between refreshes.")] = 1.0,
           count: Annotated[int, typer.Option(min=0, help="With --watch: stop after N refreshes "
                                                           "(0 = never).")] = 0,
           max_lag: Annotated[int, typer.Option("--max-lag", min=0, help="A member further behind "
                                                "the leader (entries) makes the cluster degraded.")]
           = DEFAULT_MAX_LAG,
           ) -> None:
    """One row per node and a summary line. Exit 0 healthy, 3 no leader, 4 degraded.

    Degraded: a member unreachable, lagging more than --max-lag entries, with a digest that
    differs from the leader's at the same index, or halted. In table mode the reasons are on
    stderr, one line each.
    """
    cluster = cluster_for(ctx, config)
    n = 0
    while True:
        state = cluster.probe()
        n += 1
        if output is OutputFormat.json:
            emit_json(status_json(cluster, state, max_lag))
        else:
            console = stdout_console()
            if watch and sys.stdout.isatty():
                console.clear()
            console.print(status_table(state, cluster.cfg))
            console.print(summary_line(state, max_lag))
            for reason in state.problems(max_lag) or ([] if state.leader else [no_leader_reason(state)]):
                info(f"{state.summary(max_lag)}: {reason}")
        if not watch or (count and n >= count):
            break
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            break
    code = state.exit_code(max_lag)
    if code:
        raise typer.Exit(code)


def no_leader_reason(state: ClusterState) -> str:
    """Why no node leads, from what the nodes answered (table mode prints it on stderr)."""
    down = [s for s in state.nodes if not s.reachable]
    if len(down) == len(state.nodes):
        first = down[0].error or "no answer"
        return f"no node is reachable ({first})"
    return (f"{state.reachable_voters} of {len(state.voters)} voters reachable"
            + (f"; unreachable: {', '.join(s.node.name for s in down)}" if down else "")
            + ("; a quorum answers but no leader is elected yet" if state.quorum else "; no quorum"))


# --- logs ---------------------------------------------------------------------------------------


@app.command()
@guarded
def logs(ctx: typer.Context, node: Annotated[str, typer.Argument(help="Node name.")],
         config: ConfigOpt = None,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
         lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="Lines of history (0: none).")]
         = 50) -> None:
    """Print a node's log (local file, or over SSH)."""
    cluster = cluster_for(ctx, config)
    c: NodeControl = controller(cluster.cfg, cluster.cfg.node(node))
    try:
        if follow:
            try:
                for line in c.follow(lines):
                    typer.echo(line)
            except KeyboardInterrupt:
                pass
        else:
            text = c.tail(lines) if lines > 0 else ""
            if text:
                typer.echo(text)
            elif lines > 0 and not Path(str(c.log_file)).exists() and c.node.ssh is None:
                raise BknrError(f"{node}: no log yet at {c.log_file}")
    finally:
        c.close()
