"""Cluster benchmark: replicated bank transfers on 3 nodes over loopback (fsync on).

    python bench/cluster_bench.py [--quick] [--seconds S]

Measures, in one run:
  * tx/s with 1, 16 and 256 concurrent callers *in-process on the leader* (this process hosts
    node n1 as a ClusterStore and holds the leadership; n2 and n3 are ``bknr-node`` processes);
    p50/p99 latency per caller count; the leader's Python threads are pinned to one CPU
    (``--python-cpu auto``, ClusterStore ``python_cpu``), and the 256-caller phase runs once more
    unpinned (``tx_per_s_256_unpinned``);
  * tx/s over HTTP with 16 callers against a leader running as its own ``bknr-node`` process;
  * PySyncObj (3 processes on loopback, a ``@replicated`` counter, 256 commands in flight, no
    journal) in the same run, and the ratio bknr(256) / PySyncObj;
  * full mode only: on a separate 3-node cluster loaded with 1M objects, the time for a new 4th
    node to catch up by install-snapshot of the serialised store (``catchup_s_1m``; null with
    ``--quick``), and before that the cost of ``GET /status`` (with the digest) on that 1M-object
    leader under a write load: median latency (``status_ms_1m``, target <= 5 ms) and the longest
    write stall it adds (``status_write_stall_ms_1m``: the slowest write in flight during a
    /status call minus the baseline p99, target <= 10 ms). ``--status-1m`` runs only this 1M measurement.
Prints a table, then one JSON line (the last line).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
for p in (str(ROOT), str(ROOT / "cli"), str(BENCH_DIR)):
    if p not in sys.path:
        sys.path.insert(0, p)

from bknr_cluster.store import StoreDefinition, transaction  # noqa: E402
from examples.bank import app as bank  # noqa: E402


@transaction("bulk_open")
def bulk_open(prefix: str, start: int, n: int) -> int:
    """Create ``n`` accounts in one transaction (loads the 1M-object catch-up scenario fast)."""
    for i in range(start, start + n):
        bank.Account(owner=f"{prefix}{i}", balance=1)
    return n


# The bank plus a bulk loader; node processes import it as ``cluster_bench:definition``.
definition = StoreDefinition(
    name="bank-bench", classes=[bank.Account, bank.Transfer],
    transactions=[bank.open_account, bank.deposit, bank.transfer, bulk_open],
    queries=[bank.total_balance, bank.count])


# CPython's default GIL switch interval; passed to the node processes too (--switch-interval).
SWITCH_INTERVAL = 0.005

# --- helpers ------------------------------------------------------------------------------------


def export_bench_path() -> None:
    """Node processes import this module as ``cluster_bench:definition``."""
    path = os.environ.get("PYTHONPATH", "")
    if str(BENCH_DIR) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR), path])


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[k]


def run_callers(n: int, seconds: float, max_ops: int, op: Any) -> dict[str, float]:
    """``n`` threads call ``op(caller, i)`` until ``seconds`` pass or ``max_ops`` in total."""
    lat: list[list[float]] = [[] for _ in range(n)]
    errors = [0] * n
    stop_at = time.monotonic() + seconds
    per_caller = max(1, max_ops // n)
    start = threading.Barrier(n + 1)

    def worker(k: int) -> None:
        start.wait()
        mine = lat[k]
        for i in range(per_caller):
            t0 = time.perf_counter()
            try:
                op(k, i)
            except Exception:
                errors[k] += 1
            t1 = time.perf_counter()
            mine.append(t1 - t0)
            if time.monotonic() >= stop_at:
                break
    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(seconds + 60)
    elapsed = time.perf_counter() - t0
    all_lat = sorted(x for per in lat for x in per)
    done = len(all_lat) - sum(errors)
    return {"callers": n, "ops": done, "errors": sum(errors), "seconds": elapsed,
            "tx_per_s": done / elapsed if elapsed else 0.0,
            "p50_ms": percentile(all_lat, 0.50) * 1000, "p99_ms": percentile(all_lat, 0.99) * 1000}


def cpu_seconds(pid: int | None = None) -> float:
    """User+system CPU seconds of a process (this one when ``pid`` is None), all threads."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_async_callers(n: int, seconds: float, op: Any) -> dict[str, float]:
    """``n`` asyncio tasks on one event loop await ``op(caller, i)`` for ``seconds``."""
    import asyncio

    lat: list[float] = []
    errors = [0]

    async def main() -> float:
        stop_at = time.monotonic() + seconds

        async def worker(k: int) -> None:
            i = 0
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    await op(k, i)
                except Exception:
                    errors[0] += 1
                lat.append(time.perf_counter() - t0)
                i += 1
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(n)))
        return time.perf_counter() - t0
    elapsed = asyncio.run(main())
    lat.sort()
    done = len(lat) - errors[0]
    return {"callers": n, "ops": done, "errors": errors[0], "seconds": elapsed,
            "tx_per_s": done / elapsed if elapsed else 0.0,
            "p50_ms": percentile(lat, 0.50) * 1000, "p99_ms": percentile(lat, 0.99) * 1000}


# --- PySyncObj ----------------------------------------------------------------------------------


def ensure_pysyncobj() -> None:
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pysyncobj>=0.3.12"], check=True)


def pysyncobj_node(me: str, partners: list[str], seconds: float, window: int, flag: str) -> None:
    """One PySyncObj process; the one that is leader drives the counter and prints JSON."""
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class Counter(SyncObj):
        def __init__(self) -> None:
            super().__init__(me, partners, SyncObjConf(dynamicMembershipChange=False))
            self.value = 0

        @replicated
        def inc(self) -> int:
            self.value += 1
            return self.value

    c = Counter()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and c._getLeader() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # let the cluster settle after the election
    # Exactly one driver, the leader, even if leadership moves while the nodes look: the driver
    # claims an exclusive file; everyone else waits for the "done" flag (bounded).
    while True:
        if os.path.exists(flag) or time.monotonic() > deadline + seconds + 30:
            c.destroy()
            return
        if c._isLeader():
            try:
                os.close(os.open(flag + ".driver", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                break
            except FileExistsError:
                pass
        time.sleep(0.05)
    sem = threading.BoundedSemaphore(window)
    done = [0]
    lock = threading.Lock()

    def cb(result: Any, err: Any) -> None:
        if err == 0:  # FAIL_REASON.SUCCESS
            with lock:
                done[0] += 1
        sem.release()
    t0 = time.perf_counter()
    stop = t0 + seconds
    while time.perf_counter() < stop:
        sem.acquire()
        c.inc(callback=cb)
    for _ in range(window):  # drain
        sem.acquire(timeout=10)
    elapsed = time.perf_counter() - t0
    print(json.dumps({"pysyncobj_ops": done[0], "seconds": elapsed}), flush=True)
    Path(flag).write_text("done")
    c.destroy()


def bench_pysyncobj(seconds: float, window: int = 256) -> float:
    from tests.support import free_ports

    ensure_pysyncobj()
    ports = free_ports(3)
    addrs = [f"127.0.0.1:{p}" for p in ports]
    flag = os.path.join(tempfile.mkdtemp(prefix="pso-"), "done")
    procs = []
    for a in addrs:
        others = [x for x in addrs if x != a]
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--pysyncobj-node", a, ",".join(others), str(seconds),
             str(window), flag], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    result = None
    try:
        for p in procs:
            try:
                out, _ = p.communicate(timeout=seconds + 120)
            except subprocess.TimeoutExpired:
                continue  # reported below as "no result"
            for line in out.splitlines():
                if line.startswith("{"):
                    result = json.loads(line)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if not result:
        raise RuntimeError("PySyncObj run produced no result")
    return result["pysyncobj_ops"] / result["seconds"]


# --- bknr_cluster -------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float, default=None, help="per measurement")
    ap.add_argument("--switch-interval", type=float, default=SWITCH_INTERVAL,
                    help="GIL switch interval for this process and the node processes")
    ap.add_argument("--window", type=int, default=4, help="group-commit entries in flight")
    ap.add_argument("--python-cpu", default="auto", metavar="auto|none|N",
                    help="pin the in-process leader's Python threads to one CPU (ClusterStore "
                         "python_cpu); with a pin, the 256-caller phase also runs unpinned")
    ap.add_argument("--node-python-cpu", default="none", metavar="auto|none|N",
                    help="--python-cpu of the node processes n2 and n3 (the HTTP phase's leader)")
    ap.add_argument("--raft-secret", action="store_true",
                    help="authenticated raft transport (raft_secret_file), as production configs use")
    ap.add_argument("--pysyncobj-node", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--status-1m", action="store_true",
                    help="only the /status cost on a 1M-object leader under writes")
    args = ap.parse_args()
    if args.status_1m:
        res = catchup(join=False)
        print(f"/status on a 1M-object leader under writes: median {res['status_ms_1m']} ms, "
              f"max {res['status_ms_1m_max']} ms; write stall added "
              f"{res['status_write_stall_ms_1m']} ms")
        print(json.dumps({"bench": "cluster-status-1m", **res}))
        return 0
    if args.pysyncobj_node:
        me, partners, secs, window, flag = args.pysyncobj_node
        pysyncobj_node(me, [p for p in partners.split(",") if p], float(secs), int(window), flag)
        return 0

    from bknr_cluster.cluster.affinity import parse_spec
    from bknr_cluster.cluster.api import ApiServer
    from bknr_cluster.cluster.store import ClusterStore
    from tests.cluster.harness import LocalCluster
    from tests.support import Processes, wait_until

    seconds = args.seconds or (2.5 if args.quick else 8.0)
    t_start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="bknr-cluster-bench-"))
    export_bench_path()
    procs = Processes()
    cs = server = None
    rows: list[tuple[str, dict]] = []
    out: dict[str, Any] = {"bench": "cluster", "quick": args.quick,
                           "switch_interval_s": args.switch_interval, "window": args.window}
    python_cpu = parse_spec(args.python_cpu)
    try:
        c = LocalCluster(root, procs, 3, store="cluster_bench:definition",
                         election_timeout_ms=1000, heartbeat_ms=100,
                         snapshot_threshold=200_000, snapshot_trailing=20_000,
                         raft_secret=args.raft_secret)
        c.init()
        for name in ("n2", "n3"):
            c.start(name, "--switch-interval", str(args.switch_interval),
                    "--python-cpu", args.node_python_cpu, wait=False)
        cs = ClusterStore.from_config(c.config_path, "n1", definition=definition,
                                      switch_interval=args.switch_interval,
                                      batch_window=args.window, python_cpu=python_cpu)
        server = ApiServer(cs, "127.0.0.1", c.node("n1")["api_port"], c.token)
        server.start_in_thread()
        for name in ("n2", "n3"):
            wait_until(lambda n=name: c._healthy(n, c.running[n]), 30, f"{name} up")
        c.running["n1"] = None  # type: ignore[assignment]  # in-process: visible to wait_leader
        leader = c.wait_leader(timeout=30)
        if leader != "n1":
            c.client(leader).call("POST", "/transfer", {"to": 1})
            wait_until(lambda: cs.is_leader(), 15, "n1 leadership")
        accounts = 2 * 256
        cs.execute(bulk_open, "a", 0, accounts)
        seq = itertools.count()  # next() on a count is atomic under the GIL: no lock needed

        def tid() -> str:
            return f"t{next(seq)}"

        # Caller k moves 1 back and forth between its own two accounts (each starts with 1), so
        # no transfer ever lacks funds; ``flip`` remembers the direction across phases.
        flip = [0] * 256

        def pair(k: int) -> tuple[str, str]:
            a, b = f"a{2 * k}", f"a{2 * k + 1}"
            return (a, b) if flip[k] == 0 else (b, a)

        def inproc(k: int, i: int) -> None:
            cs.execute(bank.transfer, *pair(k), 1, tid())
            flip[k] ^= 1

        pids = {"n1": None, "n2": c.running["n2"].pid, "n3": c.running["n3"].pid}
        out["python_cpu"] = cs.python_cpu
        phases: list[tuple[int, str]] = [(1, ""), (16, ""), (256, "")]
        if cs.python_cpu is not None:  # the same callers without the pin, for comparison
            phases.append((256, "_unpinned"))
        for n, variant in phases:
            if variant:
                cs.set_python_cpu(None)
            cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
            b0, i0 = cs.committer.batches, cs.committer.items
            r = run_callers(n, seconds, 400_000, inproc)
            # where the time goes: CPU seconds per committed transaction, per process
            r["cpu_us_per_tx"] = {k: round((cpu_seconds(p) - cpu0[k]) / max(1, r["ops"]) * 1e6, 1)
                                  for k, p in pids.items()}
            r["records_per_entry"] = round((cs.committer.items - i0) / max(1, cs.committer.batches - b0), 1)
            rows.append((f"in-process, {n} callers" + (", unpinned" if variant else ""), r))
            key = f"{n}{variant}"
            out[f"tx_per_s_{key}"] = round(r["tx_per_s"], 1)
            out[f"p50_ms_{key}"] = round(r["p50_ms"], 3)
            out[f"p99_ms_{key}"] = round(r["p99_ms"], 3)
            out[f"cpu_us_per_tx_{key}"] = r["cpu_us_per_tx"]
            if variant:
                cs.set_python_cpu(python_cpu)
        # The same 256 callers as asyncio tasks (ClusterStore.execute_async): no thread per
        # caller, so no GIL hand-off per transaction.
        async def aop(k: int, i: int) -> None:
            await cs.execute_async(bank.transfer, (*pair(k), 1, tid()), {}, raise_tx=True)
            flip[k] ^= 1
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        b0, i0 = cs.committer.batches, cs.committer.items
        r = run_async_callers(256, seconds, aop)
        r["cpu_us_per_tx"] = {k: round((cpu_seconds(p) - cpu0[k]) / max(1, r["ops"]) * 1e6, 1)
                              for k, p in pids.items()}
        r["records_per_entry"] = round((cs.committer.items - i0) / max(1, cs.committer.batches - b0), 1)
        rows.append(("in-process, 256 asyncio", r))
        out["async_tx_per_s_256"] = round(r["tx_per_s"], 1)
        out["async_p50_ms_256"] = round(r["p50_ms"], 3)
        out["async_p99_ms_256"] = round(r["p99_ms"], 3)
        st = cs.status()
        out["records_per_entry"] = round(st["batched_records"] / max(1, st["batches"]), 2)

        # HTTP: the leader is a node process of its own; the callers are threads here, as
        # many clients are: not pinned (they are load, not the node being measured).
        cs.set_python_cpu(None)
        c.client("n1").call("POST", "/transfer", {"to": 2})
        wait_until(lambda: c.status("n2")["role"] == "leader", 15, "n2 leadership")
        clients = [c.client("n2") for _ in range(16)]

        def http(k: int, i: int) -> None:
            clients[k].tx("transfer", *pair(k), 1, tid())
            flip[k] ^= 1
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        r = run_callers(16, seconds, 200_000, http)
        # n1 (this process) now runs the 16 HTTP clients and a follower; n2 is the leader
        r["cpu_us_per_tx"] = {k: round((cpu_seconds(p) - cpu0[k]) / max(1, r["ops"]) * 1e6, 1)
                              for k, p in pids.items()}
        rows.append(("HTTP, 16 callers", r))
        out["http_tx_per_s_16"] = round(r["tx_per_s"], 1)
        out["http_p50_ms_16"] = round(r["p50_ms"], 3)
        conv = c.wait_converged(timeout=60, names=["n1", "n2", "n3"])
        out["replicas_equal"] = len({s["digest"] for s in conv.values()}) == 1
        out["errors"] = sum(r["errors"] for _, r in rows)

        # PySyncObj in the same run
        try:
            pso: float | None = bench_pysyncobj(seconds)
        except RuntimeError as exc:
            print(f"PySyncObj run failed: {exc}", file=sys.stderr)
            pso = None
        out["pysyncobj_per_s"] = round(pso, 1) if pso else None
        out["ratio_pysyncobj"] = round(out["tx_per_s_256"] / pso, 2) if pso else None

    finally:
        if server is not None:
            server.stop_thread()
        if cs is not None:
            cs.stop()
        procs.stop_all()
    out["catchup_s_1m"] = None
    out["status_ms_1m"] = out["status_write_stall_ms_1m"] = None
    if not args.quick:  # on its own cluster, after the throughput one is gone
        out.update(catchup())
    out["wall_s"] = round(time.monotonic() - t_start, 1)

    print(f"{'measurement':<26}{'tx/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
          f"{'rec/entry':>10}  CPU us/tx (leader n1, n2, n3)")
    for label, r in rows:
        cpu = r.get("cpu_us_per_tx")
        cpu_text = ", ".join(f"{v:.0f}" for v in cpu.values()) if cpu else ""
        print(f"{label:<26}{r['tx_per_s']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8}"
              f"{r.get('records_per_entry', ''):>10}  {cpu_text}")
    print(f"{'PySyncObj counter, 256':<26}{out['pysyncobj_per_s'] or float('nan'):>10.0f}")
    print(f"ratio bknr(256 in-process) / PySyncObj = {out['ratio_pysyncobj']}")
    print(f"records per log entry (group commit)  = {out['records_per_entry']}")
    print(f"catch-up of a new node, 1M objects    = {out['catchup_s_1m']} s"
          + (f" (store snapshot at {out['catchup_store_snapshot_index']} of "
             f"{out['catchup_target_index']} installed)" if out["catchup_s_1m"] else ""))
    print(f"/status on 1M objects under writes   = {out['status_ms_1m']} ms median, "
          f"write stall added {out['status_write_stall_ms_1m']} ms")
    print(json.dumps(out))
    return 0


STATUS_SNAPSHOT_THRESHOLD = 40_000  # no snapshot inside the /status window (catchup())
STALL_TAIL_S = 0.02    # a write starting this soon after a /status call may still queue behind it


def status_under_writes(c: Any, leader: str, baseline_s: float = 4.0, status_s: float = 8.0,
                        period: float = 0.5) -> dict[str, Any]:
    """``GET /status`` (with the digest) on the leader while one client writes continuously.

    One writer thread sends ``deposit`` transactions back to back over HTTP. For ``baseline_s``
    nothing else happens (its p99 is the baseline); then ``/status`` is called every
    ``period`` seconds (``bknrctl status --watch`` calls it once a second per node) for
    ``status_s``. Reports the median and worst ``/status`` latency and the stall a poll adds to
    a write (a digest computed under the apply lock stalls the applier for a whole-store walk;
    an O(1) one does not): the worst latency of the writes in flight during a ``/status`` call
    (or within ``STALL_TAIL_S`` after it) minus the baseline p99. Writes far from any call
    cannot have been stalled by one; on a shared machine the worst of all ~5,000 writes in the
    window is set by the scheduler, so it is reported too (``status_write_max_ms_polled``) next
    to the baseline's own worst (``status_write_max_ms_baseline``), but not used. For the same
    reason the worst write near calls is shown next to a control: the worst write in windows of
    the same lengths halfway between calls (``status_write_max_ms_control``)."""
    import threading as th

    stop = th.Event()
    samples: list[tuple[float, float]] = []  # (start, latency ms)

    def writer() -> None:
        cl = c.client(leader, timeout=30)
        while not stop.is_set():
            t0 = time.monotonic()
            cl.call("POST", "/tx/deposit", {"args": ["bulk0", 1]}, timeout=30)
            samples.append((t0, (time.monotonic() - t0) * 1000))

    t = th.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(0.5)  # warm up
    base_start = time.monotonic()
    time.sleep(baseline_s)
    status_start = time.monotonic()
    lat: list[float] = []
    calls: list[tuple[float, float]] = []  # (start, end) of each /status call
    st_client = c.client(leader, timeout=60)
    while time.monotonic() - status_start < status_s:
        t0 = time.monotonic()
        st_client.call("GET", "/status", timeout=60)
        t1 = time.monotonic()
        calls.append((t0, t1))
        lat.append((t1 - t0) * 1000)
        time.sleep(max(0.0, period - (time.monotonic() - t0)))
    status_end = time.monotonic()
    stop.set()
    t.join(60)
    base = sorted(ms for s0, ms in samples if base_start <= s0 < status_start)
    during = [ms for s0, ms in samples if status_start <= s0 < status_end]
    p99 = percentile(base, 0.99) if base else 0.0
    worst = max(during, default=0.0)

    def in_flight(windows: list[tuple[float, float]]) -> list[float]:
        return [ms for s0, ms in samples
                if any(s0 <= b + STALL_TAIL_S and s0 + ms / 1000 >= a for a, b in windows)]

    near = in_flight(calls)
    # the control: windows of the same length halfway between two calls (no call in flight)
    control = in_flight([(a + period / 2, b + period / 2) for a, b in calls[:-1]])
    lat.sort()
    return {"status_ms_1m": round(percentile(lat, 0.5), 2), "status_ms_1m_max": round(lat[-1], 2),
            "status_calls_1m": len(lat),
            "status_write_stall_ms_1m": round(max(0.0, max(near, default=0.0) - p99), 2),
            "status_writes_near_calls_1m": len(near),
            "status_write_p99_ms_baseline": round(p99, 2),
            "status_write_max_ms_baseline": round(max(base, default=0.0), 2),
            "status_write_max_ms_near_calls": round(max(near, default=0.0), 2),
            "status_write_max_ms_control": round(max(control, default=0.0), 2),
            "status_write_max_ms_polled": round(worst, 2),
            "status_writes_1m": len(during)}


def catchup(objects: int = 1_000_000, join: bool = True) -> dict[str, Any]:
    """A fresh 3-node cluster loads ``objects`` accounts; a 4th node then catches up.

    The cluster takes a store snapshot every ``STATUS_SNAPSHOT_THRESHOLD`` / 2 entries, which
    neither the bulk load (100 entries) nor the /status measurement (~10k writes) reaches: with
    the default (a store snapshot every 5,000 entries) one or two snapshots fell inside the
    /status window, and their Raft snapshot and fork delayed the writes in flight by 24-60 ms,
    near a /status call or not (docs/performance.md, "Store digest", session 7); snapshot
    pauses are ``snapshot_bench.py``'s measurement, not this one's.
    ``POST /snapshot`` then has the engine take a store snapshot at the commit index and a Raft
    snapshot on top of it, compacting the log down to what the current members still need: the
    newcomer receives the 1M objects by install-snapshot and loads them, rather than replaying
    the bulk-load transactions. Returns the catch-up seconds and what was installed.
    """
    from tests.cluster.harness import LocalCluster
    from tests.support import Processes, wait_until

    export_bench_path()  # catchup() also runs on its own
    procs = Processes()
    try:
        c = LocalCluster(Path(tempfile.mkdtemp(prefix="bknr-catchup-")), procs, 3,
                         store="cluster_bench:definition", election_timeout_ms=2000,
                         heartbeat_ms=100, snapshot_threshold=STATUS_SNAPSHOT_THRESHOLD)
        c.init()
        c.start_all()
        leader = c.wait_leader(timeout=30)
        cl = c.client(leader, timeout=300)
        chunk = 10_000
        for start in range(0, objects, chunk):
            cl.call("POST", "/tx/bulk_open", {"args": ["bulk", start, chunk]}, timeout=300)
        c.wait_converged(timeout=300)
        measured = status_under_writes(c, leader)
        if not join:
            return measured
        # "snapshot now": a Raft snapshot on top of a store snapshot at the commit index
        cl.call("POST", "/snapshot", {}, timeout=300)
        st = c.status(leader, digest=False)
        target = st["applied_index"]
        entry = c.add_entry()
        c.write()
        name = entry["name"]
        c.start(name)
        t0 = time.monotonic()
        cl.call("POST", "/peers", {"id": entry["id"], "address": c.raft_address(name),
                                   "role": "voter"}, timeout=300)
        wait_until(lambda: c.status(name, digest=False)["applied_index"] >= target, 600,
                   "new node caught up")
        took = time.monotonic() - t0
        new = c.status(name, digest=False)
        conv = c.wait_converged(timeout=120, names=[leader, name])
        assert len({s["digest"] for s in conv.values()}) == 1, "new node diverged"
        return {"catchup_s_1m": round(took, 2), "catchup_store_snapshot_index":
                new["store_snapshot_index"], "catchup_target_index": target,
                "catchup_restores": new["restores"],
                "catchup_replayed_entries": new["applied_entries"], **measured}
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
