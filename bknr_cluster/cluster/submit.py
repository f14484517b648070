"""The submit path of a ClusterStore: the gate, the group committer, and ONE retry/forward policy.

``Submitter.execute_indexed`` (thread callers) and ``Submitter.execute_async`` (asyncio callers:
the HTTP API, hosted web applications) differ only in how they wait for the applier's outcome;
what they do with it is ``Submitter.next_step`` (the policy, DESIGN.md *Submit path*):

- success: return ``(result, index)``;
- the transaction's own exception: raise it (or ``TransactionFailed`` for the HTTP API);
- ``NotLeader`` naming another node's API, with ``forward``: forward the call to that node;
- ``NotLeader`` otherwise (election, hand-over: nothing was logged): wait a little, try again
  until the deadline, then raise it;
- anything else: raise it.

The asyncio path enqueues the record with its future on the waiter and the loop's
``LoopDelivery`` as callback (wake.py: one loop wake-up per applier slice, one deadline sweep per
loop, no reference cycle per request). Only a forwarded call (blocking HTTP to the leader) runs
in a thread, from a pool of its own.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bknr_cluster.cluster.client import ApiClient
from bknr_cluster.cluster.directory import NodeDirectory
from bknr_cluster.cluster.wake import LoopDelivery, Waiter
from bknr_cluster.errors import (
    NoLeader,
    NotLeader,
    ReplicaHalted,
    Timeout,
    TransactionFailed,
    UnknownTransaction,
    UsageError,
)
from bknr_cluster.store.model import LOCAL

FORWARD_THREADS = 128

# next_step's verdicts
DONE, FORWARD, RETRY = "done", "forward", "retry"


def tx_name(tx: Any) -> str:
    """The registered name of a transaction (function object or name)."""
    if isinstance(tx, str):
        return tx
    for attr in ("tx_name", "name", "__bknr_name__"):
        v = getattr(tx, attr, None)
        if isinstance(v, str):
            return v
    raise UnknownTransaction(f"{tx!r} is not a registered transaction")


def engine_error_mapper(directory: NodeDirectory) -> Callable[[BaseException], BaseException]:
    """Engine errors as callers see them: NotLeader carries the leader's API address."""

    def map_error(exc: BaseException) -> BaseException:
        if isinstance(exc, NotLeader):
            if not exc.leader_id:
                return NoLeader(0, "", message="not the leader and no leader is known")
            return NotLeader(exc.leader_id, exc.leader_address,
                             leader_api=directory.api_url(exc.leader_id))
        return exc

    return map_error


class ApiClients:
    """One keep-alive ``ApiClient`` per node URL (forwarding, the monitor's status calls)."""

    def __init__(self, token: str | None, ssl_context: Any = None) -> None:
        self._token = token
        self._ssl = ssl_context
        self._clients: dict[str, ApiClient] = {}

    def get(self, url: str) -> ApiClient:
        c = self._clients.get(url)
        if c is None:
            c = self._clients[url] = ApiClient(url, self._token, ssl_context=self._ssl)
        return c

    def close(self) -> None:
        for c in self._clients.values():
            c.close()


class Submitter:
    """Replicates this node's callers' transactions; see the module docstring.

    Collaborators: the local ``store`` (encoding, the definition), the ``committer``
    (commit.py), ``halt_state`` (anything with ``.halted``: the applier), ``capabilities``
    (definition.py: the members' definitions), ``directory`` (names, API URLs), ``clients``
    (forwarding). ``election_timeout_ms`` paces the retries while no leader is known.
    """

    def __init__(self, node_id: int, store: Any, committer: Any, halt_state: Any,
                 capabilities: Any, directory: NodeDirectory, clients: ApiClients,
                 election_timeout_ms: int) -> None:
        self.node_id = node_id
        self.store = store
        self.committer = committer
        self._halt_state = halt_state
        self.capabilities = capabilities
        self._directory = directory
        self.map_error = engine_error_mapper(directory)
        self.clients = clients
        # a tenth of the election timeout (at most 50 ms): a write lands soon after the election
        self.no_leader_pause = min(0.05, election_timeout_ms / 10000)
        # While this node hands leadership over (libraft refuses entries naming us) the new
        # leader is known a millisecond or so after its election: retry often until then, for
        # at most an election timeout after the last refusal naming us (a transfer that does
        # not complete in that time is aborted by libraft).
        self.handover_pause = min(self.no_leader_pause, 0.001)
        self._handover_window = election_timeout_ms / 1000
        self._handover_until = 0.0
        self._forwarders: ThreadPoolExecutor | None = None
        self._deliveries: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def close(self) -> None:
        self.clients.close()
        if self._forwarders is not None:
            self._forwarders.shutdown(wait=False, cancel_futures=True)
            self._forwarders = None

    # --- the gate -------------------------------------------------------------------------

    def refuse_halted(self) -> None:
        h = self._halt_state.halted
        if h is not None:
            raise ReplicaHalted(f"this replica halted at entry {h['index']} ({h['reason']}); "
                                "nothing was logged: send writes to another node")

    def check_capable(self, tx: Any) -> None:
        """The gate in front of the log: refuse (``NotCapable``, nothing logged) a transaction
        some current voter's store definition does not know, and any write on a halted
        replica. One frozenset lookup on the common path (definition.py)."""
        if self._halt_state.halted is not None:
            self.refuse_halted()
        try:
            name = self.store.definition._tx_any[tx].name
        except (KeyError, TypeError):
            name = self.store.definition.transaction(tx).name
        caps = self.capabilities
        if not caps.capable(name):
            raise caps.refusal(name, self._node_name)

    def _node_name(self, node_id: int) -> str:
        return self._directory.node_name(node_id) or (f"n{node_id}" if node_id else "")

    def _encode(self, tx: Any, args: tuple | list, kwargs: dict) -> bytes:
        if LOCAL.tx is not None:  # the applier would wait for itself
            raise UsageError("execute() inside a transaction: call the transaction function directly")
        record = self.store.encode_transaction(tx, *args, **kwargs)
        self.check_capable(tx)
        return record

    # --- the policy -----------------------------------------------------------------------

    def next_step(self, w: Waiter, *, forward: bool, raise_tx: bool,
                  deadline: float) -> tuple[str, Any]:
        """What to do with a resolved waiter: ``(DONE, None)``, ``(FORWARD, NotLeader)`` or
        ``(RETRY, pause in seconds)``; raises the error the caller gets otherwise."""
        err = w.error
        if err is None:
            return DONE, None
        if w.tx_error:
            if raise_tx:
                raise err
            raise TransactionFailed(type(err).__name__, str(err)) from err
        if not (forward and isinstance(err, NotLeader)):
            raise err
        # A leader handing over leadership refuses writes naming *itself* (libraft refuses
        # entries during a transfer): forwarding to our own API would only bounce.
        if err.leader_api and err.leader_id != self.node_id:
            return FORWARD, err
        # Election or hand-over in progress: NotLeader means nothing was logged, so waiting
        # is safe.
        now = time.monotonic()
        if err.leader_id == self.node_id:
            self._handover_until = now + self._handover_window
        pause = self.handover_pause if now < self._handover_until else self.no_leader_pause
        if deadline - now <= pause:
            raise err
        return RETRY, pause

    def forward(self, name: str, args: Any, kwargs: dict, exc: NotLeader,
                deadline: float) -> tuple[Any, int]:
        """Run the transaction through the API of the leader ``exc`` names (blocking HTTP)."""
        from bknr_cluster.store import from_json, to_json

        body = {"args": [to_json(a) for a in args],
                "kwargs": {k: to_json(v) for k, v in kwargs.items()}, "forward": True}
        remaining = max(0.1, deadline - time.monotonic())
        answer = self.clients.get(exc.leader_api).call("POST", f"/tx/{name}", body,
                                                       timeout=remaining)
        return from_json(answer.get("result"), self.store), int(answer.get("index", 0))

    # --- thread callers -------------------------------------------------------------------

    def submit_record(self, record: bytes, timeout: float = 30.0) -> Waiter:
        """Replicate one encoded record; the returned waiter is resolved (or Timeout raised)."""
        if self._halt_state.halted is not None:
            self.refuse_halted()
        w = self.committer.enqueue(record)
        if not self.committer.wait(w, timeout):
            raise Timeout(f"no outcome within {timeout} s; the transaction may or may not commit")
        return w

    def execute_indexed(self, tx: Any, args: tuple | list, kwargs: dict, *, forward: bool = False,
                        timeout: float = 30.0, raise_tx: bool = True) -> tuple[Any, int]:
        """Run ``tx`` on every replica after commit: ``(result, log index)``; with
        ``raise_tx=False`` a failing transaction raises ``TransactionFailed``."""
        record = self._encode(tx, args, kwargs)
        deadline = time.monotonic() + timeout
        left = timeout
        while True:
            w = self.submit_record(record, left)
            if w.error is None:  # the common case, before the full policy
                return w.result, w.index
            step, arg = self.next_step(w, forward=forward, raise_tx=raise_tx, deadline=deadline)
            if step is DONE:
                return w.result, w.index
            if step is FORWARD:
                return self.forward(tx_name(tx), args, kwargs, arg, deadline)
            threading.Event().wait(arg)
            left = max(0.0, deadline - time.monotonic())

    def barrier(self, timeout: float = 10.0) -> int:
        """Linearizable read point: returns once everything committed before now is applied
        here. Raises NotLeader on a follower. (An empty record rides the group commit; see
        DESIGN.md for why a libraft barrier alone cannot tell the applier where it stands.)"""
        w = self.submit_record(b"", timeout)
        if w.error is not None:
            raise w.error
        return w.index

    def submit_own(self, engine: Any, encode: Callable[[int], bytes], what: str,
                   timeout: float) -> int:
        """Log an entry of this node's own (``encode(seq)``: restore, checkpoint) and wait until
        it is applied here; returns its index. Failures as for a transaction (DESIGN.md)."""
        committer = self.committer
        w = committer.register()
        entry = encode(w.seq)
        try:
            engine.submit(entry).result(timeout)
        except Exception as exc:
            committer.abandon(w)
            raise self.map_error(exc) from None
        if not committer.wait(w, timeout):
            raise Timeout(f"{what} entry not applied within {timeout} s")
        if w.error is not None:
            raise w.error
        return w.index

    # --- asyncio callers ------------------------------------------------------------------

    async def execute_async(self, tx: Any, args: tuple | list, kwargs: dict, *,
                            forward: bool = False, timeout: float = 30.0,
                            raise_tx: bool = False) -> tuple[Any, int]:
        """``execute_indexed`` for an asyncio caller: the applier resolves an asyncio future
        through the loop's ``LoopDelivery``, so a request costs no worker-thread hand-off."""
        record = self._encode(tx, args, kwargs)
        loop = asyncio.get_running_loop()
        delivery = self._deliveries.get(loop) or self._loop_delivery(loop)
        deadline = time.monotonic() + timeout
        while True:
            # Enqueue and await inline (no helper coroutine): one object less per request.
            fut = loop.create_future()
            w = self.committer.enqueue(record, delivery.callback, fut)
            delivery.watch(w, loop.time() + max(0.0, deadline - time.monotonic()))
            if await fut is None:
                await self._timed_out(w, timeout)
            step, arg = self.next_step(w, forward=forward, raise_tx=raise_tx, deadline=deadline)
            if step is DONE:
                return w.result, w.index
            if step is FORWARD:
                return await loop.run_in_executor(
                    self._forward_pool(), self.forward, tx_name(tx), args, kwargs, arg, deadline)
            await asyncio.sleep(arg)

    async def barrier_async(self, timeout: float = 10.0) -> int:
        """``barrier`` for an asyncio caller: a linearizable read point (NotLeader on a follower)."""
        loop = asyncio.get_running_loop()
        delivery = self._deliveries.get(loop) or self._loop_delivery(loop)
        fut = loop.create_future()
        w = self.committer.enqueue(b"", delivery.callback, fut)
        delivery.watch(w, loop.time() + timeout)
        if await fut is None:
            await self._timed_out(w, timeout)
        if w.error is not None:
            raise w.error
        return w.index

    def _loop_delivery(self, loop: Any) -> LoopDelivery:
        delivery = self._deliveries[loop] = LoopDelivery(loop, self.committer.defer_delivery)
        return delivery

    async def _timed_out(self, w: Waiter, timeout: float) -> None:
        """The deadline passed: withdraw the waiter (outcome unknown), unless the applier
        resolved it just now, in which case its wake-up is about to arrive."""
        if self.committer.abandon(w):
            raise Timeout(f"no outcome within {timeout} s; the transaction may or may not commit")
        await asyncio.get_running_loop().run_in_executor(None, w.wait, 5.0)

    def _forward_pool(self) -> ThreadPoolExecutor:
        """Threads for forwarded asyncio calls (blocking HTTP to the leader). Its own pool: the
        loop's default executor has cpu+4 threads, and after a failover every request a
        hosted application receives on a follower is forwarded at once."""
        if self._forwarders is None:
            self._forwarders = ThreadPoolExecutor(max_workers=FORWARD_THREADS,
                                                  thread_name_prefix="bknr-forward")
        return self._forwarders
