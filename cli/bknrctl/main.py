"""Entry point: ``bknrctl = bknrctl.main:app``; importing the command modules registers them."""

from __future__ import annotations

# The command modules (the top layer, cli/bknrctl/DESIGN.md) register their commands on import,
# and --help lists them in that order: keep it (the process commands first).
# isort: off
from . import certscmd, lifecycle, statuscmd  # noqa: F401
from . import admin, drillcmd, lb, migrate, opscmd, upgrade  # noqa: F401
# isort: on
from .app import app

__all__ = ["app"]

if __name__ == "__main__":
    app()
