"""The hosted application's connections: the listening socket (apphost.bind) gives them
Nagle's algorithm off, and each response reaches the kernel in one write (OneWritePerTurn).
uvicorn writes a response in two writes (status line + headers, then the body); with Nagle on,
the body waited for the peer's delayed ACK of the headers, ~40 ms on every request
(docs/performance.md, session 7)."""

from __future__ import annotations

import asyncio
import socket

from bknr_cluster.apphost import AppServer, OneWritePerTurn, bind


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
            assert all(isinstance(p.transport, OneWritePerTurn)
                       for p in server.server.server_state.connections)
            flags = [p.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP,
                                                                     socket.TCP_NODELAY)
                     for p in server.server.server_state.connections]
            writer.close()
            return flags
        finally:
            await server.stop()

    flags = asyncio.run(run())
    assert flags and all(flags), flags


class _Recorder:
    """The transport under the proxy: records each write it is given."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"extra {name}"


def test_writes_of_one_turn_reach_the_transport_as_one() -> None:
    """Headers and body written in the same turn (as uvicorn does for a Starlette response) are
    one write: a leader killed between them can no longer cut a response in two."""
    async def run() -> _Recorder:
        real = _Recorder()
        proxy = OneWritePerTurn(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        proxy.write(b"HTTP/1.1 200 OK\r\n\r\n")
        proxy.writelines([b"hel", bytearray(b"lo")])
        assert real.writes == [] and proxy.get_write_buffer_size() == 24
        await asyncio.sleep(0)  # the end of the turn
        assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nhello"]
        proxy.write(b"next")
        proxy.close()  # close flushes first
        assert real.writes[-1] == b"next" and real.closed
        assert proxy.get_extra_info("peername") == "extra peername"
        return real

    asyncio.run(run())


def test_abort_drops_unwritten_bytes_and_a_closed_transport_gets_none() -> None:
    async def run() -> None:
        real = _Recorder()
        proxy = OneWritePerTurn(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        proxy.write(b"lost")
        proxy.abort()
        await asyncio.sleep(0)
        assert real.writes == [] and real.aborted
        real2 = _Recorder()
        proxy2 = OneWritePerTurn(real2, asyncio.get_running_loop())  # type: ignore[arg-type]
        proxy2.write(b"late")
        real2.closed = True  # the peer went away before the turn ended
        await asyncio.sleep(0)
        assert real2.writes == []

    asyncio.run(run())
