"""Patroni-style health endpoints of the admin API: /replica (with ?lag=N), /health, /leader,
against a stand-in store whose engine state each case sets."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bknr_cluster.cluster.api import DEFAULT_REPLICA_LAG, Api


def _store(state: str = "follower", commit: int = 50, applied: int = 50, leader_id: int = 1,
           contact_ms: int = 10, halted: dict | None = None) -> SimpleNamespace:
    st = {"state": state, "commit_index": commit, "leader_id": leader_id,
          "leader_contact_ms": contact_ms}
    return SimpleNamespace(node_id=2, name="n2", group="g", applied_index=applied,
                           election_timeout_ms=200, halted=halted,
                           engine=SimpleNamespace(status=lambda: dict(st)), api_url=lambda i: "")


def _get(cs: SimpleNamespace, path: str) -> tuple[int, dict]:
    async def go() -> tuple[int, dict]:
        api = Api(cs, token="secret")  # type: ignore[arg-type]
        async with TestClient(TestServer(api.app())) as client:
            r = await client.get(path)     # no token: load balancers have none
            body = await r.json()
        api.pool.shutdown(wait=False)
        return r.status, body
    return asyncio.run(go())


@pytest.mark.parametrize(("cs", "path", "status", "reason"), [
    (_store(), "/replica", 200, None),
    (_store(applied=50 - DEFAULT_REPLICA_LAG), "/replica", 200, None),
    (_store(applied=49 - DEFAULT_REPLICA_LAG), "/replica", 503, "entries behind"),
    (_store(applied=40), "/replica?lag=10", 200, None),
    (_store(applied=39), "/replica?lag=10", 503, "11 entries behind (at most 10)"),
    (_store(state="leader"), "/replica", 503, "role is leader"),
    (_store(state="candidate", leader_id=0), "/replica", 503, "role is candidate"),
    (_store(contact_ms=500), "/replica", 503, "no leader heard from"),
    (_store(leader_id=0), "/replica", 503, "no leader heard from"),
    (_store(halted={"index": 7, "reason": "boom"}), "/replica", 503, "halted"),
])
def test_replica_endpoint(cs, path, status, reason) -> None:
    got, body = _get(cs, path)
    assert got == status, body
    assert body["replica"] is (status == 200)
    assert (reason is None and body["reasons"] == []) or any(reason in r for r in body["reasons"])


def test_replica_rejects_a_bad_lag() -> None:
    assert _get(_store(), "/replica?lag=many")[0] == 400


def test_health_and_leader() -> None:
    assert _get(_store(), "/health") == (200, {"ok": True, "node_id": 2, "name": "n2", "halted": None})
    status, body = _get(_store(halted={"index": 7, "reason": "boom"}), "/health")
    assert status == 503 and body["ok"] is False and body["halted"]["index"] == 7
    assert _get(_store(state="leader", leader_id=2), "/leader")[0] == 200
    assert _get(_store(), "/leader")[0] == 503
