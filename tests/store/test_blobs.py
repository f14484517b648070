"""Blobs: content-addressed files created in transactions, carried by snapshots, collected."""

import hashlib
import io
import os

import pytest

from bknr_cluster.errors import NotInTransaction, StoreError
from bknr_cluster.store import Store, make_blob
from tests.store.models import Doc, definition


def test_blob_created_in_transaction_and_stored_beside_the_store(disk, tmp_path):
    s = disk()
    doc = s.execute("store_doc", "a", b"hello")
    sha = hashlib.sha256(b"hello").hexdigest()
    assert doc.body.sha256 == sha and doc.body.size == 5
    assert open(tmp_path / "store" / "blobs" / sha[:2] / sha, "rb").read() == b"hello"
    assert doc.body.read() == b"hello" and s.blobs.get(doc.body) == b"hello"
    s.close()
    s2 = disk()
    assert s2.all(Doc)[0].body.read() == b"hello"


def test_make_blob_outside_transaction():
    with pytest.raises(NotInTransaction):
        make_blob(b"x")


def test_snapshot_carries_blob_contents(mem, tmp_path):
    mem.execute("store_doc", "a", b"content-a")
    data = mem.snapshot_bytes()
    other = Store(None, definition=definition, blob_dir=str(tmp_path / "other-blobs"), bind=False)
    other.load_snapshot(io.BytesIO(data))
    doc = other.all(Doc)[0]
    assert other.blobs.get(doc.body) == b"content-a"
    assert os.path.exists(other.blobs.path(doc.body))
    assert other.digest() == mem.digest()


def test_orphans_are_collected(disk):
    s = disk()
    keep = s.execute("store_doc", "keep", b"keep")
    s.execute("store_doc", "gone", b"gone")
    s.execute("drop_doc", "gone")
    removed = s.collect_blobs()
    assert removed == [hashlib.sha256(b"gone").hexdigest()]
    assert s.blobs.hashes() == {keep.body.sha256}
    assert s.collect_blobs() == []


def test_missing_blob_content_is_reported(mem):
    doc = mem.execute("store_doc", "a", b"x")
    mem.blobs.remove(doc.body.sha256)
    with pytest.raises(StoreError, match="missing"):
        doc.body.read()
