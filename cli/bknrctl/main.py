"""Entry point: ``bknrctl = bknrctl.main:app``; importing the command modules registers them."""

from __future__ import annotations

from . import admin, certscmd, drillcmd, lb, lifecycle, migrate, opscmd, upgrade  # noqa: F401  (commands register on import)
from .app import app

__all__ = ["app"]

if __name__ == "__main__":
    app()
