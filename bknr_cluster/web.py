"""What a hosted web application's request handlers use to reach the node's replicated store.

``bknr-node`` serves the application named by the YAML's ``app`` section (apphost.py) and hands
it one :class:`WebStore`, reachable three ways (docs/web.md):

- ``bknr_cluster.web.store(request)`` in a handler (Starlette/FastAPI ``Request``, or a raw ASGI
  scope): the node puts it into every request's scope under ``"bknr"``;
- the ASGI lifespan state: ``state["bknr"]`` (Starlette: ``request.state.bknr``);
- ``bknr_cluster.web.store()`` without a request: the process's hosted store (WSGI handlers,
  which run in the node's WSGI thread pool and have no ASGI scope).

Writes: ``await ws.execute(tx, *args)`` returns after the transaction was committed by a
majority and applied on this node, without blocking the event loop (the applier completes an
asyncio future). In a WSGI handler (a worker thread) use ``ws.execute_blocking``. Reads are local
(``with ws.read(): ...``, ``ws.query(name)``): no network, possibly stale on a follower;
``await ws.sync()`` (or ``query(..., consistent=True)``) first makes them linearizable.

A follower decides per request what to do with a write (``WebStore.role``): forward it
(``execute(..., forward=True)``: the transaction travels to the leader's admin API), or answer
``leader_response(request)``: a 307 redirect to the leader's application URL, or a 503 carrying
it (``redirect=False``) for clients that should go through the load balancer again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bknr_cluster.errors import NotLeader, UsageError

SCOPE_KEY = "bknr"

_hosted: WebStore | None = None


class WebStore:
    """The hosted application's handle on its node's ``ClusterStore`` (see the module doc)."""

    def __init__(self, cs: Any, app_url: Callable[[int], str], *, node_app_url: str = "",
                 timeout: float = 30.0) -> None:
        self.cs = cs
        self._app_url = app_url          # node id -> that node's application URL
        self.node_app_url = node_app_url
        self.timeout = timeout

    # --- who am I ---------------------------------------------------------------------------

    @property
    def node_id(self) -> int:
        return self.cs.node_id

    @property
    def node_name(self) -> str:
        return self.cs.name

    @property
    def role(self) -> str:
        """The engine's role right now: leader, follower, candidate or unavailable."""
        return str(self.cs.engine.status().get("state", "unavailable"))

    @property
    def is_leader(self) -> bool:
        return self.cs.is_leader()

    @property
    def leader_id(self) -> int:
        return int(self.cs.engine.status().get("leader_id") or 0)

    @property
    def leader_app_url(self) -> str:
        """The leader's application URL ("" while no leader is known)."""
        return self._app_url(self.leader_id)

    # --- writes -----------------------------------------------------------------------------

    async def execute(self, tx: Any, *args: Any, forward: bool = False, timeout: float | None = None,
                      **kwargs: Any) -> Any:
        """Run ``tx`` on every replica; returns its result here after commit + local apply.

        The transaction's own exception is raised unchanged (``TransactionFailed`` when it ran
        on the leader through ``forward=True``). On a follower without ``forward`` this raises
        ``NotLeader``; ``LeadershipLost`` / ``Timeout`` mean the outcome is unknown.
        """
        result, _ = await self.execute_indexed(tx, *args, forward=forward, timeout=timeout, **kwargs)
        return result

    async def execute_indexed(self, tx: Any, *args: Any, forward: bool = False,
                              timeout: float | None = None, **kwargs: Any) -> tuple[Any, int]:
        """``execute`` returning ``(result, log index)``."""
        return await self.cs.execute_async(tx, args, kwargs, forward=forward,
                                           timeout=timeout or self.timeout, raise_tx=True)

    def execute_blocking(self, tx: Any, *args: Any, forward: bool = False,
                         timeout: float | None = None, **kwargs: Any) -> Any:
        """``execute`` for a WSGI handler (it runs in a worker thread, never on the loop)."""
        return self.cs.execute(tx, *args, forward=forward, timeout=timeout or self.timeout, **kwargs)

    # --- reads ------------------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Any]:
        """``with ws.read() as store:`` a consistent local view (no network; may be stale on
        a follower). ``await ws.sync()`` first for a linearizable read."""
        with self.cs.store.reading():
            yield self.cs.store

    async def sync(self, timeout: float | None = None) -> int:
        """Linearizable read point: afterwards a local read sees everything committed before
        the call. Leader only (``NotLeader`` on a follower)."""
        return await self.cs.barrier_async(timeout or self.timeout)

    async def query(self, name: str, *args: Any, consistent: bool = False, **kwargs: Any) -> Any:
        """A registered query on this replica (``consistent=True``: after ``sync``)."""
        if consistent:
            await self.sync()
        return self.cs.store.run_query(name, *args, **kwargs)

    def not_leader(self) -> NotLeader:
        """The ``NotLeader`` error for this moment, with the leader's application URL."""
        exc = NotLeader(self.leader_id, "", leader_api=self.leader_app_url)
        return exc


def store(request: Any = None) -> WebStore:
    """The :class:`WebStore` of this request (any object with an ASGI ``scope``, or the scope
    itself); without a request, the process's hosted store."""
    if request is None:
        if _hosted is None:
            raise UsageError("no hosted application store: this process is not a bknr-node "
                             "serving an 'app' (or set one with bknr_cluster.web.host())")
        return _hosted
    scope = request if isinstance(request, dict) else getattr(request, "scope", None)
    ws = (scope or {}).get(SCOPE_KEY) or ((scope or {}).get("state") or {}).get(SCOPE_KEY)
    if ws is None:
        return store(None)
    return ws


def host(ws: WebStore | None) -> None:
    """Make ``ws`` the process's hosted store (bknr-node does this; tests and embedders may)."""
    global _hosted
    _hosted = ws


class HostedApp:
    """ASGI wrapper that hands the application its :class:`WebStore` (scope and lifespan state)."""

    def __init__(self, app: Any, ws: WebStore) -> None:
        self.app = app
        self.ws = ws

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        scope[SCOPE_KEY] = self.ws
        if scope["type"] == "lifespan" and isinstance(scope.get("state"), dict):
            scope["state"][SCOPE_KEY] = self.ws
        await self.app(scope, receive, send)


def leader_response(request: Any, *, redirect: bool = True) -> Any:
    """A follower's answer to a write it does not forward (a Starlette ``Response``).

    ``redirect=True``: 307 to the same path on the leader's application (the method and body are
    kept). ``redirect=False`` (or no leader known): 503 with ``{"error", "leader_app"}`` and
    ``Retry-After: 1``, for clients that retry through the load balancer.
    """
    from starlette.responses import JSONResponse, RedirectResponse

    ws = store(request)
    leader = ws.leader_app_url
    if redirect and leader and ws.leader_id != ws.node_id:
        url = leader + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(url, status_code=307)
    return JSONResponse({"error": "this node is not the leader", "type": "NotLeader",
                         "leader_app": leader, "node": ws.node_name},
                        status_code=503, headers={"Retry-After": "1"})
