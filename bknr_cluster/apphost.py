"""Hosting the team's web application inside ``bknr-node`` (the YAML's ``app`` section).

The application is served by uvicorn **on the node's main asyncio loop**, the same loop as the
aiohttp admin API (node.py ``_serve``); the store's applier, submitter and the Raft engine run
on their own threads. ASGI handlers must therefore not block: they await
``bknr_cluster.web.WebStore.execute`` (the applier completes an asyncio future) and read the
in-memory store directly. A WSGI application (``app.wsgi``) runs through ``a2wsgi`` in a thread
pool of ``app.threads`` workers, so its blocking handlers never hold the loop.

Order of a stop (SIGTERM): the node hands leadership over first (node.py), then
:meth:`AppServer.stop` closes the listening socket and waits up to ``app.drain_s`` for the
requests in flight (uvicorn's graceful shutdown), then the admin API and the store stop. A
request that reaches a node that just stopped leading is answered by the application's follower
policy (forward, redirect or 503; web.py).

With a ``tls_dir`` in the YAML the application is served over HTTPS with the node's certificate
(the same CA as the raft transport and the admin API; ``tls_config.app_ssl_context``); a client
speaking plain HTTP to it is dropped in the TLS handshake, before the application sees anything.

The listening socket is bound by :func:`bind` before the store starts, so a port clash stops the
node at once with a one-line error, as does an application that cannot be imported or is not
an ASGI callable (:func:`load_app`, naming the YAML path).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import socket
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bknr_cluster.errors import ConfigError, Unreachable

log = logging.getLogger("bknr.app")


def _import(spec: str, where: str, base_dir: Path | None) -> Any:
    module_name, _, attr = spec.partition(":")
    for folder in (os.getcwd(), str(base_dir.resolve()) if base_dir else None):
        if folder and folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module itself failing while it loads
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError([(where, f"cannot import {module_name!r}: {type(exc).__name__}: {first}")]
                          ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError([(where, f"module {module_name!r} has no attribute {attr!r}")]) from None


def is_asgi(app: Any) -> bool:
    """An ASGI 3 application: an ``async`` callable (function, or object with async __call__)."""
    if inspect.isclass(app) or not callable(app):
        return False
    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(type(app).__call__)


def load_app(app_cfg: Any, base_dir: Path | None = None) -> Any:
    """The ASGI callable the ``app`` section names (a WSGI app wrapped in ``a2wsgi``)."""
    obj = _import(app_cfg.spec, app_cfg.path, base_dir)
    if app_cfg.kind == "wsgi":
        if not callable(obj) or is_asgi(obj):
            raise ConfigError([(app_cfg.path, f"{app_cfg.spec!r} is not a WSGI application "
                                "(for an ASGI one, use app.asgi)")])
        from a2wsgi import WSGIMiddleware

        return WSGIMiddleware(obj, workers=app_cfg.threads)
    if not is_asgi(obj):
        hint = " (a WSGI application? use app.wsgi)" if callable(obj) else ""
        raise ConfigError([(app_cfg.path, f"{app_cfg.spec!r} is not an ASGI application: "
                            f"expected an async callable (scope, receive, send){hint}")])
    return obj


def bind(host: str, port: int, where: str) -> socket.socket:
    """The application's listening socket, bound now (a clash is reported before anything runs)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: accepted connections inherit the protocol number, and
    # asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets whose ``proto`` says
    # TCP. With 0, uvicorn's two writes per response (status line + headers, then the body)
    # left the body waiting for the peer's delayed ACK of the headers: ~40 ms added to every
    # request (docs/performance.md, session 7).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise Unreachable(f"{where}: cannot serve the application on {host}:{port}: "
                          f"{exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class AppServer:
    """uvicorn serving one ASGI application on the running loop, on a pre-bound socket."""

    def __init__(self, app: Any, sock: socket.socket, *, drain_s: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        import uvicorn

        host, port = sock.getsockname()[:2]
        self.url = f"{'https' if ssl_context else 'http'}://{host}:{port}"
        # log_config=None: the node's logging stays as it is; no access log (a rejected request
        # is the application's answer, not a log line). The keep-alive outlives the load
        # balancer's (docs/load-balancing.md), so the proxy never reuses a connection the app
        # is closing.
        config = uvicorn.Config(app, lifespan="auto", log_config=None, access_log=False,
                                timeout_keep_alive=75, timeout_graceful_shutdown=drain_s,
                                server_header=False, http=_one_write_protocol(),
                                # the node's own context (tls_config.app_ssl_context), not one
                                # uvicorn builds from file names with its own cipher defaults
                                ssl_context_factory=(lambda _cfg, _default: ssl_context)
                                if ssl_context else None)
        self.server = _node_server(config)
        self.sock = sock
        self._task: asyncio.Task | None = None

    async def start(self, timeout: float = 30.0) -> None:
        """Run the application's lifespan startup and start serving; raises when it fails."""
        self._task = asyncio.create_task(self._serve())
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.server.started:
            if self._task.done():
                exc = self._task.exception()
                raise ConfigError([("app", "the application failed to start (lifespan startup"
                                    f"{': ' + str(exc) if exc else ''}; see node.log)")])
            if asyncio.get_running_loop().time() > deadline:
                raise ConfigError([("app", f"the application did not start within {timeout:.0f} s")])
            await asyncio.sleep(0.01)
        log.info("application listening on %s", self.url)

    async def _serve(self) -> None:
        try:
            await self.server.serve(sockets=[self.sock])
        except SystemExit:  # uvicorn exits the process when startup fails: not inside a node
            raise RuntimeError("uvicorn gave up starting the application") from None

    async def stop(self) -> None:
        """Stop accepting, drain the requests in flight (``drain_s``), run lifespan shutdown."""
        if self._task is None:
            return
        self.server.should_exit = True
        try:
            await self._task
        except Exception:  # stopping must not fail because the application's shutdown did
            log.exception("application shutdown failed")
        self._task = None
        self.sock.close()


class OneWritePerTurn:
    """A transport proxy that joins the writes of one event-loop turn into one ``write``.

    uvicorn writes a response in two calls (status line + headers at ``http.response.start``,
    then the body), that is two ``send`` system calls. A leader killed between them leaves the
    load balancer holding a 200 without its body, which it has already passed on and cannot
    retry: the customer sees a cut response (``SD--`` in HAProxy's log; 1 user error in 10 kill
    rounds of bench/app_bench.py). Joined, a response's bytes reach the kernel in one call, so
    a kill leaves either all of them or none (and HAProxy retries a request without answer).
    The flush runs at the end of the current turn: no added latency beyond one loop step."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._parts: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._parts:
            self._loop.call_soon(self.flush)
        self._parts.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        if not self._parts:
            return
        data = b"".join(self._parts)
        self._parts.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._parts.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._parts))

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)


def _one_write_protocol() -> type[asyncio.Protocol]:
    """uvicorn's own HTTP protocol (httptools or h11, as ``http="auto"`` picks) on a
    :class:`OneWritePerTurn` transport."""
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    base = import_from_string(HTTP_PROTOCOLS["auto"])

    class OneWriteHTTPProtocol(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(OneWritePerTurn(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]

    return OneWriteHTTPProtocol


def _node_server(config: Any) -> Any:
    """A ``uvicorn.Server`` without its signal handling: the node owns SIGTERM/SIGINT."""
    import uvicorn

    class NodeServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        def install_signal_handlers(self) -> None:
            pass

    return NodeServer(config)
