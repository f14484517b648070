"""Nodes on this machine: detached child processes with pid files and log files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bknr_cluster

from .control import NODE_MODULE, NodeControl

# The checkout that holds bknr_cluster (and examples/): children can import it even when the
# package is not installed, e.g. when bknrctl runs from a source tree with PYTHONPATH.
_SOURCE_ROOT = str(Path(bknr_cluster.__file__).resolve().parent.parent)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state == "Z":  # a zombie child of ours (demo/drill): reap it, it is gone
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        # pid files survive crashes; a recycled pid must not be mistaken for our node
        return b"bknr" in cmd
    except OSError:
        return True


class LocalControl(NodeControl):
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if _SOURCE_ROOT not in parts:
            parts.append(_SOURCE_ROOT)
        env["PYTHONPATH"] = os.pathsep.join(parts)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _cmd(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", NODE_MODULE, "--config", str(self.cfg.path),
                "--node", self.node.name, *extra]

    def pid(self) -> int | None:
        try:
            pid = int(Path(self.pid_file).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def spawn(self) -> int:
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        # The node logs to node.log itself; its raw stdout/stderr (tracebacks before logging is
        # set up) go to node.out so lines are not written twice.
        with open(self.out_file, "ab") as log:
            p = subprocess.Popen(self._cmd(), stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, env=self._env(),
                                 cwd=str(self.cfg.base_dir), start_new_session=True)
        # Written by us too, so stop works even before the node wrote its own pid file.
        Path(self.pid_file).write_text(f"{p.pid}\n")
        self._popen = p  # keeps the handle so a crashed child is reaped, not left a zombie
        return p.pid

    def exited_early(self) -> int | None:
        p = getattr(self, "_popen", None)
        return p.poll() if p is not None else None

    def signal(self, sig: int) -> None:
        pid = self.pid()
        if pid is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def run_node(self, *extra: str, timeout: float = 120.0) -> tuple[int, str]:
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        r = subprocess.run(self._cmd(*extra), stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, env=self._env(), cwd=str(self.cfg.base_dir), timeout=timeout)
        return r.returncode, (r.stdout or "") + (r.stderr or "")

    def has_raft_state(self) -> bool:
        d = Path(self.raft_dir)
        return d.is_dir() and any(d.iterdir())

    def wipe_raft_state(self) -> None:
        shutil.rmtree(self.raft_dir, ignore_errors=True)

    def retain_snapshots(self, keep: int) -> dict[str, int]:
        from bknr_cluster.cluster.retention import archive

        return archive(Path(self.node.data_dir), keep)

    def tail_out(self, lines: int = 5) -> str:
        return self.tail(lines, Path(self.out_file))

    def tail(self, lines: int = 50, path: Path | None = None) -> str:
        try:
            with open(path or self.log_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 256 * 1024))
                data = f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        # [-0:] would be the whole file: -n 0 means no history
        return "\n".join(data.splitlines()[-lines:]) if lines > 0 else ""

    def follow(self, lines: int = 20) -> Iterator[str]:
        """The last ``lines`` lines, then every new complete line (like ``tail -n N -f``)."""
        try:
            f = open(self.log_file, "rb")
        except FileNotFoundError:
            return
        with f:
            # history and the follow position come from the same open file: no line is lost
            # between printing the history and starting to follow
            f.seek(0, os.SEEK_END)
            end = f.tell()
            f.seek(max(0, end - 256 * 1024))
            history = f.read(end - f.tell()).decode(errors="replace").splitlines()
            yield from history[-lines:] if lines > 0 else []
            buf = b""
            while True:
                chunk = f.read(65536)
                if not chunk:
                    time.sleep(0.2)
                    continue
                buf += chunk
                *done, buf = buf.split(b"\n")
                for ln in done:
                    yield ln.decode(errors="replace")


def kill_signal_for(fault: str) -> int:
    return signal.SIGKILL if fault == "kill" else signal.SIGSTOP
