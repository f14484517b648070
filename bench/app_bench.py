"""End-user benchmark: the bank web application hosted by 3 nodes behind HAProxy.

    python bench/app_bench.py [--quick] [--seconds S] [--kill-rounds N]

One run, 3 ``bknr-node`` processes on loopback (fsync on, election timeout 200 ms as in the
demo), ``examples.bank.web:app`` in every node, a HAProxy configured by ``bknrctl lb haproxy``,
64 HTTP clients sending idempotent ``POST /transfers`` (cli/bknrctl/appdrill.py):
  1. kill -9 of the leader under load, 10 rounds (``--quick``: 2). Targets: 0 user-visible
     errors; in every round the slowest request at most the round's write gap + 150 ms;
  2. planned switchover under load, 3 rounds (1). Target: 0 errors, stall <= 50 ms (the write
     gap around the switchover, as the clients saw it);
  3. throughput through HAProxy, and of the same application on uvicorn over a standalone
     (unreplicated, fsync'd) store (bench/standalone_web.py), in the same run. Target: ratio
     >= 0.5.
Prints a table, then one JSON line (the last line) with ``bench`` = "app", ``user_errors_kill``,
``max_ms_kill``, ``gap_ms_kill``, ``stall_ms_transfer``, ``req_per_s``, ``req_per_s_standalone``,
``ratio_standalone`` and the details.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT), str(ROOT / "cli")):
    if p not in sys.path:
        sys.path.insert(0, p)

CLIENTS = 64
YAML = """\
group: app-bench
store: examples.bank.app:definition
token_file: token
{security}
timing: {{election_timeout_ms: 200, heartbeat_ms: 20}}
app: {{asgi: "examples.bank.web:app"}}
nodes:
{nodes}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


INSECURE = """\
# loopback only: the transport-security cost is measured by bench/tls_bench.py (raft) and by
# --tls here (HTTPS from HAProxy to the application and to the checks)
insecure: true"""
SECURE = "tls_dir: tls   # --tls: bknrctl init's CA and node certificates, as a real cluster"


def write_yaml(root: Path, tls: bool = False) -> Path:
    nodes = "\n".join(
        f"  - {{id: {i}, name: n{i}, host: 127.0.0.1, raft_port: {free_port()}, "
        f"api_port: {free_port()}, app_port: {free_port()}, data_dir: data/n{i}}}" for i in (1, 2, 3))
    token = root / "token"
    token.write_text("app-bench-token-" + secrets.token_hex(16) + "\n")
    token.chmod(0o600)
    path = root / "cluster.yaml"
    path.write_text(YAML.format(nodes=nodes, security=SECURE if tls else INSECURE))
    if tls:
        from bknrctl.provision import ensure_token

        from bknr_cluster.cluster.config import ClusterConfig

        ensure_token(ClusterConfig.load(path))   # the CA and the node certificates
    return path


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process ``pid`` (all its threads; None: this process)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(url: str, seconds: float, prefix: str,
                     pids: dict[str, int | None]) -> dict[str, Any]:
    """Acknowledged transfers per second of CLIENTS clients against ``url`` (after a warm-up),
    and the CPU time each process in ``pids`` spent per request in the same window (the
    machine-independent side of the figure: on a shared 2-core host the rate follows it)."""
    from bknrctl.appdrill import AppClients

    async with AppClients(url, 15.0, prefix) as users:
        await users.setup(time.monotonic() + 30.0)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(users.client(stop, c, random.Random(c), 1_000_000))
                 for c in range(CLIENTS)]
        try:
            await asyncio.sleep(0.5)
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
            n0, t0 = len(users.acked), time.monotonic()
            await asyncio.sleep(seconds)
            n1, t1 = len(users.acked), time.monotonic()
            cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    n = max(1, n1 - n0)
    return {"req_per_s": (n1 - n0) / (t1 - t0),
            "cpu_us_per_req": {k: round((cpu1[k] - cpu0[k]) / n * 1e6) for k in pids}}


def standalone_throughput(root: Path, seconds: float) -> dict[str, Any]:
    port = free_port()
    out = open(root / "standalone.log", "ab")
    p = subprocess.Popen([sys.executable, str(ROOT / "bench" / "standalone_web.py"), "--dir",
                          str(root / "standalone"), "--port", str(port), "--threads", str(CLIENTS)],
                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the standalone server did not start: {root / 'standalone.log'}")
            time.sleep(0.05)
        return asyncio.run(throughput(f"http://127.0.0.1:{port}", seconds, "solo",
                                      {"server": p.pid, "clients": None}))
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        out.close()


def node_pid(node: Any) -> int:
    return int(node.pid_file.read_text().strip())


def drill(cluster: Any, url: str, fault: str, rounds: int) -> list[dict]:
    from bknrctl.appdrill import AppDrill, AppDrillOptions

    opts = AppDrillOptions(rounds=rounds, fault=fault, clients=CLIENTS, via=url, prefix="bench")
    done = asyncio.run(AppDrill(cluster, url, opts,
                                lambda m: print(f"  {fault} {m}", file=sys.stderr)).run())
    return [r.public() for r in done]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float, default=None, help="per throughput measurement")
    ap.add_argument("--kill-rounds", type=int, default=None)
    ap.add_argument("--tls", action="store_true",
                    help="a secure cluster: HTTPS application and admin ports, TLS raft (the "
                         "standalone baseline stays plain HTTP)")
    ap.add_argument("--throughput-only", action="store_true",
                    help="skip the drills (profiling the throughput phase)")
    args = ap.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    kill_rounds = 0 if args.throughput_only else args.kill_rounds or (2 if args.quick else 10)
    transfer_rounds = 0 if args.throughput_only else 1 if args.quick else 3

    from bknrctl.cluster import Cluster
    from bknrctl.control import controller
    from bknrctl.lb import HaproxyProcess
    from bknrctl.nodes import start_nodes, stop_nodes

    root = Path(tempfile.mkdtemp(prefix="bknr-app-bench-"))
    cluster = Cluster.load(write_yaml(root, args.tls))
    for n in cluster.cfg.nodes:
        controller(cluster.cfg, n).init()
    lb = None
    out: dict[str, Any] = {"bench": "app", "quick": args.quick, "clients": CLIENTS, "tls": args.tls}
    t_start = time.monotonic()
    try:
        start_nodes(cluster, list(cluster.cfg.nodes), quiet=True)
        cluster.wait_for_leader(timeout=30.0)
        lb = HaproxyProcess(cluster.cfg, root / "haproxy")
        lb.start()
        kills = drill(cluster, lb.write_url, "kill", kill_rounds) if kill_rounds else []
        switches = drill(cluster, lb.write_url, "transfer", transfer_rounds) if transfer_rounds else []
        leader = cluster.wait_for_leader(timeout=30.0)
        pids = {("leader" if n.id == leader.id else "follower " + n.name): node_pid(n)
                for n in cluster.cfg.nodes}
        pids.update({"haproxy": lb.proc.pid if lb.proc else None, "clients": None})
        hosted = asyncio.run(throughput(lb.write_url, seconds, "tput", pids))
    finally:
        if lb is not None:
            lb.stop()
        stop_nodes(cluster, list(cluster.cfg.nodes), quiet=True)
    solo = standalone_throughput(root, seconds)

    margins = [r["max_ms"] - r["gap_ms"] for r in kills if r["gap_ms"] is not None]
    out.update({
        "rounds_kill": len(kills),
        "user_errors_kill": sum(r["user_errors"] for r in kills),
        "max_ms_kill": max((r["max_ms"] for r in kills), default=None),
        "gap_ms_kill": max((r["gap_ms"] for r in kills if r["gap_ms"] is not None), default=None),
        "max_over_gap_ms_kill": round(max(margins), 1) if margins else None,
        "kill_rounds_within_gap_150": sum(1 for m in margins if m <= 150),
        "lost_kill": sum(r["lost"] for r in kills),
        "rounds_transfer": len(switches),
        "user_errors_transfer": sum(r["user_errors"] for r in switches),
        "stall_ms_transfer": max((r["gap_ms"] for r in switches if r["gap_ms"] is not None),
                                 default=None),
        "round_stall_ms_transfer": max((r["longest_stall_ms"] for r in switches), default=None),
        "lost_transfer": sum(r["lost"] for r in switches),
        "digests_match": all(r["digests_match"] for r in kills + switches),
        "req_per_s": round(hosted["req_per_s"], 1),
        "req_per_s_standalone": round(solo["req_per_s"], 1),
        "ratio_standalone": round(hosted["req_per_s"] / solo["req_per_s"], 2)
        if solo["req_per_s"] else None,
        "cpu_us_per_req": hosted["cpu_us_per_req"],
        "cpu_us_per_req_standalone": solo["cpu_us_per_req"],
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "seconds": round(time.monotonic() - t_start, 1),
    })

    print(f"{'round':<14}{'requests':>9}{'errors':>8}{'p99 ms':>9}{'max ms':>9}{'gap ms':>9}"
          f"{'max-gap':>9}{'stall ms':>10}{'lost':>6}")
    for r in kills + switches:
        gap = r["gap_ms"]
        print(f"{r['fault'] + ' ' + str(r['round']):<14}{r['requests']:>9}{r['user_errors']:>8}"
              f"{r['p99_ms']:>9.0f}{r['max_ms']:>9.0f}{gap if gap is not None else float('nan'):>9.0f}"
              f"{(r['max_ms'] - gap) if gap is not None else float('nan'):>9.0f}"
              f"{r['longest_stall_ms']:>10.0f}{r['lost']:>6}"
              + (f"  {r['error_kinds']}" if r.get("error_kinds") else ""))
    for what, cpu in (("hosted", out["cpu_us_per_req"]),
                      ("standalone", out["cpu_us_per_req_standalone"])):
        print(f"CPU per request ({what}): " + ", ".join(f"{k} {v} us" for k, v in cpu.items())
              + f"; total {sum(cpu.values())} us")
    print(f"throughput through HAProxy, {CLIENTS} clients: {out['req_per_s']:.0f} req/s; "
          f"standalone store on uvicorn: {out['req_per_s_standalone']:.0f} req/s; "
          f"ratio {out['ratio_standalone']} (target >= 0.5)")
    print(f"kill: {out['user_errors_kill']} user errors (target 0), max - gap <= 150 ms in "
          f"{out['kill_rounds_within_gap_150']}/{len(kills)} rounds; switchover: "
          f"{out['user_errors_transfer']} errors, stall {out['stall_ms_transfer']} ms (target <= 50)")
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
