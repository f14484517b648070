"""import --store-dir / export --store-dir: a standalone store of 100k objects into a 3-node
cluster of real node processes and back, equal; the source directory is left untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bknr_cluster.store import Store
from tests.cli.conftest import write_yaml
from tests.cli.notes_app import definition as notes
from tests.cli.realcluster import client, invoke, kill_started, node_pids
from tests.support import free_ports

OBJECTS = 100_000
LOGGED = 50          # records after the snapshot: the import must replay the log too


def _fingerprint(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file()}


def test_standalone_store_into_a_cluster_and_back(runner, tmp_path: Path) -> None:
    src = tmp_path / "standalone"
    store = Store(src, definition=notes, sync=False)
    store.execute("add_notes", "bulk", OBJECTS)
    store.snapshot()
    for i in range(LOGGED):
        store.execute("add_note", f"late-{i}", "after the snapshot")
    digest, rows = store.digest(), store.run_query("notes")
    store.close()
    before = _fingerprint(src)

    path = write_yaml(tmp_path, free_ports(6), n=3, store="tests.cli.notes_app:definition")
    seen: set[int] = set()
    try:
        r = invoke(runner, path, "import", "--store-dir", str(src), "--yes", "-o", "json")
        seen |= set(node_pids(path).values())
        assert r.exit_code == 0, r.output
        got = json.loads(r.stdout)
        assert got["objects"] == OBJECTS + LOGGED and got["verified"] is True and got["digest"] == digest
        assert _fingerprint(src) == before                    # the source was not touched
        for n in ("n1", "n2", "n3"):                          # every replica holds it
            assert client(path, n).query("notes", consistent=n == got["leader"])["result"][-1] == \
                [OBJECTS + LOGGED, f"late-{LOGGED - 1}", "after the snapshot"]

        # a second import into the now live cluster is refused
        r = invoke(runner, path, "import", "--store-dir", str(src), "--yes")
        assert r.exit_code == 2 and "refusing to restore over a live cluster" in r.stderr

        out = tmp_path / "exported"
        r = invoke(runner, path, "export", "--store-dir", str(out), "-o", "json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["objects"] == OBJECTS + LOGGED
        back = Store(out, definition=notes)
        try:
            assert back.digest() == digest and back.run_query("notes") == rows
            back.execute("add_note", "after-export", "the exported store takes writes")
        finally:
            back.close()
        r = invoke(runner, path, "export", "--store-dir", str(out))
        assert r.exit_code == 2 and "not empty" in r.stderr
    finally:
        seen |= set(node_pids(path).values())
        kill_started(path, seen)


def test_import_refuses_what_is_not_a_store(runner, tmp_path: Path) -> None:
    path = write_yaml(tmp_path, free_ports(6), n=3, store="tests.cli.notes_app:definition")
    (tmp_path / "empty").mkdir()
    r = invoke(runner, path, "import", "--store-dir", str(tmp_path / "empty"), "--yes")
    assert r.exit_code == 2 and "not a standalone store directory" in r.stderr
    bad = tmp_path / "bad"
    store = Store(bad, definition=notes, sync=False)
    store.execute("add_note", "a", "b")
    store.snapshot()
    store.close()
    snap = next(bad.glob("snapshot-*.snap"))
    data = bytearray(snap.read_bytes())
    data[-3] ^= 0xFF
    snap.write_bytes(bytes(data))
    r = invoke(runner, path, "import", "--store-dir", str(bad), "--yes")
    assert r.exit_code == 1 and "does not open as a store" in r.stderr
    assert not (tmp_path / "data").exists()                   # nothing was initialised
