"""HTTP fuzz target: a real aiohttp API server (``bknr_cluster.cluster.api``) over a ClusterStore
whose engine is the in-process fake, so each request costs about a millisecond.

Property checked per request: the node never answers 500 (a handler crashing on input), every
error is the JSON error body of docs/interfaces.md §4, a request with a wrong token gets 401, and a
request that did not succeed changed nothing (same digest and applied index).
"""

from __future__ import annotations

import http.client
import json
import tempfile
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bknr_cluster.cluster.api import ApiServer
from bknr_cluster.cluster.settings import ClusterSettings
from bknr_cluster.cluster.store import ClusterStore
from bknr_cluster.errors import MembershipError
from examples.bank.app import definition as bank
from tests.cluster.fake_engine import FakeEngine, FakeFuture
from tests.support import free_ports

TOKEN = "fuzz-token-0123456789abcdef"

_json_scalars = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
                 | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_tx_names = st.sampled_from(["open_account", "deposit", "transfer", "nope", "total_balance",
                             "..%2F..", "%00", "a" * 300]) | st.text(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="/?#%"), min_size=1, max_size=12)
_q_names = st.sampled_from(["account", "accounts", "total_balance", "count", "has_transfer", "nope"])
_ids = st.sampled_from(["1", "2", "0", "-1", "99", "x", "1e999", "9" * 30])


def _structured(draw: Any) -> Any:
    body: dict[str, Any] = {}
    if draw(st.booleans()):
        body["args"] = draw(st.lists(json_values, max_size=5) | json_values)
    if draw(st.booleans()):
        body["kwargs"] = draw(st.dictionaries(st.sampled_from(["owner", "amount", "balance", "x"]),
                                              json_values, max_size=3) | json_values)
    for key in ("forward", "consistent", "id", "address", "role", "to"):
        if draw(st.integers(0, 5)) == 0:
            body[key] = draw(json_values | st.sampled_from(["voter", "spare", "127.0.0.1:1"]))
    return body


@st.composite
def requests(draw: Any) -> tuple[str, str, bytes | None, dict[str, str]]:
    kind = draw(st.sampled_from(["tx", "tx", "tx", "query", "query", "peers", "delpeer", "role",
                                 "transfer", "snapshot", "status"]))
    method, path = {
        "tx": ("POST", f"/tx/{quote(draw(_tx_names), safe='%')}"),
        "query": ("POST", f"/query/{draw(_q_names)}"),
        "peers": ("POST", "/peers"),
        "delpeer": ("DELETE", f"/peers/{draw(_ids)}"),
        "role": ("POST", f"/peers/{draw(_ids)}/role"),
        "transfer": ("POST", "/transfer"),
        "snapshot": ("POST", "/snapshot"),
        "status": ("GET", "/status"),
    }[kind]
    how = draw(st.sampled_from(["structured", "structured", "json", "raw"]))
    if how == "structured":
        body: bytes | None = json.dumps(_structured(draw)).encode()
    elif how == "json":
        body = json.dumps(draw(json_values)).encode()
    else:
        body = draw(st.binary(max_size=40))
    auth = draw(st.sampled_from(["good", "good", "good", "good", "none", "wrong", "scheme", "prefix"]))
    headers = {"Content-Type": "application/json"}
    if auth == "good":
        headers["Authorization"] = f"Bearer {TOKEN}"
    elif auth == "wrong":
        given = draw(st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30))
        headers["Authorization"] = f"Bearer {given}"
    elif auth == "scheme":
        headers["Authorization"] = f"Basic {TOKEN}"
    elif auth == "prefix":
        headers["Authorization"] = f"Bearer {TOKEN[:-1]}"
    return method, path, body, headers


class _Engine(FakeEngine):
    """The fake engine plus membership calls that refuse like the real engine does for ids
    that are not members (the fuzz exercises input validation, not membership)."""

    def add(self, node_id: int, address: str) -> FakeFuture:
        return FakeFuture(error=MembershipError(f"fuzz engine: not adding {node_id}"))

    def assign(self, node_id: int, role: str) -> FakeFuture:
        return FakeFuture(error=MembershipError(f"fuzz engine: not assigning {node_id}"))

    def remove(self, node_id: int) -> FakeFuture:
        return FakeFuture(error=MembershipError(f"fuzz engine: not removing {node_id}"))

    def transfer(self, node_id: int = 0) -> FakeFuture:
        return FakeFuture(error=MembershipError(f"fuzz engine: no transfer to {node_id}"))


class HttpTarget:
    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="bknr-http-fuzz-")
        self.cs = ClusterStore(bank, ClusterSettings(1, "127.0.0.1:7001:1", self.tmp.name, token=TOKEN),
                               engine_factory=_Engine)
        self.cs.start()
        self.cs.execute("open_account", "ann", 100)
        self.cs.execute("open_account", "bob", 50)
        (self.port,) = free_ports(1)
        self.server = ApiServer(self.cs, "127.0.0.1", self.port, TOKEN)
        self.server.start_in_thread()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def close(self) -> None:
        self.conn.close()
        self.server.stop_thread()
        self.cs.stop()
        self.tmp.cleanup()

    def send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        try:
            self.conn.request(method, path, body=body, headers=headers)
            r = self.conn.getresponse()
            return r.status, r.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()  # the server may close a connection after a 400 on framing
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self.conn.request(method, path, body=body, headers=headers)
            r = self.conn.getresponse()
            return r.status, r.read()

    def check(self, req: tuple[str, str, bytes | None, dict[str, str]]) -> None:
        method, path, body, headers = req
        before = self.cs.digest()[1]  # the state, not the applied index (barriers advance it)
        status, raw = self.send(method, path, body, headers)
        assert status != 500, f"{method} {path} {body!r} -> 500 {raw[:300]!r}"
        if status >= 400:
            err = json.loads(raw)
            assert isinstance(err.get("error"), str) and isinstance(err.get("type"), str), raw
            assert "\n" not in err["error"]
        good = headers.get("Authorization") == f"Bearer {TOKEN}"
        if not good and path != "/health":
            assert status == 401, f"{method} {path} with a bad token -> {status}"
            assert TOKEN not in raw.decode(errors="replace")
        if status != 200 or method == "GET" or path.startswith("/query"):
            assert self.cs.digest()[1] == before, f"{method} {path} {body!r} -> {status} changed state"

    def campaign_runner(self, chunk: int, record: Any) -> Any:
        @settings(max_examples=chunk, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(requests())
        def run(req: tuple) -> None:
            record("http", self.check, req)
        return run
