"""Test-side control of node_driver.py processes: a small Raft cluster on loopback."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import Processes, free_ports, wait_until

DRIVER = str(Path(__file__).with_name("node_driver.py"))

# Fast but not flaky on a loaded 2-core machine.
FAST = {"election_timeout_ms": 600, "heartbeat_ms": 60}


class DriverError(Exception):
    pass


class Client:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self.sock: socket.socket | None = None
        self.file = None

    def connect(self, timeout: float) -> None:
        def attempt() -> bool:
            try:
                self.sock = socket.create_connection((self.host, self.port), timeout=1)
            except OSError:
                return False
            self.file = self.sock.makefile("rwb")
            return True
        wait_until(attempt, timeout, f"node driver on control port {self.port}")

    def call(self, op: str, /, timeout: float = 30.0, **kw: Any) -> Any:
        assert self.sock is not None and self.file is not None
        self.sock.settimeout(timeout)
        self.file.write(json.dumps({"op": op, **kw}).encode() + b"\n")
        self.file.flush()
        line = self.file.readline()
        if not line:
            raise DriverError(f"driver closed the connection during {op}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise DriverError(f"{op}: {reply['error']}: {reply['message']}")
        return reply["result"]

    def close(self) -> None:
        if self.sock:
            self.sock.close()
        self.sock = None


def payloads(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}-{i}".encode() for i in range(n)]


def digest_of(payloads: list[bytes]) -> str:
    h = hashlib.sha256()
    for d in payloads:
        h.update(len(d).to_bytes(8, "little") + d)
    return h.hexdigest()


class Cluster:
    def __init__(self, procs: Processes, root: Path, n: int, net: Any = None, **options: Any) -> None:
        """``net``: a tests.chaos.netns.Network whose namespaces are named n1, n2, ...: each
        node then runs in its own namespace at that network's address (links can be cut)."""
        self.procs = procs
        self.net = net
        self.root = root
        self.options = {**FAST, **options}
        ports = free_ports(2 * (n + 2))
        self.raft_ports = {i + 1: ports[i] for i in range(n + 2)}
        self.control_ports = {i + 1: ports[n + 2 + i] for i in range(n + 2)}
        self.initial = list(range(1, n + 1))
        self.proc: dict[int, subprocess.Popen] = {}
        self.clients: dict[int, Client] = {}

    def host(self, node_id: int) -> str:
        return self.net.addr(f"n{node_id}") if self.net else "127.0.0.1"

    def address(self, node_id: int) -> str:
        return f"{self.host(node_id)}:{self.raft_ports[node_id]}"

    def configuration(self) -> list[list]:
        return [[i, self.address(i), "voter"] for i in self.initial]

    def start(self, node_id: int, bootstrap: bool = False, recover: list | None = None,
              **options: Any) -> Client:
        args = [DRIVER, "--id", str(node_id), "--address", self.address(node_id),
                "--dir", str(self.root / f"n{node_id}"), "--control-port", str(self.control_ports[node_id]),
                "--control-host", self.host(node_id),
                "--options", json.dumps({**self.options, **options})]
        if bootstrap:
            args += ["--bootstrap", json.dumps(self.configuration())]
        if recover:
            args += ["--recover", json.dumps(recover)]
        prefix = self.net.exec_prefix(f"n{node_id}") if self.net else []
        self.proc[node_id] = self.procs.start([*prefix, sys.executable, *args],
                                              log=self.root / f"n{node_id}.log")
        c = Client(self.control_ports[node_id], self.host(node_id))
        c.connect(30)
        self.clients[node_id] = c
        return c

    def start_all(self, bootstrap: bool = True) -> None:
        for i in self.initial:
            self.start(i, bootstrap=bootstrap)

    def call(self, nid: int, op: str, /, **kw: Any) -> Any:
        return self.clients[nid].call(op, **kw)

    def live(self) -> list[int]:
        return [i for i, p in self.proc.items() if p.poll() is None]

    def statuses(self, ids: list[int] | None = None) -> dict[int, dict]:
        return {i: self.call(i, "status") for i in (ids or self.live())}

    def leader(self, ids: list[int] | None = None, timeout: float = 20.0) -> int:
        """The one node that is leader and that every given node agrees on."""
        def agreed() -> int | None:
            st = self.statuses(ids)
            leaders = [i for i, s in st.items() if s["state"] == "leader"]
            if len(leaders) != 1:
                return None
            lid = leaders[0]
            if all(s["leader_id"] == lid for s in st.values()):
                return lid
            return None
        return wait_until(agreed, timeout, "a single agreed leader")

    def stop(self, node_id: int) -> None:
        """Graceful stop through the driver; waits for the process to exit."""
        try:
            self.call(node_id, "stop", timeout=30)
        except (DriverError, OSError):
            pass
        self.clients.pop(node_id).close()
        self.proc[node_id].wait(30)

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        Processes.kill(self.proc[node_id], sig)
        if sig == signal.SIGKILL:
            self.proc[node_id].wait(10)
            self.clients.pop(node_id).close()

    def wait_state(self, ids: list[int], digest: str, count: int, timeout: float = 60.0) -> dict[int, dict]:
        def ok() -> dict[int, dict] | None:
            st = {i: self.call(i, "state") for i in ids}
            if all(s["digest"] == digest and s["count"] == count for s in st.values()):
                return st
            return None
        return wait_until(ok, timeout, f"nodes {ids} to apply exactly {count} entries in order")
