"""One process per Raft data directory.

Neither libraft nor raft_uv locks its directory. A second process on the same directory (an
operator starting a node twice, a restart racing the old process's exit) would see the first
one's in-progress writes as torn segments and rewrite them, and libraft's own load renames open
segments: both processes would damage the log. An advisory ``flock`` on ``<dir>/LOCK`` turns
that into a clear refusal. The kernel drops the lock when the holder dies, so a crashed node
never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os

from bknr_cluster.errors import UsageError
from bknr_cluster.vocabulary import LOCK_FILE

LOCK_NAME = LOCK_FILE  # raft_uv ignores files it does not recognise (uv_list.c)


class DataDirLock:
    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, LOCK_NAME)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (idempotent); raise UsageError naming the holder's pid if taken."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(f"data directory {os.path.dirname(self.path)} is in use by another "
                             f"process (pid {holder}); stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
