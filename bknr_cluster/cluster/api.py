"""Admin/client HTTP API of a node (aiohttp), as specified in docs/interfaces.md §4 and docs/api.md.

Blocking work (waiting for a commit, computing a digest, writing a backup) runs in a thread pool so
the event loop keeps answering ``/health`` and ``/leader`` while a node is busy.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import ssl
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from bknr_cluster.cluster.store import ClusterStore
from bknr_cluster.errors import BknrError, NotLeader, TransactionFailed, Unauthorized, UsageError
from bknr_cluster.vocabulary import ROLE_CHOICES, ROLES, Role, error_body, error_status

log = logging.getLogger("bknr.api")

# No auth on these: load balancers and liveness probes have no token.
PUBLIC = {("GET", "/health"), ("GET", "/leader"), ("GET", "/replica"), ("GET", "/metrics"),
          ("HEAD", "/health"), ("HEAD", "/leader"), ("HEAD", "/replica")}
# /replica without ?lag=: a follower at most this many entries behind counts as caught up.
DEFAULT_REPLICA_LAG = 100


def _leads(st: dict) -> bool:
    """Whether an engine status is a leader's that accepts entries (not handing over)."""
    return st.get("state") == "leader" and not st.get("transferee")


class BadRequest(UsageError):
    """Malformed HTTP input (not JSON, wrong shape)."""


class RoleWatch:
    """Wakes the ``GET /leader?wait_ms=`` long polls of one event loop when the engine's role
    changes. A thread waits on the engine's role signal (posted by its loop thread after the
    iteration that changed the role; the wait releases the GIL) and sets the loop's current
    ``changed`` event. A handler takes ``changed`` *before* it reads the role, so a change
    after that read sets the event it waits on."""

    RECHECK_S = 0.05  # a waiting handler looks at its client and the role at least this often

    def __init__(self, engine: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop
        self.changed = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="bknr-role-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        signal = self.engine.role_signal()
        while not self.loop.is_closed():
            if signal.wait(0.5):
                try:
                    self.loop.call_soon_threadsafe(self._bump)
                except RuntimeError:  # the loop closed meanwhile
                    return

    def _bump(self) -> None:
        event, self.changed = self.changed, asyncio.Event()
        event.set()

    async def wait(self, changed: asyncio.Event, timeout: float) -> None:
        try:
            await asyncio.wait_for(changed.wait(), min(timeout, self.RECHECK_S))
        except TimeoutError:
            pass


def _json_error(exc: BaseException) -> web.Response:
    return web.json_response(error_body(exc), status=error_status(exc))


class Api:
    """Handlers bound to one ClusterStore."""

    def __init__(self, cs: ClusterStore, token: str | None, *, workers: int = 64,
                 tx_timeout: float = 30.0) -> None:
        self.cs = cs
        self.token = token
        self.tx_timeout = tx_timeout
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bknr-api")
        self.requests: Counter[tuple[str, int]] = Counter()
        from bknr_cluster.cluster.metrics import NodeMetrics

        self.node_metrics = NodeMetrics(cs, self.requests)
        from bknr_cluster.cluster.schedule import ScheduledTransfer

        self.scheduled = ScheduledTransfer(cs)
        self._role_watch: RoleWatch | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 << 20)
        r = app.router
        r.add_get("/health", self.health)
        r.add_get("/status", self.status)
        r.add_get("/leader", self.leader)
        r.add_get("/replica", self.replica)
        r.add_get("/metrics", self.metrics)
        r.add_get("/history", self.history)
        r.add_post("/tx/{name}", self.tx)
        r.add_post("/query/{name}", self.query)
        r.add_post("/snapshot", self.snapshot)
        r.add_post("/checkpoint", self.checkpoint)
        r.add_get("/backup", self.backup)
        r.add_post("/restore", self.restore)
        r.add_post("/peers", self.add_peer)
        r.add_delete("/peers/{id}", self.remove_peer)
        r.add_post("/peers/{id}/role", self.assign)
        r.add_post("/transfer", self.transfer)
        r.add_route("*", "/transfer/schedule", self.transfer_schedule)
        return app

    # --- plumbing -------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.match_info.route.resource
        label = route.canonical if route is not None else "unmatched"
        try:
            if (request.method, request.path) not in PUBLIC and self.token is not None:
                self._check_token(request)
            resp = await handler(request)
        except web.HTTPException as exc:
            resp = web.json_response({"error": exc.reason, "type": "HTTPError"}, status=exc.status)
        except BknrError as exc:
            resp = _json_error(exc)
        except Exception as exc:  # a handler bug: answer 500, keep the node up
            log.exception("%s %s failed", request.method, request.path)
            resp = web.json_response({"error": f"internal error: {exc!r}", "type": "InternalError"},
                                     status=500)
        self.requests[(label, resp.status)] += 1
        return resp

    def _check_token(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        # compare_digest on bytes: constant time in the length of the expected token.
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), (self.token or "").encode())
        if not ok:
            raise Unauthorized("missing or wrong API token" if header else "missing API token")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    @staticmethod
    async def _body(request: web.Request) -> dict:
        if not request.can_read_body:
            return {}
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        return body

    @staticmethod
    def _int(value: Any, what: str) -> int:
        try:
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise BadRequest(f"{what} must be an integer, got {value!r}") from None

    def _call_args(self, body: dict) -> tuple[list, dict]:
        from bknr_cluster.store import from_json

        args, kwargs = body.get("args", []), body.get("kwargs", {})
        if not isinstance(args, list):
            raise BadRequest("'args' must be a JSON array")
        if not isinstance(kwargs, dict):
            raise BadRequest("'kwargs' must be a JSON object")
        store = self.cs.store
        return ([from_json(a, store) for a in args], {k: from_json(v, store) for k, v in kwargs.items()})

    # --- read-only ------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        halted = self.cs.halted
        if halted is not None:  # serving, but its state lacks committed transactions
            return web.json_response(
                {"ok": False, "node_id": self.cs.node_id, "name": self.cs.name, "halted": halted,
                 "type": "ReplicaHalted",
                 "error": f"replica halted at entry {halted['index']}: {halted['reason']}"},
                status=503)
        return web.json_response({"ok": True, "node_id": self.cs.node_id, "name": self.cs.name,
                                  "halted": None})

    async def replica(self, request: web.Request) -> web.Response:
        """Patroni-style read check: 200 on a follower that hears from a leader and is at most
        ``?lag=N`` entries (default DEFAULT_REPLICA_LAG) behind what it knows is committed."""
        max_lag = self._int(request.query.get("lag", DEFAULT_REPLICA_LAG), "'lag'")
        st = await self._run(self.cs.engine.status)
        commit = int(st.get("commit_index") or 0)
        lag = max(0, commit - self.cs.applied_index)
        contact = int(st.get("leader_contact_ms") or 0)
        halted = self.cs.halted
        reasons = []
        if st.get("state") != "follower":
            reasons.append(f"role is {st.get('state')}")
        if not st.get("leader_id") or contact > self.cs.election_timeout_ms:
            reasons.append("no leader heard from within the election timeout")
        if lag > max_lag:
            reasons.append(f"{lag} entries behind (at most {max_lag})")
        if halted is not None:
            reasons.append("the store is halted")
        body = {"replica": not reasons, "node_id": self.cs.node_id, "lag": lag,
                "leader_id": int(st.get("leader_id") or 0), "reasons": reasons}
        return web.json_response(body, status=503 if reasons else 200)

    async def status(self, request: web.Request) -> web.Response:
        # ?digest=0 skips the digest: on a large store under load it costs a full state walk.
        with_digest = request.query.get("digest", "1").lower() not in ("0", "false", "no")
        return web.json_response(await self._run(self.cs.status, with_digest))

    async def leader(self, request: web.Request) -> web.Response:
        # ``?wait_ms=N`` (at most 2000): a client waiting for a failover to end holds the
        # request until this node leads, and hears it within ~2 ms instead of at its next poll.
        try:
            wait_ms = min(2000, max(0, int(request.query.get("wait_ms", 0))))
        except ValueError:
            raise BadRequest("wait_ms must be an integer") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        if getattr(self.cs.engine, "role", None) is not None:
            st = await self._await_role(request, loop, deadline if wait_ms else 0.0)
        else:  # an engine without role(): poll its status every millisecond
            st = await self._run(self.cs.engine.status)
            while not _leads(st) and loop.time() < deadline:
                if request.transport is None or request.transport.is_closing():
                    break  # the client went away (aiohttp does not cancel the handler)
                await asyncio.sleep(0.001)
                st = await self._run(self.cs.engine.status)
        leader_id = int(st.get("leader_id") or 0)
        # A halted leader, or one handing leadership over (libraft refuses its entries), is not
        # a write target: a client waiting here hears of the new leader from that node instead.
        body = {"leader": _leads(st) and self.cs.halted is None,
                "leader_id": leader_id, "leader_api": self.cs.api_url(leader_id),
                "node_id": self.cs.node_id}
        if self.cs.halted is not None:
            body["halted"] = True
        if st.get("transferee"):
            body["transferring_to"] = int(st["transferee"])
        return web.json_response(body, status=200 if body["leader"] else 503)

    async def _await_role(self, request: web.Request, loop: asyncio.AbstractEventLoop,
                          deadline: float) -> dict:
        """The engine's role (no thread hop, no loop round trip), waiting until this node leads
        or the loop clock passes ``deadline``: woken by the role watch at each change."""
        watch = None
        while True:
            changed = watch.changed if watch is not None else None
            state, leader_id, transferee, _ = self.cs.engine.role()
            st = {"state": state, "leader_id": leader_id, "transferee": transferee}
            left = deadline - loop.time()
            if _leads(st) or left <= 0:
                return st
            if request.transport is None or request.transport.is_closing():
                return st  # the client went away (aiohttp does not cancel the handler)
            if watch is None:
                watch = self._role_watch
                if watch is None or watch.loop is not loop:
                    watch = self._role_watch = RoleWatch(self.cs.engine, loop)
                continue  # take its event before reading the role again
            await watch.wait(changed, left)

    async def metrics(self, request: web.Request) -> web.Response:
        from bknr_cluster.cluster.metrics import CONTENT_TYPE

        body = await self._run(self.node_metrics.text)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def history(self, request: web.Request) -> web.Response:
        """Leader changes this node recorded (history.py); empty when it keeps none."""
        keeper = getattr(self.cs, "leader_history", None)
        records = await self._run(keeper.records) if keeper is not None else []
        return web.json_response({"node_id": self.cs.node_id, "changes": records})

    async def backup(self, request: web.Request) -> web.Response:
        st = await self._run(self.cs.engine.status)
        if st.get("state") != "leader":
            raise self.cs.map_error(NotLeader(int(st.get("leader_id") or 0),
                                               st.get("leader_address") or ""))
        index, data = await self._run(self.cs.backup)
        return web.Response(body=data, content_type="application/octet-stream", headers={
            "X-Bknr-Index": str(index), "X-Bknr-Sha256": hashlib.sha256(data).hexdigest(),
            "X-Bknr-Group": self.cs.group})

    async def restore(self, request: web.Request) -> web.Response:
        st = await self._run(self.cs.engine.status)
        if st.get("state") != "leader":
            raise self.cs.map_error(NotLeader(int(st.get("leader_id") or 0),
                                               st.get("leader_address") or ""))
        data = await request.read()
        if not data:
            raise BadRequest("the body must be a store snapshot (GET /backup of another cluster)")
        sha = request.headers.get("X-Bknr-Sha256")
        index = await self._run(self.cs.restore_backup, data, sha)
        return web.json_response({"index": index})

    # --- transactions and queries ---------------------------------------------------------

    async def tx(self, request: web.Request) -> web.Response:
        from bknr_cluster.store import to_json

        name = request.match_info["name"]
        body = await self._body(request)
        args, kwargs = self._call_args(body)
        forward = bool(body.get("forward", False))
        t0 = time.monotonic()
        result, index = await self.cs.execute_async(name, args, kwargs, forward=forward,
                                                    timeout=self.tx_timeout)
        self.node_metrics.tx_seconds.observe(time.monotonic() - t0)
        return web.json_response({"result": to_json(result), "index": index})

    async def query(self, request: web.Request) -> web.Response:
        from bknr_cluster.store import to_json

        name = request.match_info["name"]
        body = await self._body(request)
        args, kwargs = self._call_args(body)
        consistent = bool(body.get("consistent", False))

        def run() -> dict:
            try:
                result = self.cs.query(name, *args, consistent=consistent, **kwargs)
            except BknrError:
                raise
            except Exception as exc:  # the query's own exception, like a failing transaction
                raise TransactionFailed(type(exc).__name__, str(exc)) from exc
            return {"result": to_json(result), "applied_index": self.cs.applied_index}
        return web.json_response(await self._run(run))

    # --- admin ----------------------------------------------------------------------------

    async def snapshot(self, request: web.Request) -> web.Response:
        await self._body(request)
        return web.json_response({"index": await self._run(self.cs.snapshot_now)})

    async def checkpoint(self, request: web.Request) -> web.Response:
        """A consistency checkpoint now (leader only): every replica's digest at one index,
        compared by the majority rule. ``{"full": true}`` also walks each store in full."""
        body = await self._body(request)
        full = bool(body.get("full", False))
        wait = body.get("wait", 10)
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= 300:
            raise BadRequest("'wait' must be a number of seconds in [0, 300]")
        st = await self._run(self.cs.engine.status)
        if st.get("state") != "leader":
            raise self.cs.map_error(NotLeader(int(st.get("leader_id") or 0),
                                               st.get("leader_address") or ""))
        return web.json_response(await self._run(
            lambda: self.cs.checkpoint_now(full=full, wait_verdict=float(wait))))

    async def add_peer(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        node_id = self._int(body.get("id"), "'id'")
        address = body.get("address")
        role = body.get("role", Role.voter.value)
        if not isinstance(address, str) or ":" not in address:
            raise BadRequest("'address' must be 'host:port'")
        if role not in ROLES:
            raise BadRequest(f"'role' must be one of {ROLE_CHOICES}")
        await self._run(self.cs.add_peer, node_id, address, role)
        return web.json_response({"ok": True, "id": node_id, "role": role})

    async def remove_peer(self, request: web.Request) -> web.Response:
        node_id = self._int(request.match_info["id"], "node id")
        await self._run(self.cs.remove_peer, node_id)
        return web.json_response({"ok": True, "id": node_id})

    async def assign(self, request: web.Request) -> web.Response:
        node_id = self._int(request.match_info["id"], "node id")
        role = (await self._body(request)).get("role")
        if role not in ROLES:
            raise BadRequest(f"'role' must be one of {ROLE_CHOICES}")
        await self._run(self.cs.assign, node_id, role)
        return web.json_response({"ok": True, "id": node_id, "role": role})

    async def transfer(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        to = self._int(body.get("to", 0), "'to'")
        keeper = getattr(self.cs, "leader_history", None)
        if keeper is not None:  # the change this causes is recorded with its cause
            keeper.expect(str(body.get("cause") or f"transfer requested (to {to or 'best candidate'})"))
        return web.json_response({"leader_id": await self._run(self.cs.transfer, to)})

    async def transfer_schedule(self, request: web.Request) -> web.Response:
        """GET shows, POST ``{"to", "at"}`` (epoch seconds) sets, DELETE cancels (schedule.py)."""
        if request.method == "POST":
            body = await self._body(request)
            at = body.get("at")
            if not isinstance(at, int | float) or isinstance(at, bool):
                raise BadRequest("'at' must be a time in seconds since the epoch")
            return web.json_response({"scheduled": self.scheduled.set(
                self._int(body.get("to", 0), "'to'"), float(at))})
        if request.method == "DELETE":
            return web.json_response({"cancelled": self.scheduled.cancel()})
        if request.method == "GET":
            return web.json_response(self.scheduled.show())
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST", "DELETE"])


class ApiServer:
    """Runs the API on its own event loop thread (tests, embedding) or inside ``serve``."""

    def __init__(self, cs: ClusterStore, host: str, port: int, token: str | None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.api = Api(cs, token)
        self.host, self.port = host, port
        self.ssl_context = ssl_context  # HTTPS (tls_config.server_ssl_context) when set
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def start_async(self) -> None:
        self._runner = web.AppRunner(self.api.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True,
                           ssl_context=self.ssl_context)
        await site.start()
        log.info("API listening on %s://%s:%d", "https" if self.ssl_context else "http", self.host, self.port)

    async def stop_async(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.api.pool.shutdown(wait=False, cancel_futures=True)

    def start_in_thread(self) -> None:
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self.start_async())
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                errors.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="bknr-api-loop", daemon=True)
        self._thread.start()
        ready.wait()
        if errors:
            raise errors[0]

    def stop_thread(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop_async(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None
