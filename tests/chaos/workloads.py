"""Client workloads that record histories: register (read / write / cas), bank transfers, and
appends.  Each client is a thread with its own ops, bounded both in count and in time.

Clients never retry an operation: a retry of something with unknown outcome could apply it
twice, and the checkers would then (rightly) complain.  After a failure the next operation goes
to the hinted leader, or to another node.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from dataclasses import dataclass

from tests.chaos.client import Outcome, call
from tests.chaos.history import FAIL, OK, UNKNOWN, History
from tests.support import wait_until


class Router:
    """Where the next request goes: the last known leader, else the next node round-robin."""

    def __init__(self, urls: list[str], rng: random.Random) -> None:
        self.urls = list(urls)
        self.rng = rng
        self.current = rng.choice(self.urls)
        self._lock = threading.Lock()

    def target(self) -> str:
        with self._lock:
            return self.current

    def feedback(self, url: str, out: Outcome) -> None:
        with self._lock:
            if out.status == OK:
                return
            if out.leader_api and out.leader_api in self.urls and out.leader_api != url:
                self.current = out.leader_api
            elif self.current == url:
                self.current = self.rng.choice([u for u in self.urls if u != url] or self.urls)


@dataclass
class Limits:
    max_ops: int = 1_000_000      # per client
    seconds: float = 60.0         # wall time for the whole workload
    op_timeout: float = 3.0       # client side; the server may still commit later -> unknown
    pace: float = 0.002           # pause between a client's ops: leaves CPU for the nodes


class Workload:
    """Base: ``clients`` threads each running ``op(client, rng)`` until stopped or out of budget."""

    name = "workload"

    def __init__(self, urls: list[str], token: str | None, history: History, *, clients: int = 3,
                 limits: Limits | None = None, seed: int = 0) -> None:
        self.urls = urls
        self.token = token
        self.history = history
        self.clients = clients
        self.limits = limits or Limits()
        self.seed = seed
        self.router = Router(urls, random.Random(seed))
        self.stop_event = threading.Event()
        # pause()/resume(): clients wait at the gate between operations (divergence checks
        # compare digests with no load running); ``_busy`` counts operations in flight.
        self._gate = threading.Event()
        self._gate.set()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def setup(self) -> None:
        """Create initial state (before any fault)."""

    def op(self, client: int, rng: random.Random) -> None:
        raise NotImplementedError

    def request(self, path: str, body: dict) -> tuple[str, Outcome]:
        url = self.router.target()
        out = call(url, path, body, self.token, self.limits.op_timeout)
        self.router.feedback(url, out)
        return url, out

    def _client(self, client: int) -> None:
        rng = random.Random(self.seed * 1000 + client)
        deadline = time.monotonic() + self.limits.seconds
        try:
            for _ in range(self.limits.max_ops):
                if self.stop_event.is_set() or time.monotonic() >= deadline:
                    return
                if not self._enter():
                    continue
                try:
                    self.op(client, rng)
                finally:
                    with self._busy_lock:
                        self._busy -= 1
                self.stop_event.wait(self.limits.pace)
        except Exception as exc:  # a workload bug must surface in the report, not vanish
            self.errors.append(f"client {client}: {exc!r}")
            raise

    def start(self) -> None:
        for c in range(self.clients):
            t = threading.Thread(target=self._client, args=(c,), name=f"{self.name}-{c}", daemon=True)
            t.start()
            self.threads.append(t)

    def _enter(self) -> bool:
        """Count an operation in flight, unless paused (then wait a moment and say no).
        Counting before looking at the gate closes the race with pause()."""
        with self._busy_lock:
            self._busy += 1
        if self._gate.is_set():
            return True
        with self._busy_lock:
            self._busy -= 1
        self._gate.wait(0.1)
        return False

    def pause(self, timeout: float = 30.0) -> None:
        """Hold every client at the gate and wait until no operation is in flight."""
        self._gate.clear()
        wait_until(lambda: self._busy == 0, timeout, f"{self.name} clients to go idle")

    def resume(self) -> None:
        self._gate.set()

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout)

    def record(self, client: int, f: str, key: object, value: object, invoke: float,
               out: Outcome, result: object = None, url: str = "") -> None:
        if out.status == FAIL:
            self.stop_event.wait(0.05)     # do not spin on a node that is electing or down
        self.history.record(client, f, key, value, invoke, out.status,
                            result=result if out.status == OK else None, error=out.error, node=url)


class RegisterWorkload(Workload):
    """Reads (consistent), writes and CAS on a few keys; keys are replaced by fresh ones every
    ``ops_per_key`` operations so each key's history stays small enough for an exhaustive
    linearizability search even with many unknown outcomes."""

    name = "register"

    def __init__(self, *a, keys: int = 3, ops_per_key: int = 120, values: int = 5, **kw) -> None:
        super().__init__(*a, **kw)
        self.keys = keys
        self.ops_per_key = ops_per_key
        self.values = values
        self._counter = itertools.count()

    def op(self, client: int, rng: random.Random) -> None:
        n = next(self._counter)
        key = f"r{n // (self.ops_per_key * self.keys)}-{rng.randrange(self.keys)}"
        choice = rng.random()
        inv = self.history.now()
        if choice < 0.5:
            url, out = self.request("/query/read", {"args": [key], "consistent": True})
            self.record(client, "read", key, None, inv, out, out.result, url)
        elif choice < 0.75:
            v = rng.randrange(self.values)
            url, out = self.request("/tx/write", {"args": [key, v]})
            self.record(client, "write", key, v, inv, out, None, url)
        else:
            e, v = rng.randrange(self.values), rng.randrange(self.values)
            # the first CAS on a fresh key may expect "absent" (None)
            if rng.random() < 0.1:
                e = None
            url, out = self.request("/tx/cas", {"args": [key, e, v]})
            self.record(client, "cas", key, (e, v), inv, out, out.result, url)


class BankWorkload(Workload):
    """Transfers between a few accounts, and consistent whole-bank reads."""

    name = "bank"

    def __init__(self, *a, accounts: int = 5, balance: int = 100, **kw) -> None:
        super().__init__(*a, **kw)
        self.initial = {f"acct{i}": balance for i in range(accounts)}
        self._seq = itertools.count()

    def setup(self) -> None:
        deadline = time.monotonic() + 30
        for name, bal in self.initial.items():
            while True:
                _, out = self.request("/tx/open_account", {"args": [name, bal]})
                # TransactionFailed here is "exists": an earlier unknown attempt did apply
                if out.status == OK or out.error == "TransactionFailed":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cannot open {name}: {out.error} {out.body}")
                self.stop_event.wait(0.1)

    def op(self, client: int, rng: random.Random) -> None:
        inv = self.history.now()
        if rng.random() < 0.2:
            url, out = self.request("/query/balances", {"consistent": True})
            self.record(client, "read", None, None, inv, out, out.result, url)
            return
        frm, to = rng.sample(sorted(self.initial), 2)
        tid = f"t{self.seed}-{client}-{next(self._seq)}"
        value = {"id": tid, "from": frm, "to": to, "amount": rng.randint(1, 30)}
        url, out = self.request("/tx/transfer", {"args": [tid, frm, to, value["amount"]]})
        self.record(client, "transfer", None, value, inv, out, None, url)


class AppendWorkload(Workload):
    """Appends of unique values to a few lists, and consistent reads of whole lists.  Fresh
    lists replace the old ones every ``per_list`` appends each, so a consistent read (which
    ships the whole list) stays cheap however long the run."""

    name = "append"

    def __init__(self, *a, lists: int = 3, per_list: int = 2000, **kw) -> None:
        super().__init__(*a, **kw)
        self.n_lists = lists
        self.per_list = per_list
        self._values = itertools.count(1)
        self._ops = itertools.count()

    def op(self, client: int, rng: random.Random) -> None:
        gen = next(self._ops) // (self.per_list * self.n_lists)
        key = f"L{gen}-{rng.randrange(self.n_lists)}"
        inv = self.history.now()
        if rng.random() < 0.1:
            url, out = self.request("/query/list", {"args": [key], "consistent": True})
            self.record(client, "read", key, None, inv, out, out.result, url)
            return
        v = next(self._values)
        url, out = self.request("/tx/append", {"args": [key, v]})
        self.record(client, "append", key, v, inv, out, None, url)


def summarize(history: History) -> dict[str, int]:
    c = history.counts()
    return {"acked": c[OK], "failed": c[FAIL], "unknown": c[UNKNOWN]}
