"""bknrctl's client of one node's admin/client HTTP API (docs/interfaces.md section 4).

It is the cluster's own ``ApiClient`` (bknr_cluster/cluster/client.py), so an error answer
becomes the same ``bknr_cluster.errors`` exception as anywhere else (vocabulary.error_from_body);
bknrctl adds one connection per request and calls any failure to get an answer ``Unreachable``.
"""

from __future__ import annotations

import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bknr_cluster.cluster.client import ApiClient, Response
from bknr_cluster.errors import BknrError, Unreachable

__all__ = ["NodeClient", "Response", "parallel"]


class NodeClient(ApiClient):
    """Talks to one node; every call is one short-lived connection with a timeout."""

    def __init__(self, name: str, api_url: str, token: str | None, timeout: float = 3.0,
                 ssl_context: ssl.SSLContext | None = None):
        super().__init__(api_url, token, timeout, ssl_context, keep_alive=False, name=name)
        self.api_url = api_url

    def _lost(self, exc: BaseException, path: str, timeout: float) -> BknrError:
        # an operator's probe: a node that does not answer in time is as good as down
        return Unreachable(f"{self.name} ({self.api_url}) unreachable: {exc or type(exc).__name__}")

    # --- the documented endpoints -----------------------------------------------------------
    def health(self, timeout: float | None = None) -> dict:
        return self.call("GET", "/health", timeout=timeout)

    def status(self, timeout: float | None = None) -> dict:
        return self.call("GET", "/status", timeout=timeout)

    def is_leader(self, timeout: float | None = None) -> tuple[bool, dict]:
        r = self.exchange("GET", "/leader", timeout=timeout)
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
