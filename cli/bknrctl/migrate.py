"""Moving in and out: ``import --store-dir`` seeds a new cluster from a standalone store directory,
``export --store-dir`` writes the cluster's state as one (docs/administration.md, "Migrating").

Import never touches the source directory: it is copied to a temporary folder and opened there
with ``Store(copy, definition)`` — the same restart a standalone process does (newest snapshot,
then every logged record, checksums and record order verified) — before any node starts. The
state it reaches is handed to the new cluster exactly as ``restore`` hands a backup (one log
entry), and the cluster's digest at that index must equal the standalone store's.

Export takes the leader's backup (the state at one applied index, system namespace left out),
loads it into ``Store(DIR, definition)`` in a new directory and writes that store's snapshot, so
``Store(DIR)`` opens it like any directory it wrote itself.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from bknr_cluster.errors import BknrError, CorruptData, UsageError

from .app import ConfigOpt, OutputFormat, OutputOpt, YesOpt, app, cluster_for
from .backup import seed_new_cluster
from .cluster import Cluster
from .output import emit_json, guarded, info, progress

StoreDirOpt = Annotated[Path, typer.Option("--store-dir", help="Standalone store directory.")]


def _definition(cluster: Cluster) -> Any:
    from bknr_cluster.cluster.loader import load_definition

    return load_definition(cluster.cfg.store, cluster.cfg.base_dir)


def read_store_dir(directory: Path, definition: Any) -> tuple[bytes, str, int, list[str]]:
    """(snapshot with blobs, digest, objects, restart warnings) of a standalone store directory,
    opened on a copy so the source is left exactly as it is."""
    from bknr_cluster.store import Store

    if not directory.is_dir() or not any(directory.glob("snapshot-*.snap")) and \
            not any(directory.glob("log-*.log")):
        raise UsageError(f"{directory} is not a standalone store directory (no snapshot-*.snap "
                         "or log-*.log)")
    with tempfile.TemporaryDirectory(prefix="bknr-import-") as tmp:
        copy = Path(tmp) / "store"
        shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("LOCK", "*.tmp"))
        try:
            store = Store(copy, definition=definition, bind=False)
        except (BknrError, OSError) as exc:
            raise CorruptData(f"{directory} does not open as a store: {exc}") from None
        try:
            buf = io.BytesIO()
            objects = store.write_snapshot(buf, include_blobs=True)
            return buf.getvalue(), store.digest(), objects, list(store._durable.warnings)
        finally:
            store.close()


@app.command("import")
@guarded
def import_(ctx: typer.Context, store_dir: StoreDirOpt, config: ConfigOpt = None, yes: YesOpt = False,
            output: OutputOpt = OutputFormat.table) -> None:
    """Seed a NEW cluster (the YAML's) from a standalone store directory, verified first."""

    cluster = cluster_for(ctx, config)
    with progress(f"reading {store_dir}"):
        payload, digest, objects, warnings = read_store_dir(store_dir, _definition(cluster))
    for w in warnings:
        info(f"warning: {w}")
    leader, index = seed_new_cluster(cluster, payload, f"{store_dir} ({objects} objects)", yes)
    # The cluster layer appends entries of its own after the restore entry (definitions), so
    # read the digest at one log index through a consistency checkpoint: nothing but the
    # restore has touched the store of a new cluster, and every replica is compared too.
    cp = cluster.clients[leader].call("POST", "/checkpoint", {"full": False, "wait": 30}, timeout=90)
    got = cp.get("digest")
    if got is not None and got != digest:
        raise CorruptData(f"imported state differs from {store_dir}: digest {got} != {digest}")
    result = {"store_dir": str(store_dir), "objects": objects, "index": index, "leader": leader,
              "digest": digest, "verified": got == digest}
    if output is OutputFormat.json:
        emit_json(result)
    else:
        info(f"imported {objects} objects from {store_dir} into {cluster.cfg.group} at index {index} "
             f"(leader {leader}, digest {digest[:16]}{', equal' if got == digest else ''})")


@app.command("export")
@guarded
def export(ctx: typer.Context, store_dir: StoreDirOpt, config: ConfigOpt = None,
           output: OutputOpt = OutputFormat.table) -> None:
    """Write the cluster's state at one applied index as a new standalone store directory."""
    from bknr_cluster.store import Store

    if store_dir.exists() and any(store_dir.iterdir()):
        raise UsageError(f"{store_dir} exists and is not empty; export writes a new store directory")
    cluster = cluster_for(ctx, config)
    definition = _definition(cluster)
    leader = cluster.leader_node()
    with progress(f"export from {leader.name}"):
        r = cluster.clients[leader.name].backup()
        index = int(r.headers.get("x-bknr-index", 0))
        store = Store(store_dir, definition=definition, bind=False)
        try:
            objects = store.load_snapshot(io.BytesIO(r.body))
            store.snapshot()
            digest = store.digest()
        finally:
            store.close()
    result = {"store_dir": str(store_dir), "objects": objects, "index": index, "leader": leader.name,
              "digest": digest}
    if output is OutputFormat.json:
        emit_json(result)
    else:
        info(f"exported {objects} objects at index {index} from {leader.name} to {store_dir} "
             f"(digest {digest[:16]})")
