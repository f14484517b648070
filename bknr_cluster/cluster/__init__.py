"""The replicated store: ``from bknr_cluster.cluster import ClusterStore`` (see DESIGN.md).

Exports are resolved lazily so that importing ``bknr_cluster.cluster.config`` (the CLI does) does
not load the store or the engine.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiClient", "ClusterStore"]


def __getattr__(name: str) -> Any:
    if name == "ClusterStore":
        from bknr_cluster.cluster.store import ClusterStore
        return ClusterStore
    if name == "ApiClient":
        from bknr_cluster.cluster.client import ApiClient
        return ApiClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
