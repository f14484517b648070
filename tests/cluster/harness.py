"""A local cluster of real ``bknr-node`` processes on loopback, for tests, drills and the CLI tests.

    cluster = LocalCluster(tmp_path, procs, n=3)   # writes cluster.yaml + token, free ports
    cluster.init()                                  # bknr-node --init on every node
    cluster.start_all()
    leader = cluster.wait_leader()                  # -> node name, e.g. "n2"
    cluster.client(leader).tx("open_account", "ann", "Oslo")
    cluster.wait_converged()                        # equal applied index + digest on all running

Options: ``raft_secret=True`` (authenticated raft transport), snapshot/timing knobs, ``store=``
(any ``module:definition`` importable from the repo). ``status(name, digest=False)`` for cheap
polling; ``add_node(role)`` appends a node to the YAML, starts it and adds it via the leader;
``run_node_cmd(name, "--recover", json)`` for one-shot node commands.

Every wait has a deadline; processes go through ``tests.support.Processes`` so exactly the PIDs
started here are stopped.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bknr_cluster.cluster.client import ApiClient
from tests.support import ROOT, Processes, free_ports, wait_until

DEFAULT_STORE = "examples.bank.app:definition"


class LocalCluster:
    def __init__(self, root: Path, procs: Processes, n: int = 3, *, store: str = DEFAULT_STORE,
                 election_timeout_ms: int = 500, heartbeat_ms: int = 50,
                 snapshot_threshold: int = 10000, snapshot_trailing: int = 2000,
                 token: str = "test-token-0123456789", group: str = "test",
                 raft_secret: bool = False, app: dict | None = None,
                 checkpoint_every: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.procs = procs
        self.token = token
        (self.root / "token").write_text(token + "\n")
        self.config_path = self.root / "cluster.yaml"
        self.data: dict[str, Any] = {
            "group": group, "store": store, "token_file": "token", "insecure": True,
            "timing": {"election_timeout_ms": election_timeout_ms, "heartbeat_ms": heartbeat_ms},
            "snapshot": {"threshold": snapshot_threshold, "trailing": snapshot_trailing, "keep": 3},
            "nodes": [],
        }
        if app is not None:  # the hosted web application (bknr_cluster/apphost.py)
            self.data["app"] = app
        if checkpoint_every is not None:
            self.data["checkpoint"] = {"every": checkpoint_every}
        if raft_secret:  # authenticated raft transport (docs/security.md); needs mode 0600
            secret = self.root / "raft.secret"
            secret.write_text("0123456789abcdef" * 4 + "\n")
            secret.chmod(0o600)
            self.data["raft_secret_file"] = "raft.secret"
        self.running: dict[str, subprocess.Popen] = {}
        for _ in range(n):
            self._new_node_entry()
        self.write()

    # --- configuration --------------------------------------------------------------------

    def _new_node_entry(self) -> dict:
        used = {n.get(k) for n in self.data["nodes"] for k in ("raft_port", "api_port", "app_port")}
        while True:
            raft, api, app = free_ports(3)
            if not {raft, api, app} & used:
                break
        i = max((n["id"] for n in self.data["nodes"]), default=0) + 1
        entry = {"id": i, "name": f"n{i}", "host": "127.0.0.1", "raft_port": raft,
                 "api_port": api, "data_dir": f"data/n{i}"}
        if "app" in self.data:
            entry["app_port"] = app
        self.data["nodes"].append(entry)
        return entry

    def write(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.data, sort_keys=False))

    @property
    def names(self) -> list[str]:
        return [n["name"] for n in self.data["nodes"]]

    def node(self, name: str) -> dict:
        return next(n for n in self.data["nodes"] if n["name"] == name)

    def node_id(self, name: str) -> int:
        return int(self.node(name)["id"])

    def name_of(self, node_id: int) -> str:
        return next(n["name"] for n in self.data["nodes"] if n["id"] == node_id)

    def data_dir(self, name: str) -> Path:
        return self.root / self.node(name)["data_dir"]

    def raft_address(self, name: str) -> str:
        return f"127.0.0.1:{self.node(name)['raft_port']}"

    def api_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.node(name)['api_port']}"

    def app_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.node(name)['app_port']}"

    # --- processes ------------------------------------------------------------------------

    def node_cmd(self, name: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "bknr_cluster.node", "--config", str(self.config_path),
                "--node", name, *extra]

    def run_node_cmd(self, name: str, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a one-shot node command (``--init``, ``--recover``) to completion."""
        env = dict(__import__("os").environ)
        env["PYTHONPATH"] = f"{ROOT}:{ROOT / 'cli'}:{env.get('PYTHONPATH', '')}"
        return subprocess.run(self.node_cmd(name, *extra), capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=self.root)

    def init(self, names: list[str] | None = None) -> None:
        for name in names or self.names:
            r = self.run_node_cmd(name, "--init")
            assert r.returncode == 0, f"--init {name} failed ({r.returncode}): {r.stderr}"

    def start(self, name: str, *extra: str, wait: bool = True,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """``env``: extra environment of the node process (e.g. the application version)."""
        assert name not in self.running or self.running[name].poll() is not None, f"{name} runs"
        self.data_dir(name).mkdir(parents=True, exist_ok=True)
        p = self.procs.start(self.node_cmd(name, *extra), log=self.data_dir(name) / "stdout.log",
                             cwd=self.root, env=env)
        self.running[name] = p
        if wait:
            wait_until(lambda: self._healthy(name, p), 30, f"{name} API up")
        return p

    def _healthy(self, name: str, p: subprocess.Popen) -> bool:
        if p.poll() is not None:
            raise AssertionError(f"{name} exited with {p.returncode}: {self.log_tail(name)}")
        try:
            return ApiClient(self.api_url(name), timeout=1).health()["ok"]
        except Exception:
            return False

    def start_all(self, env: dict[str, dict[str, str]] | None = None) -> None:
        """``env``: node name -> extra environment of that node's process."""
        for name in self.names:
            self.start(name, wait=False, env=(env or {}).get(name))
        for name in self.names:
            wait_until(lambda n=name: self._healthy(n, self.running[n]), 30, f"{name} API up")

    def stop(self, name: str, timeout: float = 20) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        p = self.running.pop(name)
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        return p.wait(timeout)

    def kill(self, name: str) -> None:
        p = self.running.pop(name)
        Processes.kill(p, signal.SIGKILL)
        p.wait(10)

    def stop_all(self) -> dict[str, int]:
        return {name: self.stop(name) for name in list(self.running)}

    def log_tail(self, name: str, lines: int = 30) -> str:
        f = self.data_dir(name) / "stdout.log"
        return "\n".join(f.read_text(errors="replace").splitlines()[-lines:]) if f.exists() else ""

    # --- API ------------------------------------------------------------------------------

    def client(self, name: str, token: str | None = "", timeout: float = 10) -> ApiClient:
        return ApiClient(self.api_url(name), self.token if token == "" else token, timeout=timeout)

    def status(self, name: str, digest: bool = True) -> dict:
        return self.client(name).status(digest)

    def statuses(self) -> dict[str, dict]:
        return {name: self.status(name) for name in self.running}

    def wait_leader(self, timeout: float = 20, among: list[str] | None = None) -> str:
        """A node every running node (or ``among``) agrees is leader, and that says so itself."""
        names = among or list(self.running)

        def agreed() -> str | None:
            leaders = set()
            for name in names:
                st = self.status(name, digest=False)
                leaders.add(st["leader_id"])
            if len(leaders) != 1 or 0 in leaders:
                return None
            name = self.name_of(leaders.pop())
            return name if name in self.running and self.status(name, False)["role"] == "leader" else None
        return wait_until(agreed, timeout, f"one agreed leader among {names}")

    def wait_definitions(self, leader: str | None = None, timeout: float = 20) -> None:
        """Until the leader has published every running member's store definition through the
        log (cluster/DESIGN.md): after that the log stays still while nothing is written."""
        leader = leader or self.wait_leader()

        def done() -> bool:
            members = self.status(leader, digest=False)["definitions"]["members"]
            return all(members.get(str(self.node_id(n)), {}).get("fingerprint") ==
                       self.status(n, digest=False)["definition"]["fingerprint"]
                       for n in self.running)
        wait_until(done, timeout, "every member's definition published")

    def wait_converged(self, timeout: float = 30, names: list[str] | None = None,
                       min_index: int = 0) -> dict[str, dict]:
        """Wait until the named (default: running) nodes have the same applied index and digest."""
        names = names or list(self.running)
        last: dict[str, dict] = {}

        def same() -> bool:
            last.clear()
            last.update({n: self.status(n) for n in names})
            idx = {s["applied_index"] for s in last.values()}
            dig = {s["digest"] for s in last.values()}
            return len(idx) == 1 and len(dig) == 1 and min(idx) >= min_index
        try:
            wait_until(same, timeout, f"equal applied index and digest on {names}")
        except AssertionError as exc:
            view = {n: (s.get("applied_index"), s.get("digest"), s.get("role")) for n, s in last.items()}
            raise AssertionError(f"{exc}: {view}") from None
        return dict(last)

    def add_node(self, role: str = "voter", *, via: str | None = None,
                 timeout: float = 30) -> str:
        """Append a node to the YAML, start it (not bootstrapped) and add it through the API."""
        leader = via or self.wait_leader()  # before the newcomer runs: it knows no leader yet
        entry = self._new_node_entry()
        self.write()
        name = entry["name"]
        self.start(name)
        self.client(leader, timeout=timeout).call(
            "POST", "/peers", {"id": entry["id"], "address": self.raft_address(name), "role": role},
            timeout=timeout)
        return name

    def tx(self, name: str, tx: str, *args: Any, forward: bool = False, **kwargs: Any) -> Any:
        return self.client(name).tx(tx, *args, forward=forward, **kwargs)

    def wait_stopped(self, p: subprocess.Popen, timeout: float = 20) -> int:
        return p.wait(timeout)
