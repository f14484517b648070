"""Who the other nodes are: a node id's name and API URL (for hints, forwarding, the monitor).

A ``ClusterStore`` takes a ``NodeDirectory`` as a collaborator. ``YamlDirectory`` answers from
the cluster YAML and reads the file again for an id it does not know (a node the operator added
after this one started); ``StaticDirectory`` answers from mappings or functions given in code.
Both answer "" for an unknown id and never raise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from bknr_cluster.errors import BknrError

Lookup = Mapping[int, str] | Callable[[int], str] | None


class NodeDirectory(Protocol):
    def api_url(self, node_id: int) -> str:
        """The node's API URL, "" when unknown."""
        ...

    def node_name(self, node_id: int) -> str:
        """The node's name, "" when unknown."""
        ...


def _lookup(src: Lookup, node_id: int) -> str:
    if not node_id or src is None:
        return ""
    if callable(src):
        return src(node_id) or ""
    return src.get(node_id, "")


class StaticDirectory:
    """Answers from ``{id: url}`` / ``{id: name}`` mappings or functions of the id."""

    def __init__(self, api_urls: Lookup = None, node_names: Lookup = None) -> None:
        self._api_urls = api_urls
        self._node_names = node_names

    def api_url(self, node_id: int) -> str:
        return _lookup(self._api_urls, node_id)

    def node_name(self, node_id: int) -> str:
        return _lookup(self._node_names, node_id)


class YamlDirectory:
    """Answers from a loaded ``ClusterConfig``; an unknown id reloads ``path`` once per ask."""

    def __init__(self, cfg: Any, path: str | os.PathLike) -> None:
        self._cfg = cfg
        self._path = path

    def _node(self, node_id: int) -> Any:
        n = self._cfg.node_by_id(node_id)
        if n is None:  # a node added after we started: the operator edited the YAML
            from bknr_cluster.cluster.config import ClusterConfig
            try:
                n = ClusterConfig.load(self._path).node_by_id(node_id)
            except BknrError:
                n = None
        return n

    def api_url(self, node_id: int) -> str:
        n = self._node(node_id) if node_id else None
        return n.api_url if n else ""

    def node_name(self, node_id: int) -> str:
        n = self._node(node_id) if node_id else None
        return n.name if n else ""
