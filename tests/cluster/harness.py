"""A local cluster of real ``bknr-node`` processes on loopback, for tests, drills and the CLI tests.

    cluster = LocalCluster(tmp_path, procs, n=3)   # writes cluster.yaml + token, free ports
    cluster.init()                                  # bknr-node --init on every node
    cluster.start_all()
    leader = cluster.wait_leader()                  # -> node name, e.g. "n2"
    cluster.client(leader).tx("open_account", "ann", "Oslo")
    cluster.wait_converged()                        # equal applied index + digest on all running

A thin layer over ``tests.cluster_helper.YamlCluster`` (the YAML, the processes, the waits):
this adds ``running`` (the nodes the test started and has not stopped), ApiClient views,
convergence and membership. Options: ``raft_secret=True`` (authenticated raft transport),
snapshot/timing knobs, ``store=`` (any ``module:definition`` importable from the repo).
``status(name, digest=False)`` for cheap polling; ``add_node(role)`` appends a node to the YAML,
starts it and adds it via the leader; ``run_node_cmd(name, "--recover", json)`` for one-shot
node commands.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

from bknr_cluster.cluster.client import ApiClient
from tests.cluster_helper import DEFAULT_TOKEN, YamlCluster
from tests.support import Processes, wait_until

DEFAULT_STORE = "examples.bank.app:definition"


class LocalCluster(YamlCluster):
    def __init__(self, root: Path, procs: Processes, n: int = 3, *, store: str = DEFAULT_STORE,
                 election_timeout_ms: int = 500, heartbeat_ms: int = 50,
                 snapshot_threshold: int = 10000, snapshot_trailing: int = 2000,
                 token: str = DEFAULT_TOKEN, group: str = "test",
                 raft_secret: bool = False, app: dict | None = None,
                 checkpoint_every: int | None = None) -> None:
        super().__init__(root, procs, n, store=store, group=group, token=token,
                         election_timeout_ms=election_timeout_ms, heartbeat_ms=heartbeat_ms,
                         snapshot_threshold=snapshot_threshold, snapshot_trailing=snapshot_trailing,
                         checkpoint_every=checkpoint_every, raft_secret=raft_secret, app=app)
        # The nodes this test started and has not stopped or killed (a crashed one stays until
        # then); in-process nodes of a bench may be listed with None.
        self.running: dict[str, subprocess.Popen] = {}

    # --- configuration --------------------------------------------------------------------

    def node(self, name: str) -> dict:
        return self.entry(name)

    def node_id(self, name: str) -> int:
        return self.nodes[name].id

    def data_dir(self, name: str) -> Path:
        return self.nodes[name].data_dir

    def raft_address(self, name: str) -> str:
        return self.nodes[name].raft_address

    def api_url(self, name: str) -> str:
        return self.nodes[name].url

    def app_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.nodes[name].app_port}"

    # --- processes ------------------------------------------------------------------------

    def start(self, name: str, *extra: str, wait: bool = True,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """``env``: extra environment of the node process (e.g. the application version)."""
        assert name not in self.running or self.running[name].poll() is not None, f"{name} runs"
        p = self.start_node(name, *extra, env=env)
        self.running[name] = p
        if wait:
            self.wait_healthy([name])
        return p

    def _healthy(self, name: str, p: subprocess.Popen | None = None) -> bool:
        return self.healthy(name)

    def start_all(self, env: dict[str, dict[str, str]] | None = None) -> None:
        """``env``: node name -> extra environment of that node's process."""
        for name in self.names:
            self.start(name, wait=False, env=(env or {}).get(name))
        self.wait_healthy(self.names)

    def stop(self, name: str, timeout: float = 20) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        self.running.pop(name)
        return self.terminate(name, timeout)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        if sig == signal.SIGKILL:
            self.running.pop(name)
        super().kill(name, sig)

    def stop_all(self) -> dict[str, int]:
        return {name: self.stop(name) for name in list(self.running)}

    def wait_stopped(self, p: subprocess.Popen, timeout: float = 20) -> int:
        return p.wait(timeout)

    # --- API ------------------------------------------------------------------------------

    def client(self, name: str, token: str | None = "", timeout: float = 10) -> ApiClient:
        return self.api(name, token, timeout)

    def status(self, name: str, digest: bool = True) -> dict:
        return self.client(name).status(digest)

    def statuses(self) -> dict[str, dict]:
        return {name: self.status(name) for name in self.running}

    def tx(self, name: str, tx: str, *args: Any, forward: bool = False, **kwargs: Any) -> Any:
        return self.client(name).tx(tx, *args, forward=forward, **kwargs)

    def wait_leader(self, timeout: float = 20, among: list[str] | None = None) -> str:
        """A node every running node (or ``among``) agrees is leader, and that says so itself."""
        def view(name: str) -> tuple[bool, str | None]:
            st = self.status(name, digest=False)
            return st["role"] == "leader", self.name_of(st["leader_id"]) if st["leader_id"] else None
        return self.wait_agreed_leader(view, among or list(self.running), timeout,
                                       candidates=list(self.running))

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
        entry = self.add_entry()
        self.write()
        name = entry["name"]
        self.start(name)
        self.client(leader, timeout=timeout).call(
            "POST", "/peers", {"id": entry["id"], "address": self.raft_address(name), "role": role},
            timeout=timeout)
        return name
