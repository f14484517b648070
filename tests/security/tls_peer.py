"""A hand-driven raft peer for the TLS transport tests: writes libraft's stock preamble, then
(optionally) a TLS 1.3 handshake with whatever certificate the test hands it, so every bad
input of docs/security.md ("TLS on the Raft transport") can be produced on purpose."""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path


def preamble(node_id: int, address: str) -> bytes:
    """libraft's connection preamble: protocol 1, the claimed id, the padded address."""
    raw = address.encode() + b"\0"
    padded = raw + b"\0" * (-len(raw) % 8)
    return struct.pack("<QQQ", 1, node_id, len(padded)) + padded


def connect(port: int, node_id: int = 9, address: str = "127.0.0.1:1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(preamble(node_id, address))
    return s


def tls_attempt(port: int, cert: Path, key: Path, *, address: str = "127.0.0.1:1") -> str:
    """Run a TLS handshake against a raft port with `cert`/`key` (the server's certificate is
    not checked: the point is what the *server* does with ours). Returns how it ended."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(cert, key)
    s = connect(port, address=address)
    try:
        with ctx.wrap_socket(s, server_hostname=None) as t:
            # TLS 1.3: the server judges our certificate after our Finished; its verdict (an
            # alert, or the connection closed) arrives on the first read.
            try:
                t.settimeout(5)
                data = t.recv(1)
                return "closed" if not data else "open"
            except (ssl.SSLError, ConnectionError) as exc:
                return f"refused: {exc}"
            except TimeoutError:
                return "open"
    except (ssl.SSLError, ConnectionError) as exc:
        return f"refused: {exc}"
