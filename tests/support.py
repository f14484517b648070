"""Shared test helpers: free loopback ports, deadline waits, and processes we always reap."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the kernel just handed out and released; held open together so they differ."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def sample_for(read: Callable[[], T], seconds: float, interval: float = 0.03) -> list[T]:
    """``read()`` every ``interval`` s for ``seconds`` s: for assertions that something *never*
    happens within a window (a halted node never campaigns), where there is no event to wait for."""
    samples: list[T] = []
    end = time.monotonic() + seconds
    tick = threading.Event()
    while True:
        samples.append(read())
        if time.monotonic() >= end:
            return samples
        tick.wait(interval)


def wait_until(cond: Callable[[], T], timeout: float, what: str = "condition",
               interval: float = 0.02) -> T:
    """Poll ``cond`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except Exception as exc:  # a condition may fail while the system is still settling
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        threading.Event().wait(interval)


class Processes:
    """Starts child processes and guarantees that exactly those PIDs are stopped."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], *, log: Path | None = None, env: dict | None = None,
              **kw) -> subprocess.Popen:
        out = open(log, "ab") if log else subprocess.DEVNULL
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), str(ROOT / "cli"), full_env.get("PYTHONPATH", "")])
        if env:
            full_env.update(env)
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=full_env,
                             start_new_session=True, **kw)
        if log:
            out.close()
        self.procs.append(p)
        return p

    def python(self, *args: str, **kw) -> subprocess.Popen:
        return self.start([sys.executable, *args], **kw)

    @staticmethod
    def kill(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        if p.poll() is None:
            os.kill(p.pid, sig)

    def stop_all(self, grace: float = 5.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
