"""A thin launcher for chaos clusters: real ``bknr_cluster.node`` processes, on loopback or each
in its own network namespace, with the per-node controls the nemesis needs (kill, pause,
restart) and the cluster-wide views the checkers need (leader, convergence, digests).

A thin layer over ``tests.cluster_helper.YamlCluster`` (the YAML, the processes, the waits): so
exactly the PIDs started here are stopped (after a SIGCONT, in case one is paused) however the
test ends. ``nodes[name]`` is a ``tests.cluster_helper.Node`` (url, data_dir, proc, alive, paused).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from tests.chaos.client import get_json, post_json
from tests.chaos.netns import Network
from tests.cluster_helper import YamlCluster
from tests.support import Processes, wait_until

APP = "tests.chaos.chaos_app:definition"


class ChaosCluster(YamlCluster):
    """``n`` nodes under ``workdir``; ``net`` (set up by the caller) puts each in a namespace."""

    def __init__(self, workdir: Path, procs: Processes, n: int = 3, *, net: Network | None = None,
                 store: str = APP, election_timeout_ms: int = 500, heartbeat_ms: int = 50,
                 snapshot_threshold: int = 400, snapshot_trailing: int = 100,
                 data_dirs: dict[str, Path] | None = None, checkpoint_every: int = 300) -> None:
        self.workdir = Path(workdir)
        self.net = net
        self.election_timeout_ms = election_timeout_ms
        names = [f"n{i + 1}" for i in range(n)]
        if net is not None and net.names != names:
            raise ValueError(f"network names {net.names} != node names {names}")
        super().__init__(
            self.workdir, procs, n, store=store, group="chaos", token=secrets.token_hex(16),
            election_timeout_ms=election_timeout_ms, heartbeat_ms=heartbeat_ms,
            snapshot_threshold=snapshot_threshold, snapshot_trailing=snapshot_trailing,
            snapshot_keep=2, checkpoint_every=checkpoint_every,
            hosts={name: net.addr(name) for name in names} if net else None,
            exec_prefix=net.exec_prefix if net else None,
            data_dirs={name: self.workdir / name for name in names} | (data_dirs or {}),
            log_path=lambda nd: self.workdir / f"{nd.name}.out")

    # --- process control ------------------------------------------------------------------

    def start(self, name: str, env: dict[str, str] | None = None) -> None:
        """``env``: extra environment (e.g. the older application version of a fault)."""
        self.start_node(name, env=env)

    def start_all(self) -> None:
        for name in self.nodes:
            self.start(name)

    def kill_all(self) -> None:
        for name in self.nodes:
            self.kill(name)

    def restart(self, name: str) -> None:
        self.kill(name)
        self.start(name)

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
        self.wait_healthy(self.up(), timeout)

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
