"""Synchronous client of one node's admin/client HTTP API (docs/interfaces.md section 4).

Error bodies ``{"error", "type", ...}`` are turned back into the matching class of
``bknr_cluster.errors`` so commands can handle them uniformly; a connection failure is
``Unreachable``.
"""

from __future__ import annotations

import http.client
import json
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bknr_cluster import errors
from bknr_cluster.errors import BknrError, NotLeader, Unauthorized, Unreachable


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]


def error_from_body(status: int, body: Any, where: str) -> BknrError:
    """The errors.py exception an error answer stands for."""
    if not isinstance(body, dict):
        return BknrError(f"{where}: HTTP {status}: {str(body)[:200]}")
    message = str(body.get("error") or f"HTTP {status}")
    kind = str(body.get("type") or "")
    if status == 401 or kind == "Unauthorized":
        return Unauthorized(f"{where}: {message} (check token_file)")
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, NotLeader):
        return cls(int(body.get("leader_id") or 0), str(body.get("leader_address") or ""),
                   message, leader_api=str(body.get("leader_api") or ""))
    if isinstance(cls, type) and issubclass(cls, BknrError) and cls is not errors.ConfigError:
        try:
            return cls(message)
        except TypeError:
            pass
    if kind == "TransactionFailed":
        exc = BknrError(f"transaction failed: {body.get('exception', '?')}: {message}")
        return exc
    if status == 404:
        return errors.UsageError(f"{where}: {message}")
    if status == 400:
        return errors.UsageError(f"{where}: {message}")
    return BknrError(f"{where}: {message}")


class NodeClient:
    """Talks to one node; every call is one short-lived connection with a timeout."""

    def __init__(self, name: str, api_url: str, token: str | None, timeout: float = 3.0,
                 ssl_context: ssl.SSLContext | None = None):
        self.name = name
        self.api_url = api_url
        parts = urlsplit(api_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        # https: the server's certificate is verified against the cluster CA (tls_config.py)
        self.ssl_context = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, *, timeout: float | None = None,
                raw: bool = False, raw_body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout or self.timeout,
                                           context=self.ssl_context) if self.ssl_context \
            else http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)
        headers = {"Accept": "application/json", **(headers or {})}
        data = None
        if raw_body is not None:
            data = raw_body
            headers["Content-Type"] = "application/octet-stream"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"{self.name} ({self.api_url}) unreachable: {exc or type(exc).__name__}") \
                from None
        finally:
            conn.close()
        if raw and resp.status == 200:
            return Response(resp.status, payload, hdrs)
        try:
            parsed: Any = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload.decode(errors="replace")
        return Response(resp.status, parsed, hdrs)

    def call(self, method: str, path: str, body: Any = None, *, timeout: float | None = None,
             raw: bool = False) -> Any:
        """The decoded answer of a 2xx reply; otherwise the matching errors.py exception."""
        r = self.request(method, path, body, timeout=timeout, raw=raw)
        if 200 <= r.status < 300:
            return r if raw else r.body
        raise error_from_body(r.status, r.body, f"{self.name}")

    # --- the documented endpoints -----------------------------------------------------------
    def health(self, timeout: float | None = None) -> dict:
        return self.call("GET", "/health", timeout=timeout)

    def status(self, timeout: float | None = None) -> dict:
        return self.call("GET", "/status", timeout=timeout)

    def is_leader(self, timeout: float | None = None) -> tuple[bool, dict]:
        r = self.request("GET", "/leader", timeout=timeout)
        return r.status == 200, r.body if isinstance(r.body, dict) else {}

    def tx(self, name: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> dict:
        return self.call("POST", f"/tx/{name}", {"args": list(args), "kwargs": kwargs}, timeout=timeout)

    def query(self, name: str, *args: Any, consistent: bool = False, timeout: float | None = None,
              **kwargs: Any) -> dict:
        return self.call("POST", f"/query/{name}",
                         {"args": list(args), "kwargs": kwargs, "consistent": consistent},
                         timeout=timeout)

    def snapshot(self, timeout: float | None = None) -> dict:
        return self.call("POST", "/snapshot", {}, timeout=timeout or 60.0)

    def backup(self, timeout: float | None = None) -> Response:
        return self.call("GET", "/backup", timeout=timeout or 120.0, raw=True)

    def add_peer(self, node_id: int, address: str, role: str) -> dict:
        return self.call("POST", "/peers", {"id": node_id, "address": address, "role": role},
                         timeout=30.0)

    def remove_peer(self, node_id: int) -> dict:
        return self.call("DELETE", f"/peers/{node_id}", timeout=30.0)

    def set_role(self, node_id: int, role: str) -> dict:
        return self.call("POST", f"/peers/{node_id}/role", {"role": role}, timeout=30.0)

    def transfer(self, to: int = 0, timeout: float | None = None) -> dict:
        return self.call("POST", "/transfer", {"to": to}, timeout=timeout or 30.0)


def parallel(fn: Any, items: list[Any], max_workers: int = 16) -> list[Any]:
    """``fn(item)`` for every item at once; each result is the value or the exception raised."""
    def safe(item: Any) -> Any:
        try:
            return fn(item)
        except Exception as exc:  # collected per node: one dead node must not hide the others
            return exc
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items))) as pool:
        return list(pool.map(safe, items))
