"""Synchronous client of the node HTTP API.

Used for ``forward=True`` (follower -> leader), by tests and by bknrctl (whose ``NodeClient`` is
this class with one connection per request). Standard library only (``http.client``); by default
one keep-alive connection per thread and base URL.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bknr_cluster.errors import BknrError, Timeout, Unreachable, UsageError
from bknr_cluster.vocabulary import error_body, error_from_body, error_status

# The error <-> HTTP mapping lives in bknr_cluster/vocabulary.py (one table for node, clients and
# bknrctl); the names stay importable from here.
__all__ = ["ApiClient", "Response", "error_body", "error_from_body", "error_status"]


@dataclass
class Response:
    """One answer: status, decoded body (JSON, text, or bytes for a raw 200) and header names in
    lower case."""

    status: int
    body: Any
    headers: dict[str, str]


def decode_answer(payload: bytes, content_type: str) -> Any:
    """JSON when the server says so (an undecodable one as an error body), else text."""
    if "json" in content_type:
        try:
            return json.loads(payload)
        except ValueError:
            return {"error": "invalid JSON in answer"}
    return payload.decode(errors="replace")


class ApiClient:
    """Calls one node's API. ``request`` returns ``(status, json)``, ``exchange`` a ``Response``;
    ``call`` raises the errors.py exception of an error answer (vocabulary.error_from_body).

    ``name`` (a node name) prefixes the messages of answers that do not name their source;
    ``keep_alive=False`` opens one connection per request (bknrctl: short-lived, many threads)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None, *, keep_alive: bool = True,
                 name: str = "") -> None:
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
        self.keep_alive = keep_alive
        self.name = name
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

    def _lost(self, exc: BaseException, path: str, timeout: float) -> BknrError:
        """The error of a request that got no answer (a subclass may word it differently)."""
        if isinstance(exc, TimeoutError):
            return Timeout(f"{self.url}{path}: no answer within {timeout} s")
        if isinstance(exc, http.client.RemoteDisconnected | BrokenPipeError | ConnectionResetError):
            return Unreachable(f"{self.url}: connection lost ({exc.__class__.__name__})")
        return Unreachable(f"{self.url}: {getattr(exc, 'strerror', None) or exc}")

    def _send(self, method: str, path: str, body: Any = None, *, auth: bool = True,
              timeout: float | None = None, data: bytes | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, bytes, http.client.HTTPMessage]:
        """One round trip: ``(status, payload, headers)``; no answer raises ``_lost(...)``."""
        headers = {"Accept": "application/json", **(headers or {})}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif data is not None:
            headers.setdefault("Content-Type", "application/octet-stream")
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        wait = timeout or self.timeout
        # A kept-alive connection may have been closed by the server: retry once on a fresh one,
        # but only when the request provably never reached it (connection refused/reset on send).
        for attempt in (0, 1):
            conn = self._conn()
            conn.timeout = wait
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                answer_headers = resp.msg
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt or method not in ("GET",) or not self.keep_alive:
                    raise self._lost(exc, path, wait) from None
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                self.close()
                raise self._lost(exc, path, wait) from None
            finally:
                if not self.keep_alive:
                    self.close()
        return resp.status, payload, answer_headers

    def request(self, method: str, path: str, body: Any = None, *, auth: bool = True,
                raw: bool = False, timeout: float | None = None, data: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """``body`` is sent as JSON, ``data`` as an octet stream; ``raw=True`` returns
        ``(status, (bytes, headers))`` instead of decoding the answer."""
        status, payload, hdrs = self._send(method, path, body, auth=auth, timeout=timeout,
                                           data=data, headers=headers)
        if raw:
            return status, (payload, dict(hdrs.items()))
        return status, decode_answer(payload, hdrs.get("Content-Type", ""))

    def exchange(self, method: str, path: str, body: Any = None, *, auth: bool = True,
                 raw: bool = False, timeout: float | None = None, data: bytes | None = None,
                 headers: dict[str, str] | None = None) -> Response:
        """Like ``request``, as a ``Response``; ``raw=True`` keeps the bytes of a 200 answer only
        (an error answer is decoded, so it can be mapped to its exception)."""
        status, payload, hdrs = self._send(method, path, body, auth=auth, timeout=timeout,
                                           data=data, headers=headers)
        lower = {k.lower(): v for k, v in hdrs.items()}
        answer = payload if raw and status == 200 else decode_answer(payload, lower.get("content-type", ""))
        return Response(status, answer, lower)

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """The decoded answer of a 2xx reply (the ``Response`` with ``raw=True``); otherwise the
        errors.py exception the answer stands for."""
        if kw.get("raw"):
            r = self.exchange(method, path, body, **kw)
            if not 200 <= r.status < 300:
                raise error_from_body(r.status, r.body, self.name)
            return r
        status, answer = self.request(method, path, body, **kw)
        if not 200 <= status < 300:
            raise error_from_body(status, answer, self.name)
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
