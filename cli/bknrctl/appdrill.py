"""The end-user drill (``failover --drill --app``): customers' HTTP clients against the hosted bank
application *through the load balancer*, a fault on the leader, and what the customers saw.

Each client sends ``POST /transfers`` with a fresh ``Idempotency-Key``, one after the other, to
the write frontend (a HAProxy the drill starts from the YAML, or ``--via URL``). Measured per
round and overall, as the client saw it:
- ``requests`` and ``user_errors``: every answer but a 2xx (and every connection error or
  timeout) is a user-visible error; the client then sends the same request again with the same
  key, as a customer pressing the button again would, so that its outcome becomes known;
- request latency p50 / p99 / max (CockroachDB's failover tests use pMax as the outage figure);
- ``longest_stall_ms``: the longest time in the round without any successful answer;
- ``gap_ms``: the write gap around the fault (drill.write_gap, load-balancer mode).
Afterwards every acknowledged transfer must be applied exactly once on every node (the bank
records each key once, so "present everywhere" is "exactly once"), the digests must match and
the bank total must be unchanged (the admin-API checks of the write drill, drill.Drill.verify).
"""

from __future__ import annotations

import asyncio
import functools
import random
import signal
import ssl
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bknr_cluster.errors import BknrError, UsageError

from .cluster import Cluster
from .control import controller
from .drill import Drill as AdminDrill
from .drill import DrillOptions, RoundResult, Watcher, inject_fault, write_gap
from .poll import apoll
from .workload import BANK, BankClient, NodeRef, Sample

ACCOUNTS = 16
INITIAL_BALANCE = 1_000_000


@dataclass
class AppDrillOptions:
    rounds: int = 5
    fault: str = "kill"               # kill | stop | transfer
    clients: int = 64
    warmup_s: float = 0.6
    settle_s: float = 0.5
    max_round_s: float = 30.0
    request_timeout_s: float = 15.0
    max_requests_per_client: int = 20_000
    via: str | None = None             # an existing load balancer; else a HAProxy of our own
    seed: int = 1
    prefix: str = "app"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def longest_stall(samples: list[Sample], start: float, end: float) -> float:
    """The longest stretch (ms) in [start, end] with no successful answer."""
    marks = [start] + sorted(s.end for s in samples if s.ok and start <= s.end <= end) + [end]
    return max((b - a for a, b in zip(marks, marks[1:], strict=False)), default=0.0) * 1000.0


def figures(samples: list[Sample], start: float, end: float) -> dict[str, Any]:
    """What the customers saw in one window: requests, errors, latency, longest stall."""
    lat = [(s.end - s.start) * 1000.0 for s in samples]
    kinds = Counter(s.error for s in samples if not s.ok)
    return {
        "requests": len(samples),
        "user_errors": sum(kinds.values()),
        "error_kinds": dict(kinds.most_common()),   # e.g. {"HTTP 503": 3, "ServerDisconnectedError": 1}
        "p50_ms": _r(percentile(lat, 0.50)),
        "p99_ms": _r(percentile(lat, 0.99)),
        "max_ms": _r(max(lat, default=None)),
        "longest_stall_ms": _r(longest_stall(samples, start, end)),
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def customer_ssl_context(cfg: Any) -> ssl.SSLContext:
    """What the customers' clients trust for an https:// URL: the system's certificate
    authorities (a load balancer with a public certificate) and the cluster CA (a node's
    application port, or a frontend re-using a node certificate)."""
    ctx = ssl.create_default_context()
    tls_dir = getattr(cfg, "tls_dir", None)
    if tls_dir is not None and (tls_dir / "ca.crt").is_file():
        ctx.load_verify_locations(tls_dir / "ca.crt")
    return ctx


class AppClients:
    """The customers: ``clients`` HTTP clients on one aiohttp session to the load balancer."""

    def __init__(self, url: str, timeout: float, prefix: str,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url.rstrip("/")
        self.ssl_context = ssl_context     # for an https:// URL (customer_ssl_context)
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.prefix = prefix
        self.samples: list[Sample] = []
        self.acked: dict[str, int] = {}
        self.session: aiohttp.ClientSession | None = None
        self._seq = 0

    async def __aenter__(self) -> AppClients:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            limit=0, ssl=self.ssl_context if self.ssl_context is not None else True))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session:
            await self.session.close()

    async def setup(self, deadline: float) -> None:
        """Open the drill's accounts through the application (an existing one is kept)."""
        assert self.session
        for i in range(ACCOUNTS):
            problem: list[str] = []
            opened = functools.partial(self._open_account, f"{self.prefix}-{i}", problem)
            if await apoll(opened, max(0.0, deadline - time.monotonic()), 0.1) is None:
                raise BknrError(f"the application at {self.url} did not open the drill "
                                f"accounts: {problem[0] if problem else 'no answer'}")

    async def _open_account(self, owner: str, problem: list[str]) -> bool | None:
        """True once ``owner``'s account exists; None (and why in ``problem``) otherwise."""
        assert self.session
        try:
            async with self.session.post(f"{self.url}/accounts", json={
                    "owner": owner, "balance": INITIAL_BALANCE}, timeout=self.timeout) as r:
                if r.status in (200, 409):
                    return True
                problem[:] = [f"HTTP {r.status}: {(await r.text())[:200]}"]
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem[:] = [f"{type(exc).__name__}: {exc}"]
        return None

    async def client(self, stop: asyncio.Event, cid: int, rng: random.Random, max_ops: int) -> None:
        """One customer: transfers one after the other until ``stop``; a failed one is sent
        again with the same key until it is acknowledged (or the round ends)."""
        assert self.session
        for _ in range(max_ops):
            if stop.is_set():
                return
            self._seq += 1
            key = f"{self.prefix}-{cid}-{self._seq}-{rng.getrandbits(32):08x}"
            a, b = rng.sample(range(ACCOUNTS), 2)
            body = {"from": f"{self.prefix}-{a}", "to": f"{self.prefix}-{b}",
                    "amount": rng.randint(1, 5)}
            while not await self._send(key, body) and not stop.is_set():
                await asyncio.sleep(0.005)

    async def _send(self, key: str, body: dict) -> bool:
        """One request; True when the transfer is settled (acknowledged, or refused by the
        bank with a 4xx, which a resend would not change)."""
        assert self.session
        t0 = time.monotonic()
        status = 0
        try:
            async with self.session.post(f"{self.url}/transfers", json=body, timeout=self.timeout,
                                         headers={"Idempotency-Key": key}) as r:
                status = r.status
                await r.read()
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = type(exc).__name__
        self.samples.append(Sample(t0, time.monotonic(), not error, 0, key, 0, error))
        if not error:
            self.acked[key] = 0
        return not error or 400 <= status < 500


@dataclass
class AppRound:
    result: RoundResult            # the write drill's round record (plot, verification)
    figures: dict[str, Any]

    def public(self) -> dict[str, Any]:
        d = self.result.public()
        d.update(self.figures)
        d["gap_ms"] = d.pop("write_gap_ms")
        return d


class AppDrill:
    def __init__(self, cluster: Cluster, url: str, opts: AppDrillOptions,
                 progress: Callable[[str], None] | None = None) -> None:
        self.cluster = cluster
        self.url = url
        self.opts = opts
        self.progress = progress or (lambda msg: None)
        self.nodes = [NodeRef(n.id, n.name, n.api_url) for n in cluster.cfg.nodes]
        # the admin-API side: leader watch and the exactly-once / digest / total verification
        self.admin = AdminDrill(cluster, DrillOptions(fault=opts.fault))

    async def run(self) -> list[AppRound]:
        rounds = []
        async with AppClients(self.url, self.opts.request_timeout_s, self.opts.prefix,
                              customer_ssl_context(self.cluster.cfg)) as users, \
                BankClient(self.nodes, self.cluster.token, request_timeout=2.0,
                           workload=BANK, ssl_context=self.cluster.ssl_context) as admin:
            await users.setup(time.monotonic() + 30.0)
            leader = await admin.discover(-1, time.monotonic() + 30.0)
            if leader is None:
                raise BknrError("no leader at the start of the drill")
            admin.prefix = self.opts.prefix
            total0 = await admin.total(leader, consistent=True)
            for no in range(1, self.opts.rounds + 1):
                r = await self._round(users, admin, no, total0)
                rounds.append(r)
                f = r.figures
                self.progress(f"round {no}: {f['requests']} requests, {f['user_errors']} user "
                              f"errors, max {f['max_ms']} ms, stall {f['longest_stall_ms']} ms")
        return rounds

    async def _round(self, users: AppClients, admin: BankClient, no: int, total0: int) -> AppRound:
        o = self.opts
        users.samples = []
        acked_before = set(users.acked)
        admin.view.leader = None
        leader = await admin.discover(-1, time.monotonic() + 30.0)
        if leader is None:
            raise BknrError("no leader at the start of the round")
        victim = self.cluster.cfg.node_by_id(leader.id)
        assert victim is not None
        ctl = controller(self.cluster.cfg, victim)
        stop, watch_stop = asyncio.Event(), asyncio.Event()
        watcher = Watcher(admin)
        rng = random.Random(o.seed * 1000 + no)
        t_start = time.monotonic()
        tasks = [asyncio.create_task(users.client(stop, c, random.Random(rng.random()),
                                                  o.max_requests_per_client))
                 for c in range(o.clients)]
        watch_task = asyncio.create_task(watcher.run(watch_stop))
        deadline = t_start + o.max_round_s
        try:
            async def answered() -> bool | None:
                return True if sum(1 for s in users.samples if s.ok) >= 20 else None

            if await apoll(answered, o.warmup_s + 15.0, 0.01) is None:
                raise BknrError("the customers got no answer before the fault")
            await asyncio.sleep(o.warmup_s)  # load before the fault: a duration, not a wait
            fault_start, fault_done, fault_at = await inject_fault(self.cluster, ctl, victim, o.fault)

            async def served_after_fault() -> bool | None:
                return True if any(s.ok and s.start > fault_done for s in users.samples) else None

            # the round's figures are measured whether or not service came back in time
            await apoll(served_after_fault, max(0.0, deadline - time.monotonic()), 0.01)
            await asyncio.sleep(o.settle_s)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            watch_stop.set()
            await watch_task
        t_end = time.monotonic()
        if o.fault == "stop":
            await asyncio.to_thread(ctl.signal, signal.SIGCONT)
        elif o.fault == "kill":
            from .nodes import start_nodes

            await asyncio.to_thread(start_nodes, self.cluster, [victim], 30.0, True)
        ctl.close()
        survivors = [n.id for n in self.nodes if n.id != victim.id]
        new = watcher.new_leader(fault_at, victim.id)
        detect = watcher.detected(fault_at, victim.id, survivors)
        gap = write_gap(users.samples, fault_start, victim.id, fault_done)
        round_acked = {k: 0 for k in users.acked if k not in acked_before}
        lost, digests_ok, total_ok = await self.admin.verify(admin, round_acked, total0, skip=set())
        result = RoundResult(
            round=no, fault=o.fault, victim=victim.name,
            new_leader=self.cluster.cfg.node_by_id(new[1]).name if new else None,  # type: ignore[union-attr]
            time_to_detect_ms=round((detect - fault_at) * 1000, 1) if detect else None,
            time_to_leader_ms=round((new[0] - fault_at) * 1000, 1) if new else None,
            write_gap_ms=round(gap, 1) if gap is not None else None,
            acked=len(round_acked), lost=lost, unknown=0,
            failed_requests=sum(1 for s in users.samples if not s.ok),
            digests_match=digests_ok, bank_total_ok=total_ok, fault_at=fault_at,
            leader_at=new[0] if new else None, samples=list(users.samples))
        return AppRound(result, figures(users.samples, t_start, t_end))


def app_report(cluster: Cluster, rounds: list[AppRound], url: str) -> dict[str, Any]:
    samples = [s for r in rounds for s in r.result.samples]
    lat = [(s.end - s.start) * 1000.0 for s in samples]
    gaps = [r.result.write_gap_ms for r in rounds if r.result.write_gap_ms is not None]
    return {
        "via": url,
        "election_timeout_ms": cluster.cfg.election_timeout_ms,
        "rounds": [r.public() for r in rounds],
        "requests": len(samples),
        "user_errors": sum(r.figures["user_errors"] for r in rounds),
        "p50_ms": _r(percentile(lat, 0.50)),
        "p99_ms": _r(percentile(lat, 0.99)),
        "max_ms": _r(max(lat, default=None)),
        "longest_stall_ms": max((r.figures["longest_stall_ms"] for r in rounds), default=None),
        "median_gap_ms": round(statistics.median(gaps), 1) if gaps else None,
        "max_gap_ms": max(gaps, default=None),
        "acked_total": sum(r.result.acked for r in rounds),
        "lost_total": sum(r.result.lost for r in rounds),
        "digests_match": all(r.result.digests_match for r in rounds),
        "bank_total_ok": all(r.result.bank_total_ok for r in rounds),
    }


def run_app_drill(cluster: Cluster, opts: AppDrillOptions, plot: Path | None = None,
                  progress: Callable[[str], None] | None = None,
                  work_dir: Path | None = None) -> tuple[dict[str, Any], list[AppRound]]:
    """Run the end-user drill; starts (and stops) a HAProxy unless ``opts.via`` names one."""
    if cluster.cfg.app is None and opts.via is None:
        raise UsageError("--app drills the hosted application: the YAML needs an 'app' section "
                         "(e.g. app: {asgi: 'examples.bank.web:app'}, app_port per node)")
    from .lb import HaproxyProcess

    lb = None
    url = opts.via
    if url is None:
        lb = HaproxyProcess(cluster.cfg, work_dir or cluster.cfg.base_dir / "haproxy")
        lb.start()
        url = lb.write_url
    try:
        rounds = asyncio.run(AppDrill(cluster, url, opts, progress).run())
    finally:
        if lb is not None:
            lb.stop()
    rep = app_report(cluster, rounds, url)
    if plot is not None:
        from .plot import plot_drill

        plot_drill([r.result for r in rounds], plot, cluster.cfg.election_timeout_ms)
        rep["plot"] = str(plot)
    return rep, rounds


# --- presentation ------------------------------------------------------------------------------

def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def app_table(rep: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(box=None, header_style="bold", title=f"end-user drill through {rep['via']} "
              f"(election timeout {rep['election_timeout_ms']} ms)")
    for c in ("round", "fault", "victim", "new leader", "requests", "user errors", "p50", "p99",
              "max", "longest stall", "write gap", "lost", "digests", "total"):
        t.add_column(c)
    for r in rep["rounds"]:
        t.add_row(str(r["round"]), r["fault"], r["victim"], r["new_leader"] or "-",
                  str(r["requests"]), str(r["user_errors"]), _ms(r["p50_ms"]), _ms(r["p99_ms"]),
                  _ms(r["max_ms"]), _ms(r["longest_stall_ms"]), _ms(r["gap_ms"]), str(r["lost"]),
                  "yes" if r["digests_match"] else "NO", "yes" if r["bank_total_ok"] else "NO")
    return t


def app_summary(rep: dict[str, Any]) -> str:
    return (f"customers: {rep['requests']} requests, {rep['user_errors']} user-visible errors, "
            f"p50 {_ms(rep['p50_ms'])}, p99 {_ms(rep['p99_ms'])}, max {_ms(rep['max_ms'])}, "
            f"longest stall {_ms(rep['longest_stall_ms'])}; write gap median "
            f"{_ms(rep['median_gap_ms'])}; lost {rep['lost_total']} of {rep['acked_total']} "
            f"acknowledged; digests match: {'yes' if rep['digests_match'] else 'NO'}; bank total "
            f"unchanged: {'yes' if rep['bank_total_ok'] else 'NO'}")


def app_drill_ok(rep: dict[str, Any]) -> bool:
    return rep["lost_total"] == 0 and rep["digests_match"] and rep["bank_total_ok"]


def failover_app(cluster: Cluster, opts: AppDrillOptions, plot: Path | None, as_json: bool) -> bool:
    """``failover --drill --app``: run, print (table or one JSON object), True when verified."""
    from .output import emit_json, info, progress, stdout_console

    with progress(f"end-user drill: {opts.rounds} round(s), fault {opts.fault}",
                  total=opts.rounds, quiet=as_json) as bar:
        done = [0]

        def step(msg: str) -> None:
            done[0] += 1
            bar.update(completed=done[0], description=msg)
            if not as_json:
                info(msg)
        rep, _ = run_app_drill(cluster, opts, plot, step)
    if as_json:
        emit_json(rep)
    else:
        console = stdout_console()
        console.print(app_table(rep))
        console.print(app_summary(rep))
    return app_drill_ok(rep)
