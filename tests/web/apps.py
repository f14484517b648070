"""Small applications the hosted-app tests serve through bknr-node (YAML ``app`` section)."""

from __future__ import annotations

import asyncio

from flask import Flask, jsonify, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bknr_cluster import web
from examples.bank.app import open_account

# --- ASGI: a request that is still in flight when the node is told to stop -----------------------

STARTED: list[str] = []


async def slow_open(request: Request) -> JSONResponse:
    """Wait ``s`` seconds, then open the account (forwarded if this node no longer leads)."""
    owner = request.query_params["owner"]
    STARTED.append(owner)
    await asyncio.sleep(float(request.query_params.get("s", "1")))
    result = await web.store(request).execute(open_account, owner, 7, forward=True)
    return JSONResponse({"result": result, "node": web.store(request).node_name})


async def started(request: Request) -> JSONResponse:
    # the same store through the ASGI lifespan state (Starlette: request.state)
    return JSONResponse({"started": STARTED, "role": web.store(request).role,
                         "state_is_store": request.state.bknr is web.store(request)})


slow_app = Starlette(routes=[Route("/slow", slow_open, methods=["POST"]),
                             Route("/started", started)])

# --- WSGI: Flask executing a transaction from its worker thread ----------------------------------

flask_app = Flask(__name__)


@flask_app.post("/open/<owner>")
def flask_open(owner: str):  # type: ignore[no-untyped-def]
    ws = web.store()   # no ASGI scope in WSGI: the process's hosted store
    result = ws.execute_blocking(open_account, owner, int(request.args.get("balance", "0")),
                                 forward=True)
    with ws.read() as store:
        count = store.run_query("count")
    return jsonify({"result": result, "count": count, "node": ws.node_name})


NOT_AN_APP = 42
