"""Store snapshots written by a forked child from a copy-on-write image of the process.

``fork_snapshot(store, path)`` forks: the child sees the store exactly as it was at the fork,
serialises it (``snapshot.write``) straight into ``path`` while hashing what it writes, reports
``<bytes> <sha256>`` through a pipe and leaves with ``os._exit``. The parent is back at work as
soon as ``fork()`` returns (a few ms: the kernel copies page tables, not pages); pages are
copied only when one side writes to them. Why this design and what it costs: DESIGN.md,
"Snapshots without a pause".

The child is a copy of a multi-threaded process with only the forking thread left, so it must
not wait for anything another thread may have held at the fork. It therefore touches nothing
but the store's objects, msgpack, zlib, a hash object created before the fork and its own file:
no store lock (taken by the parent around the fork, so no transaction is half-applied and the
child's copy is held by the forking thread itself), no logging, no engine (its loop thread and
locks do not exist in the child), no atexit handlers or finalisers (``os._exit``), and Python
signal handlers reset (a node's SIGTERM handler would otherwise stop the "node" in the child).
It dies with the thread that forked it (``PR_SET_PDEATHSIG``), so it never outlives its node.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import hashlib
import os
import select
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bknr_cluster.errors import StoreError
from bknr_cluster.store import snapshot  # here, not in fork_snapshot: see _fork_pause_ms
from bknr_cluster.store.huge_pages import keeper

if TYPE_CHECKING:
    from bknr_cluster.store.core import Store

_PR_SET_PDEATHSIG = 1


def _child_nice() -> int:
    """The child's nice value (and its autogroup's): ``BKNR_SNAPSHOT_NICE`` (0-19, default 10).
    Lower finishes a snapshot sooner on a busy host and takes more CPU from the other sessions
    (docs/performance.md, "Snapshots", session 8)."""
    try:
        return min(19, max(0, int(os.environ.get("BKNR_SNAPSHOT_NICE", "10"))))
    except ValueError:
        return 10


_CHILD_NICE = _child_nice()  # read now: the child must not look anything up
CHILD_NICE = _CHILD_NICE  # also the nice of the parent's background work on the image
_WRITE_BUFFER = 1 << 20
try:  # loaded now: the child must not import or dlopen anything
    _libc: Any = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux/glibc
    _libc = None


@dataclass(frozen=True)
class SnapshotFile:
    """A finished snapshot file: its path, size and SHA-256 (hex), and the child's wall time
    and CPU time (user + system; wall much longer than CPU: the child waited for a CPU)."""
    path: str
    size: int
    sha256: str
    seconds: float
    cpu_seconds: float = 0.0


class _HashingWriter:
    """A write-only binary stream that buffers, hashes and writes to a raw file descriptor."""

    def __init__(self, fd: int, hasher: Any) -> None:
        self.fd = fd
        self.hasher = hasher
        self.size = 0
        self._parts: list[bytes] = []
        self._pending = 0

    def write(self, data: bytes) -> int:
        self._parts.append(data)
        self._pending += len(data)
        if self._pending >= _WRITE_BUFFER:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if not self._parts:
            return
        block = b"".join(self._parts)
        self._parts.clear()
        self._pending = 0
        self.hasher.update(block)
        view = memoryview(block)
        while view:
            view = view[os.write(self.fd, view):]
        self.size += len(block)


class SnapshotChild:
    """The parent's handle on one forked snapshot writer."""

    def __init__(self, pid: int, report_fd: int, path: str, remove_on_failure: bool = True) -> None:
        self.pid = pid
        self.path = path
        self.remove_on_failure = remove_on_failure  # False: a memfd's /proc path, the owner closes it
        self.started = time.monotonic()
        self._report_fd = report_fd
        self._mu = threading.Lock()
        self._status: int | None = None
        try:  # signals through a pidfd cannot reach a recycled pid
            self._pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # pragma: no cover - kernels before 5.3
            self._pidfd = -1

    def exited(self, timeout: float) -> bool:
        """Whether the child has exited within ``timeout`` seconds (it is not reaped here)."""
        fd = self._pidfd
        if fd < 0:  # pragma: no cover - no pidfd: assume it will, wait() blocks
            return True
        return bool(select.select([fd], [], [], timeout)[0])

    def wait(self) -> SnapshotFile:
        """Block (GIL released) until the child exits; its file, or ``StoreError`` saying why
        not (it failed, or was killed: then the file is removed)."""
        _, status, usage = os.wait4(self.pid, 0)
        keeper().release()  # the parent's writes split huge pages: collapse them again
        with self._mu:
            self._status = status
            if self._pidfd >= 0:
                os.close(self._pidfd)
                self._pidfd = -1
        seconds = time.monotonic() - self.started
        report = _read_report(self._report_fd)
        os.close(self._report_fd)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and report.startswith("ok "):
            _, size, sha = report.split()
            return SnapshotFile(self.path, int(size), sha, seconds,
                                usage.ru_utime + usage.ru_stime)
        if self.remove_on_failure:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        if os.WIFSIGNALED(status):
            why = f"killed by signal {os.WTERMSIG(status)}"
        else:
            why = report.strip() or f"exit status {os.WEXITSTATUS(status)}"
        raise StoreError(f"snapshot writer {self.pid} for {self.path} failed: {why}")

    def kill(self) -> None:
        """SIGKILL the child unless it has already been reaped (``wait`` still reaps it)."""
        with self._mu:
            if self._status is not None:
                return
            with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped by wait()
                if self._pidfd >= 0:
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                else:  # pragma: no cover
                    os.kill(self.pid, signal.SIGKILL)


def fork_snapshot(store: Store, path: str, *, include_blobs: bool = True,
                  include_system: bool = True, fsync: bool = False,
                  prefix: bytes = b"", remove_on_failure: bool = True) -> SnapshotChild:
    """Fork a child that writes ``store``'s snapshot, as it is now, to ``path`` (created or
    truncated); returns at once. The caller must make sure no transaction is applying (the
    store lock is taken around the fork for that). ``fsync``: the child syncs the file before
    reporting success (standalone snapshots; the Raft engine persists its own copy). ``prefix``
    is written before the store snapshot (the cluster layer's header, cluster/apply.py).
    ``path`` may be ``/proc/self/fd/<n>`` of a memfd the caller made (the child inherits it);
    then pass ``remove_on_failure=False``.

    Everything between taking the store lock and ``fork()`` returning is a pause of the
    process (the GIL is held): nothing may be imported or first-time initialised there. A lazy
    import of ``snapshot`` here cost 9-20 ms on each process's first snapshot, where the
    ``fork()`` of a 1M-object store on huge pages takes ~1 ms (docs/performance.md)."""
    hasher = hashlib.sha256()  # made here: the child must not look up digests (library locks)
    read_fd, write_fd = os.pipe()
    keeper().hold()  # no huge-page collapse while the child shares our pages (huge_pages.py)
    with store._lock:
        parent = os.getpid()
        try:
            pid = os.fork()
        except BaseException:
            keeper().release()
            raise
        if pid == 0:  # the child: never returns
            write = functools.partial(snapshot.write, include_blobs=include_blobs,
                                      include_system=include_system)
            _child(store, write, path, fsync, hasher, write_fd, parent, prefix)
    os.close(write_fd)
    return SnapshotChild(pid, read_fd, path, remove_on_failure)


def _child(store: Store, write: Any, path: str, fsync: bool, hasher: Any, report_fd: int,
           parent: int, prefix: bytes = b"") -> None:
    code = 1
    try:
        _detach(parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        out = _HashingWriter(fd, hasher)
        if prefix:
            out.write(prefix)
        write(store, out)
        out.flush()
        if fsync:
            os.fsync(fd)
        os.close(fd)
        _write_all(report_fd, f"ok {out.size} {hasher.hexdigest()}\n".encode())
        code = 0
    except BaseException as exc:  # noqa: BLE001 - anything: report it, never unwind further
        with contextlib.suppress(BaseException):
            _write_all(report_fd, f"{type(exc).__name__}: {exc}"[:2000].encode())
    finally:
        os._exit(code)


def _detach(parent: int) -> None:
    """Make the child a leaf: no cyclic GC (it would write to every object's header, copying
    the whole heap), default signal dispositions, death with the thread that forked it, a
    lower CPU priority than the node it serves (and than the host's other sessions)."""
    gc.disable()
    for sig in signal.valid_signals():
        with contextlib.suppress(OSError, ValueError, TypeError):
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died between fork() and prctl(): nobody waits
        os._exit(1)
    if _CHILD_NICE:
        with contextlib.suppress(OSError):
            os.nice(_CHILD_NICE)  # the node's own threads (applier, API, app) go first
    _own_autogroup(_CHILD_NICE)


def _own_autogroup(nice: int) -> None:
    """With scheduler autogroups (``kernel.sched_autogroup_enabled``, tasks in the root CPU
    cgroup), CPU time is shared fairly between *sessions* first and by nice value only within
    one: the child at nice 10 in its node's session still took a whole session's share from
    the other processes of the host (the cluster's other replicas, whose acknowledgements a
    write waits for). In a session of its own whose autogroup is at nice 10 it yields to them
    as it yields to its node's threads. Best effort: no autogroups, or the kernel's limit of
    about ten autogroup changes a second host-wide (EAGAIN), leave the plain nice 10."""
    with contextlib.suppress(OSError):
        os.setsid()  # never a group leader (just forked): cannot fail with EPERM here
        fd = os.open("/proc/self/autogroup", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(nice).encode())
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_report(fd: int) -> str:
    parts = []
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        parts.append(chunk)
    return b"".join(parts).decode(errors="replace")


def verify_file(result: SnapshotFile) -> None:
    """Re-hash the file the child wrote (GIL released while hashing) against its report:
    ``StoreError`` if it is not the file the child vouched for."""
    with open(result.path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != result.size:
            raise StoreError(f"{result.path}: {size} bytes, the writer reported {result.size}")
        h = hashlib.sha256()
        if size:
            import mmap
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                h.update(m)
    if h.hexdigest() != result.sha256:
        raise StoreError(f"{result.path}: SHA-256 differs from the writer's report")
