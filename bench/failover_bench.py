"""Failover benchmark: write gaps per fault kind, a steady run without faults, all in one run.

    python bench/failover_bench.py [--quick] [--rounds N] [--steady-s S] [--kinds K,...]
                                   [--trace DIR]

On a 3-node bank cluster (election timeout 200 ms, heartbeat 20 ms, fsync on), with the drill of
``bknrctl failover --drill`` (cli/bknrctl/drill.py: 4 writers, a watcher, verification after
every round), measures the client-visible write gap of each round for:
  * ``kill``: SIGKILL of the leader's process (its kernel closes its sockets: the fast path);
  * ``stop``: SIGSTOP of the leader (nothing closes: the election timer path);
  * ``partition``: the leader's network namespace drops all its traffic, to the other nodes and
    to the clients (a powered-off host: the timer path); needs root, ``ip`` and ``nft``;
    ``partition_*`` are null when namespaces are not available;
  * ``transfer``: a planned switchover.
Then a steady run under the same load without faults, during which the leader and then a
follower hold their GIL for 2 s each (a GC or a C call that keeps the GIL; the engine thread
keeps heart-beating), and counts term changes. Every round and the steady run check that no
acknowledged transfer is lost, the digests match and the bank total is unchanged.
``--quick``: 4 rounds per fault kind and a 20 s steady run (the issue's figures need the full
run: 15 rounds, 600 s). ``--kinds`` runs only some phases (e.g. ``kill,steady``: a shared
machine allows a few minutes per locked run). ``--trace DIR``: the nodes log every election step
(BKNR_TRACE_ELECTION) and DIR receives their logs and, per round, the fault and leader times
(the same monotonic clock) with each survivor's election counters. Prints a table, then one
JSON line (the last line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
for p in (str(ROOT), str(ROOT / "cli"), str(BENCH_DIR)):
    if p not in sys.path:
        sys.path.insert(0, p)
# node processes import this module's store definition (``failover_bench:definition``)
os.environ["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR), os.environ.get("PYTHONPATH", "")])

from bknr_cluster import _raft  # noqa: E402
from bknr_cluster.store import StoreDefinition, query  # noqa: E402
from examples.bank import app as bank  # noqa: E402

KINDS = ("kill", "stop", "transfer", "partition", "steady")
ELECTION_MS = 200
HEARTBEAT_MS = 20
STALL_S = 2.0


@query("hold_gil")
def hold_gil(seconds: float) -> bool:
    """Hold this node's GIL (a long GC pass, a C call that keeps it); a local read, not logged."""
    _raft._hold_gil(float(seconds))
    return True


definition = StoreDefinition(
    name="bank-failover", classes=[bank.Account, bank.Transfer],
    transactions=[bank.open_account, bank.deposit, bank.transfer],
    queries=[bank.total_balance, bank.account, bank.accounts, bank.applied_transfers,
             bank.has_transfer, bank.count, hold_gil])


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 1) if xs else None


def _max(xs: list[float]) -> float | None:
    return round(max(xs), 1) if xs else None


def run_drills(config: Path, kinds: list[str], rounds: int, network: Any = None,
               trace: Path | None = None) -> dict[str, dict]:
    from bknrctl.cluster import Cluster
    from bknrctl.drill import Drill, DrillOptions, report

    cluster = Cluster.load(config)
    out = {}
    for kind in kinds:
        d = Drill(cluster, DrillOptions(rounds=rounds, fault=kind))
        d.network = network
        counters: list[dict[str, dict[str, int]]] = [_node_counters(cluster)]
        if trace is not None:  # each survivor's counters after every round: which path ran
            d.progress = lambda _msg, into=counters: into.append(_node_counters(cluster))
        results = asyncio.run(d.run())
        out[kind] = report(cluster, results)
        if trace is not None:
            _trace_rounds(trace / f"{kind}-rounds.jsonl", results, counters)
        gaps = [r.write_gap_ms for r in results if r.write_gap_ms is not None]
        print(f"  {kind:9s} {len(results)} rounds: median {_median(gaps)} ms, max {_max(gaps)} ms, "
              f"lost {out[kind]['lost_total']}; gaps {sorted(round(g) for g in gaps)}", flush=True)
    return out


async def steady_run(config: Path, seconds: float) -> dict[str, Any]:
    """Load without faults; the leader, then a follower, hold their GIL for STALL_S."""
    from bknrctl.cluster import Cluster
    from bknrctl.drill import Drill, DrillOptions
    from bknrctl.workload import BankClient

    cluster = Cluster.load(config)
    drill = Drill(cluster, DrillOptions())
    state = await asyncio.to_thread(cluster.probe, 2.0)
    terms0 = {s.node.name: int(s.status["term"]) for s in state.nodes if s.status}
    counts0 = _election_counters(state)
    async with BankClient(drill.nodes, cluster.token, request_timeout=1.0, prefix="steady") as client:
        await client.setup(time.monotonic() + 30)
        leader = await client.discover(-1, time.monotonic() + 30)
        assert leader is not None
        total0 = await client.total(leader, consistent=True)
        stop = asyncio.Event()
        rng = random.Random(7)
        writers = [asyncio.create_task(client.writer(stop, w, random.Random(rng.random()), 10**6))
                   for w in range(4)]
        follower = next(n for n in drill.nodes if n.id != leader.id)
        stalls = []
        try:
            for at, node in ((seconds / 3, leader), (2 * seconds / 3, follower)):
                await asyncio.sleep(max(0.0, at - sum(stalls)))
                t0 = time.monotonic()
                st, _ = await client.call(node, "query", "hold_gil", {"args": [STALL_S]}, timeout=30)
                stalls.append(time.monotonic() - t0)
                assert st == 200, f"hold_gil on {node.name}: HTTP {st}"
            await asyncio.sleep(max(0.0, seconds - sum(stalls) - 2 * seconds / 3))
        finally:
            stop.set()
            await asyncio.gather(*writers, return_exceptions=True)
        acked = dict(client.acked)
        lost, digests_ok, total_ok = await drill.verify(client, acked, total0, skip=set())
    state = await asyncio.to_thread(cluster.probe, 2.0)
    terms1 = {s.node.name: int(s.status["term"]) for s in state.nodes if s.status}
    changes = max(terms1[n] - terms0[n] for n in terms0)
    counts1 = _election_counters(state)
    return {"term_changes": changes, "acked": len(acked), "lost": lost, "digests_match": digests_ok,
            "bank_total_ok": total_ok, "stalls_s": [round(s, 2) for s in stalls],
            # what started the elections, if any (summed over the nodes)
            "election_counters": {k: counts1[k] - counts0[k] for k in counts0}}


ELECTION_COUNTERS = ("leader_closes", "leaders_gone", "fast_elections", "relaxed_votes",
                     "pre_vote_tie_refusals", "early_campaigns", "pre_vote_retries",
                     "timeouts_now_retried")


def _node_counters(cluster: Any) -> dict[str, dict[str, int]]:
    state = cluster.probe(2.0)
    return {s.node.name: {k: int(s.status.get(k, 0)) for k in (*ELECTION_COUNTERS, "term")}
            for s in state.nodes if s.status}


def _trace_rounds(path: Path, results: list[Any], counters: list[dict[str, dict[str, int]]]) -> None:
    """One line per round: victim, gap, fault and leader times, each node's counter increments
    (a restarted victim's counters start again from 0: compare the survivors')."""
    with path.open("a") as f:
        for r, before, after in zip(results, counters, counters[1:], strict=False):
            delta = {n: {k: v - was for k, v in c.items() if v != (was := before.get(n, {}).get(k, 0))}
                     for n, c in after.items() if n != r.victim}
            f.write(json.dumps({"round": r.round, "fault": r.fault, "victim": r.victim,
                                "new_leader": r.new_leader, "gap_ms": r.write_gap_ms,
                                "fault_at": r.fault_at, "leader_at": r.leader_at,
                                "counters": delta, "samples": _samples_near(r)}) + "\n")


def _samples_near(r: Any) -> list[list]:
    """The client's requests around the fault: [start, end] ms after it, node id, ok, error
    (the failed ones': e.g. ``NotLeader``, ``NoLeader``)."""
    return [[round((s.start - r.fault_at) * 1000, 1), round((s.end - r.fault_at) * 1000, 1), s.node, s.ok,
             s.error]
            for s in r.samples if -0.05 < s.end - r.fault_at and s.start - r.fault_at < 1.0]


def _election_counters(state: Any) -> dict[str, int]:
    return {k: sum(int(s.status.get(k, 0)) for s in state.nodes if s.status) for k in ELECTION_COUNTERS}


def loopback_phase(root: Path, rounds: int, steady_s: float, kinds: list[str],
                   trace: Path | None) -> tuple[dict, dict | None]:
    from tests.cli.realcluster import kill_started, node_pids
    from tests.cluster.harness import LocalCluster
    from tests.support import Processes

    procs = Processes()
    seen: set[int] = set()
    c = LocalCluster(root, procs, 3, store="failover_bench:definition",
                     election_timeout_ms=ELECTION_MS, heartbeat_ms=HEARTBEAT_MS)
    try:
        c.init()
        c.start_all()
        c.wait_leader()
        seen |= set(node_pids(c.config_path).values())
        drills = {}
        for kind in ("kill", "stop", "transfer"):
            if kind not in kinds:
                continue
            drills.update(run_drills(c.config_path, [kind], rounds, trace=trace))
            seen |= set(node_pids(c.config_path).values())  # the drill restarts killed nodes
        steady = None
        if "steady" in kinds:
            steady = asyncio.run(steady_run(c.config_path, steady_s))
            print(f"  steady    {steady_s:.0f} s: term changes {steady['term_changes']}, "
                  f"acked {steady['acked']}, lost {steady['lost']}, {steady['election_counters']}",
                  flush=True)
        return drills, steady
    finally:
        seen |= set(node_pids(c.config_path).values())
        ours = {p.pid for p in procs.procs}
        procs.stop_all()
        kill_started(c.config_path, seen - ours)  # the ones the drill restarted
        _keep_logs(root, trace, "loopback")


def _keep_logs(root: Path, trace: Path | None, phase: str) -> None:
    """Copy the nodes' raw output (the election trace lines) out of the temporary directory."""
    if trace is None:
        return
    for f in sorted(root.rglob("*")):
        if f.is_file() and (f.name in ("stdout.log", "node.log") or f.suffix == ".out"):
            rel = f.relative_to(root)
            (trace / f"{phase}-{'-'.join(rel.parts)}").write_bytes(f.read_bytes())


def partition_phase(root: Path, rounds: int, trace: Path | None) -> dict | None:
    from tests.chaos.cluster import ChaosCluster
    from tests.chaos.netns import TABLE, Network, NetworkUnavailable
    from tests.support import Processes

    names = ["n1", "n2", "n3"]
    procs = Processes()
    try:
        net = Network(names).setup()
    except NetworkUnavailable as exc:
        print(f"  partition skipped: {exc}", flush=True)
        return None
    try:
        c = ChaosCluster(root, procs, 3, net=net, store="examples.bank.app:definition",
                         election_timeout_ms=ELECTION_MS, heartbeat_ms=HEARTBEAT_MS)
        c.init()
        c.start_all()
        c.wait_leader()

        def power_off(name: str) -> None:
            # every packet of that host is dropped: the other nodes' and the clients' alike
            net.isolate(name)
            net._nft(name, f"add element inet {TABLE} blocked {{ {net.gateway} }}\n")

        return run_drills(c.config_path, ["partition"], rounds, network=(power_off, net.heal),
                          trace=trace)["partition"]
    finally:
        procs.stop_all()
        net.teardown()
        _keep_logs(root, trace, "netns")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 rounds per fault kind, 20 s steady run")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per fault kind (default 15)")
    ap.add_argument("--steady-s", type=float, default=None, help="steady run seconds (default 600)")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"phases to run, comma-separated (default: all of {','.join(KINDS)})")
    ap.add_argument("--trace", type=Path, default=None,
                    help="directory for the nodes' election traces and per-round counters")
    args = ap.parse_args()
    rounds = args.rounds or (4 if args.quick else 15)
    steady_s = args.steady_s or (20.0 if args.quick else 600.0)
    kinds = [k for k in args.kinds.split(",") if k]
    if unknown := set(kinds) - set(KINDS):
        ap.error(f"unknown --kinds {sorted(unknown)}")
    if args.trace is not None:
        args.trace.mkdir(parents=True, exist_ok=True)
        os.environ["BKNR_TRACE_ELECTION"] = "1"  # inherited by every node process
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bknr-failover-") as tmp:
        print(f"failover bench: {rounds} rounds per fault kind, steady run {steady_s:.0f} s, "
              f"election timeout {ELECTION_MS} ms, heartbeat {HEARTBEAT_MS} ms", flush=True)
        drills, steady = loopback_phase(Path(tmp) / "loopback", rounds, steady_s, kinds, args.trace)
        part = partition_phase(Path(tmp) / "netns", rounds, args.trace) if "partition" in kinds else None
    gaps = {k: [r["write_gap_ms"] for r in rep["rounds"] if r["write_gap_ms"] is not None]
            for k, rep in {**drills, **({"partition": part} if part else {})}.items()}
    reps = [*drills.values(), *([part] if part else [])]
    lost = sum(r["lost_total"] for r in reps) + (steady["lost"] if steady else 0)
    ok = all(r["digests_match"] and r["bank_total_ok"] for r in reps) \
        and (steady is None or (steady["digests_match"] and steady["bank_total_ok"]))
    et = ELECTION_MS
    print()
    print(f"{'fault':10s} {'rounds':>6s} {'median ms':>10s} {'max ms':>8s} {'target median/max':>20s}")
    targets = {"kill": (60, 150), "stop": (1.25 * et + 30, 2 * et),
               "partition": (1.25 * et + 30, 2 * et), "transfer": (10, None)}
    for k in ("kill", "stop", "partition", "transfer"):
        g = gaps.get(k, [])
        tm, tx = targets[k]
        print(f"{k:10s} {len(g):6d} {str(_median(g)):>10s} {str(_max(g)):>8s} "
              f"{f'{tm:g} / {tx:g}' if tx else f'{tm:g} / -':>20s}")
    if steady:
        print(f"steady run: {steady['term_changes']} term changes (target 0), GIL stalls "
              f"{steady['stalls_s']} s")
    print(f"lost {lost}, digests/bank total ok: {ok}; {time.monotonic() - t0:.0f} s in all")
    print(json.dumps({
        "bench": "failover", "quick": bool(args.quick), "rounds": rounds,
        "election_timeout_ms": et, "heartbeat_ms": HEARTBEAT_MS,
        "kinds": kinds,
        "kill_median_ms": _median(gaps.get("kill", [])), "kill_max_ms": _max(gaps.get("kill", [])),
        "stop_median_ms": _median(gaps.get("stop", [])), "stop_max_ms": _max(gaps.get("stop", [])),
        "partition_median_ms": _median(gaps.get("partition", [])),
        "partition_max_ms": _max(gaps.get("partition", [])),
        "transfer_median_ms": _median(gaps.get("transfer", [])),
        "steady_term_changes": steady["term_changes"] if steady else None, "steady_s": steady_s,
        "lost_total": lost, "digests_match_and_total_ok": ok,
    }))
    return 0 if lost == 0 and ok else 1


if __name__ == "__main__":
    sys.exit(main())
