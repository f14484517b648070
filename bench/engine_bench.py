"""Engine benchmark: the Python engine (bknr_cluster.engine) against libraft driven from C.

Both runs have the same shape: 3 node processes on loopback, raft_uv with fsync on, one
64-byte entry per raft_apply, a window of W outstanding submits on the leader (W = 1, 64,
512), election 1000 ms / heartbeat 100 ms / snapshot threshold 8192 / inflight cap 8192.
The Python leader also runs an applier thread draining next_committed() (the real pattern);
the C FSM copies each entry. The Python figure is reported as a ratio of the C figure
measured in the same run.

    python bench/engine_bench.py [--quick]

Prints a table, then one JSON line (the last line) with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
C_SRC = ROOT / "bench" / "c" / "engine_c_bench.c"
C_BIN = ROOT / "bench" / "c" / "engine_c_bench"
WINDOWS = [1, 64, 512]
SIZE = 64
OPTIONS = {"election_timeout_ms": 1000, "heartbeat_ms": 100, "snapshot_threshold": 8192,
           "snapshot_trailing": 1024, "max_inflight_entries": 8192}


def pkg_env() -> dict:
    env = dict(os.environ)
    env["PKG_CONFIG_PATH"] = f"{ROOT / '.deps/raft/lib/pkgconfig'}:{env.get('PKG_CONFIG_PATH', '')}"
    return env


def build_c_harness() -> Path:
    """cc + pkg-config; rebuilt only when the source is newer than the binary."""
    if C_BIN.exists() and C_BIN.stat().st_mtime >= C_SRC.stat().st_mtime:
        return C_BIN
    env = pkg_env()
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "raft", "libuv"], env=env, check=True,
                           capture_output=True, text=True).stdout.split()
    libdir = subprocess.run(["pkg-config", "--variable=libdir", "raft"], env=env, check=True,
                            capture_output=True, text=True).stdout.strip()
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(C_BIN), str(C_SRC), *flags, f"-Wl,-rpath,{libdir}"],
                   check=True)
    return C_BIN


def free_ports(n: int) -> list[int]:
    import socket
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run_cluster(argv_for, counts: list[int], timeout: float) -> list[dict]:
    """Starts 3 nodes; the one that becomes leader prints one JSON line per window and exits."""
    work = Path(tempfile.mkdtemp(prefix="bknr-engine-bench-"))
    addrs = ",".join(f"127.0.0.1:{p}" for p in free_ports(3))
    procs = []
    try:
        for i in (1, 2, 3):
            d = work / f"n{i}"
            d.mkdir()
            with open(work / f"n{i}.err", "w") as err:
                procs.append(subprocess.Popen(argv_for(i, d, addrs), stdout=subprocess.PIPE,
                                              stderr=err, text=True))
        deadline = time.monotonic() + timeout
        done = threading.Event()
        while not done.wait(0.05):
            finished = [p for p in procs if p.poll() is not None]
            if finished:
                out = finished[0].stdout.read() if finished[0].stdout else ""
                rows = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
                if finished[0].returncode != 0 or len(rows) != len(counts):
                    err = (work / f"n{procs.index(finished[0]) + 1}.err").read_text()[-2000:]
                    raise RuntimeError(f"bench node exited with {finished[0].returncode}: {out!r} {err}")
                return rows
            if time.monotonic() > deadline:
                raise RuntimeError("bench cluster did not finish in time")
        return []
    finally:
        for p in procs:  # exactly the processes started here
            if p.poll() is None:
                p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


def run_c(counts: list[int], timeout: float) -> list[dict]:
    binary = build_c_harness()
    w = ",".join(map(str, WINDOWS))
    n = ",".join(map(str, counts))
    return run_cluster(lambda i, d, a: [str(binary), str(i), str(d), a, w, n, str(SIZE)], counts, timeout)


def run_py(counts: list[int], timeout: float) -> list[dict]:
    w = ",".join(map(str, WINDOWS))
    n = ",".join(map(str, counts))
    return run_cluster(lambda i, d, a: [sys.executable, __file__, "--node", str(i), "--dir", str(d),
                                        "--addresses", a, "--windows", w, "--counts", n], counts, timeout)


# ------------------------------------------------------------------ Python node process


def node_main(node_id: int, data_dir: str, addresses: str, windows: list[int], counts: list[int]) -> None:
    sys.path.insert(0, str(ROOT))
    from bknr_cluster.engine import RaftNode
    from bknr_cluster.errors import Shutdown

    addrs = addresses.split(",")
    node = RaftNode(node_id, addrs[node_id - 1], data_dir, **OPTIONS)
    node.bootstrap([(i + 1, a, "voter") for i, a in enumerate(addrs)])
    node.start()
    applied = [0]

    def applier() -> None:
        while True:
            try:
                items = node.next_committed(256, 0.1)  # as the cluster applier (apply.py)
            except Shutdown:
                return
            for kind, index, _, _data in items:
                if kind == "entry":
                    applied[0] += 1
                elif kind == "snapshot_request":
                    node.store_snapshot_done(index, applied[0].to_bytes(8, "little"))

    threading.Thread(target=applier, daemon=True).start()
    tick = threading.Event()
    while True:  # same start condition as the C harness: leader, followers caught up
        st = node.status()
        if st["state"] == "leader" and len(st["followers"]) == 2 and all(
                f["match_index"] >= st["last_log_index"] for f in st["followers"]):
            break
        tick.wait(0.01)
    payload = b"x" * SIZE
    for window, n in zip(windows, counts, strict=True):
        lat: list[float] = []
        pending: deque = deque()  # (submit time, entries, future), oldest first
        failed = 0
        outstanding = submitted = 0
        cpu_start = time.process_time()  # all threads: loop, submitter, applier
        t_start = time.perf_counter()

        def settle(pending: deque = pending, lat: list = lat) -> tuple[int, int]:
            """Wait for the oldest batch, then take every batch already done behind it (the
            C harness refills from each apply callback, and callbacks arrive in bursts).
            Returns (entries completed, entries failed); one latency sample per entry."""
            done = bad = 0
            while pending and (done == 0 or pending[0][2].done()):
                t0, k, f = pending.popleft()
                try:
                    f.result(30)
                except Exception:
                    bad += k
                lat.extend([time.perf_counter() - t0] * k)
                done += k
            return done, bad

        while submitted < n:
            # Keep exactly `window` entries outstanding: refill what completed, in one call.
            k = min(window - outstanding, n - submitted)
            pending.append((time.perf_counter(), k, node.submit_many([payload] * k)))
            outstanding += k
            submitted += k
            done, bad = settle()
            outstanding -= done
            failed += bad
        while pending:
            failed += settle()[1]
        secs = time.perf_counter() - t_start
        cpu_us = (time.process_time() - cpu_start) * 1e6 / n
        lat.sort()
        print(json.dumps({"window": window, "n": n, "failed": failed, "eps": round(n / secs, 1),
                          "p50_ms": round(lat[len(lat) // 2] * 1e3, 3),
                          "p99_ms": round(lat[int(len(lat) * 0.99)] * 1e3, 3),
                          "cpu_us": round(cpu_us, 2)}), flush=True)
    node.stop()


# ------------------------------------------------------------------ orchestration


METRICS = ("eps", "p50_ms", "p99_ms", "cpu_us")


def median_rows(runs: list[list[dict]]) -> list[dict]:
    out = []
    for rows in zip(*runs, strict=True):
        out.append({"window": rows[0]["window"],
                    **{k: statistics.median(r[k] for r in rows) for k in METRICS},
                    "failed": sum(r["failed"] for r in rows)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small counts, one round (< 60 s)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--node", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--addresses", help=argparse.SUPPRESS)
    p.add_argument("--windows", help=argparse.SUPPRESS)
    p.add_argument("--counts", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.node:
        node_main(args.node, args.dir, args.addresses, [int(x) for x in args.windows.split(",")],
                  [int(x) for x in args.counts.split(",")])
        return

    # Short interleaved rounds and medians: on a shared machine one long round is mostly noise.
    counts = [300, 5000, 20000] if args.quick else [1000, 20000, 80000]
    rounds = args.rounds or (1 if args.quick else 5)
    timeout = 40 if args.quick else 300
    c_runs, py_runs = [], []
    for _ in range(rounds):  # interleaved, so both see the same machine conditions
        c_runs.append(run_c(counts, timeout))
        py_runs.append(run_py(counts, timeout))
    c, py = median_rows(c_runs), median_rows(py_runs)

    from bknr_cluster.engine import LIBRAFT_VERSION
    print(f"engine bench: 3 nodes on loopback, fsync on, {SIZE}-byte entries, libraft {LIBRAFT_VERSION}, "
          f"{rounds} round(s), median")
    print("(cpu: leader process CPU time per entry, all threads, in microseconds)")
    print(f"{'window':>6} | {'C entries/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'cpu':>6} | "
          f"{'Py entries/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'cpu':>6} | {'ratio':>5}")
    for cr, pr in zip(c, py, strict=True):
        print(f"{cr['window']:>6} | {cr['eps']:>12.0f} {cr['p50_ms']:>8.2f} {cr['p99_ms']:>8.2f} "
              f"{cr['cpu_us']:>6.1f} | {pr['eps']:>12.0f} {pr['p50_ms']:>8.2f} {pr['p99_ms']:>8.2f} "
              f"{pr['cpu_us']:>6.1f} | "
              f"{pr['eps'] / cr['eps']:>5.2f}")
    by_w = {r["window"]: r for r in py}
    c_w = {r["window"]: r for r in c}
    print(json.dumps({
        "bench": "engine", "libraft_version": LIBRAFT_VERSION, "quick": args.quick, "rounds": rounds,
        "c_eps_w512": c_w[512]["eps"], "py_eps_w512": by_w[512]["eps"],
        "ratio_w512": round(by_w[512]["eps"] / c_w[512]["eps"], 3),
        "py_eps_w1": by_w[1]["eps"], "p50_ms_w1": by_w[1]["p50_ms"], "p99_ms_w1": by_w[1]["p99_ms"],
        "c_eps_w1": c_w[1]["eps"], "c_eps_w64": c_w[64]["eps"], "py_eps_w64": by_w[64]["eps"],
        "c_cpu_us_w512": c_w[512]["cpu_us"], "py_cpu_us_w512": by_w[512]["cpu_us"],
        "failed": sum(r["failed"] for r in c + py),
    }))


if __name__ == "__main__":
    main()
