"""The long chaos run (``make chaos`` / ``python -m tests.chaos.long_run``).

A 5-node cluster, every node in its own network namespace, the last one's data directory on a
small tmpfs; register, bank and append workloads run throughout while the nemesis injects
random faults (kills, pauses, partitions incl. ring, full restarts, disk full).  At the end the
cluster is healed and converged, every checker runs, and ``chaos-report.json`` is written and a
table printed.  Exit status 0 only when nothing was lost, the register history is linearizable,
all digests match, every checker passed and the fault target was met.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.cluster import ChaosCluster
from tests.chaos.conftest import started
from tests.chaos.diskfull import SmallDisk
from tests.chaos.netns import Network, NetworkUnavailable
from tests.chaos.runner import chaos_run, print_table, verdict_problems
from tests.support import Processes


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos.long_run", description=__doc__)
    p.add_argument("--minutes", type=float, default=30.0, help="load + fault time (default 30)")
    p.add_argument("--faults", type=int, default=400, help="stop injecting after this many")
    p.add_argument("--min-faults", type=int, default=200, help="fail the run below this many")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    p.add_argument("--out", default="chaos-report.json")
    p.add_argument("--workdir", help="keep node data and histories here (default: a temp dir)")
    p.add_argument("--election-ms", type=int, default=500)
    p.add_argument("--progress", type=int, default=25, help="print a line every N faults")
    p.add_argument("--kinds", help="comma-separated fault kinds (default: all that apply)")
    p.add_argument("--loopback", action="store_true",
                   help="nodes on 127.0.0.1 instead of namespaces (no partitions, no disk full)")
    p.add_argument("--snapshot-threshold", type=int, default=2000)
    p.add_argument("--snapshot-trailing", type=int, default=500)
    p.add_argument("--check-each", action="store_true",
                   help="after every fault pause the load, compare digests, stop at a divergence")
    p.add_argument("--keep-down-copies", type=int, default=0,
                   help="keep copies of the data dirs taken while the cluster was down")
    args = p.parse_args(argv)
    kinds = args.kinds.split(",") if args.kinds else None
    # A background job starts with SIGINT ignored and SIGTERM would skip the finally below:
    # both become KeyboardInterrupt so processes, namespaces and the tmpfs are always removed.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bknr-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    names = [f"n{i + 1}" for i in range(args.nodes)]
    print(f"chaos: seed {args.seed}, {args.nodes} nodes, {args.minutes} min, workdir {workdir}",
          flush=True)
    procs = Processes()
    net = None if args.loopback else Network(names)
    disk = None if args.loopback else SmallDisk(workdir / f"{names[-1]}-disk", size_mb=256)
    report: dict = {"seed": args.seed, "error": None}
    t0 = time.monotonic()
    try:
        if net is not None and disk is not None:
            net.setup()
            disk.mount()
        cluster = ChaosCluster(workdir / "cluster", procs, args.nodes, net=net,
                               election_timeout_ms=args.election_ms, heartbeat_ms=args.election_ms // 10,
                               snapshot_threshold=args.snapshot_threshold,
                               snapshot_trailing=args.snapshot_trailing,
                               data_dirs={names[-1]: disk.path} if disk else None)
        started(cluster)
        report = chaos_run(cluster, seconds=args.minutes * 60, max_faults=args.faults, seed=args.seed,
                           kinds=kinds, workdir=workdir, hold=(0.8, 1.8), quiet=(0.1, 0.5),
                           disks={names[-1]: disk} if disk else None, pace=0.01, progress=args.progress,
                           check_each=args.check_each, keep_down_copies=args.keep_down_copies)
    except NetworkUnavailable as exc:
        report["error"] = f"kernel/tool feature missing: {exc}"
    except BaseException as exc:  # the report must say what broke, then the run fails
        report["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        procs.stop_all()
        if disk is not None:
            disk.umount()
        if net is not None:
            net.teardown()
        report["wall_s"] = round(time.monotonic() - t0, 1)
        report["workdir"] = str(workdir)
        problems = verdict_problems(report) if "lost" in report else [report.get("error") or "no result"]
        if "faults_total" in report and report["faults_total"] < args.min_faults:
            problems.append(f"only {report['faults_total']} faults injected (< {args.min_faults})")
        report["problems"] = problems
        report["ok"] = not problems
        Path(args.out).write_text(json.dumps(report, indent=1, default=str) + "\n")
        if "faults_total" in report:
            print_table(report)
        print(f"chaos: {'OK' if report['ok'] else 'FAILED'}; report in {os.path.abspath(args.out)}"
              + ("" if report["ok"] else f"; problems: {problems}"), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
