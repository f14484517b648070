"""Whole-cluster operations of a ClusterStore: membership, leadership, snapshots, status.

A mixin so that ``store.py`` stays about the submit and apply paths; it only uses the engine and
the applier's counters.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from typing import Any

from bknr_cluster.vocabulary import DataDirLayout, Role


class AdminMixin:
    """Mixed into ClusterStore; see docs/api.md for the HTTP face of each method."""

    # provided by ClusterStore
    engine: Any
    monitor: Any
    capabilities: Any
    checkpoints: Any
    verdicts: Any
    halted: Any
    last_checkpoint: int
    name: str
    _refuse_halted: Any
    node_name: Any
    committer: Any
    store: Any
    peers: dict[int, str]
    applied_index: int
    definition: Any
    data_dir: Any
    node_id: int
    _apply_lock: Any
    _map_error: Any
    priority_keeper: Any

    def backup(self) -> tuple[int, bytes]:
        """A store snapshot of this replica with the index it is exactly at. A forked child
        writes it (snapshot_writer.py): applying pauses only for the fork."""
        from bknr_cluster.cluster.snapshot_writer import fork_backup, read_backup

        self._refuse_halted()  # its state lacks committed transactions
        with self._apply_lock:
            index = self.applied_index
            # the system namespace (drill records) is the cluster's, not the application's
            child = fork_backup(self.store, DataDirLayout(self.data_dir).store_snapshot_dir,
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
            Store(None, definition=self.definition, bind=False).load_snapshot(io.BytesIO(snapshot))
        except Exception as exc:
            raise UsageError(f"not a loadable store snapshot for this store: {exc}") from None
        if len(self.store) != 0:
            err = UsageError("the store is not empty: a backup can only seed an empty cluster")
            err.http_status = 409  # type: ignore[attr-defined]
            raise err
        return self._submit_own(
            lambda seq: encode_restore(self.node_id, self.committer.session, seq, digest, snapshot),
            "restore", timeout)

    def _submit_own(self, encode: Any, what: str, timeout: float) -> int:
        """Log an entry of this node's own (``encode(seq)``: restore, checkpoint) and wait until
        it is applied here; returns its index. Failures as for a transaction (DESIGN.md)."""
        from bknr_cluster.errors import Timeout

        w = self.committer.register()
        entry = encode(w.seq)
        try:
            self.engine.submit(entry).result(timeout)
        except Exception as exc:
            self.committer.abandon(w)
            raise self._map_error(exc) from None
        if not self.committer.wait(w, timeout):
            raise Timeout(f"{what} entry not applied within {timeout} s")
        if w.error is not None:
            raise w.error
        return w.index

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

        self._refuse_halted()
        c = self._submit_own(
            lambda seq: encode_system(self.node_id, self.committer.session, seq, "checkpoint",
                                      {"full": bool(full)}),
            "checkpoint", timeout)
        deadline = time.monotonic() + wait_verdict
        while c not in self.verdicts and time.monotonic() < deadline and self.halted is None:
            self.monitor.poke()
            threading.Event().wait(0.05)
        return self.checkpoint_report(c)

    def checkpoint_report(self, c: int) -> dict[str, Any]:
        mine = self.checkpoints.get(c) or {}
        nodes = {self.name: {"id": self.node_id, **mine}}
        for node_id, p in sorted(self.monitor.peers.items()):
            rec = (p.get("checkpoints") or {}).get(c)
            nodes[self.node_name(node_id)] = {"id": node_id, **(rec or {}),
                                              "halted": p.get("halted")}
        return {"index": c, "digest": mine.get("digest"), "full": mine.get("full"),
                "verdict": self.verdicts.get(c), "nodes": nodes}

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
            node_id = self.monitor.healthy_target(list(self.capabilities.voters))
        self.engine.transfer(int(node_id)).result(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.engine.status()
            if st.get("leader_id") and st.get("leader_id") != self.node_id:
                return int(st["leader_id"])
            threading.Event().wait(0.01)
        return int(self.engine.status().get("leader_id") or 0)

    # --- status ---------------------------------------------------------------------------

    def _snapshot_writer_status(self) -> dict[str, Any]:
        w = getattr(self, "_snapshot_writer", None)
        return {"store_snapshot_s": round(w.last_seconds, 3) if w else None,
                "store_snapshot_fork_ms": round(w.last_fork_ms, 1) if w else None,
                "store_snapshot_failures": w.failures if w else 0}

    def is_leader(self) -> bool:
        return self.engine.status().get("state") == "leader"

    def status(self, with_digest: bool = True) -> dict[str, Any]:
        st = self.engine.status()
        leader_id = int(st.get("leader_id") or 0)
        applied, digest = self.digest() if with_digest else (self.applied_index, None)
        last = int(st.get("last_log_index") or 0)
        conf = [{"id": c["id"], "address": c["address"], "role": c["role"],
                 "name": self.node_name(c["id"]), "api": self.api_url(c["id"])}
                for c in st.get("configuration") or []]
        followers = [{"id": f["id"], "match_index": f["match_index"],
                      "lag": max(0, last - int(f["match_index"]))}
                     for f in st.get("followers") or []]
        return {
            "node_id": self.node_id, "name": self.name, "group": self.group, "pid": os.getpid(),
            "address": self.address, "role": st.get("state"), "term": st.get("term"),
            "leader_id": leader_id, "leader_name": self.node_name(leader_id) if leader_id else "",
            "leader_address": st.get("leader_address") or "",
            "leader_api": self.api_url(leader_id), "commit_index": st.get("commit_index"),
            "applied_index": applied, "engine_applied": st.get("last_applied"),
            "last_log_index": last, "snapshot_index": st.get("snapshot_index"),
            "snapshot_term": st.get("snapshot_term"), "store_snapshot_index": self.last_store_snapshot,
            "digest": digest, "configuration": conf, "followers": followers,
            "batches": self.committer.batches, "batched_records": self.committer.items,
            "applied_entries": self.applied_entries, "applied_records": self.applied_records,
            "failed_records": self.failed_records, "corrupt_entries": self.corrupt_entries,
            "restores": self.restores, "replayed_entries": self.replayed_entries,
            # the forked store snapshot writer (snapshot_writer.py): last wall time, failures
            **self._snapshot_writer_status(),
            # libraft 0.22.1 work-arounds at work (native/DESIGN.md §1)
            "commit_clamps": st.get("commit_clamps", 0),
            "mislabeled_snapshots": st.get("mislabeled_snapshots", 0),
            # the engine's last disk/IO problem (e.g. no space for the log), None when healthy
            "last_error": st.get("last_error"),
            "uptime_s": round(time.time() - self.started_at, 3),
            # authenticated raft transport counters (accepted, connected, refused_*), if enabled
            "auth": st.get("auth"),
            # elections sped up by the thesis vote rule (native/vote_rule.cpp)
            "relaxed_votes": st.get("relaxed_votes", 0),
            "pre_vote_tie_refusals": st.get("pre_vote_tie_refusals", 0),
            "timeouts_now_retried": st.get("timeouts_now_retried", 0),
            "early_campaigns": st.get("early_campaigns", 0),
            # pre-vote rounds re-sent early after a lost message (native/vote_rule.cpp)
            "pre_vote_retries": st.get("pre_vote_retries", 0),
            # the current randomised election timeout (follower/candidate), drawn every term
            "election_timer_ms": st.get("election_timer_ms", 0),
            # the CPU this node's Python threads are pinned to (python_cpu), None when not
            "python_cpu": self.python_cpu,
            # a replica that stopped applying (DESIGN.md "Halting a replica"), else None
            "halted": self.halted,
            "halted_refused_votes": st.get("halted_refused_votes", 0),
            # this node's store definition, and every member's as published through the log
            "definition": self.capabilities.own,
            "definitions": self.capabilities.view(self.node_name),
            # our digest at the recent consistency checkpoints, and the majority's verdicts
            "last_checkpoint": self.last_checkpoint,
            "checkpoints": {str(c): {"digest": r["digest"], "schema": r["schema"],
                                     **({"full": r["full"]} if "full" in r else {})}
                            for c, r in list(self.checkpoints.items())[-16:]},
            "verdicts": {str(c): {"result": v["result"], "digest": v["digest"], "agree": v["agree"]}
                         for c, v in list(self.verdicts.items())[-4:]},
            # the leader's stream closing and elections started at once (native/fast_election.cpp)
            "leader_closes": st.get("leader_closes", 0),
            "leaders_gone": st.get("leaders_gone", 0),
            "fast_elections": st.get("fast_elections", 0),
            # the last fast election this node won: ms from the leader's stream closing to the
            # probe's refusal, to its campaign, to leading
            "fast_election_ms": list(st.get("fast_election_ms", (0, 0, 0))),
            # leadership priority and the automatic transfers this node made (priority.py)
            **self.priority_keeper.stats(),
        }
