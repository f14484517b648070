"""The workloads' HTTP client: every call ends as ok / fail / unknown, never ambiguous.

A fresh connection per call, connected *before* the request is written, so "the request never
left" (connect refused or timed out -> fail) is told apart from "it left and no answer came"
(reset, timeout, server 5xx without a definite type -> unknown).  A reused keep-alive
connection would blur exactly that line.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any

from tests.chaos.history import FAIL, OK, UNKNOWN

# Error types (errors.py names) that prove the operation did not and will not take effect.
DEFINITE_FAILURES = {
    "NotLeader", "NoLeader",        # refused before anything was logged
    "TransactionFailed",            # ran, raised, changed nothing (on every replica)
    "UnknownTransaction", "CodecError", "UsageError", "BadRequest", "Unauthorized", "HTTPError",
    "TooBig",
    "NotCapable",                   # a voter's definition lacks the transaction: nothing logged
}


@dataclass
class Outcome:
    status: str                 # ok / fail / unknown
    result: Any = None          # the JSON answer's "result" on ok
    error: str | None = None    # errors.py type name or transport error
    leader_api: str = ""        # hint from NotLeader
    body: Any = None


def call(url: str, path: str, body: dict, token: str | None, timeout: float) -> Outcome:
    """POST ``body`` to ``url + path`` and classify the outcome."""
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        try:
            conn.connect()
        except OSError as exc:
            # Nothing was sent: the operation certainly did not happen.
            return Outcome(FAIL, error=f"connect: {type(exc).__name__}")
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            return Outcome(UNKNOWN, error=f"transport: {type(exc).__name__}")
    finally:
        conn.close()
    try:
        answer = json.loads(payload) if payload else {}
    except ValueError:
        answer = {"error": payload[:200].decode(errors="replace")}
    if resp.status == 200:
        return Outcome(OK, result=answer.get("result"), body=answer)
    kind = answer.get("type", f"HTTP{resp.status}") if isinstance(answer, dict) else f"HTTP{resp.status}"
    hint = str(answer.get("leader_api") or "") if isinstance(answer, dict) else ""
    if kind in DEFINITE_FAILURES:
        return Outcome(FAIL, error=kind, leader_api=hint, body=answer)
    # LeadershipLost, Timeout, Shutdown, 500s: logged or not, nobody can say yet.
    return Outcome(UNKNOWN, error=kind, leader_api=hint, body=answer)


def get_json(url: str, path: str, token: str | None, timeout: float = 2.0) -> dict:
    """GET for the harness (status, health); raises OSError/ValueError on any problem."""
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        data = json.loads(resp.read() or b"{}")
        if resp.status >= 400 and path != "/leader":
            raise OSError(f"GET {path} -> {resp.status}: {data}")
        return data
    except http.client.HTTPException as exc:
        raise OSError(f"GET {path}: {exc!r}") from None
    finally:
        conn.close()


def post_json(url: str, path: str, body: dict, token: str | None, timeout: float = 5.0) -> dict:
    """POST for the harness; raises OSError with the server's error on failure."""
    out = call(url, path, body, token, timeout)
    if out.status != OK:
        raise OSError(f"POST {path} -> {out.status} ({out.error}): {out.body}")
    return out.body
