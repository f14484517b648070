"""Whole-cluster operations of a ClusterStore: membership, leadership, snapshots, backups,
checkpoints on demand.

``ClusterAdmin`` is a collaborator of the ClusterStore with an explicit set of parts: the
engine, the local store, the applier (the applied index and the apply lock), the submitter
(this node's own entries), the monitor, and the live peer table it alone changes. See
docs/api.md for the HTTP face of each method.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Callable
from typing import Any

from bknr_cluster.vocabulary import DataDirLayout, Role


class ClusterAdmin:
    """Membership, transfer, snapshots, backup/restore and checkpoints of one node.

    ``node_id``/``name``: this node; ``peers`` ({id: raft address}) is the live peer table:
    ``add_peer`` adds, ``remove_peer`` removes (nobody else changes it); ``node_name`` names an
    id for messages.
    """

    def __init__(self, node_id: int, name: str, engine: Any, store: Any, applier: Any,
                 submitter: Any, monitor: Any, peers: dict[int, str],
                 node_name: Callable[[int], str]) -> None:
        self.node_id = node_id
        self.name = name
        self.engine = engine
        self.store = store
        self.applier = applier
        self.submitter = submitter
        self.monitor = monitor
        self.peers = peers
        self.node_name = node_name

    def backup(self) -> tuple[int, bytes]:
        """A store snapshot of this replica with the index it is exactly at. A forked child
        writes it (snapshot_writer.py): applying pauses only for the fork."""
        from bknr_cluster.cluster.snapshot_writer import fork_backup, read_backup

        self.submitter.refuse_halted()  # its state lacks committed transactions
        with self.applier.paused() as index:
            # the system namespace (drill records) is the cluster's, not the application's
            child = fork_backup(self.store, DataDirLayout(self.applier.data_dir).store_snapshot_dir,
                                include_system=False)
        return index, read_backup(child)

    def restore_backup(self, snapshot: bytes, sha256_hex: str | None = None,
                       timeout: float = 120.0) -> int:
        """Seed an empty cluster with a backup (``GET /backup`` body) through the log.

        Validated here before anything is logged (checksum, loadable by this definition, store
        empty); every replica then loads it at the same index. Returns that index."""
        from bknr_cluster.cluster.batch import encode_restore
        from bknr_cluster.errors import UsageError
        from bknr_cluster.store import Store

        digest = hashlib.sha256(snapshot).digest()
        if sha256_hex is not None and sha256_hex.strip().lower() != digest.hex():
            raise UsageError("the backup does not match its X-Bknr-Sha256 checksum")
        try:
            Store(None, definition=self.store.definition, bind=False).load_snapshot(io.BytesIO(snapshot))
        except Exception as exc:
            raise UsageError(f"not a loadable store snapshot for this store: {exc}") from None
        if len(self.store) != 0:
            err = UsageError("the store is not empty: a backup can only seed an empty cluster")
            err.http_status = 409  # type: ignore[attr-defined]
            raise err
        return self._submit_own(
            lambda seq: encode_restore(self.node_id, self.submitter.committer.session, seq, digest, snapshot),
            "restore", timeout)

    def _submit_own(self, encode: Callable[[int], bytes], what: str, timeout: float) -> int:
        return self.submitter.submit_own(self.engine, encode, what, timeout)

    def snapshot_now(self, timeout: float = 30.0) -> int:
        """A Raft snapshot of the current state (``POST /snapshot``); returns its index.

        The engine has the applier serialise the store at the commit index first; half the
        timeout is left for that, after which the engine falls back to the latest store snapshot
        it holds (plus the raw entries since), so the call still completes within ``timeout``
        when the applier is slow (a long backlog, a huge store)."""
        return int(self.engine.snapshot_now(store_wait=timeout / 2).result(timeout) or 0)

    # --- consistency checkpoints (DESIGN.md) ----------------------------------------------

    def checkpoint_now(self, full: bool = False, timeout: float = 30.0,
                       wait_verdict: float = 10.0) -> dict[str, Any]:
        """Log a checkpoint entry now (leader only) and wait for the majority's verdict.

        Every replica records its state digest at the entry's index C; with ``full`` each also
        walks its whole store (``digest_full``) to check its incremental digest. Returns
        ``{"index": C, "digest", "full", "verdict", "nodes": {name: {...}}}``; ``verdict`` is
        None when no majority reported within ``wait_verdict`` seconds."""
        from bknr_cluster.cluster.batch import encode_system

        self.submitter.refuse_halted()
        c = self._submit_own(
            lambda seq: encode_system(self.node_id, self.submitter.committer.session, seq, "checkpoint",
                                      {"full": bool(full)}),
            "checkpoint", timeout)
        deadline = time.monotonic() + wait_verdict
        checks = self.applier.checks
        while c not in checks.verdicts and time.monotonic() < deadline \
                and self.applier.halted is None:
            self.monitor.poke()
            threading.Event().wait(0.05)
        return self.checkpoint_report(c)

    def checkpoint_report(self, c: int) -> dict[str, Any]:
        checks = self.applier.checks
        mine = checks.checkpoints.get(c) or {}
        nodes = {self.name: {"id": self.node_id, **mine}}
        for node_id, p in sorted(self.monitor.peers.items()):
            rec = (p.get("checkpoints") or {}).get(c)
            nodes[self.node_name(node_id)] = {"id": node_id, **(rec or {}),
                                              "halted": p.get("halted")}
        return {"index": c, "digest": mine.get("digest"), "full": mine.get("full"),
                "verdict": checks.verdicts.get(c), "nodes": nodes}

    # --- membership -----------------------------------------------------------------------

    def add_peer(self, node_id: int, address: str, role: str = Role.voter, timeout: float = 30.0) -> None:
        self.engine.add(int(node_id), address).result(timeout)
        self.peers[int(node_id)] = address
        if role != Role.spare:
            self.engine.assign(int(node_id), role).result(timeout)
        self.monitor.poke()  # the gate's voter set and the newcomer's definition

    def assign(self, node_id: int, role: str, timeout: float = 30.0) -> None:
        self.engine.assign(int(node_id), role).result(timeout)
        self.monitor.poke()

    def remove_peer(self, node_id: int, timeout: float = 30.0) -> None:
        self.engine.remove(int(node_id)).result(timeout)
        # symmetric with add_peer: a removed member is no longer a peer of this replica
        self.peers.pop(int(node_id), None)
        self.monitor.poke()

    def transfer(self, node_id: int = 0, timeout: float = 10.0) -> int:
        """Hand leadership to ``node_id`` (0: best candidate); returns the new leader's id.
        A halted replica is never a target (it would refuse to campaign anyway)."""
        from bknr_cluster.errors import UsageError

        halted = self.monitor.halted_peers()
        if node_id and int(node_id) in halted:
            raise UsageError(f"{self.node_name(int(node_id))} is halted: it cannot lead")
        if not node_id and halted:
            node_id = self.monitor.healthy_target(list(self.applier.capabilities.voters))
        self.engine.transfer(int(node_id)).result(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.engine.status()
            if st.get("leader_id") and st.get("leader_id") != self.node_id:
                return int(st["leader_id"])
            threading.Event().wait(0.01)
        return int(self.engine.status().get("leader_id") or 0)
