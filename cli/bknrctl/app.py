"""The Typer application object and the options commands share (each defined once here)."""

from __future__ import annotations

import importlib.metadata
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer.core import TyperGroup
from typer.exceptions import Abort

from bknr_cluster.cluster.config import ClusterConfig, NodeConfig
from bknr_cluster.vocabulary import Role

from .cluster import Cluster, config_path


class OneLineErrors(TyperGroup):
    """Usage errors as ONE stderr line (``error: ... (see: bknrctl X --help)``), exit 2.

    Click prints a usage block, a hint and the error on four lines; every other bknrctl error is
    one ``error:`` line, so a script greps one format. ``--help`` and a bare group still print help.
    """

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            typer.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    name="bknrctl",
    help="Operate a bknr_cluster: YAML-described nodes, local or over SSH.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
peer_app = typer.Typer(help="Membership: add, remove, promote nodes.", no_args_is_help=True)
leader_app = typer.Typer(help="Leadership: planned switchover.", no_args_is_help=True)
app.add_typer(peer_app, name="peer")
app.add_typer(leader_app, name="leader")


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


ConfigOpt = Annotated[
    str | None,
    # No envvar= here: the command-level option would then read $BKNR_CONFIG and override an
    # explicit global -c. config_path() applies the order: -c, $BKNR_CONFIG, ./cluster.yaml.
    typer.Option("-c", "--config",
                 help="Cluster YAML (default $BKNR_CONFIG, else ./cluster.yaml).", show_default=False),
]
OutputOpt = Annotated[OutputFormat, typer.Option("--output", "-o", help="table or json")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Confirm destructive actions.")]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="Silent on success.")]
NodesArg = Annotated[list[str] | None, typer.Argument(help="Node names (default: all).",
                                                      show_default=False)]
NodeOpt = Annotated[str | None, typer.Option("--node", help="Only this node.")]
RoleOpt = Annotated[Role, typer.Option(help="voter, standby or spare.")]
# how long a (re)started or added node may take to apply what the leader has committed
CatchupOpt = Annotated[float, typer.Option("--timeout", help="Catch-up timeout (s).")]
CatchupPerNodeOpt = Annotated[float, typer.Option("--catchup-timeout",
                                                  help="Seconds per node to catch up.")]
DEFAULT_CATCHUP_S = 120.0


def select(cfg: ClusterConfig, names: list[str] | None) -> list[NodeConfig]:
    """The named nodes (UnknownNode for a name not in the YAML), or all of them."""
    return [cfg.node(n) for n in names] if names else list(cfg.nodes)


def _print_version(value: bool) -> None:
    if value:
        try:
            version = importlib.metadata.version("bknr_cluster")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown (not installed)"
        typer.echo(f"bknrctl {version}")
        raise typer.Exit(0)


@app.callback()
def _root(ctx: typer.Context, config: ConfigOpt = None,
          version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                                help="Print the version and exit.")] = False) -> None:
    """Global options; -c may come before or after the command."""
    ctx.obj = {"config": config}


@peer_app.callback()
@leader_app.callback()
def _group(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """-c right after a sub-group name (bknrctl peer -c x add) counts like the global -c."""
    if config is not None:
        root = ctx.find_root()
        root.obj = {**(root.obj or {}), "config": config}


def cluster_for(ctx: typer.Context, config: str | None) -> Cluster:
    """The cluster of the command-level ``-c``, else the global one, else the default."""
    root = (ctx.find_root().obj or {}) if ctx else {}
    return Cluster.load(config_path(config or root.get("config")))


def chosen_path(ctx: typer.Context, config: str | None) -> Path:
    root = (ctx.find_root().obj or {}) if ctx else {}
    return config_path(config or root.get("config"))
