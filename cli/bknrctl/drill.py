"""Failover drill: bank workload, fault on the leader, measurements and verification.

One round: writers run against the leader; after a warm-up the leader is killed (SIGKILL) or
frozen (SIGSTOP); a watcher polls ``/leader`` on every node every few ms. Measured, all from the
fault instant:
- ``time_to_detect_ms``: until no surviving node names the old leader any more (its election
  timer fired);
- ``time_to_leader_ms``: until a surviving node answers ``/leader`` with 200;
- ``write_gap_ms``: what a client sees: from the last acknowledged write before the fault to
  the first acknowledged write after it.
Then the faulted node is brought back (restarted / SIGCONT), every node must reach the same
applied index, and we verify: every acknowledged transfer is present on every node, the state
digests are equal, and the bank total is unchanged.
"""

from __future__ import annotations

import asyncio
import random
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bknr_cluster.errors import BknrError

from .cluster import Cluster, engine_applied
from .control import controller
from .leadership import transfer_with_retry
from .nodes import start_nodes
from .poll import apoll
from .workload import WORKLOADS, BankClient, NodeRef, Sample


@dataclass
class RoundResult:
    round: int
    fault: str
    victim: str
    new_leader: str | None
    time_to_detect_ms: float | None
    time_to_leader_ms: float | None
    write_gap_ms: float | None
    acked: int
    lost: int
    unknown: int
    failed_requests: int
    digests_match: bool
    bank_total_ok: bool
    fault_at: float = 0.0
    leader_at: float | None = None
    samples: list[Sample] = field(default_factory=list, repr=False)

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("samples", "fault_at", "leader_at"):
            d.pop(k)
        return d


@dataclass
class DrillOptions:
    rounds: int = 5
    fault: str = "kill"               # kill | stop | transfer | partition (needs Drill.network)
    target: str = "leader"            # leader | node name
    writers: int = 4
    warmup_s: float = 0.6
    settle_s: float = 0.5              # keep writing this long after the first post-fault ack
    max_round_s: float = 30.0
    max_ops_per_writer: int = 20_000
    request_timeout_s: float | None = None
    leave_down: bool = False           # last round: do not restart the victim (for failback)
    via: str | None = None             # send the workload through this load balancer URL
    workload: str = "system"           # "system" (any store, records removed after) or "bank"
    seed: int = 1


async def inject_fault(cluster: Cluster, ctl: Any, victim: Any, fault: str,
                       network: tuple[Callable[[str], None], Callable[[], None]] | None = None,
                       ) -> tuple[float, float, float]:
    """Kill (SIGKILL), freeze (SIGSTOP), cut off (``network``'s isolate) or hand over (planned
    switchover) ``victim``; returns ``(started, done, fault_at)``: a kill/freeze/cut happens
    when it is delivered, a switchover starts with the call."""
    start = time.monotonic()
    if fault == "kill":
        await asyncio.to_thread(ctl.signal, signal.SIGKILL)
    elif fault == "stop":
        await asyncio.to_thread(ctl.signal, signal.SIGSTOP)
    elif fault == "partition":
        assert network is not None, "a partition drill needs Drill.network"
        await asyncio.to_thread(network[0], victim.name)
    else:  # planned switchover; libraft may abort one under load: retry like an operator
        await asyncio.to_thread(transfer_with_retry, cluster, victim, 0)
    done = time.monotonic()
    return start, done, start if fault == "transfer" else done


class Watcher:
    """One poller per node on /leader; records ``(t, node_id, is_leader, leader_id)``.

    Independent pollers: a frozen node delays only its own samples.
    """

    def __init__(self, client: BankClient, period: float = 0.005):
        self.client = client
        self.period = period
        self.samples: list[tuple[float, int, bool, int]] = []

    async def _poll(self, n: NodeRef, stop: asyncio.Event) -> None:
        while not stop.is_set():
            _, ok, body = await self.client._ask_leader(n)
            leader_id = int(body.get("leader_id") or (n.id if ok else 0)) if body else -1
            self.samples.append((time.monotonic(), n.id, ok, leader_id))
            await asyncio.sleep(self.period)

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._poll(n, stop) for n in self.client.view.nodes))

    def detected(self, after: float, victim: int, survivors: list[int]) -> float | None:
        """When every survivor had stopped naming ``victim`` as its leader."""
        times = []
        for i in survivors:
            t = next((t for t, node, _, ld in self.samples if node == i and t > after and ld != victim), None)
            if t is None:
                return None
            times.append(t)
        return max(times) if times else None

    def new_leader(self, after: float, victim: int) -> tuple[float, int] | None:
        return next(((t, node) for t, node, ok, _ in self.samples
                     if ok and t > after and node != victim), None)


def write_gap(samples: list[Sample], fault_start: float, victim: int,
              fault_done: float | None = None) -> float | None:
    """The longest client-visible pause between consecutive acknowledgements across the fault (ms).

    The window runs from the last ack completed before ``fault_start`` to the first ack served
    by another node than the victim: answers the victim had already sent when the signal landed
    still arrive a little after it and must not end the gap. Through a load balancer the serving
    node is unknown (``node`` 0): there the gap ends at the first ack of a request *sent* after
    the fault was delivered (``fault_done``), which only a new leader can have served.
    """
    oks = sorted((s for s in samples if s.ok), key=lambda s: s.end)
    ends = [(s.end, s.node) for s in oks]
    if fault_done is not None and any(s.node == 0 for s in oks):
        first_new = next((s.end for s in oks if s.start > fault_done), None)
    else:
        first_new = next((t for t, node in ends if t > fault_start and node != victim), None)
    if first_new is None:
        return None
    before = [t for t, _ in ends if t <= fault_start]
    window = [before[-1] if before else fault_start]
    window += [t for t, _ in ends if fault_start < t <= first_new]
    return max(b - a for a, b in zip(window, window[1:], strict=False)) * 1000.0


async def _wait_converged(cluster: Cluster, min_index: int, timeout: float,
                          skip: frozenset[int] | set[int] = frozenset()) -> list[dict]:
    """Every node but ``skip`` reachable, at one applied index >= min_index and at least the
    leader's commit index; their statuses."""
    last: Any = None

    async def converged() -> list[dict] | None:
        nonlocal last
        state = await asyncio.to_thread(cluster.probe, 2.0)
        live = [s for s in state.nodes if s.node.id not in skip]
        sts = [s.status for s in live if s.status]
        if state.leader and state.leader.status and len(sts) == len(live):
            applied = {int(st["applied_index"]) for st in sts}
            commit = int(state.leader.status["commit_index"])
            if len(applied) == 1 and applied.pop() >= min_index \
                    and all(engine_applied(st) >= commit for st in sts):
                return sts
        last = [(s.node.name, s.status and s.status.get("applied_index"), s.error) for s in live]
        return None

    sts = await apoll(converged, timeout, interval=0.1)
    if sts is None:
        what = "surviving nodes" if skip else "nodes"
        raise BknrError(f"{what} did not converge within {timeout:.0f}s" + ("" if skip else f": {last}"))
    return sts


class Drill:
    def __init__(self, cluster: Cluster, opts: DrillOptions,
                 progress: Callable[[str], None] | None = None) -> None:
        self.cluster = cluster
        self.opts = opts
        self.progress = progress or (lambda msg: None)
        self.nodes = [NodeRef(n.id, n.name, n.api_url) for n in cluster.cfg.nodes]
        self.down: str | None = None
        self.removed_records: int | None = None
        # fault "partition": (isolate(node name), heal()) of a network the nodes run in, e.g.
        # network namespaces whose traffic nftables drops (bench/failover_bench.py)
        self.network: tuple[Callable[[str], None], Callable[[], None]] | None = None

    async def run(self) -> list[RoundResult]:
        et = self.cluster.cfg.election_timeout_ms
        timeout = self.opts.request_timeout_s or max(0.1, min(1.0, et / 1000 * 0.75))
        results = []
        workload = WORKLOADS[self.opts.workload]
        async with BankClient(self.nodes, self.cluster.token, request_timeout=timeout,
                              via=self.opts.via, workload=workload,
                              ssl_context=self.cluster.ssl_context) as client:
            try:
                await client.setup(time.monotonic() + 30.0)
                leader = await client.discover(-1, time.monotonic() + 30.0)
                assert leader is not None
                total0 = await client.total(leader, consistent=True)
                for r in range(1, self.opts.rounds + 1):
                    last = r == self.opts.rounds
                    res = await self._round(client, r, total0, leave_down=last and self.opts.leave_down)
                    results.append(res)
                    self.progress(f"round {r}: gap {res.write_gap_ms or 0:.0f} ms, "
                                  f"new leader {res.new_leader}, lost {res.lost}")
            finally:
                # the system workload's records go, whatever happened (verification is done)
                if workload.clear is not None:
                    self.removed_records = await client.clear(time.monotonic() + 30.0)
        return results

    def _victim(self, leader_id: int) -> Any:
        if self.opts.target == "leader":
            return self.cluster.cfg.node_by_id(leader_id)
        return self.cluster.cfg.node(self.opts.target)

    async def _round(self, client: BankClient, no: int, total0: int, leave_down: bool) -> RoundResult:
        o = self.opts
        client.samples = []
        acked_before = set(client.acked)
        client.view.leader = None  # ask the cluster afresh: the victim must be the leader *now*
        leader = await client.discover(-1, time.monotonic() + 30.0)
        if leader is None:
            raise BknrError("no leader at the start of the round")
        victim = self._victim(leader.id)
        ctl = controller(self.cluster.cfg, victim)
        stop = asyncio.Event()
        watch_stop = asyncio.Event()
        watcher = Watcher(client)
        rng = random.Random(o.seed * 1000 + no)
        writers = [asyncio.create_task(
            client.writer(stop, w, random.Random(rng.random()), o.max_ops_per_writer))
            for w in range(o.writers)]
        watch_task = asyncio.create_task(watcher.run(watch_stop))
        round_deadline = time.monotonic() + o.max_round_s
        try:
            await self._wait_acks(client, 20, o.warmup_s + 10.0)
            await asyncio.sleep(o.warmup_s)
            fault_start, fault_at_done, fault_at = await inject_fault(self.cluster, ctl, victim,
                                                                      o.fault, self.network)
            # wait for the first ack after the fault (not past the round's deadline; without one
            # the verification below reports the loss), then keep writing for settle_s
            async def acked_after_fault() -> bool | None:
                return True if any(s.ok and (s.start > fault_at_done if s.node == 0 else
                                             s.end > fault_start and s.node != victim.id)
                                   for s in client.samples) else None

            await apoll(acked_after_fault, max(0.0, round_deadline - time.monotonic()), interval=0.01)
            await asyncio.sleep(o.settle_s)
        finally:
            stop.set()
            await asyncio.gather(*writers, return_exceptions=True)
            watch_stop.set()
            await watch_task
        survivors = [n.id for n in self.nodes if n.id != victim.id] if o.fault != "transfer" \
            else [n.id for n in self.nodes]
        was_leader = victim.id == leader.id
        # a fault on a follower (--node NAME) triggers no election: nothing to detect or elect
        detect = watcher.detected(fault_at, victim.id, [i for i in survivors if i != victim.id]) \
            if was_leader else None
        new = watcher.new_leader(fault_at, victim.id) if was_leader else None
        gap = write_gap(client.samples, fault_start, victim.id, fault_at_done)
        # --- recovery and verification -------------------------------------------------------
        if o.fault == "stop":
            await asyncio.to_thread(ctl.signal, signal.SIGCONT)
        elif o.fault == "partition":
            await asyncio.to_thread(self.network[1])  # type: ignore[index]
        elif o.fault == "kill" and not leave_down:
            await asyncio.to_thread(start_nodes, self.cluster, [victim], 30.0, True)
        if leave_down and o.fault == "kill":
            self.down = victim.name
        ctl.close()
        round_acked = {r: i for r, i in client.acked.items() if r not in acked_before}
        lost, digests_ok, total_ok = await self.verify(client, round_acked, total0,
                                                       skip={victim.id} if self.down else set())
        new_name = self.cluster.cfg.node_by_id(new[1]).name if new else None
        return RoundResult(
            round=no, fault=o.fault, victim=victim.name, new_leader=new_name,
            time_to_detect_ms=round((detect - fault_at) * 1000, 1) if detect else None,
            time_to_leader_ms=round((new[0] - fault_at) * 1000, 1) if new else None,
            write_gap_ms=round(gap, 1) if gap is not None else None,
            acked=len(round_acked), lost=lost,
            unknown=len({s.ref for s in client.samples if not s.ok and s.ref in client.unknown}),
            failed_requests=sum(1 for s in client.samples if not s.ok), digests_match=digests_ok,
            bank_total_ok=total_ok, fault_at=fault_at, leader_at=new[0] if new else None,
            samples=list(client.samples))

    @staticmethod
    async def _wait_acks(client: BankClient, n: int, timeout: float) -> None:
        async def enough() -> bool | None:
            return True if sum(1 for s in client.samples if s.ok) >= n else None

        if await apoll(enough, timeout, interval=0.01) is None:
            raise BknrError("the workload got no acknowledged writes before the fault")

    async def verify(self, client: BankClient, acked: dict[str, int], total0: int,
                     skip: set[int]) -> tuple[int, bool, bool]:
        """(lost transfers, digests equal, totals equal) over every live node."""
        min_index = max(acked.values(), default=0)
        sts = await self._converged(min_index, skip)
        digests = {s["digest"] for s in sts}
        refs = list(acked)
        lost: set[str] = set()
        total_ok = True
        for n in self.nodes:
            if n.id in skip:
                continue
            present = await client.present(n)
            lost |= set(refs) - present
            total_ok = total_ok and await client.total(n) == total0
        return len(lost), len(digests) == 1, total_ok

    async def _converged(self, min_index: int, skip: set[int]) -> list[dict]:
        return await _wait_converged(self.cluster, min_index, 60.0, skip)


def report(cluster: Cluster, results: list[RoundResult]) -> dict[str, Any]:
    gaps = [r.write_gap_ms for r in results if r.write_gap_ms is not None]
    leaders = [r.time_to_leader_ms for r in results if r.time_to_leader_ms is not None]
    et = cluster.cfg.election_timeout_ms
    med = round(statistics.median(gaps), 1) if gaps else None
    return {
        "election_timeout_ms": et,
        "heartbeat_ms": cluster.cfg.heartbeat_ms,
        "rounds": [r.public() for r in results],
        "median_write_gap_ms": med,
        "max_write_gap_ms": round(max(gaps), 1) if gaps else None,
        "median_time_to_leader_ms": round(statistics.median(leaders), 1) if leaders else None,
        "write_gap_target_ms": 1.5 * et + 50,
        "write_gap_target_met": med is not None and med <= 1.5 * et + 50,
        "acked_total": sum(r.acked for r in results),
        "lost_total": sum(r.lost for r in results),
        "digests_match": all(r.digests_match for r in results),
        "bank_total_ok": all(r.bank_total_ok for r in results),
    }


def run_drill(cluster: Cluster, opts: DrillOptions, progress: Callable[[str], None] | None = None,
              ) -> tuple[dict[str, Any], list[RoundResult], Drill]:
    d = Drill(cluster, opts, progress)
    results = asyncio.run(d.run())
    rep = report(cluster, results)
    rep["workload"] = opts.workload
    rep["drill_records_removed"] = d.removed_records
    return rep, results, d
