"""Snapshot benchmark: does a store snapshot pause the leader? (issue 19)

    python bench/snapshot_bench.py [--quick] [--nodes N]

A cluster of ``bknr-node`` processes on loopback (3 by default) is loaded with 1M accounts
(``--quick``: 100k); one HTTP writer (``deposit``, one at a time) and a ``GET /health`` poller
run against the leader for a baseline, then ``POST /snapshot`` makes the leader's applier take a
store snapshot at the commit index (the periodic snapshot every ``snapshot.threshold / 2``
entries does the same work on every node). The same is repeated on a fresh cluster with 5M
accounts (``--quick``: 300k) for the ``_5m`` keys.

Reported per size: the store snapshot's wall time (``store_snapshot_s`` in ``/status``: fork to
file written and verified), the writer's max latency before and during the snapshot, the health
poller's max during it, and the peak of (the leader's resident set + the pages its snapshot child
copied) over the leader's resident set before (``rss_ratio_peak``: shared pages count once, so
this is the memory the snapshot really costs). The leader's own page tables are never walked
(``smaps``) while it may fork: that holds its mmap lock and stalls the fork. Also: the image's
compression time on the leader (``compress_ms``) and the size of the Raft snapshot file libraft
wrote (``raft_snapshot_mb``); ``--compression 0`` runs the nodes with uncompressed snapshots (an
A/B). "During" is from ``POST /snapshot`` until it answered (the Raft snapshot written) and the
writer child is gone. Prints a table, then one JSON line (the last line).
"""

from __future__ import annotations

import argparse
import json
import os
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

from cluster_bench import export_bench_path  # noqa: E402

from bknr_cluster import defaults  # noqa: E402
from bknr_cluster.cluster.client import ApiClient  # noqa: E402

BASELINE_S = 2.0      # writer and poller alone before the snapshot
AFTER_S = 0.5         # and after it
MAX_OPS = 200_000     # bound on each load loop
HEALTH_EVERY_S = 0.005


def rss_kib(pid: int) -> int:
    """Resident set of a process in KiB, from counters (/proc/pid/statm: no page-table walk,
    so reading it never holds the process's mmap lock, which fork() must take)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (FileNotFoundError, ProcessLookupError):
        return 0


def private_kib(pid: int) -> int:
    """Memory only this process maps (pages it copied), in KiB. Walks *its* page tables: used
    on the snapshot child only, never on the node (it would stall the node's fork)."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return total


def reclaim_stalls() -> int:
    """Host-wide count of direct reclaim and compaction stalls (/proc/vmstat): a page fault
    that has to free memory first can stall a node whatever it does."""
    total = 0
    with open("/proc/vmstat") as f:
        for line in f:
            if line.startswith(("allocstall_", "compact_stall")):
                total += int(line.split()[1])
    return total


def raft_snapshot_mb(raft_dir: Path) -> float:
    """Size of the newest Raft snapshot file: what libraft wrote and fsync'd at once."""
    snaps = [p for p in raft_dir.glob("snapshot-*") if p.suffix != ".meta"]
    if not snaps:
        return 0.0
    newest = max(snaps, key=lambda p: int(p.name.split("-")[2]))
    return round(newest.stat().st_size / 1e6, 1)


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(x) for x in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def _run_delay_ns(fd: int) -> int:
    """This thread's time runnable without a CPU so far (schedstat; 0 if unreadable)."""
    if fd < 0:
        return 0
    try:
        return int(os.pread(fd, 128, 0).split()[1])
    except (OSError, IndexError, ValueError):
        return 0


class Loop(threading.Thread):
    """Calls ``op()`` until stopped (bounded by MAX_OPS), recording (start, seconds) per call,
    and how long of each call the calling thread itself waited for a CPU (``runq``: a slow call
    that is mostly that is the bench's process starved, not the node)."""

    def __init__(self, op: Any, every: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.op, self.every = op, every
        self.samples: list[tuple[float, float]] = []
        self.runq: dict[float, float] = {}  # call start -> seconds runnable without a CPU
        self.errors = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        try:
            sched = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            sched = -1
        while not self.stop_event.is_set() and len(self.samples) < MAX_OPS:
            d0 = _run_delay_ns(sched)
            t0 = time.monotonic()
            try:
                self.op()
            except Exception:
                self.errors += 1
            t1 = time.monotonic()
            self.samples.append((t0, t1 - t0))
            if t1 - t0 > 0.02:
                self.runq[t0] = (_run_delay_ns(sched) - d0) / 1e9
            if self.every:
                self.stop_event.wait(self.every)

    def max_ms(self, start: float, end: float) -> float:
        """Max latency of the calls that overlapped [start, end]."""
        lat = [d for t, d in self.samples if t <= end and t + d >= start]
        return round(max(lat) * 1000, 1) if lat else float("nan")

    def worst_at(self, start: float, end: float) -> float:
        """When the slowest call overlapping [start, end] began, in s after ``start`` (says
        which step of the snapshot it met: the fork is at ~0, the hand-over at the end)."""
        lat = [(d, t) for t, d in self.samples if t <= end and t + d >= start]
        return round(max(lat)[1] - start, 3) if lat else float("nan")


class MemorySampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.02):
            # node + the pages its child copied = the memory both use (shared pages once)
            self.peak = max(self.peak, rss_kib(self.pid) + sum(map(private_kib, children(self.pid))))


class DiskSampler(threading.Thread):
    """With ``--trace``: every 2 ms, the I/Os in flight and sectors written so far on the disk
    holding the nodes' data (/proc/diskstats), to tell a slow write that waited behind the
    disk (e.g. libraft writing and syncing a snapshot file) from one that did not."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        st = os.stat(path)
        self.dev = (os.major(st.st_dev), os.minor(st.st_dev))
        self.samples: list[tuple[float, int, int]] = []  # (t, in flight, sectors written)
        self.stop_event = threading.Event()

    def _read(self) -> tuple[int, int] | None:
        with open("/proc/diskstats") as f:
            for line in f:
                x = line.split()
                if (int(x[0]), int(x[1])) == self.dev:
                    return int(x[11]), int(x[9])
        return None

    def run(self) -> None:
        if self._read() is None:  # not a block device (tmpfs): nothing to sample
            return
        while not self.stop_event.wait(0.002):
            r = self._read()
            if r is not None:
                self.samples.append((time.monotonic(), *r))

    def during(self, start: float, end: float) -> str:
        xs = [s for s in self.samples if start <= s[0] <= end]
        if len(xs) < 2:
            return "disk ?"
        mb = (xs[-1][2] - xs[0][2]) * 512 / 1e6
        return f"disk in-flight max {max(x[1] for x in xs)}, {mb:.1f} MB written"


def slow_calls(loop: Loop, t0: float, start: float, end: float, ms: float = 20.0,
               disk: DiskSampler | None = None) -> list[str]:
    """The calls slower than ``ms`` that overlapped [start, end], as 'begin (s after t0) ms',
    the part of it the bench's own calling thread spent runnable without a CPU, and (``disk``)
    the disk's activity meanwhile."""
    return [f"{t - t0:+.3f}s {d * 1000:.1f}ms runq={loop.runq.get(t, 0) * 1000:.1f}ms"
            + (f" {disk.during(t, t + d)}" if disk is not None else "")
            for t, d in loop.samples if t <= end and t + d >= start and d * 1000 > ms]


def trace_lines(log: Path, t0: float, start: float, end: float) -> list[str]:
    """The node's stall-trace lines (BKNR_TRACE_STALLS: cluster/stall_trace.py, native fsm.cpp)
    whose monotonic ``t=`` falls in [start, end], with that time made relative to ``t0``."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if " t=" not in line or ("bknr.stall" not in line and "bknr: trace" not in line):
            continue
        t = float(line.split(" t=", 1)[1].split()[0])
        if start <= t <= end:
            out.append(f"{t - t0:+.3f}s {line.split(': ', 1)[-1]}")
    return out


def run_size(objects: int, nodes: int, trace: bool = False,
             compression: int | None = None) -> dict[str, Any]:
    from tests.cluster.harness import LocalCluster
    from tests.support import Processes, wait_until

    procs = Processes()
    try:
        c = LocalCluster(Path(tempfile.mkdtemp(prefix="bknr-snapbench-")), procs, nodes,
                         store="cluster_bench:definition", election_timeout_ms=2000,
                         heartbeat_ms=100)
        if compression is not None:  # an A/B of the image's compression (default: the YAML's)
            c.data["snapshot"]["compression"] = compression
            c.write()
        c.init()
        c.start_all()
        leader = c.wait_leader(timeout=30)
        cl = c.client(leader, timeout=600)
        chunk = 10_000
        for start in range(0, objects, chunk):
            cl.call("POST", "/tx/bulk_open", {"args": ["a", start, min(chunk, objects - start)]},
                    timeout=600)
        c.wait_converged(timeout=600)
        c.wait_definitions(leader, timeout=60)  # compressed snapshots need every member's
        pid = c.status(leader, digest=False)["pid"]
        writer_client = c.client(leader, timeout=60)
        health_client = ApiClient(c.api_url(leader), timeout=60)
        writer = Loop(lambda: writer_client.tx("deposit", "a0", 1))
        health = Loop(health_client.health, every=HEALTH_EVERY_S)
        writer.start()
        health.start()
        wait_until(lambda: len(writer.samples) > 10, 60, "writer running")
        t_base = time.monotonic()
        threading.Event().wait(BASELINE_S)  # a measurement period, not synchronisation
        rss_before = rss_kib(pid)
        mem = MemorySampler(pid)
        mem.start()
        disk = DiskSampler(c.nodes[leader].log.parent) if trace else None
        if disk is not None:
            disk.start()
        stalls = reclaim_stalls()
        t0 = time.monotonic()
        cl.call("POST", "/snapshot", {}, timeout=600)
        # the applier went on at once; the writer child may still be finishing its file
        wait_until(lambda: not children(pid), 120, "snapshot child gone")
        t1 = time.monotonic()
        stalls = reclaim_stalls() - stalls
        threading.Event().wait(AFTER_S)
        mem.stop_event.set()
        if disk is not None:
            disk.stop_event.set()
        writer.stop_event.set()
        health.stop_event.set()
        for t in (mem, writer, health):
            t.join(30)
        st = c.status(leader, digest=False)
        if trace:  # where each slow call of the snapshot's window came from (a diagnostic)
            print(f"--- {objects} objects: slow calls and the leader's trace, s after POST /snapshot")
            for what, loop in (("write", writer), ("health", health)):
                print(what, slow_calls(loop, t0, t0 - 0.5, t1 + 0.5, disk=disk))
            for line in trace_lines(c.nodes[leader].log, t0, t0 - 0.5, t1 + 0.5):
                print("  ", line)
        return {"objects": objects, "snapshot_s": st["store_snapshot_s"],
                "write_max_ms_before": writer.max_ms(t_base, t0),
                "write_max_ms_during": writer.max_ms(t0, t1),
                "health_max_ms_during": health.max_ms(t0, t1),
                "write_worst_at_s": writer.worst_at(t0, t1),
                "health_worst_at_s": health.worst_at(t0, t1),
                "rss_ratio_peak": round(max(mem.peak, rss_before) / rss_before, 2),
                "writes_during": sum(1 for t, d in writer.samples if t0 <= t <= t1),
                "write_errors": writer.errors + health.errors,
                "post_snapshot_s": round(t1 - t0, 3),
                "store_snapshot_failures": st["store_snapshot_failures"],
                "fork_ms": st["store_snapshot_fork_ms"], "reclaim_stalls": stalls,
                "compress_ms": st.get("store_snapshot_compress_ms"),
                "raft_snapshot_mb": raft_snapshot_mb(c.data_dir(leader) / "raft"),
                "load": round(os.getloadavg()[0], 1)}
    finally:
        procs.stop_all()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="100k and 300k objects")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--only", choices=["small", "large"],
                    help="one size only (a diagnostic run: the JSON line then has its keys only)")
    ap.add_argument("--trace", action="store_true",
                    help="nodes trace their stalls (BKNR_TRACE_STALLS); print them per size")
    ap.add_argument("--compression", type=int, metavar="LEVEL",
                    help="snapshot.compression for the nodes (0: uncompressed; default: 1)")
    args = ap.parse_args()
    if args.trace:
        os.environ["BKNR_TRACE_STALLS"] = "1"  # inherited by the node processes
    export_bench_path()
    small, large = (100_000, 300_000) if args.quick else (1_000_000, 5_000_000)
    sizes = {"small": [small], "large": [large]}.get(args.only or "", [small, large])
    rows = [run_size(n, args.nodes, args.trace, args.compression) for n in sizes]
    cols = ["objects", "snapshot_s", "post_snapshot_s", "write_max_ms_before",
            "write_max_ms_during", "health_max_ms_during", "rss_ratio_peak", "writes_during",
            "write_errors", "store_snapshot_failures", "fork_ms", "compress_ms",
            "raft_snapshot_mb", "write_worst_at_s",
            "health_worst_at_s", "reclaim_stalls", "load"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[k]) for k in cols))
    keys = ["objects", "snapshot_s", "write_max_ms_before", "write_max_ms_during",
            "health_max_ms_during", "rss_ratio_peak"]
    out: dict[str, Any] = {"bench": "snapshot", "quick": args.quick,
                           "compression": defaults.SNAPSHOT_COMPRESSION if args.compression is None
                           else args.compression}
    for n, r in zip(sizes, rows, strict=True):
        out.update({(k if n == small else f"{k}_5m"): r[k] for k in keys})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
