"""A private test network: one network namespace per node, joined by veth pairs to a bridge the
test creates, with links cut by nftables inside the namespaces.

Addresses come from 10.213.<k>.0/24 on that bridge only (k picked unused on this machine), the
namespaces have no default route, so no traffic ever leaves the machine.  The bridge has an
address too, so clients in the root namespace reach every node's API — partitions cut node to
node traffic only, like a switch failure between servers, not between a client and a server.

Everything is named ``bkc<tag>...`` where ``tag`` encodes the creating process id; teardown removes
exactly those names, and ``cleanup_stale`` removes leftovers of runs whose process is dead.
Needs root, iproute2 and nft; a missing feature raises ``NetworkUnavailable`` with the reason.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence

PREFIX = "bkc"
SUBNET_BASE = "10.213"
TABLE = "bkchaos"


class NetworkUnavailable(RuntimeError):
    """The kernel or the tools cannot provide what the partition tests need."""


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def run(args: Sequence[str], check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(list(args), capture_output=True, text=True, input=input, timeout=30)
    if check and p.returncode != 0:
        raise NetworkUnavailable(f"`{' '.join(args)}` failed ({p.returncode}): "
                                 f"{(p.stderr or p.stdout).strip()}")
    return p


def require_tools() -> None:
    if os.geteuid() != 0:
        raise NetworkUnavailable("network namespaces need root (the partition tests run as root in CI)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            raise NetworkUnavailable(f"`{tool}` is not installed (Debian: iproute2 / nftables)")


def _used_subnets() -> set[int]:
    out = run(["ip", "-o", "-4", "addr", "show"], check=False).stdout
    used = {int(m) for m in re.findall(rf"inet {re.escape(SUBNET_BASE)}\.(\d+)\.", out)}
    routes = run(["ip", "-4", "route", "show"], check=False).stdout
    used |= {int(m) for m in re.findall(rf"{re.escape(SUBNET_BASE)}\.(\d+)\.", routes)}
    return used


def cleanup_stale() -> list[str]:
    """Remove namespaces and bridges left by earlier runs whose creating process is gone."""
    removed = []
    names = run(["ip", "netns", "list"], check=False).stdout.split()
    links = re.findall(r"^\d+: ([^:@]+)", run(["ip", "-o", "link"], check=False).stdout, re.M)
    for name in set(names) | set(links):
        m = re.match(rf"^{PREFIX}([0-9a-z]+)_[0-9a-z]+(?:-|br$|v\d+$)", name)
        if not m:
            continue
        pid = int(m.group(1), 36)
        try:
            os.kill(pid, 0)
            continue                     # its run is still alive: not ours to touch
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        if name in names:
            run(["ip", "netns", "del", name], check=False)
        else:
            run(["ip", "link", "del", name], check=False)
        removed.append(name)
    return removed


class Network:
    """Namespaces ``ns(name)`` for ``names``, addresses ``addr(name)``, and link cutting."""

    _seq = itertools.count()

    def __init__(self, names: Iterable[str]) -> None:
        self.names = list(names)
        if len(self.names) > 200:
            raise ValueError("at most 200 nodes")
        # pid + a per-process counter keeps concurrent tests (and runs) apart
        self.tag = f"{_b36(os.getpid())}_{_b36(next(self._seq))}"
        self.bridge = f"{PREFIX}{self.tag}br"
        if len(self.bridge) > 15:
            raise NetworkUnavailable(f"interface name {self.bridge} too long")
        self.subnet: int | None = None
        self._blocked: set[frozenset[str]] = set()
        self._up = False

    # -- naming -------------------------------------------------------------------------------

    def ns(self, name: str) -> str:
        return f"{PREFIX}{self.tag}-{name}"

    def addr(self, name: str) -> str:
        if self.subnet is None:
            raise RuntimeError("network not set up")
        return f"{SUBNET_BASE}.{self.subnet}.{self.names.index(name) + 1}"

    @property
    def gateway(self) -> str:
        return f"{SUBNET_BASE}.{self.subnet}.254"

    def exec_prefix(self, name: str) -> list[str]:
        """Prefix a command line with this to run it inside ``name``'s namespace (``ip netns
        exec`` execs the command, so the PID we get is the command's own)."""
        return ["ip", "netns", "exec", self.ns(name)]

    def _veth(self, i: int) -> str:
        return f"{PREFIX}{self.tag}v{i}"

    # -- lifecycle ------------------------------------------------------------------------------

    def setup(self) -> Network:
        require_tools()
        cleanup_stale()
        free = sorted(set(range(1, 250)) - _used_subnets())
        if not free:
            raise NetworkUnavailable(f"no free {SUBNET_BASE}.x.0/24 subnet")
        self.subnet = free[0]
        self._up = True        # from here on teardown has something to remove
        try:
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
            run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
            run(["ip", "link", "set", self.bridge, "up"])
            for i, name in enumerate(self.names):
                ns = self.ns(name)
                run(["ip", "netns", "add", ns])
                run(["ip", "link", "add", self._veth(i), "type", "veth", "peer", "name", "eth0",
                     "netns", ns])
                run(["ip", "link", "set", self._veth(i), "master", self.bridge, "up"])
                run(["ip", "-n", ns, "addr", "add", f"{self.addr(name)}/24", "dev", "eth0"])
                run(["ip", "-n", ns, "link", "set", "eth0", "up"])
                run(["ip", "-n", ns, "link", "set", "lo", "up"])
                self._nft(name, f"""
table inet {TABLE} {{
  set blocked {{ type ipv4_addr; }}
  chain input {{ type filter hook input priority 0; policy accept; ip saddr @blocked drop; }}
  chain output {{ type filter hook output priority 0; policy accept; ip daddr @blocked drop; }}
}}""")
        except BaseException:
            self.teardown()
            raise
        return self

    def teardown(self) -> None:
        """Remove exactly what setup created (idempotent; safe after a partial setup)."""
        if not self._up:
            return
        existing = set(run(["ip", "netns", "list"], check=False).stdout.split())
        for name in self.names:
            if self.ns(name) in existing:
                # deleting the namespace deletes its veth end, and with it the peer
                run(["ip", "netns", "del", self.ns(name)], check=False)
        for i in range(len(self.names)):
            run(["ip", "link", "del", self._veth(i)], check=False)
        run(["ip", "link", "del", self.bridge], check=False)
        self._up = False

    def __enter__(self) -> Network:
        return self.setup()

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # -- faults --------------------------------------------------------------------------------

    def _nft(self, name: str, script: str) -> None:
        run(["ip", "netns", "exec", self.ns(name), "nft", "-f", "-"], input=script)

    def _sync(self) -> None:
        for name in self.names:
            peers = sorted(self.addr(o) for o in self.names
                           if o != name and frozenset((name, o)) in self._blocked)
            script = f"flush set inet {TABLE} blocked\n"
            if peers:
                script += f"add element inet {TABLE} blocked {{ {', '.join(peers)} }}\n"
            self._nft(name, script)

    def cut(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Drop all traffic, both ways, between each pair (added to the current cuts)."""
        for a, b in pairs:
            if a == b:
                raise ValueError("cannot cut a node from itself")
            self._blocked.add(frozenset((a, b)))
        self._sync()

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        """Nodes talk only within their group; replaces any earlier cuts."""
        self._blocked.clear()
        self.cut((a, b) for g1, g2 in itertools.combinations(groups, 2) for a in g1 for b in g2)

    def isolate(self, name: str) -> None:
        self.partition([[name], [n for n in self.names if n != name]])

    def ring(self) -> None:
        """Each node reaches only its two ring neighbours: with 5 nodes every node sees a
        majority (itself + 2) yet no two nodes see the same one."""
        n = len(self.names)
        self._blocked.clear()
        pairs = [(self.names[i], self.names[j]) for i, j in itertools.combinations(range(n), 2)
                 if (j - i) % n not in (1, n - 1)]
        self.cut(pairs)

    def heal(self) -> None:
        self._blocked.clear()
        self._sync()

    @property
    def cuts(self) -> list[tuple[str, str]]:
        return sorted(tuple(sorted(p)) for p in self._blocked)
