"""Snapshot retention: each node keeps its ``snapshot.keep`` newest snapshots in data_dir/snapshots.

libraft owns ``data_dir/raft``: after every snapshot it writes (``snapshot-TERM-INDEX-MS`` plus
``.meta``) it deletes all but the two newest itself. The engine needs the newest (restart, sending
it to a follower) and may still be reading the one before for a follower, so nothing here ever
deletes in ``raft/``. Retention works on *archive copies* instead: every complete snapshot pair
that appears in ``raft/`` is hard-linked (copied where the file system refuses links) into
``data_dir/snapshots``, and all but the ``keep`` newest pairs there are deleted. A pair is
archived data file first, ``.meta`` last, so an archived pair with both files is complete.

The node runs ``SnapshotKeeper.check`` once a second (from the leader-history observer thread,
history.py); ``bknrctl snapshot --keep N``
runs ``archive`` right after its snapshot, locally or over SSH (``python -m
bknr_cluster.cluster.retention DATA_DIR N``, which prints one JSON line).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from bknr_cluster.vocabulary import (
    ENGINE_SNAPSHOT_META_SUFFIX,
    SNAPSHOT_ARCHIVE_DIR,
    DataDirLayout,
    parse_engine_snapshot,
)

log = logging.getLogger("bknr.retention")

ARCHIVE = SNAPSHOT_ARCHIVE_DIR
META = ENGINE_SNAPSHOT_META_SUFFIX


def complete_snapshots(folder: Path) -> list[tuple[tuple[int, int, int], str]]:
    """``((index, term, ms), name)`` of every snapshot with both files in ``folder``, oldest first."""
    try:
        names = set(os.listdir(folder))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        parsed = parse_engine_snapshot(name)
        if parsed and name + META in names:
            term, index, ms = parsed
            out.append(((index, term, ms), name))
    return sorted(out)


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)  # another file system, or links not allowed
    os.replace(tmp, dst)


def archive(data_dir: str | os.PathLike, keep: int) -> dict[str, int]:
    """Archive the engine's complete snapshots, then keep the ``keep`` newest archived ones.

    Never touches ``data_dir/raft``. Returns ``{"archived", "removed", "kept"}``."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    layout = DataDirLayout(Path(data_dir))
    raft_dir, dest = layout.raft_dir, layout.snapshot_archive
    dest.mkdir(parents=True, exist_ok=True)
    archived = 0
    # only newer than the newest archived one: an older snapshot libraft still holds was
    # archived (and maybe pruned) before, and must not come back
    held = complete_snapshots(dest)
    newest = held[-1][0] if held else None
    for key, name in complete_snapshots(raft_dir):
        if newest is not None and key <= newest:
            continue
        try:
            _link(raft_dir / name, dest / name)
            _link(raft_dir / (name + META), dest / (name + META))
            archived += 1
        except FileNotFoundError:
            continue  # libraft deleted it meanwhile: a newer one exists and is archived next time
    pairs = complete_snapshots(dest)
    removed = 0
    for _, name in pairs[:-keep]:
        for f in (dest / (name + META), dest / name):  # .meta first: never a pair that looks whole
            f.unlink(missing_ok=True)
            removed += 1
    # a data file whose .meta never arrived (crash while archiving) is no snapshot: drop it
    for f in dest.iterdir():
        orphan = parse_engine_snapshot(f.name) and not (dest / (f.name + META)).exists()
        if f.name.endswith(".tmp") or orphan:
            f.unlink(missing_ok=True)
    return {"archived": archived, "removed": removed, "kept": min(len(pairs), keep)}


class SnapshotKeeper:
    """Archives and prunes after every new engine snapshot; ``check`` is called once a second
    by the node's observer thread (history.py)."""

    def __init__(self, engine: Any, data_dir: str | os.PathLike, keep: int):
        self.engine, self.data_dir, self.keep = engine, data_dir, keep
        self._seen: Any = None

    def check(self) -> dict[str, int] | None:
        """One round: archive when the engine's snapshot index moved since the last round."""
        index = self.engine.status().get("snapshot_index")
        if not index or index == self._seen:
            return None
        result = archive(self.data_dir, self.keep)
        self._seen = index
        if result["archived"] or result["removed"]:
            log.info("snapshot retention: archived %d, removed %d file(s), keeping %d of keep=%d",
                     result["archived"], result["removed"], result["kept"], self.keep)
        return result


def main(argv: list[str] | None = None) -> int:
    """``python -m bknr_cluster.cluster.retention DATA_DIR KEEP``: one JSON line on stdout."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].isdigit() or int(args[1]) < 1:
        print("usage: python -m bknr_cluster.cluster.retention DATA_DIR KEEP (KEEP >= 1)",
              file=sys.stderr)
        return 2
    print(json.dumps(archive(args[0], int(args[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
