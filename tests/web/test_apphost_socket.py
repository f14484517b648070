"""The hosted application's listening socket (apphost.bind): connections it accepts have
Nagle's algorithm off. uvicorn writes a response in two writes (status line + headers, then the
body); with Nagle on, the body waited for the peer's delayed ACK of the headers, ~40 ms on every
request (docs/performance.md, session 7)."""

from __future__ import annotations

import asyncio
import socket

from bknr_cluster.apphost import AppServer, bind


async def _hello(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


def test_bound_socket_says_tcp() -> None:
    sock = bind("127.0.0.1", 0, "test")
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_accepted_connections_have_tcp_nodelay() -> None:
    async def run() -> list[int]:
        server = AppServer(_hello, bind("127.0.0.1", 0, "test"), drain_s=1.0)
        await server.start(timeout=10.0)
        try:
            host, port = server.sock.getsockname()[:2]
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            assert head.startswith(b"HTTP/1.1 200")
            assert await asyncio.wait_for(reader.readexactly(5), 10.0) == b"hello"
            # the server side of the connection, still open (keep-alive)
            flags = [p.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP,
                                                                     socket.TCP_NODELAY)
                     for p in server.server.server_state.connections]
            writer.close()
            return flags
        finally:
            await server.stop()

    flags = asyncio.run(run())
    assert flags and all(flags), flags
