"""Wake-ups handed to the engine: the applier's next ``next_committed(wake=...)`` posts them
after releasing the GIL (commit.py ``engine_wake``); nobody is ever left asleep."""

from __future__ import annotations

import threading

import pytest

from bknr_cluster.cluster.commit import GroupCommitter
from bknr_cluster.cluster.settings import ClusterSettings
from bknr_cluster.cluster.store import ClusterStore
from examples.bank.app import account, definition, open_account, transfer
from tests.cluster.fake_engine import FakeEngine
from tests.cluster.test_commit import FakeLog
from tests.support import wait_until


class OldEngine(FakeEngine):
    """An engine stand-in whose next_committed does not take ``wake``."""

    def next_committed(self, max_items=256, timeout=0.1):
        return super().next_committed(max_items, timeout)


def make_store(tmp_path, factory):
    return ClusterStore(definition, ClusterSettings(1, "127.0.0.1:7001:1", tmp_path),
                        engine_factory=factory)


def run_callers(cs, threads=16, each=25):
    errors = []

    def caller(k):
        try:
            for i in range(each):
                cs.execute(transfer, f"a{k}", f"b{k}", 1, f"t{k}-{i}")
        except Exception as exc:  # reported below
            errors.append(exc)

    ts = [threading.Thread(target=caller, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not any(t.is_alive() for t in ts), "a caller was never woken"
    assert errors == []
    for k in range(threads):
        assert cs.execute(open_account, f"x{k}")["owner"] == f"x{k}"


@pytest.mark.parametrize("in_engine", [True, False])
def test_blocked_callers_are_woken_either_way(tmp_path, in_engine):
    # an engine that takes ``wake`` gets the wake-ups handed over; one that does not, never
    cs = make_store(tmp_path, FakeEngine if in_engine else OldEngine)
    try:
        for k in range(16):
            cs.execute(open_account, f"a{k}", 100)
            cs.execute(open_account, f"b{k}", 0)
        # set by the applier before it applied anything (apply.py)
        assert cs.committer.engine_wake is in_engine
        calls = cs.engine.wake_calls
        run_callers(cs)
        assert (cs.engine.wake_calls > calls) is in_engine
        assert [account(f"b{k}")["balance"] for k in range(16)] == [25] * 16
        wait_until(lambda: cs.committer.woken.running == 0, 5, "every woken caller ran")
    finally:
        cs.stop()


def test_an_engine_without_wake_gets_the_wake_ups_posted_at_the_end_of_the_slice(tmp_path):
    cs = make_store(tmp_path, OldEngine)
    try:
        for k in range(16):
            cs.execute(open_account, f"a{k}", 100)
            cs.execute(open_account, f"b{k}", 0)
        assert not cs.committer.engine_wake
        run_callers(cs)
    finally:
        cs.stop()


def applier_committer(**kw):
    """A committer whose applier (this thread) hands wake-ups to its engine."""
    log = FakeLog()
    gc = GroupCommitter(log.submit, 1, **kw)
    gc.start()
    gc.applier_ident = threading.get_ident()
    gc.engine_wake = True
    return log, gc


def resolve_all(log, gc, ws):
    wait_until(lambda: sum(len(items) for _, _, items in log.entries) == len(ws), 5, "all logged")
    for w in ws:
        gc.take(1, gc.session, w.seq).resolve(3, w.seq)
    gc.release_deferred()


def test_handed_off_wake_ups_wait_for_the_engine_and_are_counted_as_running():
    log, gc = applier_committer()
    try:
        ws = [gc.enqueue(b"x") for _ in range(3)]
        resolve_all(log, gc, ws)
        assert not any(w.woken() for w in ws), "posted with the GIL, not handed off"
        assert gc.woken.running == 3
        wake = gc.take_handoff()
        assert len(wake) == 3 and gc.take_handoff() == []
        for sig in wake:          # what next_committed does once the GIL is released
            sig.post()
        for w in ws:
            assert gc.wait(w, 5) and w.result == w.seq
        assert gc.woken.running == 0
    finally:
        gc.stop()


def test_stop_wakes_callers_whose_wake_ups_were_not_handed_to_the_engine_yet():
    log, gc = applier_committer()
    ws = [gc.enqueue(b"x") for _ in range(4)]
    resolve_all(log, gc, ws)
    assert not any(w.woken() for w in ws)
    woken = []
    ts = [threading.Thread(target=lambda w=w: woken.append(gc.wait(w, 30))) for w in ws]
    for t in ts:
        t.start()
    gc.stop()
    for t in ts:
        t.join(10)
    assert woken == [True] * 4


def test_a_timeout_racing_the_resolution_still_returns_the_outcome():
    log, gc = applier_committer()
    try:
        w = gc.enqueue(b"late")
        resolve_all(log, gc, [w])       # resolved: its wake-up sits in the hand-off
        outcome = {}
        # The caller's time runs out now: it cannot withdraw (already resolved), so it waits
        # for the wake-up that is on its way rather than report an unknown outcome.
        t = threading.Thread(target=lambda: outcome.setdefault("ok", gc.wait(w, 0.0)))
        t.start()
        wait_until(lambda: gc.abandon(w) is False and t.is_alive(), 5, "the caller waits")
        for sig in gc.take_handoff():
            sig.post()
        t.join(10)
        assert outcome == {"ok": True} and w.result == w.seq
    finally:
        gc.stop()


def test_a_withdrawn_caller_times_out_and_a_later_resolution_is_dropped():
    log, gc = applier_committer()
    try:
        w = gc.enqueue(b"gone")
        wait_until(lambda: len(log.entries) == 1, 5, "logged")
        assert gc.wait(w, 0.01) is False          # withdrawn: outcome unknown
        assert gc.take(1, gc.session, w.seq) is None
        gc.release_deferred()
        assert gc.take_handoff() == []
    finally:
        gc.stop()


def test_the_cap_posts_a_long_backlog_at_once_even_when_handing_off():
    log, gc = applier_committer(max_count=2048)
    try:
        ws = [gc.enqueue(b"") for _ in range(1100)]
        wait_until(lambda: sum(len(items) for _, _, items in log.entries) == 1100, 10, "logged")
        for w in ws:
            gc.take(1, gc.session, w.seq).resolve(3)
        # the first 1024 went out at the cap, with the GIL; the rest waits for the slice's end
        assert all(w.woken() for w in ws[:1024]) and not any(w.woken() for w in ws[1024:])
        gc.release_deferred()
        rest = gc.take_handoff()
        assert len(rest) == 76
        for sig in rest:
            sig.post()
        assert all(w.woken() for w in ws)
    finally:
        gc.stop()
