"""Answering the engine's ``snapshot_request`` items without pausing the applier.

At ``("snapshot_request", M)`` the applier's store is exactly at M. ``StoreSnapshotWriter.start``
forks a child that writes that state to a memfd (where there is none, to
``<data_dir>/store-snapshot/store-<M>-<n>.snap``; store/snapshot_fork.py) and returns at once:
the applier goes on with M+1 while the child writes. A reaper thread waits for the child, seals
the memfd against any further change and checks its size (a file is re-hashed against the
SHA-256 the child reported instead: see ``_check_image``), hands it to the engine
(``store_snapshot_file``: mapped, not copied; or compressed into a zstd frame there, on the
reaper's thread at the child's nice value, when ``compress_level`` says so) and closes or
unlinks it (the mapping keeps it alive). A child that fails or is killed leaves the engine's
previous store snapshot in place (``store_snapshot_failed`` lets the engine ask again later).
At most one child runs: a restore or ``stop`` kills it (its state is superseded).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bknr_cluster.cluster.stall_trace import event
from bknr_cluster.errors import StoreError
from bknr_cluster.store.snapshot_fork import (
    CHILD_NICE as _CHILD_NICE,
)
from bknr_cluster.store.snapshot_fork import (
    SnapshotChild,
    SnapshotFile,
    fork_snapshot,
    verify_file,
)

log = logging.getLogger("bknr.cluster")
_PROCESS_START = time.time()


class StoreSnapshotWriter:
    """One forked store snapshot at a time, handed to ``engine`` when it is written."""

    def __init__(self, engine: Any, store: Any, directory: Path, *, freeze_gc: bool,
                 on_done: Callable[[int, float], None] | None = None,
                 child_timeout: float = 3600.0,
                 compress_level: Callable[[], int] | None = None) -> None:
        self.engine = engine
        self.store = store
        self.directory = Path(directory)
        self.freeze_gc = freeze_gc
        self.on_done = on_done
        self.child_timeout = child_timeout
        self.compress_level = compress_level
        self.last_compress_ms = 0.0   # the hand-over's compression (reaper thread, GIL released)
        self.failures = 0
        self._forks = 0
        self.last_seconds = 0.0
        self.last_fork_ms = 0.0  # the pause: fork() holds the GIL while page tables are copied
        self._mu = threading.Lock()
        self._child: SnapshotChild | None = None
        self._reaper: threading.Thread | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob("store-*.snap"):  # a previous life's, never handed over
            stale.unlink(missing_ok=True)
        for stale in self.directory.glob("backup-*.snap"):  # (one running now is younger)
            with contextlib.suppress(FileNotFoundError):
                if stale.stat().st_mtime < _PROCESS_START:
                    stale.unlink()

    @property
    def running(self) -> bool:
        return self._child is not None

    def start(self, index: int, prefix: bytes = b"") -> None:
        """Fork the writer of the store as it is now (exactly at ``index``); returns at once.
        Called by the applier between items, so no transaction is half-applied."""
        self.cancel()  # only after a restore can an older one still run: superseded
        event("snapshot_start", index=index)
        if self.freeze_gc:
            # O(1): moves the generations' lists into the permanent one. Nothing new is walked
            # by later full collections in the parent (which would write every object's GC
            # header, i.e. copy every page the child still shares), and no collection pause
            # follows the snapshot (the old gc_tuning() re-walked the heap: 0.24 s per 1M).
            gc.freeze()
        self._forks += 1  # a retry at the same index must not share the failed one's file
        memfd = _memfd(f"bknr-store-{index}-{self._forks}")
        if memfd >= 0:
            path = f"/proc/self/fd/{memfd}"
        else:
            path = str(self.directory / f"store-{index}-{self._forks}.snap")
        t0 = time.monotonic()
        try:
            child = fork_snapshot(self.store, path, include_blobs=True, prefix=prefix,
                                  remove_on_failure=memfd < 0)
        except BaseException:
            if memfd >= 0:
                os.close(memfd)
            raise
        self.last_fork_ms = (time.monotonic() - t0) * 1000
        event("forked", index=index, fork_ms=round(self.last_fork_ms, 1), pid=child.pid)
        reaper = threading.Thread(target=self._reap, args=(index, child, memfd),
                                  name=f"bknr-snapshot-{index}", daemon=True)
        with self._mu:
            self._child, self._reaper = child, reaper
        reaper.start()

    def cancel(self, wait: bool = True) -> None:
        """Kill the running writer, if any (a restore superseded its state, or we stop)."""
        with self._mu:
            child, reaper = self._child, self._reaper
        if child is None:
            return
        child.kill()
        if wait and reaper is not None and reaper is not threading.current_thread():
            reaper.join(timeout=30)

    def _reap(self, index: int, child: SnapshotChild, memfd: int = -1) -> None:
        try:
            self._reap_child(index, child, memfd)
        finally:
            if memfd >= 0:  # the engine's mapping, if it took the image, keeps it alive
                os.close(memfd)

    def _reap_child(self, index: int, child: SnapshotChild, memfd: int = -1) -> None:
        try:
            if not child.exited(self.child_timeout):  # wedged: give the engine a chance again
                log.error("store snapshot writer %d for %d still running after %.0f s: killed",
                          child.pid, index, self.child_timeout)
                child.kill()
            result = child.wait()
            event("child_reaped", index=index, child_s=round(result.seconds, 3),
                  child_cpu_s=round(result.cpu_seconds, 3))
            _check_image(result, memfd)
            event("verified", index=index, size=result.size, rehashed=memfd < 0)
        except Exception as exc:
            self.failures += 1
            log.warning("store snapshot at %d failed, the previous one stays: %s", index, exc)
            with contextlib.suppress(Exception):
                self.engine.store_snapshot_failed(index)
            self._finished(child)
            return
        try:
            if self.on_done is not None:
                self.on_done(index, result.seconds)
            level = self.compress_level() if self.compress_level is not None else 0
            t0 = time.monotonic()
            if level > 0:
                with _niced_thread(_CHILD_NICE):
                    taken = self.engine.store_snapshot_file(index, result.path,
                                                            compress_level=level)
            else:
                taken = self.engine.store_snapshot_file(index, result.path)
            compress_ms = (time.monotonic() - t0) * 1000 if level > 0 else 0.0
            event("handed_over", index=index, compress_ms=round(compress_ms, 1))
            self.last_seconds = result.seconds
            self.last_compress_ms = compress_ms
            log.info("store snapshot at %d: %d bytes in %.3f s (%.3f s of CPU; writer %d, "
                     "fork %.1f ms%s%s)", index, result.size, result.seconds, result.cpu_seconds,
                     child.pid, self.last_fork_ms,
                     f"; zstd level {level} in {compress_ms:.0f} ms" if level > 0 else "",
                     "" if taken else "; superseded by a restore, dropped")
        except Exception:
            self.failures += 1
            log.exception("handing the store snapshot at %d to the engine failed", index)
            with contextlib.suppress(Exception):
                self.engine.store_snapshot_failed(index)
        finally:
            if child.remove_on_failure:  # a file, not a memfd: the mapping keeps it alive
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(result.path)
            self._finished(child)

    def _finished(self, child: SnapshotChild) -> None:
        with self._mu:
            if self._child is child:
                self._child = self._reaper = None


_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def _check_image(result: SnapshotFile, memfd: int) -> None:
    """Make sure the engine gets exactly the bytes the child reported.

    A memfd is sealed, then only its size is checked: it has no name in any filesystem, only
    this reaper and the (exited) child ever use it, the child reported ``ok`` only after its
    last write, and from the seals on the kernel refuses every write, truncation or growth, so
    its contents are the child's, as hashed by the child. Re-hashing them here cost 63 ms of
    CPU at 5M objects (74 MB) at the end of each snapshot, during which both replicas of the
    bench's cluster sat in their run queues (docs/performance.md, session 8). A regular file
    (no memfd on this host) can be changed by anyone with access to the directory: re-hashed."""
    if memfd < 0:
        verify_file(result)
        return
    fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, _SEALS)
    size = os.fstat(memfd).st_size
    if size != result.size:
        raise StoreError(f"{result.path}: {size} bytes, the writer reported {result.size}")


@contextlib.contextmanager
def _niced_thread(nice: int) -> Iterator[None]:
    """Run the block at ``nice`` on this thread only (Linux nice values are per thread): the
    compression of an image is background work, as the child that wrote it."""
    tid = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, tid)
        if nice > before:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:
        nice = before = 0
    try:
        yield
    finally:
        if nice > before:
            with contextlib.suppress(OSError):  # lowering it back needs CAP_SYS_NICE: a reaper
                os.setpriority(os.PRIO_PROCESS, tid, before)  # thread ends after one image


def _memfd(name: str) -> int:
    """An anonymous in-memory file for the child's image, or -1 (no memfd or no /proc here).
    The image only travels from the child to the engine's mapping, which libraft writes into
    its own snapshot file: written to the data directory instead, its tens of MB of dirty pages
    were flushed by the filesystem journal in front of the next Raft log fsync (a 136 ms write
    seen at 1M objects near the child's end)."""
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except (AttributeError, OSError):
        return -1
    if not os.path.exists(f"/proc/self/fd/{fd}"):
        os.close(fd)
        return -1
    return fd


def fork_backup(store: Any, directory: Path, *, include_system: bool = True) -> SnapshotChild:
    """Fork a writer of the store as it is now into a new ``backup-*.snap`` in ``directory``;
    the caller holds the apply lock (so it knows the index the image is at)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="backup-", suffix=".snap", dir=directory)
    os.close(fd)
    try:
        return fork_snapshot(store, path, include_blobs=True, include_system=include_system)
    except BaseException:
        os.unlink(path)
        raise


def read_backup(child: SnapshotChild) -> bytes:
    """Wait for a ``fork_backup`` writer; its verified bytes (the file is removed)."""
    try:
        result = child.wait()
        verify_file(result)
        with open(result.path, "rb") as f:
            return f.read()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(child.path)
