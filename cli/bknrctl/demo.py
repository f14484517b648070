"""``bknrctl demo``: the embedded default cluster, end to end, in well under three minutes."""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bknr_cluster.errors import BknrError

from .appdemo import end_user_drills, start_haproxy, stop_haproxy
from .cluster import Cluster, ClusterState, status_json
from .control import controller
from .drill import DrillOptions, RoundResult
from .drillrun import execute_drill
from .failback import do_failback
from .nodes import start_nodes, stop_nodes
from .output import info
from .provision import ensure_token
from .workload import BANK, BankClient, NodeRef

DEMO_YAML = """\
# bknrctl demo: a local 3-node bank cluster (same layout as configs/local-3.yaml)
group: bank-demo
store: examples.bank.app:definition
token_file: token
tls_dir: tls                 # CA and node certificates, created by init (TLS: raft, API, app)
timing: {{election_timeout_ms: 200, heartbeat_ms: 20}}
snapshot: {{threshold: 10000, trailing: 2000, keep: 3}}
app: {{asgi: "examples.bank.web:app"}}    # the bank's web application, served by every node
nodes:
  - {{id: 1, name: n1, host: 127.0.0.1, raft_port: {r1}, api_port: {a1}, app_port: {w1}, data_dir: data/n1}}
  - {{id: 2, name: n2, host: 127.0.0.1, raft_port: {r2}, api_port: {a2}, app_port: {w2}, data_dir: data/n2}}
  - {{id: 3, name: n3, host: 127.0.0.1, raft_port: {r3}, api_port: {a3}, app_port: {w3}, data_dir: data/n3}}
"""


def write_demo_config(directory: Path, base_port: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "cluster.yaml"
    path.write_text(DEMO_YAML.format(**{f"r{i}": base_port + i for i in (1, 2, 3)},
                                     **{f"a{i}": base_port + 1000 + i for i in (1, 2, 3)},
                                     **{f"w{i}": base_port + 2000 + i for i in (1, 2, 3)}))
    return path


def _stop_previous(directory: Path) -> None:
    """A previous demo may still run (--keep): stop it before wiping its directory."""
    stop_haproxy(directory)
    path = directory / "cluster.yaml"
    if not path.exists():
        return
    try:
        cluster = Cluster.load(path)
        stop_nodes(cluster, list(cluster.cfg.nodes), quiet=True)
    except Exception as exc:  # a broken old demo dir must not block a new demo
        info(f"demo: could not stop the previous demo cleanly: {exc}")


async def _load(cluster: Cluster, transfers: int) -> int:
    nodes = [NodeRef(n.id, n.name, n.api_url) for n in cluster.cfg.nodes]
    async with BankClient(nodes, cluster.token, request_timeout=5.0, prefix="load",
                          workload=BANK, ssl_context=cluster.ssl_context) as c:
        await c.setup(time.monotonic() + 30.0)
        stop = asyncio.Event()
        per = max(1, transfers // 8)
        await asyncio.gather(*(c.writer(stop, w, random.Random(w), per) for w in range(8)))
        return len(c.acked)


def stop_demo(directory: Path) -> None:
    """``demo --stop``: stop a demo left running with --keep (nodes and HAProxy)."""
    _stop_previous(directory.resolve())


# What the demo command does with intermediate results (operations do not render): plot the
# drill's timeline to a file, and show the final report while the cluster still runs.
OnDrill = Callable[[Cluster, dict, list[RoundResult], Path], None]
Show = Callable[[Cluster, dict, ClusterState], None]


def run_demo(directory: Path, keep: bool = False, rounds: int = 5, base_port: int = 7100,
             quiet: bool = False, on_drill: OnDrill | None = None,
             show: Show | None = None) -> dict[str, Any]:
    t_start = time.monotonic()
    say = (lambda m: None) if quiet else info
    directory = directory.resolve()
    _stop_previous(directory)
    shutil.rmtree(directory / "data", ignore_errors=True)
    path = write_demo_config(directory, base_port)
    cluster = Cluster.load(path)
    ensure_token(cluster.cfg)
    cluster = Cluster.load(path)
    say(f"demo: 3-node bank cluster in {directory}")
    for n in cluster.cfg.nodes:
        c = controller(cluster.cfg, n)
        c.init()
    say("demo: initialised n1, n2, n3")
    lb = None
    try:
        start_nodes(cluster, list(cluster.cfg.nodes), quiet=quiet)
        leader = cluster.wait_for_leader(timeout=30.0)
        say(f"demo: started; leader is {leader.name}")
        acked = asyncio.run(_load(cluster, 2000))
        say(f"demo: loaded {acked} transfers")
        opts = DrillOptions(rounds=rounds, fault="kill", leave_down=True)
        rep, results = execute_drill(cluster, opts, quiet=quiet)
        if on_drill is not None:
            on_drill(cluster, rep, results, directory / "drill.png")
        victim = rep["rounds"][-1]["victim"]
        say(f"demo: drill done, {victim} left down for the failback")
        fb = do_failback(cluster, victim, quiet=quiet)
        say(f"demo: failback: {victim} caught up, leadership back on it "
            f"(switchover gap {fb['transfer']['gap_ms']:.0f} ms)")
        # one planned switchover under the bank workload: the client-observed transfer gap
        try:
            tr, _ = execute_drill(cluster, DrillOptions(rounds=1, fault="transfer"), quiet=True)
            rep["planned_transfer_gap_ms"] = tr["rounds"][0]["write_gap_ms"]
            rep["planned_transfer"] = tr["rounds"][0]
            rep["lost_total"] += tr["lost_total"]
            rep["digests_match"] = rep["digests_match"] and tr["digests_match"]
            rep["bank_total_ok"] = rep["bank_total_ok"] and tr["bank_total_ok"]
        except BknrError as exc:  # the switchover is a bonus measurement: report, do not abort
            rep["planned_transfer_gap_ms"] = None
            rep["planned_transfer_error"] = str(exc)
            say(f"demo: planned switchover under load failed: {exc}")
        lb = start_haproxy(cluster, directory, base_port)
        say(f"demo: HAProxy in front of the bank web application at {lb.write_url}")
        rep["end_user"] = end_user_drills(cluster, lb, quiet)
        state = cluster.probe()
        rep["failback"] = fb
        rep["status"] = status_json(cluster, state)
        rep["load_transfers"] = acked
        if show is not None:
            show(cluster, rep, state)
    finally:
        if not keep:
            if lb is not None:
                lb.stop()
            stop_nodes(cluster, list(cluster.cfg.nodes), quiet=True)
    rep["demo_seconds"] = round(time.monotonic() - t_start, 1)
    rep["kept_running"] = keep
    say(f"demo: finished in {rep['demo_seconds']:.0f} s" + ("" if keep else "; cluster stopped"))
    if keep and lb is not None:
        say(f"demo: the bank is running: open {lb.write_url}/ in a browser "
            f"(reads from replicas: {lb.read_url}/accounts)")
        say(f"demo: cluster: bknrctl -c {path} status; stop everything: "
            f"bknrctl demo --stop --dir {directory}")
    return rep
