"""Raw capture of TCP payload bytes on one interface (AF_PACKET; needs root), for tests that
check what crosses the wire: loopback (``lo``) or a test bridge of tests/chaos/netns.py."""

from __future__ import annotations

import socket
import threading

ETH_P_ALL = 0x0003


class PacketCapture:
    """Collects the TCP payload of every IPv4 segment on `ifname` whose source or destination
    port is in `ports` (every port when None), until close()."""

    def __init__(self, ifname: str, ports: set[int] | None = None) -> None:
        self.ports = ports
        self.data = bytearray()
        self.segments = 0
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.sock.recv(70000)
            except TimeoutError:
                continue
            except OSError:
                return
            ip = frame[14:]  # Ethernet header (lo and bridges both use one)
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
                continue
            tcp = ip[(ip[0] & 15) * 4:]
            if len(tcp) < 20:
                continue
            src, dst = int.from_bytes(tcp[0:2], "big"), int.from_bytes(tcp[2:4], "big")
            if self.ports is None or src in self.ports or dst in self.ports:
                payload = tcp[(tcp[12] >> 4) * 4:]
                if payload:
                    self.segments += 1
                    self.data += payload

    def close(self) -> bytes:
        """Stop capturing; everything captured."""
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        return bytes(self.data)
