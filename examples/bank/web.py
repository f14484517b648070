"""The bank as a web application hosted by ``bknr-node`` (YAML: ``app: {asgi: "examples.bank.web:app"}``).

Why Starlette and not FastAPI: the API is three small endpoints whose inputs are checked by hand
in a few lines (below), so FastAPI's pydantic models and dependency injection would add two
dependencies and a validation layer between the request and the transaction without removing
any code; Starlette is the ASGI toolkit FastAPI itself is built on, and uvicorn serves it as is.

Endpoints:
- ``POST /transfers`` ``{"from": "ann", "to": "bob", "amount": 5}`` with an ``Idempotency-Key``
  header: applied exactly once per key. The key is the bank's ``transfer_id``, recorded by the
  ``transfer`` transaction in the replicated state (examples/bank/app.py), so a retry after a
  lost answer, through any node, after any failover, returns the recorded outcome
  (``"duplicate": true``) and never moves money twice; reusing a key for a different transfer
  is refused (422). ``?on_follower=forward|redirect|503`` chooses what a follower does with the
  write (default ``forward``: it travels to the leader; ``redirect``: 307 to the leader's
  application; ``503``: a hint for the client to retry through the load balancer).
- ``POST /accounts`` ``{"owner": "ann", "balance": 100}``: open an account (409 if it exists).
- ``GET /accounts``: every account, read locally on the node that serves it (``?consistent=1``:
  a linearizable read, leader only).
- ``GET /``: one HTML page: the accounts and balances, a transfer form, and which node served
  the page in which role. The form carries a fresh idempotency key, so a double submit moves
  money once.

Bad input (not JSON, missing or malformed fields, no key) gets a 4xx with a one-line JSON error
and is not logged.
"""

from __future__ import annotations

import html
import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from bknr_cluster import web
from bknr_cluster.errors import (
    IntegrityError,
    LeadershipLost,
    NotLeader,
    Shutdown,
    Timeout,
    TransactionFailed,
    Unreachable,
)
from examples.bank.app import open_account, transfer

# Outcome unknown or no leader yet: the same idempotency key makes another try safe.
RETRYABLE = (LeadershipLost, NotLeader, Shutdown, Timeout, Unreachable)
WRITE_DEADLINE_S = 10.0
KEY_MAX = 200


class BadInput(Exception):
    """A request the bank refuses before touching the store (answered 400)."""


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _tx_error(exc: BaseException) -> JSONResponse:
    """A transaction's own refusal: the same answer whether it ran here or was forwarded."""
    kind = exc.exception if isinstance(exc, TransactionFailed) else type(exc).__name__
    status = {"KeyError": 404, "IntegrityError": 409, "ValueError": 422}.get(kind, 409)
    message = str(exc).split(": ", 2)[-1] if isinstance(exc, TransactionFailed) else str(exc)
    return _error(status, message.strip("'\""), exception=kind)


async def _write(request: Request, tx: Any, *args: Any) -> Any:
    """Execute on the leader (forwarding from a follower), retrying while the outcome is
    unknown or no leader is known; only for idempotent transactions."""
    ws = web.store(request)
    deadline = time.monotonic() + WRITE_DEADLINE_S
    while True:
        left = deadline - time.monotonic()
        try:
            return await ws.execute(tx, *args, forward=True, timeout=max(0.5, left))
        except RETRYABLE:
            if time.monotonic() >= deadline:
                raise


def _follower_answer(request: Request) -> Response | None:
    policy = request.query_params.get("on_follower", "forward")
    if policy not in ("forward", "redirect", "503"):
        raise BadInput("on_follower must be forward, redirect or 503")
    if policy == "forward" or web.store(request).is_leader:
        return None
    return web.leader_response(request, redirect=policy == "redirect")


def _amount(value: Any) -> int:
    try:
        amount = int(value)
    except (TypeError, ValueError):
        raise BadInput(f"amount must be a positive integer, got {value!r}") from None
    if isinstance(value, bool) or amount <= 0 or str(amount) != str(value).strip():
        raise BadInput(f"amount must be a positive integer, got {value!r}")
    return amount


def _owner(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 100:
        raise BadInput(f"'{what}' must be an account owner (1-100 characters)")
    return value.strip()


async def _json_body(request: Request) -> dict:
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        raise BadInput("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadInput("the body must be a JSON object")
    return body


async def _guard(request: Request, handler: Any) -> Response:
    try:
        return await handler(request)
    except BadInput as exc:
        return _error(400, str(exc))
    except (TransactionFailed, IntegrityError, KeyError, ValueError) as exc:
        return _tx_error(exc)
    except RETRYABLE as exc:
        return _error(503, f"no leader could take the write in time: {exc}",
                      leader_app=web.store(request).leader_app_url)


# --- JSON API -----------------------------------------------------------------------------------


async def post_transfer(request: Request) -> Response:
    async def run(request: Request) -> Response:
        key = request.headers.get("idempotency-key", "").strip()
        if not key or len(key) > KEY_MAX:
            raise BadInput(f"an Idempotency-Key header (1-{KEY_MAX} characters) is required")
        body = await _json_body(request)
        src, dst = _owner(body.get("from"), "from"), _owner(body.get("to"), "to")
        amount = _amount(body.get("amount"))
        if (answer := _follower_answer(request)) is not None:
            return answer
        result = await _write(request, transfer, src, dst, amount, key)
        return JSONResponse(result)
    return await _guard(request, run)


async def post_account(request: Request) -> Response:
    async def run(request: Request) -> Response:
        body = await _json_body(request)
        owner = _owner(body.get("owner"), "owner")
        balance = body.get("balance", 0)
        if isinstance(balance, bool) or not isinstance(balance, int) or balance < 0:
            raise BadInput("'balance' must be a non-negative integer")
        if (answer := _follower_answer(request)) is not None:
            return answer
        return JSONResponse(await _write(request, open_account, owner, balance))
    return await _guard(request, run)


async def get_accounts(request: Request) -> Response:
    async def run(request: Request) -> Response:
        consistent = request.query_params.get("consistent", "0") in ("1", "true", "yes")
        ws = web.store(request)
        try:
            rows = await ws.query("accounts", consistent=consistent)
        except NotLeader:  # a consistent read needs the leader: send the client there
            return web.leader_response(request, redirect=False)
        return JSONResponse({"accounts": rows, "node": ws.node_name})
    return await _guard(request, run)


# --- the HTML page ----------------------------------------------------------------------------

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>bknr bank</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:.2em 1em;text-align:left}}</style>
</head><body>
<h1>bknr bank</h1>
<p id="served">served by <b id="node">{node}</b> (<span id="role">{role}</span>)</p>
{message}
<h2>Transfer</h2>
<form id="transfer" method="post" action="/transfer-form">
  <input type="hidden" name="key" value="{key}">
  from <select name="from">{options}</select>
  to <select name="to">{options}</select>
  amount <input name="amount" type="number" min="1" value="1">
  <button type="submit">transfer</button>
</form>
<h2>Accounts</h2>
<table id="accounts"><tr><th>account</th><th>balance</th></tr>{rows}</table>
</body></html>
"""


async def page(request: Request) -> Response:
    ws = web.store(request)
    accounts = sorted(await ws.query("accounts"), key=lambda a: a["owner"])
    rows = "".join(f'<tr><td>{html.escape(a["owner"])}</td>'
                   f'<td class="balance" data-owner="{html.escape(a["owner"])}">{a["balance"]}</td></tr>'
                   for a in accounts)
    options = "".join(f'<option>{html.escape(a["owner"])}</option>' for a in accounts)
    msg = request.query_params.get("msg", "")
    message = f'<p id="message">{html.escape(msg)}</p>' if msg else ""
    return HTMLResponse(PAGE.format(node=html.escape(ws.node_name), role=html.escape(ws.role),
                                    rows=rows, options=options, message=message,
                                    key=secrets.token_hex(16)))


async def post_form(request: Request) -> Response:
    """The page's form: the same transfer as ``POST /transfers``, then back to the page (303)."""
    fields = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
    try:
        key = fields.get("key", "")
        if not key or len(key) > KEY_MAX:
            raise BadInput("the form has no idempotency key; reload the page")
        amount = _amount(fields.get("amount"))
        result = await _write(request, transfer, _owner(fields.get("from"), "from"),
                              _owner(fields.get("to"), "to"), amount, key)
        msg = ("transfer already done" if result.get("duplicate")
               else f"transferred {result['amount']}")
    except BadInput as exc:
        msg = str(exc)
    except (TransactionFailed, IntegrityError, KeyError, ValueError) as exc:
        msg = json.loads(_tx_error(exc).body)["error"]
    except RETRYABLE:
        msg = "the bank is electing a new leader; please submit again"
    return RedirectResponse(f"/?msg={quote(msg)}", status_code=303)


app = Starlette(routes=[
    Route("/", page, methods=["GET"]),
    Route("/transfer-form", post_form, methods=["POST"]),
    Route("/transfers", post_transfer, methods=["POST"]),
    Route("/accounts", get_accounts, methods=["GET"]),
    Route("/accounts", post_account, methods=["POST"]),
])
