"""The partition tooling on its own: namespaces, bridge, cutting and healing links, with a tiny
TCP echo server instead of a cluster."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.chaos.netns import Network, run
from tests.support import wait_until

ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
while True:
    c, _ = s.accept()
    c.sendall(c.recv(100)); c.close()
"""

ECHO_CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    c.settimeout(float(sys.argv[3])); c.sendall(b"ping"); ok = c.recv(100) == b"ping"
except OSError:
    ok = False
sys.exit(0 if ok else 1)
"""

PORT = 7777


def reachable(net: Network, src: str | None, dst: str, timeout: float = 0.5) -> bool:
    """Does a TCP round trip from ``src``'s namespace (None: the root namespace) to ``dst`` work?"""
    prefix = net.exec_prefix(src) if src else []
    p = subprocess.run([*prefix, sys.executable, "-c", ECHO_CLIENT, net.addr(dst), str(PORT),
                        str(timeout)], capture_output=True, timeout=30)
    return p.returncode == 0


@pytest.fixture
def net3(procs):
    with Network(["a", "b", "c"]) as net:
        for n in net.names:
            procs.start([*net.exec_prefix(n), sys.executable, "-c", ECHO_SERVER, net.addr(n), str(PORT)])
        for n in net.names:
            wait_until(lambda n=n: reachable(net, None, n), 10, f"echo server in {n}")
        yield net
        procs.stop_all()


def test_namespaces_reach_each_other_and_the_root(net3):
    for src in net3.names:
        for dst in net3.names:
            assert reachable(net3, src, dst), f"{src} -> {dst}"


def test_isolate_cuts_both_directions_and_heals(net3):
    net3.isolate("a")
    assert net3.cuts == [("a", "b"), ("a", "c")]
    assert not reachable(net3, "a", "b")
    assert not reachable(net3, "b", "a")
    assert not reachable(net3, "c", "a")
    assert reachable(net3, "b", "c")
    # Clients in the root namespace still reach the isolated node.
    assert reachable(net3, None, "a")
    net3.heal()
    assert net3.cuts == []
    assert reachable(net3, "a", "b") and reachable(net3, "b", "a")


def test_partition_groups(net3):
    net3.partition([["a", "b"], ["c"]])
    assert reachable(net3, "a", "b")
    assert not reachable(net3, "a", "c")
    assert not reachable(net3, "c", "b")


def test_ring_with_five_nodes():
    with Network([f"n{i}" for i in range(5)]) as net:
        net.ring()
        # n0's neighbours are n1 and n4; it must not reach n2 and n3
        assert net.cuts == [("n0", "n2"), ("n0", "n3"), ("n1", "n3"), ("n1", "n4"), ("n2", "n4")]


def test_teardown_removes_everything():
    net = Network(["x", "y"])
    net.setup()
    names = [net.ns("x"), net.ns("y")]
    assert set(names) <= set(run(["ip", "netns", "list"]).stdout.split())
    net.teardown()
    net.teardown()   # idempotent
    left = run(["ip", "netns", "list"]).stdout.split()
    assert not set(names) & set(left)
    assert net.bridge not in run(["ip", "-o", "link"]).stdout


def test_small_disk_fills_and_releases(tmp_path):
    import errno

    from tests.chaos.diskfull import SmallDisk

    with SmallDisk(tmp_path / "d", size_mb=4) as disk:
        disk.fill()
        with pytest.raises(OSError) as exc:
            with open(disk.path / "more", "wb") as fh:
                fh.write(b"x" * 65536)
                fh.flush()
        assert exc.value.errno == errno.ENOSPC
        disk.release()
        assert disk.free_bytes() > 3 << 20
    assert not (tmp_path / "d" / "ballast.fill").exists()   # unmounted: the tmpfs is gone
