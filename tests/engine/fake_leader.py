"""A Raft leader in a few lines of Python, speaking libraft's TCP wire format (uv_tcp_connect.c
handshake, uv_encoding.c AppendEntries), so that tests can send exactly the messages, and close
exactly the sockets, a scenario needs instead of waiting for a real leader to do so by chance."""

from __future__ import annotations

import socket
import struct

TERM = 2
RAFT_APPEND_ENTRIES, RAFT_COMMAND = 1, 1


def payload(i: int) -> bytes:
    """Engine framing (native/node.hpp): payload, then pad bytes, the last holding their count."""
    return b"e%05d" % i + b"\x00\x02"


class FakeLeader:
    """Sends AppendEntries of term ``TERM`` to one node over one libraft TCP connection (the
    stream a libraft leader opens to each follower), as node ``my_id`` at ``my_address``."""

    def __init__(self, node_address: str, my_id: int, my_address: str) -> None:
        host, port = node_address.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        addr = my_address.encode() + b"\0"
        addr += b"\0" * (-len(addr) % 8)
        self.sock.sendall(struct.pack("<3Q", 1, my_id, len(addr)) + addr)  # handshake, protocol 1

    def append(self, prev: int, prev_term: int, commit: int, first: int = 0, n: int = 0) -> None:
        data = [payload(i) for i in range(first, first + n)]
        header = struct.pack("<4Q", TERM, prev, prev_term, commit) + struct.pack("<Q", n)
        for d in data:
            header += struct.pack("<QB3xI", TERM, RAFT_COMMAND, len(d))
        header += struct.pack("<Q", 0)  # unused
        preamble = struct.pack("<BBBBIQ", RAFT_APPEND_ENTRIES, 0, 0, 0, 0, len(header))
        self.sock.sendall(preamble + header + b"".join(data))

    def close(self) -> None:
        self.sock.close()
