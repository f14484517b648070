"""python_cpu: choosing the CPU, pinning every Python thread to it and back, and a real
ClusterStore whose engine loop thread must keep every CPU."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from bknr_cluster.cluster.affinity import (
    PythonThreadPin,
    allowed_cpus,
    check_spec,
    choose_cpu,
    parse_spec,
)
from bknr_cluster.errors import UsageError
from tests.support import free_ports, wait_until

CPUS = allowed_cpus()
multi_cpu = pytest.mark.skipif(len(CPUS) < 2 or not hasattr(os, "sched_setaffinity"),
                               reason="pinning needs at least two CPUs to observe")


def test_spec_checking_and_choice():
    for good in (None, "auto", 0, 3):
        check_spec(good)
    for bad in ("fast", -1, 1.5, True):
        with pytest.raises(UsageError):
            check_spec(bad)
    cpus = [0, 2, 5]
    assert choose_cpu(None, 1, cpus) is None
    # auto spreads nodes sharing a machine over its CPUs, by node id
    assert [choose_cpu("auto", i, cpus) for i in (1, 2, 3, 4)] == [0, 2, 5, 0]
    assert choose_cpu(5, 1, cpus) == 5
    with pytest.raises(UsageError, match="not among"):
        choose_cpu(1, 1, cpus)
    assert choose_cpu("auto", 1, [0]) is None  # one CPU: nothing to gain, nothing pinned


def test_node_flag_parsing():
    assert parse_spec("auto") == "auto"
    assert parse_spec("none") is None
    assert parse_spec("1") == 1
    with pytest.raises(UsageError):
        parse_spec("first")


@pytest.fixture
def restore_affinity():
    """Whatever a test does, this process's Python threads get their CPUs back."""
    yield
    for t in threading.enumerate():
        try:
            os.sched_setaffinity(t.native_id, set(CPUS))
        except OSError:
            pass


def _cpus_of(t: threading.Thread) -> set[int]:
    return os.sched_getaffinity(t.native_id)


@multi_cpu
def test_pin_applies_to_every_python_thread_and_new_ones_inherit(restore_affinity):
    stop = threading.Event()
    before = threading.Thread(target=stop.wait, daemon=True)
    before.start()
    try:
        pin = PythonThreadPin(CPUS[1], CPUS)
        assert pin.apply() >= 2
        assert _cpus_of(threading.current_thread()) == {CPUS[1]}
        assert _cpus_of(before) == {CPUS[1]}
        after = threading.Thread(target=stop.wait, daemon=True)
        after.start()
        assert _cpus_of(after) == {CPUS[1]}
        # a thread the application pins elsewhere meanwhile is left alone by undo
        os.sched_setaffinity(after.native_id, {CPUS[0]})
        pin.undo()
        assert _cpus_of(threading.current_thread()) == set(CPUS)
        assert _cpus_of(before) == set(CPUS)
        assert _cpus_of(after) == {CPUS[0]}
        pin.undo()  # idempotent
    finally:
        stop.set()


def _native_threads() -> dict[int, set[int]]:
    """Threads of this process Python does not know (the engine's), with their CPUs."""
    python = {t.native_id for t in threading.enumerate()}
    out = {}
    for entry in os.listdir("/proc/self/task"):
        tid = int(entry)
        if tid not in python:
            try:
                out[tid] = os.sched_getaffinity(tid)
            except OSError:
                continue
    return out


@multi_cpu
def test_cluster_store_pins_python_threads_but_not_the_engine(tmp_path: Path, restore_affinity):
    from bknr_cluster.cluster.settings import ClusterSettings
    from bknr_cluster.cluster.store import ClusterStore
    from examples.bank.app import definition, open_account

    (port,) = free_ports(1)
    native_before = set(_native_threads())
    cs = ClusterStore(definition, ClusterSettings(1, f"127.0.0.1:{port}:1", tmp_path,
                                                  election_timeout_ms=200, heartbeat_ms=20,
                                                  python_cpu="auto"), start=False)
    try:
        cs.bootstrap()
        cs.start()
        assert cs.python_cpu == CPUS[0]  # node 1, auto: the first allowed CPU
        wait_until(cs.is_leader, 10, "single node leadership")
        assert cs.execute(open_account, "ann", 5)["balance"] == 5
        assert cs.status()["python_cpu"] == CPUS[0]
        assert _cpus_of(threading.current_thread()) == {CPUS[0]}
        assert _cpus_of(cs.applier.thread) == {CPUS[0]}
        engine_threads = {tid: c for tid, c in _native_threads().items() if tid not in native_before}
        assert engine_threads, "the engine started no native thread?"
        assert all(c == set(CPUS) for c in engine_threads.values()), engine_threads
        cs.set_python_cpu(None)  # at run time, both ways
        assert cs.python_cpu is None and _cpus_of(threading.current_thread()) == set(CPUS)
        assert cs.set_python_cpu(CPUS[1]) == CPUS[1]
        assert _cpus_of(cs.applier.thread) == {CPUS[1]}
    finally:
        cs.stop()
    assert cs.python_cpu is None
    assert _cpus_of(threading.current_thread()) == set(CPUS)


def test_a_bad_python_cpu_fails_at_construction(tmp_path: Path):
    from bknr_cluster.cluster.settings import ClusterSettings
    from bknr_cluster.cluster.store import ClusterStore
    from examples.bank.app import definition
    from tests.cluster.fake_engine import FakeEngine

    for bad in ("fast", max(CPUS or [0]) + 1000):
        with pytest.raises(UsageError, match="python_cpu"):
            ClusterStore(definition, ClusterSettings(1, "127.0.0.1:7001:1", tmp_path, python_cpu=bad),
                         engine_factory=FakeEngine)
