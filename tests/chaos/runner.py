"""One chaos run: start workloads, let the nemesis work, heal, converge, check, report.

Shared by the short tests (a few faults) and ``long_run`` (hundreds).
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tests.chaos.checkers import check_append, check_bank, mislabeled_snapshots
from tests.chaos.cluster import ChaosCluster
from tests.chaos.history import FAIL, OK, UNKNOWN, History
from tests.chaos.linearizability import check_register
from tests.chaos.nemesis import FaultEvent, Nemesis
from tests.chaos.workloads import AppendWorkload, BankWorkload, Limits, RegisterWorkload, Workload

MUTATIONS = {"write", "cas", "transfer", "append"}


def make_workloads(cluster: ChaosCluster, seconds: float, seed: int,
                   which: Iterable[str] = ("register", "bank", "append"),
                   pace: float = 0.002) -> dict[str, Workload]:
    urls = [nd.url for nd in cluster.nodes.values()]
    limits = Limits(seconds=seconds + 60, op_timeout=3.0, pace=pace)
    out: dict[str, Workload] = {}
    for i, name in enumerate(which):
        cls = {"register": RegisterWorkload, "bank": BankWorkload, "append": AppendWorkload}[name]
        clients = {"register": 4, "bank": 3, "append": 2}[name]
        out[name] = cls(urls, cluster.token, History(), clients=clients, limits=limits,
                        seed=seed * 10 + i)
    return out


def final_state(cluster: ChaosCluster, names: list[str]) -> tuple[dict, dict]:
    """Bank state and lists read locally on every node (after convergence)."""
    bank, lists = {}, {}
    for n in names:
        bank[n] = cluster.query(n, "bank")
        lists[n] = cluster.query(n, "lists")
    return bank, lists


def check_all(cluster: ChaosCluster, workloads: dict[str, Workload], converge_timeout: float = 90.0) -> dict:
    """Converge every node, compare digests, and run each workload's checker."""
    names = list(cluster.nodes)
    out: dict = {"checks": {}}
    try:
        sts = cluster.converge(converge_timeout, names)
        digests = {n: (st["applied_index"], st["digest"]) for n, st in sts.items()}
        out["converged"] = True
    except AssertionError as exc:
        out["converged"] = False
        out["converge_error"] = str(exc)
        digests = cluster.digests(names)
    out["digests"] = {n: list(d) for n, d in digests.items()}
    # a replica that stopped applying (cluster/DESIGN.md "Halting a replica") and stayed so
    sts_now = cluster.statuses(names)
    out["halted"] = {n: st["halted"] for n, st in sts_now.items() if st.get("halted")}
    out["checkpoint_disagreements"] = {
        n: [c for c, v in (st.get("verdicts") or {}).items() if v.get("result") == "disagree"]
        for n, st in sts_now.items()
        if any(v.get("result") == "disagree" for v in (st.get("verdicts") or {}).values())}
    out["digests_match"] = (len(digests) == len(names) and len({d for d in digests.values()}) == 1)

    bank_rep, lists_rep = final_state(cluster, [n for n in names if n in digests])
    lost = 0
    if "register" in workloads:
        v = check_register(workloads["register"].history.ops)
        out["checks"]["register"] = v.summary()
        out["linearizable"] = v.ok
    if "bank" in workloads:
        wl = workloads["bank"]
        r = check_bank(wl.history.ops, wl.initial, bank_rep)
        out["checks"]["bank"] = r.summary()
        lost += r.stats["lost"]
    if "append" in workloads:
        r = check_append(workloads["append"].history.ops, lists_rep)
        out["checks"]["append"] = r.summary()
        lost += r.stats["lost"]
    out["lost"] = lost
    out["checks_ok"] = all(c.get("ok", c.get("linearizable")) for c in out["checks"].values())
    return out


def op_counts(workloads: dict[str, Workload]) -> dict:
    tot = {"acked": 0, "failed": 0, "unknown": 0, "reads_ok": 0}
    per: dict[str, dict] = {}
    for name, wl in workloads.items():
        c = {"acked": 0, "failed": 0, "unknown": 0, "reads_ok": 0}
        for op in wl.history.ops:
            if op.f in MUTATIONS:
                c[{OK: "acked", FAIL: "failed", UNKNOWN: "unknown"}[op.status]] += 1
            elif op.status == OK:
                c["reads_ok"] += 1
        per[name] = c
        for k in tot:
            tot[k] += c[k]
    return {**tot, "per_workload": per}


def divergence_check(cluster: ChaosCluster, workloads: dict[str, Workload], ev: FaultEvent,
                     timeout: float = 60.0) -> bool:
    """With the load paused: converge every node and compare digests at one applied index.
    Records the result in ``ev.extra``; False when the replicas differ (or do not converge)."""
    for wl in workloads.values():
        wl.pause()
    try:
        sts = cluster.converge(timeout, list(cluster.nodes))
        digests = {n: (st["applied_index"], st["digest"]) for n, st in sts.items()}
        replayed = {n: st.get("replayed_entries", 0) for n, st in sts.items()}
        ev.extra["replayed_entries"] = replayed
        ev.extra["commit_clamps"] = {n: st.get("commit_clamps", 0) for n, st in sts.items()}
        ev.extra["mislabeled_snapshots"] = {n: st.get("mislabeled_snapshots", 0) for n, st in sts.items()}
        files = {n: mislabeled_snapshots(nd.data_dir / "raft") for n, nd in cluster.nodes.items()}
        files = {n: bad for n, bad in files.items() if bad}
        if files:
            ev.extra["mislabeled_files"] = files
        ev.extra["digests_match"] = (len(set(digests.values())) == 1 and not any(replayed.values())
                                     and not files)
        if not ev.extra["digests_match"]:
            ev.extra["digests"] = {n: list(d) for n, d in digests.items()}
    except AssertionError as exc:
        ev.extra["digests_match"] = False
        ev.extra["converge_error"] = str(exc)
    finally:
        for wl in workloads.values():
            wl.resume()
    return ev.extra["digests_match"]


def keep_data_dirs(cluster: ChaosCluster, dest: Path, keep: int) -> Callable[[FaultEvent], None]:
    """A ``Nemesis.while_down`` hook: copy every node's data directory (the cluster is down)
    to ``dest/down-<fault number>``, keeping the last ``keep`` copies, for a post-mortem of
    the disk state a divergent restart started from."""
    def copy(ev: FaultEvent) -> None:
        copies = sorted(dest.glob("down-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in copies[:max(0, len(copies) - keep + 1)]:
            shutil.rmtree(old, ignore_errors=True)
        target = dest / f"down-{ev.extra.get('number', 0)}"
        for name, nd in cluster.nodes.items():
            shutil.copytree(nd.data_dir, target / name, symlinks=True, dirs_exist_ok=True)
    return copy


def chaos_run(cluster: ChaosCluster, *, seconds: float, max_faults: int, seed: int,
              kinds: list[str] | None = None, workdir: Path | None = None,
              hold: tuple[float, float] = (1.0, 3.0), quiet: tuple[float, float] = (0.5, 1.5),
              disks: dict | None = None, pace: float = 0.002, progress: int = 0,
              check_each: bool = False, keep_down_copies: int = 0) -> dict:
    """Workloads + nemesis for ``seconds`` (or ``max_faults``), then heal and check.

    ``check_each``: after every fault pause the load, converge, compare digests, and stop at the
    first divergence (``report["diverged_after"]`` names the fault).  ``keep_down_copies``: keep
    copies of the data directories taken while the whole cluster was down (needs ``workdir``)."""
    rng = random.Random(seed)
    workloads = make_workloads(cluster, seconds, seed, pace=pace)
    cluster.wait_leader(30)
    for wl in workloads.values():
        wl.setup()
    nemesis = Nemesis(cluster, rng, hold=hold, disks=disks, progress=progress)
    diverged: list[dict] = []
    if check_each:
        def after_each(ev: FaultEvent) -> bool:
            if divergence_check(cluster, workloads, ev):
                return True
            diverged.append({"number": len(nemesis.events), "kind": ev.kind, "target": ev.target,
                             **ev.extra})
            return False
        nemesis.after_each = after_each
    if keep_down_copies and workdir is not None:
        copy = keep_data_dirs(cluster, Path(workdir), keep_down_copies)

        def while_down(ev: FaultEvent) -> None:
            ev.extra["number"] = len(nemesis.events)
            copy(ev)
        nemesis.while_down = while_down
    t0 = time.monotonic()
    for wl in workloads.values():
        wl.start()
    try:
        nemesis.run(seconds, max_faults, kinds=kinds, quiet=quiet)
        # the load runs for the whole time even when the fault budget is spent early
        if not diverged:
            threading.Event().wait(max(0.0, seconds - (time.monotonic() - t0)))
    finally:
        for wl in workloads.values():
            wl.stop()
    duration = time.monotonic() - t0
    if workdir is not None:       # before checking: a slow or crashing check keeps the data
        for name, wl in workloads.items():
            wl.history.dump(Path(workdir) / f"history-{name}.jsonl")
        (Path(workdir) / "faults.json").write_text(json.dumps(nemesis.report(), indent=1))
    result = check_all(cluster, workloads)
    counts = op_counts(workloads)
    report = {
        "seed": seed, "nodes": len(cluster.nodes), "namespaces": cluster.net is not None,
        "duration_s": round(duration, 1),
        "faults_total": len(nemesis.events), "faults_by_kind": nemesis.counts(),
        "faults_not_recovered": sum(1 for e in nemesis.events if not e.recovered),
        "max_recovery_s": max((e.recovery_s for e in nemesis.events), default=0.0),
        "acked": counts["acked"], "failed": counts["failed"], "unknown": counts["unknown"],
        "reads_ok": counts["reads_ok"], "per_workload": counts["per_workload"],
        "lost": result["lost"], "linearizable": result.get("linearizable"),
        "digests_match": result["digests_match"], "converged": result["converged"],
        "checks_ok": result["checks_ok"], "checks": result["checks"], "digests": result["digests"],
        "workload_errors": [e for wl in workloads.values() for e in wl.errors],
        "not_recovered": [e for e in nemesis.report() if not e["recovered"]][:10],
        "pauses_without_new_leader": sum(1 for e in nemesis.events if e.kind == "pause_leader"
                                         and not e.extra.get("leader_while_paused")),
        "disk_full_restart_needed": sum(1 for e in nemesis.events if e.kind == "disk_full"
                                        and e.extra.get("restart_needed")),
        "old_version_halts": sum(1 for e in nemesis.events if e.kind == "old_version"
                                 and e.extra.get("halted")),
        "halted_at_end": result["halted"],
        "checkpoint_disagreements": result["checkpoint_disagreements"],
    }
    if check_each:
        report["diverged_after"] = diverged[0] if diverged else None
    return report


def verdict_problems(report: dict) -> list[str]:
    """Why a run failed, in one line each; empty when everything held."""
    out = []
    if report["lost"]:
        out.append(f"{report['lost']} acknowledged operations lost")
    if report.get("linearizable") is False:
        out.append("register history not linearizable")
    if report.get("linearizable") is None and "register" in report["checks"]:
        out.append("linearizability undecided (search budget)")
    if report.get("diverged_after"):
        out.append(f"replicas diverged after fault {report['diverged_after']}")
    if not report["digests_match"]:
        out.append(f"digests differ: {report['digests']}")
    if report.get("halted_at_end"):
        out.append(f"replicas still halted at the end: {report['halted_at_end']}")
    if report.get("checkpoint_disagreements"):
        out.append(f"a checkpoint found a diverged replica: {report['checkpoint_disagreements']}")
    for name, c in report["checks"].items():
        if c.get("ok") is False:
            out.append(f"{name} checker: {c.get('problems')}")
    if report["workload_errors"]:
        out.append(f"workload errors: {report['workload_errors'][:3]}")
    return out


def print_table(report: dict) -> str:
    rows = [("faults_total", report["faults_total"]),
            ("faults_by_kind", ", ".join(f"{k}={v}" for k, v in sorted(report["faults_by_kind"].items()))),
            ("faults_not_recovered", report.get("faults_not_recovered")),
            ("duration_s", report.get("duration_s")),
            ("acked", report["acked"]), ("failed", report["failed"]), ("unknown", report["unknown"]),
            ("reads_ok", report.get("reads_ok")), ("lost", report["lost"]),
            ("linearizable", report["linearizable"]), ("digests_match", report["digests_match"]),
            ("checks_ok", report.get("checks_ok")),
            ("pauses_without_new_leader", report.get("pauses_without_new_leader")),
            ("disk_full_restart_needed", report.get("disk_full_restart_needed")),
            ("old_version_halts", report.get("old_version_halts")),
            ("halted_at_end", report.get("halted_at_end"))]
    for name, c in report.get("per_workload", {}).items():
        rows.append((f"  {name}", ", ".join(f"{k}={v}" for k, v in c.items())))
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    print(text, flush=True)
    return text
