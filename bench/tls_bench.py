"""What TLS on the Raft transport costs: the same 3-node bank cluster (fsync on, loopback) with
the stock plaintext transport and with TLS 1.3 (native/tls_*.cpp), in one run.

    python bench/tls_bench.py [--quick] [--seconds S] [--rounds R]

Per transport, a fresh cluster from tests/cluster/harness.py as bench/cluster_bench.py builds it
(n1 in this process holds the leadership, n2 and n3 are ``bknr-node`` processes) runs 256
concurrent in-process callers (throughput) and one caller (commit latency p50). Rounds alternate
plain/TLS (ABBA with --rounds 2) so a slow phase of the shared machine hits both; the figures are
the best round per transport. Targets (issue 18): ``ratio_tls`` = tls/plain throughput >= 0.8,
``p50_ms_tls`` <= ``p50_ms_plain`` + 0.2. Prints a table, then one JSON line (the last line).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_bench import bank, bulk_open, definition, export_bench_path, run_callers  # noqa: E402  (it also puts the project on sys.path)

CALLERS = 256


def measure(tls: bool, seconds: float) -> dict[str, float]:
    """Throughput with CALLERS callers and single-caller latency on a fresh cluster."""
    from bknr_cluster.cluster import certs
    from bknr_cluster.cluster.client import ApiClient
    from bknr_cluster.cluster.config import ClusterConfig
    from bknr_cluster.cluster.store import ClusterStore
    from bknr_cluster.cluster.tls_config import client_ssl_context
    from tests.cluster.harness import LocalCluster
    from tests.support import Processes, wait_until

    root = Path(tempfile.mkdtemp(prefix=f"bknr-tls-bench-{'tls' if tls else 'plain'}-"))
    procs = Processes()
    cs = None
    try:
        c = LocalCluster(root, procs, 3, store="cluster_bench:definition", election_timeout_ms=1000,
                         heartbeat_ms=100, snapshot_threshold=200_000, snapshot_trailing=20_000)
        if tls:
            certs.create_ca(root / "tls", "bench")
            for name in ("n1", "n2", "n3"):
                certs.issue_node_cert(root / "tls", name, ["127.0.0.1"])
            c.data["tls_dir"] = "tls"
            c.write()
        c.init()
        for name in ("n2", "n3"):
            c.start(name, wait=False)
        cs = ClusterStore.from_config(c.config_path, "n1", definition=definition)
        cfg = ClusterConfig.load(c.config_path)
        ssl_context = client_ssl_context(cfg)  # the harness's own health check speaks plain HTTP
        for name in ("n2", "n3"):
            api = ApiClient(cfg.node(name).api_url, timeout=1, ssl_context=ssl_context)
            wait_until(lambda a=api: a.health()["ok"], 30, f"{name} up")
        leader_id = wait_until(lambda: cs.engine.status()["leader_id"], 30, "a leader")
        if leader_id != 1:  # the callers run here: n1 must lead
            leader = ApiClient(cfg.node(leader_id).api_url, c.token, ssl_context=ssl_context)
            leader.call("POST", "/transfer", {"to": 1})
        wait_until(lambda: cs.is_leader(), 15, "n1 leadership")
        transport = cs.engine.status().get("auth") or {}
        assert bool(transport.get("tls")) == tls, transport
        cs.execute(bulk_open, "a", 0, 2 * CALLERS)
        seq = itertools.count()
        flip = [0] * CALLERS

        def op(k: int, i: int) -> None:
            a, b = f"a{2 * k}", f"a{2 * k + 1}"
            cs.execute(bank.transfer, *((a, b) if flip[k] == 0 else (b, a)), 1, f"t{next(seq)}")
            flip[k] ^= 1
        many = run_callers(CALLERS, seconds, 400_000, op)
        one = run_callers(1, seconds, 20_000, op)
        return {"tx_per_s": many["tx_per_s"], "p99_ms_256": many["p99_ms"], "p50_ms": one["p50_ms"],
                "errors": many["errors"] + one["errors"]}
    finally:
        if cs is not None:
            cs.stop()
        procs.stop_all()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short phases, one round per transport")
    ap.add_argument("--seconds", type=float, default=None, help="per measurement")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per transport (ABBA order)")
    args = ap.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 8.0)
    rounds = args.rounds or (1 if args.quick else 2)
    export_bench_path()
    t0 = time.monotonic()
    order = [False, True] * rounds if rounds == 1 else \
        list(itertools.chain.from_iterable([[False, True], [True, False]][r % 2] for r in range(rounds)))
    results: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for tls in order:
        results[tls].append(measure(tls, seconds))
    best = {tls: {"tx_per_s": max(r["tx_per_s"] for r in rs), "p50_ms": min(r["p50_ms"] for r in rs),
                  "p99_ms_256": min(r["p99_ms_256"] for r in rs), "errors": sum(r["errors"] for r in rs)}
            for tls, rs in results.items()}
    out = {"bench": "tls", "quick": args.quick, "rounds": rounds, "callers": CALLERS,
           "tx_per_s_plain": round(best[False]["tx_per_s"], 1),
           "tx_per_s_tls": round(best[True]["tx_per_s"], 1),
           "ratio_tls": round(best[True]["tx_per_s"] / max(1e-9, best[False]["tx_per_s"]), 3),
           "p50_ms_plain": round(best[False]["p50_ms"], 3), "p50_ms_tls": round(best[True]["p50_ms"], 3),
           "p99_ms_256_plain": round(best[False]["p99_ms_256"], 3),
           "p99_ms_256_tls": round(best[True]["p99_ms_256"], 3),
           "errors": best[False]["errors"] + best[True]["errors"],
           "wall_s": round(time.monotonic() - t0, 1)}
    print(f"{'transport':<12}{'tx/s (256)':>12}{'p99 ms (256)':>14}{'p50 ms (1)':>12}")
    for tls, label in ((False, "plaintext"), (True, "TLS 1.3")):
        b = best[tls]
        print(f"{label:<12}{b['tx_per_s']:>12.0f}{b['p99_ms_256']:>14.2f}{b['p50_ms']:>12.3f}")
    print(f"ratio tls/plain = {out['ratio_tls']}, p50 difference = "
          f"{out['p50_ms_tls'] - out['p50_ms_plain']:+.3f} ms")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
