"""``ClusterSettings``: everything one node of a cluster is configured with, frozen and validated.

Built once, either from the cluster YAML (``ClusterSettings.from_config``, what ``bknr-node`` and
``ClusterStore.from_config`` use) or in code (``ClusterSettings(node_id=1, peers=..., data_dir=...)``),
and validated once, in ``__post_init__``: a ``ClusterStore`` built from it does not check its
values again. Defaults come from ``bknr_cluster/defaults.py`` (shared with the YAML loader and
the engine). ``engine_options`` is the one mapping of the settings to the engine's parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from bknr_cluster import defaults
from bknr_cluster.cluster.affinity import check_spec
from bknr_cluster.errors import UsageError
from bknr_cluster.vocabulary import DataDirLayout

Peers = str | list[tuple[int, str]] | Mapping[int, str]


def parse_peers(peers: Peers) -> dict[int, str]:
    """``"127.0.0.1:7001:1,127.0.0.1:7002:2"`` / ``[(1, "127.0.0.1:7001")]`` -> {id: address}."""
    if isinstance(peers, Mapping):
        return {int(k): str(v) for k, v in peers.items()}
    out: dict[int, str] = {}
    if isinstance(peers, str):
        for part in filter(None, (p.strip() for p in peers.split(","))):
            addr, sep, nid = part.rpartition(":")
            if not sep or not nid.isdigit() or ":" not in addr:
                raise UsageError(f"bad peer {part!r}: expected host:port:id")
            out[int(nid)] = addr
        return out
    for nid, addr in peers:
        out[int(nid)] = str(addr)
    return out


def raft_secret(cfg: Any) -> bytes | None:
    """The cluster's raft secret (``raft_secret_file``), or None when it runs without one."""
    getter = getattr(cfg, "raft_secret", None)
    return getter() if callable(getter) else None


@dataclass(frozen=True)
class ClusterSettings:
    """One node's configuration. ``peers`` accepts the forms of ``parse_peers`` and is kept as
    a read-only ``{id: raft address}``; ``priorities`` as a read-only ``{id: 1 | 0 | -1}``."""

    node_id: int
    peers: Mapping[int, str]
    data_dir: Path
    group: str = "bknr"
    name: str = ""                        # "" -> "n<id>"
    election_timeout_ms: int = defaults.ELECTION_TIMEOUT_MS
    heartbeat_ms: int = defaults.HEARTBEAT_MS
    snapshot_threshold: int = defaults.SNAPSHOT_THRESHOLD
    snapshot_trailing: int = defaults.SNAPSHOT_TRAILING
    store_snapshot_every: int | None = None   # None: the engine's rule (half the threshold)
    snapshot_compression: int = defaults.SNAPSHOT_COMPRESSION  # zstd level, 0: off (apply.py)
    batch_max_count: int = defaults.BATCH_MAX_COUNT
    batch_max_bytes: int = defaults.BATCH_MAX_BYTES
    batch_window: int = defaults.BATCH_WINDOW
    checkpoint_every: int = defaults.CHECKPOINT_EVERY
    monitor_interval: float = defaults.MONITOR_INTERVAL_S
    # leadership priorities of every node (id -> 1 preferred, 0 none, -1 avoid; priority.py)
    priorities: Mapping[int, int] = field(default_factory=dict)
    priority_settle_ms: int | None = None
    # process-wide tuning, only when asked (bknr-node asks): pin the Python threads to one CPU
    # (affinity.py), the GIL switch interval, freezing the store out of the cyclic GC (gctune.py)
    python_cpu: int | str | None = None
    switch_interval: float | None = None
    freeze_gc: bool = False
    # credentials: the API bearer token, the raft secret, the TLS raft transport's files
    token: str | None = field(default=None, repr=False)
    secret: bytes | None = field(default=None, repr=False)
    tls: Any = None                       # engine.TlsFiles | None

    def __post_init__(self) -> None:
        peers = parse_peers(self.peers)
        set_ = object.__setattr__  # frozen: normalised once, here
        set_(self, "node_id", int(self.node_id))
        set_(self, "peers", MappingProxyType(peers))
        set_(self, "data_dir", Path(self.data_dir).resolve())
        set_(self, "name", self.name or f"n{self.node_id}")
        set_(self, "priorities",
             MappingProxyType({int(i): int(p) for i, p in (self.priorities or {}).items()}))
        if self.node_id not in peers:
            raise UsageError(f"node id {self.node_id} is not among the peers {sorted(peers)}")
        check_spec(self.python_cpu)  # a bad value fails here, not when the store starts
        if not 0 < self.heartbeat_ms < self.election_timeout_ms:
            raise UsageError("need 0 < heartbeat_ms < election_timeout_ms")
        if self.snapshot_threshold < 1 or self.snapshot_trailing < 0:
            raise UsageError("snapshot_threshold must be positive, snapshot_trailing at least 0")
        if self.store_snapshot_every is not None and self.store_snapshot_every < 1:
            raise UsageError("store_snapshot_every must be positive")
        if not 0 <= self.snapshot_compression <= 19:
            raise UsageError("snapshot_compression must be a zstd level in [0, 19] (0: off)")
        if self.secret is not None and len(self.secret) < 16:
            raise UsageError("the raft secret must be at least 16 bytes")

    # --- derived values ------------------------------------------------------------------

    @property
    def address(self) -> str:
        """This node's raft address."""
        return self.peers[self.node_id]

    @property
    def raft_dir(self) -> Path:
        return DataDirLayout(self.data_dir).raft_dir

    @property
    def blob_dir(self) -> Path:
        return DataDirLayout(self.data_dir).blob_dir

    def replace(self, **changes: Any) -> ClusterSettings:
        """A copy with ``changes`` (validated again, as a new object)."""
        return dataclasses.replace(self, **changes)

    def engine_options(self) -> dict[str, Any]:
        """The engine's keyword parameters (``RaftNode(node_id, address, raft_dir, **options)``):
        the one place the node's settings are mapped onto the engine."""
        opts: dict[str, Any] = {
            "election_timeout_ms": self.election_timeout_ms, "heartbeat_ms": self.heartbeat_ms,
            "snapshot_threshold": self.snapshot_threshold,
            "snapshot_trailing": self.snapshot_trailing,
            "store_snapshot_every": self.store_snapshot_every,
            "max_entry_bytes": max(self.batch_max_bytes + 4096, defaults.MIN_MAX_ENTRY_BYTES)}
        # The raft secret authenticates members on every raft connection (docs/security.md).
        if self.secret is not None:
            opts["secret"] = self.secret
        # Leadership priorities order the engine's election head start (native/fast_election.cpp).
        if any(self.priorities.values()):
            opts["priority"] = self.priorities.get(self.node_id, 0)
            opts["peer_priorities"] = {i: p for i, p in self.priorities.items() if i != self.node_id}
        # TLS (engine.TlsFiles) encrypts the raft connections too.
        if self.tls is not None:
            opts["tls"] = self.tls
        return opts

    # --- from the cluster YAML -------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: Any, node: str | int, **overrides: Any) -> ClusterSettings:
        """The settings of node ``node`` (name or id) of a loaded ``ClusterConfig``; keys in
        ``overrides`` replace the YAML's values (and their files are then not read)."""
        from bknr_cluster.cluster.tls_config import raft_tls_files

        me = cfg.node(node)
        values: dict[str, Any] = dict(
            node_id=me.id, peers={n.id: n.raft_address for n in cfg.nodes}, data_dir=me.data_dir,
            group=cfg.group, name=me.name, election_timeout_ms=cfg.election_timeout_ms,
            heartbeat_ms=cfg.heartbeat_ms, snapshot_threshold=cfg.snapshot_threshold,
            snapshot_trailing=cfg.snapshot_trailing, batch_max_count=cfg.batch_max_count,
            batch_max_bytes=cfg.batch_max_bytes, checkpoint_every=cfg.checkpoint_every,
            snapshot_compression=cfg.snapshot_compression,
            priorities={n.id: n.priority for n in cfg.nodes},
            priority_settle_ms=cfg.priority_settle_ms, python_cpu=me.python_cpu,
            tls=raft_tls_files(cfg, me))
        # credentials come from files: read only those not overridden
        if "token" not in overrides:
            values["token"] = cfg.token()
        if "secret" not in overrides:
            values["secret"] = raft_secret(cfg)
        values.update(overrides)
        return cls(**values)


def settings_fields() -> frozenset[str]:
    """The names ``ClusterSettings`` takes (for callers that split keyword arguments)."""
    return frozenset(f.name for f in dataclasses.fields(ClusterSettings))


__all__ = ["ClusterSettings", "Peers", "parse_peers", "raft_secret", "settings_fields"]
