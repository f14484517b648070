"""A small tmpfs as one node's data directory, and a ballast file that fills it on demand.

Filling with ballast (rather than remounting smaller) lets the test give the space back by
deleting one file, the way an operator would free space.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

from tests.chaos.netns import NetworkUnavailable


class SmallDisk:
    def __init__(self, path: Path, size_mb: int = 64) -> None:
        self.path = Path(path)
        self.size_mb = size_mb
        self.ballast = self.path / "ballast.fill"
        self._mounted = False

    def mount(self) -> SmallDisk:
        if os.geteuid() != 0:
            raise NetworkUnavailable("mounting a tmpfs for the disk-full fault needs root")
        self.path.mkdir(parents=True, exist_ok=True)
        if any(self.path.iterdir()):
            raise RuntimeError(f"{self.path} must be empty before mounting a tmpfs over it")
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0755", "tmpfs",
                            str(self.path)], capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise NetworkUnavailable(f"cannot mount tmpfs on {self.path}: {p.stderr.strip()}")
        self._mounted = True
        # The ballast file exists from the start: filling then creates nothing on a disk the
        # node is writing to at the same time.
        try:
            self.ballast.touch()
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror}: creating {self.ballast} on a fresh tmpfs; "
                                     f"{self.usage()}") from exc
        return self

    def umount(self) -> None:
        if self._mounted:
            # lazy: a node killed a moment ago may still hold files open
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30)
            self._mounted = False

    def __enter__(self) -> SmallDisk:
        return self.mount()

    def __exit__(self, *exc: object) -> None:
        self.umount()

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave_bytes: int = 0) -> int:
        """Write ballast until at most ``leave_bytes`` remain free; returns the ballast size."""
        chunk = b"\0" * (1 << 20)
        written = 0
        try:
            # Unbuffered: the node writes to this disk concurrently and may take the last pages
            # between statvfs and our write. With a buffered file the rejected bytes stayed in the
            # buffer and close() raised ENOSPC again (reported at the `with open` line: the CI
            # failure); a raw write either lands (possibly partly) or raises, leaving nothing behind.
            fh = open(self.ballast, "ab", buffering=0)
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror}: opening {self.ballast}; {self.usage()}") from exc
        with fh:
            while True:
                room = self.free_bytes() - leave_bytes
                if room <= 0:
                    break
                try:
                    n = fh.write(chunk[:min(len(chunk), room)])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                written += n or 0
                if not n:
                    break
        return written

    def usage(self) -> str:
        """What holds the space: free blocks and inodes, and every file with its size."""
        st = os.statvfs(self.path)
        files = []
        for root, _dirs, names in os.walk(self.path):
            for name in names:
                path = os.path.join(root, name)
                try:
                    files.append(f"{os.path.relpath(path, self.path)} {os.stat(path).st_size}")
                except OSError as exc:
                    files.append(f"{os.path.relpath(path, self.path)} ({exc.strerror})")
        return (f"{self.path}: {st.f_bavail * st.f_frsize} bytes and {st.f_favail} inodes free; "
                f"files: {', '.join(files) or 'none'}")

    def release(self) -> None:
        self.ballast.unlink(missing_ok=True)
