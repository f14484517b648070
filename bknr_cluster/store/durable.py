"""Standalone durability: the store directory, restart, and snapshots.

Directory layout::

    LOCK                                  flock'd while a process has the store open
    snapshot-<seq:020d>.snap              state after record <seq> (newest one is used)
    log-<base:020d>.log                   records base, base+1, ... (see log.py)
    blobs/                                content-addressed blob files

Restart = load the newest snapshot, then replay every logged record with a higher sequence
number, in order. Snapshot = flush the log, write ``.tmp``, fsync, rename, fsync the directory,
start ``log-<seq+1>``, then delete the files the new snapshot makes redundant. A crash at any
point leaves either the old snapshot + old log or the new snapshot (+ old log whose records it
already contains, skipped on replay).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
from typing import TYPE_CHECKING

from bknr_cluster.errors import CorruptData, NonDeterminism, StoreError
from bknr_cluster.store import snapshot_fork  # at import: the fork's pause must not import
from bknr_cluster.store.log import TxLog, fsync_dir, scan
from bknr_cluster.store.tx import TxContext

if TYPE_CHECKING:
    from bknr_cluster.store.protocols import DurableTarget

log = logging.getLogger("bknr_cluster.store")
_SNAP = re.compile(r"^snapshot-(\d{20})\.snap$")
_LOG = re.compile(r"^log-(\d{20})\.log$")


class Durable:
    def __init__(self, store: DurableTarget, path: str, sync: bool = True):
        self.store = store
        self.path = path
        self.sync = sync
        self.seq = 0
        self.log: TxLog | None = None
        self._lock_fd = -1
        self.warnings: list[str] = []
        self._snapshot_mu = threading.Lock()  # one snapshot at a time (its files, its pruning)

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _listing(self) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
        snaps, logs = [], []
        for name in os.listdir(self.path):
            if m := _SNAP.match(name):
                snaps.append((int(m.group(1)), self._file(name)))
            elif m := _LOG.match(name):
                logs.append((int(m.group(1)), self._file(name)))
            elif name.endswith(".tmp"):
                os.unlink(self._file(name))      # an interrupted snapshot: never renamed, useless
        return sorted(snaps), sorted(logs)

    def open(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        self._lock_fd = os.open(self._file("LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise StoreError(f"store {self.path} is already open in another process or Store") from None
        try:
            self._restore()
        except BaseException:
            self._release()
            raise

    def _restore(self) -> None:
        store = self.store
        snaps, logs = self._listing()
        seq = 0
        if snaps:
            seq, snap_path = snaps[-1]
            with open(snap_path, "rb", buffering=1 << 20) as f:
                try:
                    store.load_snapshot(f)
                except CorruptData as exc:
                    raise CorruptData(f"{snap_path}: {exc}") from None
        append_to = None
        for i, (_, path) in enumerate(logs):
            last = i == len(logs) - 1
            result = scan(path, last)
            if result.base < 0:         # crashed while creating this file: it holds nothing
                log.warning("%s: removing log file with an incomplete header", path)
                os.unlink(path)
                continue
            if result.torn is not None:
                msg = f"{path}: torn tail truncated ({result.torn})"
                log.warning(msg)
                self.warnings.append(msg)
            for n, (offset, record) in enumerate(result.records):
                rseq = result.base + n
                if rseq <= seq:
                    continue            # already contained in the snapshot
                if rseq != seq + 1:
                    raise CorruptData(f"{path}: record {rseq} at offset {offset} follows record "
                                      f"{seq}: records are missing")
                try:
                    store.apply_record(record, TxContext(rseq))
                except Exception as exc:
                    raise NonDeterminism(f"{path}: record {rseq} at offset {offset} succeeded when "
                                         f"logged but fails on replay: {exc!r}") from exc
                seq = rseq
            if last and result.base + len(result.records) == seq + 1:
                append_to = (path, result)
        self.seq = seq
        store.last_index = seq
        if append_to is not None:
            path, result = append_to
            self.log = TxLog(path, result.base, len(result.records), self.sync, create=False,
                             good_end=result.good_end)
        else:
            self.log = TxLog(self._file(f"log-{seq + 1:020d}.log"), seq + 1, 0, self.sync, create=True)
        self._prune(seq)

    def _prune(self, seq: int) -> None:
        """Delete snapshots older than the newest and logs whose records it contains."""
        snaps, logs = self._listing()
        newest = snaps[-1][0] if snaps else 0
        for _s, path in snaps[:-1]:
            os.unlink(path)
        assert self.log is not None
        for i, (_base, path) in enumerate(logs):
            if path == self.log.path:
                continue
            nxt = logs[i + 1][0] if i + 1 < len(logs) else seq + 1
            if nxt - 1 <= newest:        # every record of this file is in the newest snapshot
                os.unlink(path)
        fsync_dir(self.path)

    # --- used by Store -----------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self.seq + 1

    def check_writable(self) -> None:
        if self.log is None:
            raise StoreError(f"store {self.path} is closed")
        if self.log.failed is not None:
            raise StoreError(f"the transaction log failed ({self.log.failed}); the store is "
                             "read-only until it is reopened")

    def append(self, record: bytes) -> tuple[TxLog, int]:
        assert self.log is not None
        self.seq += 1
        return self.log, self.log.append(record)

    @staticmethod
    def wait_durable(ticket: tuple[TxLog, int]) -> None:
        txlog, n = ticket
        txlog.wait_durable(n)

    def snapshot(self) -> str:
        """Write a snapshot without stopping transactions (store/snapshot_fork.py).

        Under the store lock (milliseconds): flush the log, start ``log-<seq+1>`` so later
        records go there, fork the writer of the state after record ``seq``. Then, with the
        lock released, wait for the writer (``.tmp``, fsync'd by it), rename, fsync the
        directory, prune. A writer that fails or is killed leaves the previous snapshot and
        every log since it (``StoreError``); restart replays them across the new log."""
        with self._snapshot_mu:  # held throughout: pruning removes any other *.tmp
            with self.store.lock:
                self.check_writable()
                assert self.log is not None
                self.log.flush()
                seq = self.seq
                final = self._file(f"snapshot-{seq:020d}.snap")
                if self.log.base != seq + 1:  # else the current log is empty and starts there
                    old = self.log
                    self.log = TxLog(self._file(f"log-{seq + 1:020d}.log"), seq + 1, 0,
                                     self.sync, create=True)
                    old.close()
                # blobs are durable beside the store already: the local snapshot skips them
                child = snapshot_fork.fork_snapshot(self.store, final + ".tmp", include_blobs=False,
                                      fsync=self.sync)
            result = child.wait()
            os.replace(result.path, final)
            fsync_dir(self.path)
            with self.store.lock:
                if self.log is not None:
                    self._prune(seq)
        return final

    def close(self) -> None:
        try:
            if self.log is not None:
                self.log.close()
                self.log = None
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1
