"""Synchronous client of the node HTTP API, and the error <-> HTTP mapping used by both sides.

Used for ``forward=True`` (follower -> leader), by tests and by the CLI. Standard library only
(``http.client``), one keep-alive connection per thread and base URL.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from bknr_cluster import errors
from bknr_cluster.errors import (
    BknrError,
    LeadershipLost,
    NoLeader,
    NotCapable,
    NotLeader,
    ReplicaHalted,
    Shutdown,
    Timeout,
    TransactionFailed,
    Unauthorized,
    UnknownNode,
    UnknownTransaction,
    Unreachable,
    UsageError,
)

# --- server side: exception -> (HTTP status, JSON body) --------------------------------------


def error_status(exc: BaseException) -> int:
    explicit = getattr(exc, "http_status", None)  # e.g. 409 for "restore into a non-empty store"
    if isinstance(explicit, int):
        return explicit
    if isinstance(exc, Unauthorized):
        return 401
    if isinstance(exc, UnknownTransaction | UnknownNode):
        return 404
    if isinstance(exc, TransactionFailed):
        return 409
    if isinstance(exc, NotLeader | LeadershipLost | Shutdown | ReplicaHalted):
        return 503
    if isinstance(exc, Timeout):
        return 504
    if isinstance(exc, UsageError):
        return 400
    return 500


def error_body(exc: BaseException) -> dict[str, Any]:
    """The JSON error body of docs/interfaces.md §4: one line, the errors.py class name, hints."""
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    body: dict[str, Any] = {"error": msg, "type": type(exc).__name__}
    if isinstance(exc, NotLeader):
        body.update(leader_id=exc.leader_id, leader_address=exc.leader_address,
                    leader_api=exc.leader_api)
    if isinstance(exc, TransactionFailed):
        body["exception"] = exc.exception
    if isinstance(exc, NotCapable):
        body["nodes"] = exc.nodes
    if isinstance(exc, errors.ConfigError):
        body["problems"] = [list(p) for p in exc.problems]
    return body


# --- client side: (HTTP status, JSON body) -> exception --------------------------------------


def error_from_body(status: int, body: Any) -> BknrError:
    """Rebuild the errors.py exception a node answered with (best effort for unknown types)."""
    if not isinstance(body, dict):
        body = {"error": str(body)}
    msg = str(body.get("error") or f"HTTP {status}")
    kind = body.get("type", "")
    if status == 401 or kind == "Unauthorized":
        return Unauthorized(msg)
    if kind in ("NotLeader", "NoLeader"):
        cls = NoLeader if kind == "NoLeader" else NotLeader
        return cls(int(body.get("leader_id") or 0), str(body.get("leader_address") or ""),
                   message=msg, leader_api=str(body.get("leader_api") or ""))
    if kind == "TransactionFailed":
        exc = TransactionFailed(str(body.get("exception") or "Exception"))
        exc.args = (msg,)
        return exc
    if kind == "NotCapable":
        nodes = body.get("nodes")
        return NotCapable(msg, nodes if isinstance(nodes, list) else [])
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, BknrError) and cls not in (errors.ConfigError,):
        try:
            return cls(msg)
        except TypeError:
            pass
    if status == 404:
        return UnknownTransaction(msg)
    if 400 <= status < 500:
        return UsageError(msg)
    return BknrError(msg)


class ApiClient:
    """Calls one node's API. ``request`` returns ``(status, json)``; ``call`` raises on errors."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"unsupported API URL {url!r} (expected http(s)://host:port)")
        default_port = 443 if parts.scheme == "https" else 80
        self.url = f"{parts.scheme}://{parts.hostname}:{parts.port or default_port}"
        self.host, self.port = parts.hostname, parts.port or default_port
        # https: the server's certificate is always verified (the cluster CA's context from
        # tls_config.client_ssl_context, else the system's trust store).
        self.ssl_context = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self.token = token
        self.timeout = timeout
        self._local = threading.local()

    # Servers close idle keep-alive connections (aiohttp after 75 s). Reusing one that the server
    # may be closing makes a POST fail ambiguously, so idle connections are replaced first.
    MAX_IDLE_S = 20.0

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        now = time.monotonic()
        if c is not None and now - getattr(self._local, "used_at", now) > self.MAX_IDLE_S:
            c.close()
            c = None
        if c is None:
            c = self._local.conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=self.ssl_context) if self.ssl_context \
                else http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self._local.used_at = now
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    def request(self, method: str, path: str, body: Any = None, *, auth: bool = True,
                raw: bool = False, timeout: float | None = None, data: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """``body`` is sent as JSON, ``data`` as an octet stream; ``raw=True`` returns
        ``(status, (bytes, headers))`` instead of decoding the answer."""
        headers = {"Accept": "application/json", **(headers or {})}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif data is not None:
            headers.setdefault("Content-Type", "application/octet-stream")
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        # A kept-alive connection may have been closed by the server: retry once on a fresh one,
        # but only when the request provably never reached it (connection refused/reset on send).
        for attempt in (0, 1):
            conn = self._conn()
            conn.timeout = timeout or self.timeout
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt or method not in ("GET",):
                    raise Unreachable(f"{self.url}: connection lost ({exc.__class__.__name__})") from None
            except TimeoutError:
                self.close()
                raise Timeout(f"{self.url}{path}: no answer within {conn.timeout} s") from None
            except OSError as exc:
                self.close()
                raise Unreachable(f"{self.url}: {exc.strerror or exc}") from None
        if raw:
            return resp.status, (payload, dict(resp.getheaders()))
        ctype = resp.getheader("Content-Type", "")
        if "json" in ctype:
            try:
                return resp.status, json.loads(payload)
            except ValueError:
                return resp.status, {"error": "invalid JSON in answer"}
        return resp.status, payload.decode(errors="replace")

    def call(self, method: str, path: str, body: Any = None, **kw) -> Any:
        status, answer = self.request(method, path, body, **kw)
        if status >= 400:
            raise error_from_body(status, answer)
        return answer

    # convenience wrappers -----------------------------------------------------------------

    def status(self, digest: bool = True) -> dict:
        return self.call("GET", "/status" if digest else "/status?digest=0")

    def health(self) -> dict:
        return self.call("GET", "/health", auth=False)

    def tx(self, name: str, *args: Any, forward: bool = False, **kwargs: Any) -> dict:
        return self.call("POST", f"/tx/{name}", {"args": list(args), "kwargs": kwargs,
                                                 "forward": forward})

    def query(self, name: str, *args: Any, consistent: bool = False, **kwargs: Any) -> dict:
        return self.call("POST", f"/query/{name}", {"args": list(args), "kwargs": kwargs,
                                                    "consistent": consistent})
