"""Import the application's StoreDefinition named in the cluster YAML (``module:attribute``)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from bknr_cluster.errors import ConfigError


def load_definition(spec: str, base_dir: str | os.PathLike | None = None) -> Any:
    """``"examples.bank.app:definition"`` -> the object. The YAML's folder and the current
    directory are put on ``sys.path`` first, so an application next to its YAML is found."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError([("store", f"{spec!r} must look like 'package.module:definition'")])
    for folder in (os.getcwd(), str(Path(base_dir).resolve()) if base_dir else None):
        if folder and folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError([("store", f"cannot import {module_name!r}: {exc}")]) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError([("store", f"module {module_name!r} has no attribute {attr!r}")]) from None
