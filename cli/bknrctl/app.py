"""The Typer application object and the options every command shares."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .cluster import Cluster, config_path

app = typer.Typer(
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


@app.callback()
def _root(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Global options; ``-c`` may come before or after the command."""
    ctx.obj = {"config": config}


def cluster_for(ctx: typer.Context, config: str | None) -> Cluster:
    """The cluster of the command-level ``-c``, else the global one, else the default."""
    root = (ctx.find_root().obj or {}) if ctx else {}
    return Cluster.load(config_path(config or root.get("config")))


def chosen_path(ctx: typer.Context, config: str | None) -> Path:
    root = (ctx.find_root().obj or {}) if ctx else {}
    return config_path(config or root.get("config"))
