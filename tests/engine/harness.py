"""Test-side control of node_driver.py processes: a small Raft cluster on loopback.

A thin layer over ``tests.cluster_helper.NodeProcesses`` (process control, log files, the agreed
leader wait); what differs from the node clusters is the process (an engine driver answering
JSON lines on a control port, no YAML) and the node keys (raft ids, not names)."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.cluster_helper import Node, NodeProcesses
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


class Cluster(NodeProcesses):
    """Engine drivers with ids 1..n (the initial voters) and two spare slots n+1, n+2.

    ``net``: a tests.chaos.netns.Network whose namespaces are named n1, n2, ...: each node then
    runs in its own namespace at that network's address (links can be cut)."""

    def __init__(self, procs: Processes, root: Path, n: int, net: Any = None, **options: Any) -> None:
        super().__init__(procs)
        self.net = net
        self.root = root
        self.options = {**FAST, **options}
        ports = free_ports(2 * (n + 2))
        self.raft_ports = {i + 1: ports[i] for i in range(n + 2)}
        self.control_ports = {i + 1: ports[n + 2 + i] for i in range(n + 2)}
        for i in self.raft_ports:
            host = net.addr(f"n{i}") if net and f"n{i}" in net.names else "127.0.0.1"
            self.nodes[f"n{i}"] = Node(f"n{i}", i, host, self.raft_ports[i],
                                       self.control_ports[i], root / f"n{i}", root / f"n{i}.log")
        self.initial = list(range(1, n + 1))
        self.clients: dict[int, Client] = {}

    @property
    def proc(self) -> dict[int, subprocess.Popen]:
        """id -> the process last started for it."""
        return {nd.id: nd.proc for nd in self.nodes.values() if nd.proc is not None}

    def host(self, node_id: int) -> str:
        return self.nodes[f"n{node_id}"].host

    def address(self, node_id: int) -> str:
        return self.nodes[f"n{node_id}"].raft_address

    def configuration(self) -> list[list]:
        return [[i, self.address(i), "voter"] for i in self.initial]

    def start(self, node_id: int, bootstrap: bool = False, recover: list | None = None,
              **options: Any) -> Client:
        nd = self.nodes[f"n{node_id}"]
        prefix = self.net.exec_prefix(nd.name) if self.net else []
        args = [*prefix, sys.executable, DRIVER, "--id", str(node_id), "--address", nd.raft_address,
                "--dir", str(nd.data_dir), "--control-port", str(nd.api_port),
                "--control-host", nd.host,
                "--options", json.dumps({**self.options, **options})]
        if bootstrap:
            args += ["--bootstrap", json.dumps(self.configuration())]
        if recover:
            args += ["--recover", json.dumps(recover)]
        self.launch(nd.name, args)
        c = Client(nd.api_port, nd.host)
        c.connect(30)
        self.clients[node_id] = c
        return c

    def start_all(self, bootstrap: bool = True) -> None:
        for i in self.initial:
            self.start(i, bootstrap=bootstrap)

    def call(self, nid: int, op: str, /, **kw: Any) -> Any:
        return self.clients[nid].call(op, **kw)

    def live(self) -> list[int]:
        return [nd.id for nd in self.nodes.values() if nd.alive]

    def statuses(self, ids: list[int] | None = None) -> dict[int, dict]:
        return {i: self.call(i, "status") for i in (ids or self.live())}

    def leader(self, ids: list[int] | None = None, timeout: float = 20.0) -> int:
        """The one node that is leader and that every given node agrees on."""
        def view(name: str) -> tuple[bool, str | None]:
            st = self.call(self.nodes[name].id, "status")
            return st["state"] == "leader", f"n{st['leader_id']}" if st["leader_id"] else None
        names = [f"n{i}" for i in (ids or self.live())]
        return self.nodes[self.wait_agreed_leader(view, names, timeout)].id

    def stop(self, node_id: int) -> None:
        """Graceful stop through the driver; waits for the process to exit."""
        try:
            self.call(node_id, "stop", timeout=30)
        except (DriverError, OSError):
            pass
        self.clients.pop(node_id).close()
        self.nodes[f"n{node_id}"].proc.wait(30)

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        super().kill(f"n{node_id}", sig)
        if sig == signal.SIGKILL:
            self.clients.pop(node_id).close()

    def wait_state(self, ids: list[int], digest: str, count: int, timeout: float = 60.0) -> dict[int, dict]:
        def ok() -> dict[int, dict] | None:
            st = {i: self.call(i, "state") for i in ids}
            if all(s["digest"] == digest and s["count"] == count for s in st.values()):
                return st
            return None
        return wait_until(ok, timeout, f"nodes {ids} to apply exactly {count} entries in order")
