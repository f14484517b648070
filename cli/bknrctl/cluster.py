"""The operator's view of a cluster: configuration, per-node clients, status and leader lookup."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bknr_cluster.cluster.config import ClusterConfig, NodeConfig
from bknr_cluster.cluster.tls_config import client_ssl_context
from bknr_cluster.errors import BknrError, NoLeader, Unauthorized, Unreachable
from bknr_cluster.vocabulary import Role

from .client import NodeClient, parallel
from .poll import poll

DEFAULT_CONFIG = "cluster.yaml"
# A follower further behind than this many entries makes the cluster "degraded" (status --max-lag).
DEFAULT_MAX_LAG = 1000
EXIT_NO_LEADER = 3
EXIT_DEGRADED = 4


def config_path(option: str | None) -> Path:
    """``-c`` wins, then ``BKNR_CONFIG``, then ``./cluster.yaml``."""
    return Path(option or os.environ.get("BKNR_CONFIG") or DEFAULT_CONFIG)


def engine_applied(st: dict) -> int:
    """The last log index the node has applied (configuration entries included).

    ``applied_index`` counts store entries only, so after a membership change it stays below
    ``commit_index`` for good; catch-up is measured with the engine's ``engine_applied``.
    """
    return int(st.get("engine_applied") or st.get("applied_index") or 0)


@dataclass
class NodeState:
    """What one node answered (or failed to answer) when probed."""

    node: NodeConfig
    status: dict | None = None
    error: str | None = None

    @property
    def reachable(self) -> bool:
        return self.status is not None

    @property
    def role(self) -> str:
        if not self.status:
            return "unreachable"
        return str(self.status.get("role") or self.status.get("state") or "?")

    @property
    def halted(self) -> dict | None:
        """``{index, reason, ...}`` when this replica stopped applying, else None."""
        h = (self.status or {}).get("halted")
        return h if isinstance(h, dict) else None

    @property
    def definition(self) -> dict:
        d = (self.status or {}).get("definition")
        return d if isinstance(d, dict) else {}


@dataclass
class ClusterState:
    nodes: list[NodeState]
    leader: NodeState | None = None
    voters: list[int] = field(default_factory=list)

    @property
    def reachable_voters(self) -> int:
        return sum(1 for s in self.nodes if s.reachable and s.node.id in self.voters)

    @property
    def quorum(self) -> bool:
        return self.reachable_voters >= len(self.voters) // 2 + 1 if self.voters else False

    def member_roles(self) -> dict[int, str]:
        """The configuration as the leader (or else any reachable node) reports it."""
        source = self.leader or next((s for s in self.nodes if s.reachable), None)
        if not source or not source.status:
            return {}
        conf = source.status.get("configuration") or []
        return {int(c["id"]): str(c.get("role", Role.voter)) for c in conf}

    def lag(self, s: NodeState) -> int | None:
        if not s.reachable or not self.leader or not self.leader.status:
            return None
        for f in self.leader.status.get("followers") or []:
            if int(f.get("id", -1)) == s.node.id and f.get("lag") is not None:
                return int(f["lag"])
        return max(0, int(self.leader.status.get("commit_index", 0)) - engine_applied(s.status or {}))

    def digest_match(self, s: NodeState) -> bool | None:
        """Equal digest with the leader at the same applied index; None when not comparable."""
        if not s.reachable or not self.leader or not self.leader.status:
            return None
        a, b = self.leader.status, s.status or {}
        if a.get("applied_index") != b.get("applied_index"):
            return None
        sa, sb = (a.get("definition") or {}).get("schema"), (b.get("definition") or {}).get("schema")
        if sa and sb and sa != sb:
            return None  # different schemas (mid-upgrade): digests differ by construction
        return a.get("digest") == b.get("digest")

    def halted(self) -> list[NodeState]:
        """Members that stopped applying (they never lead; they need an upgrade + restart)."""
        roles = self.member_roles()
        return [s for s in self.nodes if s.halted and (not roles or s.node.id in roles)]

    def problems(self, max_lag: int = DEFAULT_MAX_LAG) -> list[str]:
        """Why the cluster is degraded, one reason per member; empty when healthy.

        A voter or standby is a problem when it is unreachable, lags the leader by more than ``max_lag``
        entries, has applied the leader's index with another digest, or has halted (a replica
        that stopped applying: its ``/status`` carries ``halted: {index, reason}``)."""
        if not self.leader:
            return []
        roles = self.member_roles()
        out = []
        # nodes listed in the YAML but not (yet) members do not make a cluster degraded, nor do
        # spares: they neither vote nor receive the log, so losing one costs no redundancy
        for s in (s for s in self.nodes if (not roles or s.node.id in roles)
                  and roles.get(s.node.id) != Role.spare):
            name = s.node.name
            if not s.reachable:
                out.append(f"{name} unreachable")
                continue
            halted = (s.status or {}).get("halted")
            if halted:
                why = halted.get("reason", "?") if isinstance(halted, dict) else halted
                at = f" at index {halted.get('index')}" if isinstance(halted, dict) else ""
                out.append(f"{name} halted{at}: {why}")
            if self.digest_match(s) is False:
                out.append(f"{name} digest differs from the leader's at the same applied index")
            lag = self.lag(s)
            if lag is not None and lag > max_lag:
                out.append(f"{name} lags {lag} entries (more than {max_lag})")
        return out

    def summary(self, max_lag: int = DEFAULT_MAX_LAG) -> str:
        if not self.leader:
            return "no quorum" if not self.quorum else "no leader"
        return "degraded" if self.problems(max_lag) else "healthy"

    def exit_code(self, max_lag: int = DEFAULT_MAX_LAG) -> int:
        """What ``bknrctl status`` exits with: 0 healthy, 3 no leader, 4 degraded."""
        if not self.leader:
            return EXIT_NO_LEADER
        return EXIT_DEGRADED if self.problems(max_lag) else 0


class Cluster:
    """Configuration plus one API client per node."""

    def __init__(self, cfg: ClusterConfig, timeout: float = 2.0):
        self.cfg = cfg
        self.token = cfg.token() if cfg.token_file and cfg.token_file.exists() else None
        self.timeout = timeout
        self.ssl_context = client_ssl_context(cfg)
        self.clients = {n.name: NodeClient(n.name, n.api_url, self.token, timeout, self.ssl_context)
                        for n in cfg.nodes}

    @classmethod
    def load(cls, path: Path) -> Cluster:
        return cls(ClusterConfig.load(path))

    def client(self, node: NodeConfig | str) -> NodeClient:
        name = node if isinstance(node, str) else node.name
        return self.clients[self.cfg.node(name).name]

    def probe(self, timeout: float | None = None) -> ClusterState:
        nodes = list(self.cfg.nodes)
        results = parallel(lambda n: self.clients[n.name].status(timeout=timeout or self.timeout), nodes)
        states = []
        for n, r in zip(nodes, results, strict=True):
            if isinstance(r, Unauthorized):
                # a wrong token is a configuration problem, not an unreachable cluster
                raise r
            if isinstance(r, BaseException):
                states.append(NodeState(n, None, str(r)))
            else:
                states.append(NodeState(n, r, None))
        leaders = [s for s in states if s.role == "leader"]
        leader = max(leaders, key=lambda s: int(s.status.get("term", 0))) if leaders else None
        state = ClusterState(states, leader)
        roles = state.member_roles()
        state.voters = [i for i, r in roles.items() if r == Role.voter] if roles else \
            [n.id for n in self.cfg.nodes if n.role == Role.voter]
        return state

    def leader_node(self, timeout: float = 1.0) -> NodeConfig:
        """The node answering 200 on ``/leader`` (all asked in parallel); else NoLeader."""
        nodes = list(self.cfg.nodes)
        results = parallel(lambda n: self.clients[n.name].is_leader(timeout=timeout), nodes)
        hinted = 0
        for n, r in zip(nodes, results, strict=True):
            if isinstance(r, tuple):
                if r[0]:
                    return n
                hinted = hinted or int(r[1].get("leader_id") or 0)
        if all(isinstance(r, Unreachable) for r in results):
            raise NoLeader(message="no node of the cluster is reachable")
        if hinted:
            # a follower still names a leader that does not answer: say which, it is the lead
            known = self.cfg.node_by_id(hinted)
            name = known.name if known else f"id {hinted}"
            raise NoLeader(hinted, message=f"the cluster has no leader: followers still name {name}, "
                           f"which does not answer as leader (down, partitioned or stepping down)")
        raise NoLeader(message="the cluster has no leader (no quorum or election in progress)")

    def leader_client(self) -> NodeClient:
        return self.clients[self.leader_node().name]

    def members(self) -> dict[int, str]:
        """id -> role, as the current leader reports its configuration."""
        st = self.leader_client().status()
        return {int(c["id"]): str(c.get("role", Role.voter)) for c in st.get("configuration") or []}

    def wait_for_leader(self, timeout: float, exclude: int | None = None,
                        interval: float = 0.02) -> NodeConfig:
        last: Exception | None = None

        def elected() -> NodeConfig | None:
            nonlocal last
            try:
                n = self.leader_node(timeout=min(0.5, timeout))
            except BknrError as exc:
                last = exc
                return None
            return n if exclude is None or n.id != exclude else None

        found = poll(elected, timeout, interval)
        if found is None:
            raise NoLeader(message=f"no leader elected within {timeout:.0f}s"
                           + (f" ({last})" if last else ""))
        return found

    def wait_caught_up(self, node: NodeConfig, timeout: float, on_progress: Any = None) -> dict:
        """Wait until ``node`` has applied everything the leader had committed when we started."""
        target: int | None = None
        start_applied: int | None = None

        def caught_up() -> dict | None:
            nonlocal target, start_applied
            try:
                if target is None:
                    target = int(self.leader_client().status().get("commit_index", 0))
                st = self.clients[node.name].status(timeout=1.0)
            except BknrError:
                return None
            applied = engine_applied(st)
            if start_applied is None:
                start_applied = applied
            if on_progress:
                span = max(1, target - start_applied)
                on_progress(min(1.0, (applied - start_applied) / span), applied, target)
            return st if applied >= target else None

        st = poll(caught_up, timeout)
        if st is None:
            raise BknrError(f"{node.name} did not catch up within {timeout:.0f}s")
        return st


def status_rows(state: ClusterState, cfg: ClusterConfig | None = None) -> list[dict[str, Any]]:
    """One row per node with stable snake_case keys (for the table and ``--output json``)."""
    rows = []
    roles = state.member_roles()
    for s in state.nodes:
        st = s.status or {}
        leader_id = int(st.get("leader_id") or 0)
        known = cfg.node_by_id(leader_id) if cfg and leader_id else None
        leader_name = known.name if known else (str(leader_id) if leader_id else None)
        rows.append({
            "name": s.node.name,
            "id": s.node.id,
            "address": s.node.raft_address,
            "api": s.node.api_url,
            "role": s.role,
            # leadership priority (1 preferred, 0 none, -1 avoid): what the node runs with
            "priority": st.get("priority", s.node.priority),
            "member_role": roles.get(s.node.id, "not a member" if roles else None),
            "term": st.get("term"),
            "leader": leader_name,
            "commit_index": st.get("commit_index"),
            "applied_index": st.get("applied_index"),
            "lag": state.lag(s),
            "snapshot_index": st.get("snapshot_index"),
            "digest": st.get("digest"),
            "digest_match": state.digest_match(s),
            "reachable": s.reachable,
            "error": s.error,
            "halted": s.halted,
            "version": s.definition.get("version") if s.reachable else None,
            "fingerprint": s.definition.get("fingerprint") if s.reachable else None,
        })
    return rows


def status_json(cluster: Cluster, state: ClusterState, max_lag: int = DEFAULT_MAX_LAG) -> dict:
    """What ``status -o json`` prints (and the demo report carries): verdict and rows."""
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
