"""The nemesis: injects one fault at a time into a ChaosCluster, holds it, heals it, and logs
each as an event (kind, target, start/end times, whether the cluster recovered).

Faults: kill -9 of the leader or a random node; a node killed, restarted and, while it catches
up (0.2-0.8 s later), the whole cluster crashed and restarted (``restart_then_crash``, the
pattern of a silent double apply found by the 22-minute run); SIGSTOP of the leader for longer
than the election timeout; a node restarted on the previous version of the application for a
while (``old_version``: it may halt on a transaction it does not know, then resumes once back
on the current version); network partitions (leader isolated, majority/minority, ring — these need the
cluster's nodes in namespaces); full-cluster crash and restart; disk full (when nodes have a
``SmallDisk`` under their data directory, mounted before the cluster was initialised).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from tests.chaos.client import call
from tests.chaos.cluster import ChaosCluster
from tests.chaos.diskfull import SmallDisk
from tests.chaos.history import OK
from tests.support import wait_until

KINDS_LOCAL = ("kill_leader", "kill_random", "pause_leader", "full_restart", "restart_then_crash",
               "old_version")
# The previous version of the chaos application (chaos_app.py: no ``append`` yet).
OLD_VERSION_ENV = {"BKNR_CHAOS_APP_VERSION": "1"}
KINDS_NET = ("isolate_leader", "majority_minority", "ring")
DISK_PAD_BYTES = 30_000_000    # more than libraft's three preallocated 8 MB segments


@dataclass
class FaultEvent:
    kind: str
    target: str
    start: float
    end: float = 0.0
    recovered: bool = True
    recovery_s: float = 0.0
    note: str = ""
    extra: dict = field(default_factory=dict)


class Nemesis:
    def __init__(self, cluster: ChaosCluster, rng: random.Random, *, hold: tuple[float, float] = (1.0, 3.0),
                 recovery_timeout: float = 30.0, disks: dict[str, SmallDisk] | None = None,
                 progress: int = 0) -> None:
        self.cluster = cluster
        self.disks = disks or {}
        self.progress = progress
        self.net = cluster.net
        self.rng = rng
        self.hold = hold
        self.recovery_timeout = recovery_timeout
        self.events: list[FaultEvent] = []
        # Called with the event after every fault has healed; returning False stops the run
        # (runner.chaos_run(check_each=True) compares digests there).
        self.after_each: Callable[[FaultEvent], bool] | None = None
        # Called while the whole cluster is down, before it restarts (e.g. to keep a copy of
        # the data directories for a post-mortem).
        self.while_down: Callable[[FaultEvent], None] | None = None
        self.election_s = cluster.election_timeout_ms / 1000.0

    # --- bookkeeping --------------------------------------------------------------------------

    def kinds(self) -> list[str]:
        kinds = list(KINDS_LOCAL)
        if self.net is not None:
            kinds += ["isolate_leader", "majority_minority"]
            if len(self.cluster.nodes) >= 5:
                kinds.append("ring")    # with 3 nodes every node neighbours every other
        if self.disks:
            kinds.append("disk_full")
        return kinds

    def counts(self) -> dict[str, int]:
        return dict(Counter(e.kind for e in self.events))

    def report(self) -> list[dict]:
        return [asdict(e) for e in self.events]

    def _hold(self) -> float:
        # always longer than an election timeout, or the fault may go unnoticed
        lo, hi = self.hold
        return max(self.rng.uniform(lo, hi), 2.5 * self.election_s)

    def _sleep(self, seconds: float) -> None:
        # holding a fault for a while is the experiment itself, not synchronisation
        threading.Event().wait(seconds)

    def _leader(self) -> str:
        return self.cluster.leader() or self.rng.choice(self.cluster.up() or list(self.cluster.nodes))

    def _pad(self, total: int, size: int = 100_000) -> int:
        """Write ``total`` bytes of large entries through the leader; returns how many acked."""
        text = "x" * size
        acked = 0
        leader = None
        for i in range(total // size):
            leader = leader or self.cluster.leader()
            if leader is None:
                continue
            out = call(self.cluster.nodes[leader].url, "/tx/pad", {"args": [f"pad{i % 8}", text]},
                       self.cluster.token, 5.0)
            acked += out.status == OK
            if out.status != OK:
                leader = None
        return acked

    def _caught_up(self, name: str, timeout: float) -> bool:
        """Does ``name`` reach the leader's commit index within ``timeout`` (no restart)?"""
        c = self.cluster
        try:
            leader = c.wait_leader(timeout)
            target = c.status(leader)["commit_index"]
            wait_until(lambda: c.status(name)["applied_index"] >= target, timeout, f"{name} catch-up")
            return True
        except (AssertionError, OSError):
            return False

    def _restart_all(self, ev: FaultEvent) -> None:
        if self.while_down is not None:
            self.while_down(ev)
        self.cluster.start_all()

    def _recover(self, ev: FaultEvent) -> None:
        """After healing: every node running, a leader elected."""
        t0 = time.monotonic()
        try:
            self.cluster.wait_leader(self.recovery_timeout)
            ev.recovered = True
        except AssertionError as exc:
            ev.recovered = False
            ev.note = str(exc)
        ev.recovery_s = round(time.monotonic() - t0, 3)

    # --- faults -------------------------------------------------------------------------------

    def inject(self, kind: str) -> FaultEvent:
        c = self.cluster
        target = "all" if kind == "full_restart" else self._leader()
        if kind == "kill_random":
            target = self.rng.choice(list(c.nodes))
        ev = FaultEvent(kind, target, time.monotonic())
        self.events.append(ev)
        try:
            if kind in ("kill_leader", "kill_random"):
                c.kill(target)
                self._sleep(self._hold())
                c.start(target)
            elif kind == "pause_leader":
                st = c.statuses([target]).get(target, {})
                ev.extra["term_before"] = st.get("term")
                c.pause(target)
                self._sleep(self._hold())
                ev.extra["leader_while_paused"] = c.leader([n for n in c.nodes if n != target])
                c.resume(target)
            elif kind == "full_restart":
                c.kill_all()
                self._sleep(self.rng.uniform(0.2, 1.0))
                self._restart_all(ev)
            elif kind == "restart_then_crash":
                target = self.rng.choice(list(c.nodes))
                ev.target = target
                c.kill(target)
                self._sleep(self._hold())
                c.start(target)
                ev.extra["crash_after_s"] = round(self.rng.uniform(0.2, 0.8), 3)
                self._sleep(ev.extra["crash_after_s"])
                c.kill_all()
                self._sleep(self.rng.uniform(0.2, 1.0))
                self._restart_all(ev)
            elif kind == "old_version":
                # A rolling upgrade gone back: the node restarts on the previous version of the
                # application. While the leader knows that, it refuses ``append`` (NotCapable);
                # an ``append`` committed before it knew makes the old node halt. Then the node
                # is "upgraded" again (restarted on the current version) and must resume with
                # nothing lost and no divergence.
                target = self.rng.choice(list(c.nodes))
                ev.target = target
                c.kill(target)
                c.start(target, env=OLD_VERSION_ENV)
                try:  # its API up (a halted node answers /status too), then the hold
                    wait_until(lambda: c.statuses([target]).get(target), 30, f"{target} API")
                except AssertionError:
                    ev.note = f"{target} on the old version did not answer /status"
                self._sleep(self._hold())
                st = c.statuses([target]).get(target, {})
                ev.extra["halted"] = st.get("halted")
                ev.extra["role_while_old"] = st.get("role")
                c.kill(target)
                c.start(target)
            elif kind == "isolate_leader":
                self.net.isolate(target)
                self._sleep(self._hold())
                self.net.heal()
            elif kind == "majority_minority":
                names = list(c.nodes)
                self.rng.shuffle(names)
                k = len(names) // 2
                minority, majority = names[:k], names[k:]
                ev.target = f"{sorted(minority)}|{sorted(majority)}"
                self.net.partition([minority, majority])
                self._sleep(self._hold())
                self.net.heal()
            elif kind == "disk_full":
                target = self.rng.choice(sorted(self.disks))
                ev.target = target
                disk = self.disks[target]
                disk.fill()
                # The log must outgrow the space libraft preallocated before the fill.
                ev.extra["pads_acked"] = self._pad(DISK_PAD_BYTES)
                ev.extra["alive_when_full"] = c.nodes[target].alive
                ev.extra["log_when_full"] = c.log_tail(target, 2)
                # Half the time the node also dies (kill -9) while its disk is full: that can
                # leave an open segment ending inside a batch, which must not keep it from
                # starting again (bknr_cluster/raft_repair.py).
                ev.extra["killed_when_full"] = self.rng.random() < 0.5
                if ev.extra["killed_when_full"]:
                    c.kill(target)
                disk.release()
                if not c.nodes[target].alive:
                    c.start(target)
                ev.extra["restart_needed"] = not self._caught_up(target, 10.0)
                if ev.extra["restart_needed"]:
                    ev.extra["log_restart_needed"] = c.log_tail(target, 3)
                    c.restart(target)
            elif kind == "ring":
                self.net.ring()
                self._sleep(self._hold())
                self.net.heal()
            else:
                raise ValueError(f"unknown fault {kind!r}")
        finally:
            # whatever happened, leave no fault behind
            if self.net is not None:
                self.net.heal()
            for disk in self.disks.values():
                disk.release()
            for name, nd in c.nodes.items():
                if nd.paused:
                    c.resume(name)
                if not nd.alive:
                    c.start(name)
            ev.end = time.monotonic()
        self._recover(ev)
        return ev

    def run(self, seconds: float, max_faults: int, quiet: tuple[float, float] = (0.5, 1.5),
            kinds: list[str] | None = None) -> None:
        """Inject random faults until the time or count budget is spent."""
        kinds = kinds or self.kinds()
        deadline = time.monotonic() + seconds
        bag: list[str] = []
        while time.monotonic() < deadline and len(self.events) < max_faults:
            # shuffled rounds over all kinds: random order, yet every kind comes up each round
            if not bag:
                bag = list(kinds)
                self.rng.shuffle(bag)
            ev = self.inject(bag.pop())
            if self.after_each is not None and not self.after_each(ev):
                break
            if self.progress and len(self.events) % self.progress == 0:
                print(f"nemesis: {len(self.events)} faults, last {ev.kind} on {ev.target} "
                      f"(recovered={ev.recovered} in {ev.recovery_s}s)", flush=True)
            self._sleep(self.rng.uniform(*quiet))
