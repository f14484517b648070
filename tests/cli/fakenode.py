"""In-process fake nodes speaking the admin API (docs/interfaces.md section 4).

Used for fast CLI tests of error paths (no quorum, last voter, non-member transfer ...) without
starting engines. The real API is exercised by the integration tests next to these.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeCluster:
    token: str
    ids: list[int]
    leader: int | None = 1
    term: int = 3
    commit: int = 42
    members: dict[int, str] = field(default_factory=dict)
    down: set[int] = field(default_factory=set)
    snapshots: list[tuple[int, int]] = field(default_factory=list)
    transfers: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    added: list[tuple[int, str, str]] = field(default_factory=list)
    backup_bytes: bytes = b"fake-store-snapshot"
    # per node: a halted replica's {index, reason}, a digest other than the common one, the lag
    # the leader reports for a follower
    halted: dict[int, dict] = field(default_factory=dict)
    digests: dict[int, str] = field(default_factory=dict)
    lags: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.members:
            self.members = {i: "voter" for i in self.ids}


class FakeNodes:
    """One aiohttp server per node id on its own loop thread."""

    def __init__(self, cluster: FakeCluster, ports: dict[int, int]):
        self.c = cluster
        self.ports = ports
        self.loop = asyncio.new_event_loop()
        self.runners: list[web.AppRunner] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def api(self, node_id: int) -> str:
        return f"http://127.0.0.1:{self.ports[node_id]}"

    def _app(self, node_id: int) -> web.Application:
        c = self.c

        def auth(request: web.Request) -> None:
            if request.headers.get("Authorization") != f"Bearer {c.token}":
                raise web.HTTPUnauthorized(text='{"error": "missing or wrong API token", '
                                                '"type": "Unauthorized"}', content_type="application/json")

        def not_leader() -> web.Response:
            return web.json_response({"error": "not the leader", "type": "NotLeader",
                                      "leader_id": c.leader or 0,
                                      "leader_api": self.api(c.leader) if c.leader else ""}, status=503)

        @web.middleware
        async def down(request: web.Request, handler: Any) -> web.StreamResponse:
            if node_id in c.down:
                # a dead node: drop the connection
                request.transport.close()  # type: ignore[union-attr]
                raise web.HTTPServiceUnavailable()
            return await handler(request)

        async def health(r: web.Request) -> web.Response:
            return web.json_response({"ok": True, "node_id": node_id, "name": f"n{node_id}"})

        async def status(r: web.Request) -> web.Response:
            auth(r)
            is_leader = c.leader == node_id
            return web.json_response({
                "node_id": node_id, "name": f"n{node_id}", "group": "fake",
                "role": "leader" if is_leader else "follower", "term": c.term,
                "leader_id": c.leader or 0, "leader_api": self.api(c.leader) if c.leader else "",
                "commit_index": c.commit, "applied_index": c.commit, "last_log_index": c.commit,
                "snapshot_index": 10, "digest": c.digests.get(node_id, "abc123"),
                "halted": c.halted.get(node_id),
                "configuration": [{"id": i, "address": f"127.0.0.1:{7000 + i}", "role": role}
                                  for i, role in c.members.items()],
                "followers": [{"id": i, "match_index": c.commit, "lag": c.lags.get(i, 0)}
                              for i in c.members if i != node_id] if is_leader else [],
                "pid": 1})

        async def leader(r: web.Request) -> web.Response:
            ok = c.leader == node_id
            return web.json_response({"leader": ok, "leader_id": c.leader or 0,
                                      "leader_api": self.api(c.leader) if c.leader else ""},
                                     status=200 if ok else 503)

        async def snapshot(r: web.Request) -> web.Response:
            auth(r)
            c.snapshots.append((node_id, c.commit))
            return web.json_response({"index": c.commit})

        async def backup(r: web.Request) -> web.Response:
            auth(r)
            if c.leader != node_id:
                return not_leader()
            return web.Response(body=c.backup_bytes, content_type="application/octet-stream", headers={
                "X-Bknr-Index": str(c.commit), "X-Bknr-Group": "fake",
                "X-Bknr-Sha256": hashlib.sha256(c.backup_bytes).hexdigest()})

        async def add_peer(r: web.Request) -> web.Response:
            auth(r)
            if c.leader != node_id:
                return not_leader()
            b = await r.json()
            c.added.append((b["id"], b["address"], b["role"]))
            c.members[int(b["id"])] = b["role"]
            return web.json_response({"ok": True})

        async def remove_peer(r: web.Request) -> web.Response:
            auth(r)
            if c.leader != node_id:
                return not_leader()
            i = int(r.match_info["id"])
            c.removed.append(i)
            c.members.pop(i, None)
            return web.json_response({"ok": True})

        async def role(r: web.Request) -> web.Response:
            auth(r)
            b = await r.json()
            c.members[int(r.match_info["id"])] = b["role"]
            return web.json_response({"ok": True})

        async def transfer(r: web.Request) -> web.Response:
            auth(r)
            if c.leader != node_id:
                return not_leader()
            to = int((await r.json()).get("to") or 0) or next(i for i in c.members if i != node_id)
            c.transfers.append(to)
            c.leader = to
            c.term += 1
            return web.json_response({"leader_id": to})

        app = web.Application(middlewares=[down])
        app.router.add_get("/health", health)
        app.router.add_get("/status", status)
        app.router.add_get("/leader", leader)
        app.router.add_post("/snapshot", snapshot)
        app.router.add_get("/backup", backup)
        app.router.add_post("/peers", add_peer)
        app.router.add_delete("/peers/{id}", remove_peer)
        app.router.add_post("/peers/{id}/role", role)
        app.router.add_post("/transfer", transfer)
        return app

    def __enter__(self) -> FakeNodes:
        self.thread.start()

        async def start() -> None:
            for i, port in self.ports.items():
                runner = web.AppRunner(self._app(i), access_log=None)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", port).start()
                self.runners.append(runner)
        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            for r in self.runners:
                await r.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
