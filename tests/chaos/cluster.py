"""A thin launcher for chaos clusters: real ``bknr_cluster.node`` processes, on loopback or each
in its own network namespace, with the per-node controls the nemesis needs (kill, pause,
restart) and the cluster-wide views the checkers need (leader, convergence, digests).

Processes are started through ``tests.support.Processes``, so exactly the PIDs we started are
stopped (after a SIGCONT, in case one is paused) however the test ends.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.chaos.client import get_json, post_json
from tests.chaos.netns import Network
from tests.support import Processes, free_ports, wait_until

APP = "tests.chaos.chaos_app:definition"


@dataclass
class Node:
    name: str
    id: int
    host: str
    raft_port: int
    api_port: int
    data_dir: Path
    proc: subprocess.Popen | None = None
    paused: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class ChaosCluster:
    """``n`` nodes under ``workdir``; ``net`` (set up by the caller) puts each in a namespace."""

    def __init__(self, workdir: Path, procs: Processes, n: int = 3, *, net: Network | None = None,
                 store: str = APP, election_timeout_ms: int = 500, heartbeat_ms: int = 50,
                 snapshot_threshold: int = 400, snapshot_trailing: int = 100,
                 data_dirs: dict[str, Path] | None = None, checkpoint_every: int = 300) -> None:
        self.workdir = Path(workdir)
        self.procs = procs
        self.net = net
        self.election_timeout_ms = election_timeout_ms
        self.token = secrets.token_hex(16)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "token").write_text(self.token + "\n")
        names = [f"n{i + 1}" for i in range(n)]
        if net is not None and net.names != names:
            raise ValueError(f"network names {net.names} != node names {names}")
        ports = free_ports(2 * n) if net is None else []
        self.nodes: dict[str, Node] = {}
        for i, name in enumerate(names):
            host = net.addr(name) if net else "127.0.0.1"
            # each namespace has its own port space, so fixed ports are safe there
            raft_port, api_port = (7000, 8000) if net else (ports[2 * i], ports[2 * i + 1])
            ddir = (data_dirs or {}).get(name) or self.workdir / name
            self.nodes[name] = Node(name, i + 1, host, raft_port, api_port, Path(ddir))
        self.config_path = self.workdir / "cluster.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "group": "chaos", "store": store, "token_file": "token", "insecure": True,
            "timing": {"election_timeout_ms": election_timeout_ms, "heartbeat_ms": heartbeat_ms},
            "snapshot": {"threshold": snapshot_threshold, "trailing": snapshot_trailing, "keep": 2},
            # consistency checkpoints through the log: a replica that diverged halts
            "checkpoint": {"every": checkpoint_every},
            "nodes": [{"id": nd.id, "name": nd.name, "host": nd.host, "raft_port": nd.raft_port,
                       "api_port": nd.api_port, "data_dir": str(nd.data_dir)}
                      for nd in self.nodes.values()],
        }, sort_keys=False))
        self._lock = threading.Lock()

    # --- process control ------------------------------------------------------------------

    def _cmd(self, name: str, *extra: str) -> list[str]:
        prefix = self.net.exec_prefix(name) if self.net else []
        return [*prefix, sys.executable, "-m", "bknr_cluster.node", "--config", str(self.config_path),
                "--node", name, *extra]

    def init(self) -> None:
        for name, nd in self.nodes.items():
            nd.data_dir.mkdir(parents=True, exist_ok=True)
            p = subprocess.run(self._cmd(name, "--init"), capture_output=True, text=True, timeout=60,
                               env=self._env())
            if p.returncode != 0:
                raise RuntimeError(f"--init of {name} failed ({p.returncode}): {p.stderr.strip()}")

    @staticmethod
    def _env() -> dict:
        import os

        from tests.support import ROOT
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "cli"), env.get("PYTHONPATH", "")])
        return env

    def start(self, name: str, env: dict[str, str] | None = None) -> None:
        """``env``: extra environment (e.g. the older application version of a fault)."""
        nd = self.nodes[name]
        if nd.alive:
            raise RuntimeError(f"{name} is already running (pid {nd.proc.pid})")
        nd.proc = self.procs.start(self._cmd(name), log=self.workdir / f"{name}.out", env=env)
        nd.paused = False

    def start_all(self) -> None:
        for name in self.nodes:
            self.start(name)

    def kill(self, name: str) -> None:
        """kill -9: no cleanup, no leadership hand-over."""
        nd = self.nodes[name]
        if nd.alive:
            Processes.kill(nd.proc, signal.SIGKILL)
            nd.proc.wait(10)
        nd.paused = False

    def kill_all(self) -> None:
        for name in self.nodes:
            self.kill(name)

    def pause(self, name: str) -> None:
        nd = self.nodes[name]
        Processes.kill(nd.proc, signal.SIGSTOP)
        nd.paused = True

    def resume(self, name: str) -> None:
        nd = self.nodes[name]
        if nd.alive:
            Processes.kill(nd.proc, signal.SIGCONT)
        nd.paused = False

    def restart(self, name: str) -> None:
        self.kill(name)
        self.start(name)

    def up(self) -> list[str]:
        """Nodes running and not paused."""
        return [n for n, nd in self.nodes.items() if nd.alive and not nd.paused]

    # --- views ----------------------------------------------------------------------------

    def status(self, name: str, timeout: float = 2.0) -> dict:
        return get_json(self.nodes[name].url, "/status", self.token, timeout)

    def statuses(self, names: list[str] | None = None) -> dict[str, dict]:
        out = {}
        for n in names or self.up():
            try:
                out[n] = self.status(n)
            except (OSError, ValueError):
                pass
        return out

    def leader(self, names: list[str] | None = None) -> str | None:
        """The node that says it leads in the highest term among those answering.

        Asks the cheap ``GET /leader`` first: ``/status`` computes a digest of the whole store,
        which under a polling nemesis would eat the nodes' CPU.  Only when several nodes claim
        leadership (a deposed leader that has not noticed yet) are their terms compared."""
        claims = []
        for n in names or self.up():
            try:
                if get_json(self.nodes[n].url, "/leader", None, 1.0).get("leader"):
                    claims.append(n)
            except (OSError, ValueError):
                pass
        if len(claims) <= 1:
            return claims[0] if claims else None
        best = None
        for n, st in self.statuses(claims).items():
            if st.get("role") == "leader" and (best is None or st["term"] > best[1]):
                best = (n, st["term"])
        return best[0] if best else None

    def wait_leader(self, timeout: float = 30.0, among: list[str] | None = None) -> str:
        return wait_until(lambda: self.leader(among), timeout, "a leader")

    def wait_up(self, timeout: float = 30.0) -> None:
        for n in self.up():
            wait_until(lambda n=n: get_json(self.nodes[n].url, "/health", None, 1.0), timeout,
                       f"{n} to answer /health")

    def converge(self, timeout: float = 60.0, names: list[str] | None = None) -> dict[str, dict]:
        """Wait until every given node has applied the same index as the leader's commit index
        (after a barrier write, so everything acknowledged before is included) and return the
        statuses.  Digests are compared by the caller: unequal digests are a finding, not a
        reason to keep waiting."""
        names = names or self.up()
        leader = self.wait_leader(timeout, among=names)
        # A no-op barrier write makes the leader commit an entry of its own term, so every
        # earlier entry is committed too.
        wait_until(lambda: self.barrier(leader) or True, timeout, "a barrier on the leader")

        def same() -> dict | None:
            sts = self.statuses(names)
            if len(sts) != len(names):
                return None
            idx = {st["applied_index"] for st in sts.values()}
            commit = max(st["commit_index"] or 0 for st in sts.values())
            if len(idx) == 1 and idx.pop() >= commit:
                return sts
            return None
        return wait_until(same, timeout, f"nodes {names} to converge")

    def barrier(self, name: str) -> int:
        ans = post_json(self.nodes[name].url, "/query/ping", {"consistent": True}, self.token)
        return int(ans.get("applied_index") or 0)

    def digests(self, names: list[str] | None = None) -> dict[str, tuple[int, str]]:
        return {n: (st["applied_index"], st["digest"]) for n, st in self.statuses(names).items()}

    def query(self, name: str, query: str, *args: object, consistent: bool = False) -> object:
        ans = post_json(self.nodes[name].url, f"/query/{query}",
                        {"args": list(args), "consistent": consistent}, self.token, timeout=10)
        return ans["result"]

    def tx(self, name: str, tx: str, *args: object) -> object:
        ans = post_json(self.nodes[name].url, f"/tx/{tx}", {"args": list(args)}, self.token, timeout=10)
        return ans["result"]

    def log_tail(self, name: str, lines: int = 20) -> str:
        p = self.workdir / f"{name}.out"
        return "\n".join(p.read_text(errors="replace").splitlines()[-lines:]) if p.exists() else ""

    def stop_all(self) -> None:
        self.procs.stop_all()
        for nd in self.nodes.values():
            nd.proc = None
            nd.paused = False
