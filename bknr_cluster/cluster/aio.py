"""``ClusterStore`` mixin: the asyncio callers (the HTTP API, hosted web applications).

``execute_async`` / ``barrier_async`` enqueue the record with its future on the waiter and the
loop's ``LoopDelivery`` as callback (wake.py: one loop wake-up per applier slice, one deadline
sweep per loop, no reference cycle per request). Only a forwarded call (blocking HTTP to the
leader) runs in a thread, from a pool of its own. See DESIGN.md, *Submit path*.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from bknr_cluster.cluster.wake import LoopDelivery, Waiter
from bknr_cluster.errors import Timeout, UsageError
from bknr_cluster.store.model import LOCAL

FORWARD_THREADS = 128


class AsyncCallerMixin:
    """asyncio entry points of ``ClusterStore`` (attributes come from the store itself)."""

    store: Any
    committer: Any
    _deliveries: Any
    _forwarders: Any

    if TYPE_CHECKING:  # defined by ClusterStore
        def _settle(self, w: Any, *, forward: bool, raise_tx: bool) -> Any: ...
        def _no_leader_pause(self) -> float: ...
        def _forwardable(self, err: Any) -> bool: ...
        def _forward(self, name: str, args: Any, kwargs: dict, exc: Any,
                     deadline: float) -> tuple[Any, int]: ...

    async def execute_async(self, tx: Any, args: tuple | list, kwargs: dict, *,
                            forward: bool = False, timeout: float = 30.0,
                            raise_tx: bool = False) -> tuple[Any, int]:
        """``execute_indexed`` for an asyncio caller (the HTTP API, hosted web applications).

        The applier resolves an asyncio future through the loop's ``LoopDelivery`` (one loop
        wake-up per applier slice), so a request costs no worker-thread hand-off; only
        forwarding (blocking HTTP) uses a thread.
        """
        if LOCAL.tx is not None:  # the applier would wait for itself
            raise UsageError("execute() inside a transaction: call the transaction function directly")
        record = self.store.encode_transaction(tx, *args, **kwargs)
        self.check_capable(tx)
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
            err = self._settle(w, forward=forward, raise_tx=raise_tx)
            if err is None:
                return w.result, w.index
            if self._forwardable(err):
                from bknr_cluster.cluster.store import tx_name  # the module that mixes us in

                return await loop.run_in_executor(
                    self._forward_pool(), self._forward, tx_name(tx), args, kwargs, err, deadline)
            pause = self._no_leader_pause()
            if deadline - time.monotonic() <= pause:
                raise err
            await asyncio.sleep(pause)

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

    def _forward_pool(self) -> Any:
        """Threads for forwarded asyncio calls (blocking HTTP to the leader). Its own pool: the
        loop's default executor has cpu+4 threads, and after a failover every request a
        hosted application receives on a follower is forwarded at once."""
        if self._forwarders is None:
            self._forwarders = ThreadPoolExecutor(max_workers=FORWARD_THREADS,
                                                  thread_name_prefix="bknr-forward")
        return self._forwarders

