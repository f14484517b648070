"""Backups: the backup file format (magic line, JSON header with the checksum, store snapshot),
verifying one without a cluster, and seeding a new cluster from a store snapshot (restore and
import)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

from bknr_cluster.errors import BknrError, CorruptData, UsageError
from bknr_cluster.vocabulary import error_from_body

from .client import parallel
from .cluster import Cluster
from .control import controller
from .nodes import start_nodes
from .output import confirm
from .provision import ensure_token

BACKUP_MAGIC = b"BKNRBACKUP1\n"


def write_backup(path: Path, header: dict, payload: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(BACKUP_MAGIC)
        f.write(json.dumps(header, sort_keys=True).encode() + b"\n")
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_backup(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    if not data.startswith(BACKUP_MAGIC):
        raise CorruptData(f"{path} is not a bknrctl backup file")
    head, sep, payload = data[len(BACKUP_MAGIC):].partition(b"\n")
    try:
        header = json.loads(head)
    except ValueError:
        raise CorruptData(f"{path}: damaged backup header") from None
    if not sep or hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CorruptData(f"{path}: checksum mismatch (the file is damaged or truncated)")
    return header, payload


def check_backup(path: Path, cluster: Cluster | None) -> dict[str, Any]:
    """Verify a backup file without restoring: magic, header, checksum, and (with the YAML's store
    definition) that the snapshot loads; returns what was checked."""
    header, payload = read_backup(path)
    out: dict[str, Any] = {"file": str(path), "checksum": "ok", **header}
    if cluster is None:
        out["loadable"] = None
        return out
    from bknr_cluster.cluster.loader import load_definition
    from bknr_cluster.store import Store

    if header.get("store") and header["store"] != cluster.cfg.store:
        raise UsageError(f"{path} is a backup of store {header['store']}, the YAML runs {cluster.cfg.store}")
    store = Store(None, definition=load_definition(cluster.cfg.store, cluster.cfg.base_dir), bind=False)
    try:
        objects = store.load_snapshot(io.BytesIO(payload))
    except BknrError as exc:
        raise BknrError(f"{path}: checksum ok but the snapshot does not load: {exc}") from None
    out.update(loadable=True, objects=objects, digest=store.digest())
    return out


def seed_new_cluster(cluster: Cluster, payload: bytes, source: str, yes: bool) -> tuple[str, int]:
    """Init and start the YAML's new cluster and load ``payload`` (a store snapshot) through the
    log (POST /restore); refuses a live cluster or one with Raft state. Returns (leader, index)."""
    live = [n.name for n, r in zip(cluster.cfg.nodes, parallel(
        lambda n: cluster.clients[n.name].health(timeout=1.0), list(cluster.cfg.nodes)), strict=True)
        if not isinstance(r, BaseException)]
    if live:
        raise UsageError(f"refusing to restore over a live cluster ({', '.join(live)} answering); "
                         "this seeds a new cluster")
    ctls = [controller(cluster.cfg, n) for n in cluster.cfg.nodes]
    try:
        existing = [c.node.name for c in ctls if c.has_raft_state()]
        if existing:
            raise UsageError(f"refusing: {', '.join(existing)} already hold Raft state; this seeds "
                             "a new cluster (use a fresh YAML / data dirs)")
        confirm(f"Seed cluster {cluster.cfg.group} from {source}?", yes)
        ensure_token(cluster.cfg)
        cluster = Cluster(cluster.cfg)  # re-read the token that may just have been created
        for c in ctls:
            c.init()
    finally:
        for c in ctls:
            c.close()
    start_nodes(cluster, list(cluster.cfg.nodes))
    leader = cluster.wait_for_leader(timeout=30.0)
    r = cluster.clients[leader.name].exchange(
        "POST", "/restore", None, timeout=300.0, data=payload,
        headers={"X-Bknr-Sha256": hashlib.sha256(payload).hexdigest()})
    if r.status != 200:
        raise error_from_body(r.status, r.body, leader.name)
    return leader.name, int(r.body.get("index") or 0)
