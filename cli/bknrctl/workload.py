"""The drill's client: at-most-once transfers over HTTP with a failover-aware retry policy.

The transfers run in the store's system namespace by default (``SYSTEM``: every store has it,
the application's objects are not touched, the records are removed after the drill), or through
the bank example's own transactions (``BANK``).

Retry policy (why each piece is there):
- every request carries a short timeout (``request_timeout``): a frozen leader must not hold a
  writer for longer than a fraction of the election timeout;
- on any failure (a dead leader's port refuses the connection at once) the writer asks *all*
  nodes ``GET /leader?wait_ms=...`` in parallel; each node answers the moment it becomes leader,
  so the new leader is announced to the waiting writers within ~2 ms of its election; the first
  200 wins; a 503 with a leader hint is tried at once. Writers share one discovery, so N writers
  do not flood the cluster with N requests;
- a write whose outcome is unknown (timeout, connection reset, LeadershipLost) is retried with
  the *same* transfer id on the new leader: the bank applies a transfer id at most once, so the
  retry is safe and the writer's transfer is acknowledged exactly once.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

ACCOUNTS = 16
INITIAL_BALANCE = 1_000


@dataclass(frozen=True)
class Workload:
    """The transactions and queries a drill drives: open an account, transfer at most once per
    ref, total of all balances, refs applied; ``clear`` (if any) removes the drill's records."""

    name: str
    open: str
    transfer: str
    total: str
    applied: str
    clear: str | None = None


# Every store has these (bknr_cluster/store/system.py): the drill touches no application data.
SYSTEM = Workload("system", "bknr.sys.drill_open", "bknr.sys.drill_transfer", "bknr.sys.drill_total",
                  "bknr.sys.drill_applied", clear="bknr.sys.drill_clear")
# The bank application's API (examples/bank/app.py); its drill accounts stay in the store.
BANK = Workload("bank", "open_account", "transfer", "total_balance", "applied_transfers")
WORKLOADS = {w.name: w for w in (SYSTEM, BANK)}


@dataclass
class Sample:
    """One write attempt as the client saw it."""

    start: float
    end: float
    ok: bool
    node: int
    ref: str = ""
    index: int = 0
    error: str = ""


@dataclass
class NodeRef:
    id: int
    name: str
    url: str


@dataclass
class LeaderView:
    """The writers' shared belief about the leader, refreshed by one discovery at a time."""

    nodes: list[NodeRef]
    leader: NodeRef | None = None
    generation: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class BankClient:
    def __init__(self, nodes: list[NodeRef], token: str | None, *, request_timeout: float = 0.15,
                 poll_interval: float = 0.005, prefix: str = "drill", via: str | None = None,
                 workload: Workload = SYSTEM, ssl_context: Any = None) -> None:
        self.view = LeaderView(nodes)
        self.workload = workload
        # via: a load balancer URL; writers then send everything there and only retry
        self.via = NodeRef(0, "lb", via.rstrip("/")) if via else None
        self.token = token
        self.ssl_context = ssl_context  # https: verifies the nodes against the cluster CA
        self.request_timeout = request_timeout
        self.poll_interval = poll_interval
        # how long one discovery request may wait on a node for it to become leader
        self.leader_wait_ms = max(0, int(request_timeout * 1000))
        self.prefix = prefix
        self.samples: list[Sample] = []
        self.acked: dict[str, int] = {}     # ref -> log index of acknowledged transfers
        self.unknown: set[str] = set()
        self.session: aiohttp.ClientSession | None = None
        self._seq = 0

    async def __aenter__(self) -> BankClient:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.session = aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(
                limit=0, force_close=False, **({"ssl": self.ssl_context} if self.ssl_context else {})))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session:
            await self.session.close()

    # --- leader discovery ---------------------------------------------------------------------
    async def _ask_leader(self, n: NodeRef, wait_ms: int = 0) -> tuple[NodeRef, bool, dict]:
        assert self.session
        try:
            async with self.session.get(f"{n.url}/leader?wait_ms={wait_ms}",
                                        timeout=aiohttp.ClientTimeout(total=0.1 + wait_ms / 1000)) as r:
                body = await r.json(content_type=None)
                return n, r.status == 200, body if isinstance(body, dict) else {}
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return n, False, {}

    async def discover(self, seen_generation: int, deadline: float) -> NodeRef | None:
        """Find the leader (or return the one another writer found meanwhile).

        One poller per node, each holding a ``GET /leader?wait_ms=...`` that the node answers the
        moment it becomes leader (or after the wait), then asking again after ``poll_interval``:
        a frozen node only stalls its own poller, and the new leader is heard within ~2 ms of
        its election, not at the next poll.
        """
        async with self.view.lock:
            if self.view.generation != seen_generation and self.view.leader is not None:
                return self.view.leader
            found: asyncio.Future[NodeRef] = asyncio.get_running_loop().create_future()

            async def poll(n: NodeRef) -> None:
                while not found.done() and time.monotonic() < deadline:
                    _, ok, _ = await self._ask_leader(n, self.leader_wait_ms)
                    if ok and not found.done():
                        found.set_result(n)
                        return
                    await asyncio.sleep(self.poll_interval)

            pollers = [asyncio.create_task(poll(n)) for n in self.view.nodes]
            try:
                await asyncio.wait([found, *pollers], timeout=max(0.0, deadline - time.monotonic()),
                                   return_when=asyncio.FIRST_COMPLETED)
                while not found.done() and not all(p.done() for p in pollers):
                    await asyncio.wait([found, *pollers], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for p in pollers:
                    p.cancel()
                await asyncio.gather(*pollers, return_exceptions=True)
            self.view.generation += 1
            self.view.leader = found.result() if found.done() else None
            return self.view.leader

    # --- operations ----------------------------------------------------------------------------
    async def call(self, node: NodeRef, kind: str, name: str, body: dict,
                   timeout: float | None = None) -> tuple[int, Any]:
        assert self.session
        limit = aiohttp.ClientTimeout(total=timeout or self.request_timeout)
        async with self.session.post(f"{node.url}/{kind}/{name}", json=body, timeout=limit) as r:
            return r.status, await r.json(content_type=None)

    async def setup(self, deadline: float) -> None:
        """Open the drill accounts on first use (existing ones are kept)."""
        leader = await self.discover(-1, deadline)
        if leader is None:
            raise RuntimeError("no leader for the drill setup")
        for i in range(ACCOUNTS):
            st, body = await self.call(leader, "tx", self.workload.open,
                                       {"args": [f"{self.prefix}-{i}", INITIAL_BALANCE]}, timeout=10.0)
            if st != 200 and not (st == 409 or "exist" in str(body).lower()
                                  or "Integrity" in str(body)):
                raise RuntimeError(f"opening drill account failed: HTTP {st} {body}")

    async def clear(self, deadline: float) -> int:
        """Remove the drill's records (system workload); 0 when the workload keeps them."""
        if self.workload.clear is None:
            return 0
        while True:
            leader = await self.discover(-1, deadline)
            if leader is None:
                raise RuntimeError("no leader to remove the drill records")
            st, body = await self.call(leader, "tx", self.workload.clear, {"args": []}, timeout=10.0)
            if st == 200:
                return int(body.get("result") or 0)
            if time.monotonic() > deadline:
                raise RuntimeError(f"removing the drill records failed: HTTP {st} {body}")
            self.view.leader = None

    async def total(self, node: NodeRef, consistent: bool = False) -> int:
        st, body = await self.call(node, "query", self.workload.total, {"args": [], "consistent": consistent},
                                   timeout=10.0)
        if st != 200:
            raise RuntimeError(f"{node.name}: total query failed: HTTP {st} {body}")
        return int(body["result"])

    async def present(self, node: NodeRef) -> set[str]:
        """Every transfer id applied on ``node`` (a local read of that replica)."""
        st, body = await self.call(node, "query", self.workload.applied, {"args": []}, timeout=30.0)
        if st != 200:
            raise RuntimeError(f"{node.name}: transfer lookup failed: HTTP {st} {body}")
        return {str(r) for r in body["result"]}

    async def writer(self, stop: asyncio.Event, wid: int, rng: random.Random, max_ops: int) -> None:
        """Issue transfers until ``stop``; each one is retried (same id) until acknowledged."""
        for _ in range(max_ops):
            if stop.is_set():
                return
            self._seq += 1
            ref = f"{self.prefix}-{wid}-{self._seq}-{rng.getrandbits(32):08x}"
            a, b = rng.sample(range(ACCOUNTS), 2)
            body = {"args": [f"{self.prefix}-{a}", f"{self.prefix}-{b}", rng.randint(1, 5), ref]}
            while not await self._attempt(ref, body):
                if stop.is_set():
                    self.unknown.add(ref)   # never acknowledged: outcome unknown
                    return

    async def _attempt(self, ref: str, body: dict) -> bool:
        """One try of one transfer; True when finished (acknowledged or rejected by the bank)."""
        if self.via is not None:
            return await self._attempt_via(ref, body)
        gen = self.view.generation
        leader = self.view.leader
        if leader is None:
            await self.discover(gen, time.monotonic() + 30.0)
            return False
        t0 = time.monotonic()
        try:
            status, answer = await self.call(leader, "tx", self.workload.transfer, body)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            self.samples.append(Sample(t0, time.monotonic(), False, leader.id, ref, 0, type(exc).__name__))
            await self.discover(gen, time.monotonic() + 30.0)
            return False
        t1 = time.monotonic()
        if status == 200:
            self.acked[ref] = int(answer.get("index") or 0)
            self.unknown.discard(ref)
            self.samples.append(Sample(t0, t1, True, leader.id, ref, self.acked[ref]))
            return True
        kind = answer.get("type", "") if isinstance(answer, dict) else ""
        self.samples.append(Sample(t0, t1, False, leader.id, ref, 0, kind or f"HTTP {status}"))
        if status == 409 or 400 <= status < 500 and status != 408:
            return True  # the bank refused it (e.g. insufficient funds): final, nothing applied
        hint = answer.get("leader_api") if isinstance(answer, dict) else None
        hinted = next((n for n in self.view.nodes if hint and n.url.rstrip("/") == str(hint).rstrip("/")
                       and n.id != leader.id), None)
        if hinted is not None and self.view.generation == gen:
            # the node told us who leads now: try it at once, no poll round
            self.view.leader = hinted
            self.view.generation += 1
        else:
            await self.discover(gen, time.monotonic() + 30.0)
        return False

    async def _attempt_via(self, ref: str, body: dict) -> bool:
        """Through a load balancer: it finds the leader; we only retry, after a short pause."""
        assert self.via is not None
        t0 = time.monotonic()
        try:
            status, answer = await self.call(self.via, "tx", self.workload.transfer, body)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.samples.append(Sample(t0, time.monotonic(), False, 0, ref, 0, type(exc).__name__))
            await asyncio.sleep(self.poll_interval)
            return False
        t1 = time.monotonic()
        if status == 200 and isinstance(answer, dict):
            self.acked[ref] = int(answer.get("index") or 0)
            self.unknown.discard(ref)
            self.samples.append(Sample(t0, t1, True, 0, ref, self.acked[ref]))
            return True
        self.samples.append(Sample(t0, t1, False, 0, ref, 0, f"HTTP {status}"))
        if status == 409:
            return True
        await asyncio.sleep(self.poll_interval)
        return False
