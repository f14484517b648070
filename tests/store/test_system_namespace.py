"""The system namespace every store has (bknr_cluster/store/system.py)."""

from __future__ import annotations

import io

import pytest

from bknr_cluster.errors import UsageError
from bknr_cluster.store import Store, StoreDefinition, transaction
from tests.cli.notes_app import Note
from tests.cli.notes_app import definition as notes

OPEN, TRANSFER, CLEAR = "bknr.sys.drill_open", "bknr.sys.drill_transfer", "bknr.sys.drill_clear"


def _store() -> Store:
    s = Store(None, definition=notes)
    _run(s, "add_note", "a", "first")
    return s


def _run(s: Store, name: str, *args):
    """Apply with a fixed timestamp, so two stores given the same calls are equal."""
    return s.apply_record(s.encode_transaction_at(1_000 + s.last_index, name, *args))


def _snapshot(s: Store, **kw) -> bytes:
    buf = io.BytesIO()
    s.write_snapshot(buf, **kw)
    return buf.getvalue()


def test_drill_records_are_invisible_to_the_application() -> None:
    s = _store()
    before = _snapshot(s)
    assert b"\xa6system" not in before
    assert s.execute(OPEN, "x", 10) is True and s.execute(OPEN, "y", 10) is True
    assert s.execute(OPEN, "x", 99) is False                 # exists: kept as it was
    assert s.execute(TRANSFER, "x", "y", 3, "r1") is True
    assert s.execute(TRANSFER, "x", "y", 3, "r1") is False   # at most once per ref
    with pytest.raises(ValueError):
        s.execute(TRANSFER, "x", "y", 100, "r2")
    assert s.run_query("bknr.sys.drill_total") == 20
    assert b"\xa6system" in _snapshot(s)
    assert s.run_query("bknr.sys.drill_applied") == ["r1"]
    # the application sees its one note, nothing else
    assert len(s) == 1 and [n.key for n in Note.all()] == ["a"]
    assert s.run_query("notes") == [[1, "a", "first"]]
    # a backup leaves the namespace out: loaded elsewhere, it is the application's state only
    restored = Store(None, definition=notes)
    restored.load_snapshot(io.BytesIO(_snapshot(s, include_system=False)))
    assert restored.system == {} and restored.run_query("notes") == [[1, "a", "first"]]
    assert s.execute(CLEAR) == 3 and s.system == {}
    assert b"\xa6system" not in _snapshot(s)     # no system frame once it is empty again


def test_snapshot_and_digest_cover_the_namespace() -> None:
    a, b = _store(), _store()
    assert a.digest() == b.digest()
    _run(a, OPEN, "x", 10)
    _run(b, OPEN, "x", 11)
    assert a.digest() != b.digest()                          # a divergence there shows
    c = Store(None, definition=notes)
    c.load_snapshot(io.BytesIO(_snapshot(a)))
    assert c.system == a.system and c.digest() == a.digest()
    c.load_snapshot(io.BytesIO(_snapshot(a, include_system=False)))
    assert c.system == {} and len(c) == 1


def test_the_prefix_is_reserved() -> None:
    @transaction("bknr.sys.mine")
    def mine() -> None:
        pass

    with pytest.raises(UsageError, match="reserved"):
        StoreDefinition("x", classes=[], transactions=[mine])


def test_short_names_of_the_application_are_unaffected() -> None:
    @transaction("app.drill_open")
    def drill_open() -> str:
        return "app's own"

    s = Store(None, definition=StoreDefinition("y", classes=[], transactions=[drill_open]))
    assert s.execute("drill_open") == "app's own"
