"""Commands that look at a running cluster: status (one row per node) and logs."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from bknr_cluster.errors import BknrError

from .app import ConfigOpt, OutputFormat, OutputOpt, app, cluster_for
from .cluster import DEFAULT_MAX_LAG, status_json
from .control import NodeControl, controller
from .output import emit_json, guarded, info, stdout_console
from .render import no_leader_reason, status_table, summary_line

# --- status -------------------------------------------------------------------------------------


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
