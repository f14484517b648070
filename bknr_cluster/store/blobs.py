"""Blobs: immutable byte contents attached to objects, stored content-addressed beside the store.

A ``Blob`` is a small value (sha256 + size) kept in an attribute; the bytes live in
``<blob_dir>/<sha[:2]>/<sha>`` (or in memory for a store without a directory). Blobs are created
inside transactions with ``make_blob(data)``; because the name is the content hash, re-creating
one on replay is idempotent, and a blob created by a transaction that then failed is simply an
orphan, removed by ``Store.collect_blobs()``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any

from bknr_cluster.errors import CorruptData, NotInTransaction, StoreError


class Blob:
    """Reference to blob content: equal when the content is equal."""

    __slots__ = ("sha256", "size")

    def __init__(self, sha256: str, size: int):
        object.__setattr__(self, "sha256", sha256)
        object.__setattr__(self, "size", size)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Blob is immutable")

    def __eq__(self, other: object) -> bool:
        return type(other) is Blob and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)

    def __repr__(self) -> str:
        return f"Blob({self.sha256[:12]}..., {self.size} bytes)"

    def read(self) -> bytes:
        """The content, from the store running in this thread or the default-bound store."""
        from bknr_cluster.store.model import LOCAL
        store = LOCAL.store if LOCAL.store is not None else BlobStore.default_owner
        if store is None:
            raise StoreError("no store to read the blob from")
        return store.blobs.get(self)


def make_blob(data: bytes) -> Blob:
    """Store ``data`` as a blob; only inside a transaction (so it is replayed with it)."""
    from bknr_cluster.store.model import LOCAL
    tx = LOCAL.tx
    if tx is None:
        raise NotInTransaction("blobs are created inside transactions")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"blob content must be bytes, got {type(data).__name__}")
    return tx.store.blobs.put(bytes(data))


class BlobStore:
    """Content-addressed blob files (or a dict when ``directory`` is None)."""

    default_owner: Any = None   # the last store opened; used by Blob.read() outside any context

    def __init__(self, directory: str | None, sync: bool = True):
        self.directory = directory
        self.sync = sync
        self._mem: dict[str, bytes] = {}
        if directory is not None:
            os.makedirs(directory, exist_ok=True)

    def _path(self, sha: str) -> str:
        assert self.directory is not None
        return os.path.join(self.directory, sha[:2], sha)

    def put(self, data: bytes, sha: str | None = None) -> Blob:
        digest = hashlib.sha256(data).hexdigest()
        if sha is not None and sha != digest:
            raise CorruptData(f"blob content does not match its hash {sha}")
        if self.directory is None:
            self._mem.setdefault(digest, data)
            return Blob(digest, len(data))
        path = self._path(digest)
        if not os.path.exists(path):
            # temp file + fsync + rename: a crash never leaves a partial file under the final name
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    if self.sync:
                        f.flush()
                        os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        return Blob(digest, len(data))

    def get(self, blob: Blob) -> bytes:
        if self.directory is None:
            try:
                return self._mem[blob.sha256]
            except KeyError:
                raise StoreError(f"blob {blob.sha256} is missing") from None
        try:
            with open(self._path(blob.sha256), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise StoreError(f"blob {blob.sha256} is missing from {self.directory}") from None

    def path(self, blob: Blob) -> str | None:
        """Filesystem path of the content (None for an in-memory blob store)."""
        return None if self.directory is None else self._path(blob.sha256)

    def hashes(self) -> set[str]:
        if self.directory is None:
            return set(self._mem)
        found = set()
        for sub in os.listdir(self.directory):
            folder = os.path.join(self.directory, sub)
            if len(sub) == 2 and os.path.isdir(folder):
                found.update(n for n in os.listdir(folder) if not n.startswith(".tmp-"))
        return found

    def remove(self, sha: str) -> None:
        if self.directory is None:
            self._mem.pop(sha, None)
        else:
            try:
                os.unlink(self._path(sha))
            except FileNotFoundError:
                pass
