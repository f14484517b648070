"""Failback: bring failed members back, wait until they caught up, optionally hand leadership
back; and the small state file a drill leaves for it (which node it left down)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .cluster import Cluster, engine_applied
from .leadership import transfer_leadership
from .nodes import start_nodes
from .output import progress

STATE_FILE = ".bknrctl-state.json"


def _state_path(cluster: Cluster) -> Path:
    return cluster.cfg.base_dir / STATE_FILE


def save_state(cluster: Cluster, **values: Any) -> None:
    p = _state_path(cluster)
    data = load_state(cluster)
    data.update(values)
    p.write_text(json.dumps(data, sort_keys=True) + "\n")


def load_state(cluster: Cluster) -> dict:
    try:
        return json.loads(_state_path(cluster).read_text())
    except (OSError, ValueError):
        return {}


def do_failback(cluster: Cluster, to: str | None, quiet: bool = False, timeout: float = 120.0) -> dict:
    """Start nodes that are down, wait until each caught up, optionally transfer leadership."""
    state = cluster.probe(timeout=1.0)
    roles = state.member_roles()
    # YAML nodes that are not members of the configuration are not "failed": leave them alone
    down = [s.node for s in state.nodes if not s.reachable and (not roles or s.node.id in roles)]
    if down:
        start_nodes(cluster, down, quiet=quiet)
    cluster.wait_for_leader(timeout=30.0)
    caught: dict[str, int] = {}
    for n in down or [s.node for s in state.nodes]:
        with progress(f"{n.name}: catching up", total=1.0, quiet=quiet) as bar:
            st = cluster.wait_caught_up(n, timeout, lambda f, a, t, bar=bar, n=n: bar.update(
                completed=f, description=f"{n.name}: applied {a}/{t}"))
        caught[n.name] = engine_applied(st)
    out: dict[str, Any] = {"restarted": [n.name for n in down], "caught_up": caught}
    if to:
        target = cluster.cfg.node(to)
        out["transfer"] = transfer_leadership(cluster, target.id)
    save_state(cluster, down=None)
    return out
