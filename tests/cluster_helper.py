"""The one test cluster helper: named node processes, the cluster YAML, leader and health waits.

Every launcher of real node processes in the tests and benches is a thin layer over this module
(one e2e ``Node`` helper, as rqlite's system tests have):

    tests/cluster/harness.py  LocalCluster  bknr-node processes; ApiClient views, convergence
    tests/chaos/cluster.py    ChaosCluster  the same, optionally one network namespace per node;
                                            the nemesis' views (cheap leader claims, barriers)
    tests/engine/harness.py   Cluster       engine driver processes (no YAML, a control socket)

What lives here and nowhere else:
  * ``Node``: where one member listens and keeps its data, and its process (if started);
  * ``NodeProcesses``: start / SIGTERM / SIGKILL / SIGSTOP / SIGCONT of exactly the processes
    this helper started (through ``tests.support.Processes``, so a failing test still stops
    them), log tails, and ``wait_agreed_leader`` (one node says it leads and every node asked
    names it);
  * ``YamlCluster``: the cluster YAML (one place for the test defaults: fast timing, insecure
    loopback, a token file), free ports, ``bknr-node --init`` and health waits with deadlines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bknr_cluster.cluster.client import ApiClient
from tests.support import ROOT, Processes, free_ports, wait_until

DEFAULT_TOKEN = "test-token-0123456789"
RAFT_SECRET = "0123456789abcdef" * 4  # authenticated raft transport (docs/security.md)


@dataclass
class Node:
    """One member: its addresses, data directory and log, and the process last started for it
    (kept after it exited, so a test can read its exit code)."""

    name: str
    id: int
    host: str
    raft_port: int
    api_port: int          # engine driver processes: the control port
    data_dir: Path
    log: Path
    app_port: int | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)
    paused: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def raft_address(self) -> str:
        return f"{self.host}:{self.raft_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class NodeProcesses:
    """Named nodes with at most one live process each, started through ``Processes``."""

    def __init__(self, procs: Processes) -> None:
        self.procs = procs
        self.nodes: dict[str, Node] = {}

    @property
    def names(self) -> list[str]:
        return list(self.nodes)

    def launch(self, name: str, args: list[str], *, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.Popen:
        nd = self.nodes[name]
        if nd.alive:
            raise RuntimeError(f"{name} is already running (pid {nd.proc.pid})")
        nd.log.parent.mkdir(parents=True, exist_ok=True)
        nd.proc = self.procs.start(args, log=nd.log, env=env, cwd=cwd)
        nd.paused = False
        return nd.proc

    def terminate(self, name: str, timeout: float = 20) -> int | None:
        """SIGTERM (after a SIGCONT, in case it is paused) and wait; the exit code."""
        nd = self.nodes[name]
        if nd.proc is None:
            return None
        if nd.proc.poll() is None:
            Processes.kill(nd.proc, signal.SIGCONT)
            Processes.kill(nd.proc, signal.SIGTERM)
        nd.paused = False
        return nd.proc.wait(timeout)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig``; for SIGKILL (no cleanup, no hand-over) also reap the process."""
        nd = self.nodes[name]
        if nd.alive:
            Processes.kill(nd.proc, sig)
            if sig == signal.SIGKILL:
                nd.proc.wait(10)
        if sig == signal.SIGKILL:
            nd.paused = False

    def pause(self, name: str) -> None:
        self.kill(name, signal.SIGSTOP)
        self.nodes[name].paused = True

    def resume(self, name: str) -> None:
        self.kill(name, signal.SIGCONT)
        self.nodes[name].paused = False

    def up(self) -> list[str]:
        """Nodes running and not paused."""
        return [n for n, nd in self.nodes.items() if nd.alive and not nd.paused]

    def exited(self, name: str) -> AssertionError | None:
        """An error naming the exit code and log tail if ``name``'s process has exited."""
        p = self.nodes[name].proc
        if p is not None and p.poll() is not None:
            return AssertionError(f"{name} exited with {p.returncode}: {self.log_tail(name)}")
        return None

    def log_tail(self, name: str, lines: int = 30) -> str:
        f = self.nodes[name].log
        return "\n".join(f.read_text(errors="replace").splitlines()[-lines:]) if f.exists() else ""

    def stop_all(self, grace: float = 5.0) -> None:
        """Stop every process started through ``procs`` (this helper's and the test's)."""
        self.procs.stop_all(grace)
        for nd in self.nodes.values():
            nd.paused = False

    def wait_agreed_leader(self, view: Callable[[str], tuple[bool, str | None]],
                           names: Iterable[str], timeout: float,
                           candidates: Iterable[str] | None = None) -> str:
        """Until every node in ``names`` names the same leader, one of ``candidates`` (default:
        ``names``), and that node says it leads. ``view``: node -> (it says it leads, the
        leader it names or None); a view may raise while the cluster settles."""
        names = list(names)
        allowed = set(candidates if candidates is not None else names)

        def agreed() -> str | None:
            views = {n: view(n) for n in names}
            named = {leader for _, leader in views.values()}
            if len(named) != 1 or None in named:
                return None
            leader = named.pop()
            if leader not in allowed:
                return None
            says = views[leader][0] if leader in views else view(leader)[0]
            return leader if says else None
        return wait_until(agreed, timeout, f"one agreed leader among {names}")


class YamlCluster(NodeProcesses):
    """``n`` bknr-node processes described by one cluster YAML under ``root``.

    ``data`` is the YAML as a dict (tests may edit it and call ``write()``). ``hosts`` puts the
    nodes on other addresses (a network namespace each: fixed ports there, ``exec_prefix(name)``
    runs a command inside node ``name``'s namespace); by default all are on 127.0.0.1 on free
    ports. ``data_dirs`` overrides a node's data directory (e.g. a small tmpfs)."""

    def __init__(self, root: Path, procs: Processes, n: int = 3, *, store: str,
                 group: str = "test", token: str = DEFAULT_TOKEN,
                 election_timeout_ms: int = 500, heartbeat_ms: int = 50,
                 snapshot_threshold: int = 10000, snapshot_trailing: int = 2000,
                 snapshot_keep: int = 3, checkpoint_every: int | None = None,
                 raft_secret: bool = False, app: dict | None = None,
                 hosts: dict[str, str] | None = None,
                 exec_prefix: Callable[[str], list[str]] | None = None,
                 data_dirs: dict[str, Path] | None = None,
                 log_path: Callable[[Node], Path] | None = None) -> None:
        super().__init__(procs)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.token = token
        (self.root / "token").write_text(token + "\n")
        self.config_path = self.root / "cluster.yaml"
        self.hosts = hosts
        self.exec_prefix = exec_prefix
        self.data_dirs = data_dirs or {}
        self.log_path = log_path or (lambda nd: nd.data_dir / "stdout.log")
        self.data: dict[str, Any] = {
            "group": group, "store": store, "token_file": "token", "insecure": True,
            "timing": {"election_timeout_ms": election_timeout_ms, "heartbeat_ms": heartbeat_ms},
            "snapshot": {"threshold": snapshot_threshold, "trailing": snapshot_trailing,
                         "keep": snapshot_keep},
            "nodes": [],
        }
        if app is not None:  # the hosted web application (bknr_cluster/apphost.py)
            self.data["app"] = app
        if checkpoint_every is not None:  # consistency checkpoints: a diverged replica halts
            self.data["checkpoint"] = {"every": checkpoint_every}
        if raft_secret:  # the secret file must be mode 0600
            secret = self.root / "raft.secret"
            secret.write_text(RAFT_SECRET + "\n")
            secret.chmod(0o600)
            self.data["raft_secret_file"] = "raft.secret"
        for _ in range(n):
            self.add_entry()
        self.write()

    # --- configuration --------------------------------------------------------------------

    def add_entry(self) -> dict:
        """Append a node to ``data`` (not written yet) and return its YAML entry."""
        i = max((e["id"] for e in self.data["nodes"]), default=0) + 1
        name = f"n{i}"
        if self.hosts is not None:
            # each namespace has its own port space, so fixed ports are safe there
            host, raft, api, app = self.hosts[name], 7000, 8000, 9000
        else:
            used = {e.get(k) for e in self.data["nodes"] for k in ("raft_port", "api_port", "app_port")}
            while True:
                raft, api, app = free_ports(3)
                if not {raft, api, app} & used:
                    break
            host = "127.0.0.1"
        ddir = self.data_dirs.get(name)
        entry = {"id": i, "name": name, "host": host, "raft_port": raft, "api_port": api,
                 "data_dir": str(ddir) if ddir else f"data/{name}"}
        if "app" in self.data:
            entry["app_port"] = app
        self.data["nodes"].append(entry)
        nd = Node(name, i, host, raft, api, self.root / entry["data_dir"], Path(),
                  app_port=entry.get("app_port"))
        nd.log = self.log_path(nd)
        self.nodes[name] = nd
        return entry

    def write(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.data, sort_keys=False))

    def entry(self, name: str) -> dict:
        return next(e for e in self.data["nodes"] if e["name"] == name)

    def name_of(self, node_id: int) -> str:
        return next(e["name"] for e in self.data["nodes"] if e["id"] == node_id)

    # --- processes ------------------------------------------------------------------------

    def node_cmd(self, name: str, *extra: str) -> list[str]:
        prefix = self.exec_prefix(name) if self.exec_prefix else []
        return [*prefix, sys.executable, "-m", "bknr_cluster.node", "--config", str(self.config_path),
                "--node", name, *extra]

    def run_node_cmd(self, name: str, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A one-shot node command (``--init``, ``--recover``) run to completion."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "cli"), env.get("PYTHONPATH", "")])
        return subprocess.run(self.node_cmd(name, *extra), capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=self.root)

    def init(self, names: list[str] | None = None) -> None:
        for name in names or self.names:
            self.nodes[name].data_dir.mkdir(parents=True, exist_ok=True)
            r = self.run_node_cmd(name, "--init")
            assert r.returncode == 0, f"--init {name} failed ({r.returncode}): {r.stderr.strip()}"

    def start_node(self, name: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``name``'s node process (``env``: extra environment, e.g. an app version)."""
        self.nodes[name].data_dir.mkdir(parents=True, exist_ok=True)
        return self.launch(name, self.node_cmd(name, *extra), env=env, cwd=self.root)

    # --- views ----------------------------------------------------------------------------

    def api(self, name: str, token: str | None = "", timeout: float = 10) -> ApiClient:
        """The node's API client, with the cluster token unless ``token`` says otherwise."""
        return ApiClient(self.nodes[name].url, self.token if token == "" else token, timeout=timeout)

    def healthy(self, name: str) -> bool:
        """``GET /health`` answers ok; raises (with the log tail) once the process has exited."""
        if (err := self.exited(name)) is not None:
            raise err
        try:
            return bool(ApiClient(self.nodes[name].url, timeout=1).health()["ok"])
        except Exception:  # not listening yet
            return False

    def wait_healthy(self, names: Iterable[str], timeout: float = 30) -> None:
        for name in names:
            wait_until(lambda n=name: self.healthy(n), timeout, f"{name} API up")
