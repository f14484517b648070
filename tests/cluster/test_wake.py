"""Deferred wake-ups: counted until the woken callers run, nobody is left asleep, pacing is bounded."""

import threading

from bknr_cluster._raft import Signal
from bknr_cluster.cluster.commit import GroupCommitter
from bknr_cluster.cluster.wake import WokenCallers
from tests.cluster.test_commit import FakeLog
from tests.support import wait_until


def held_locks(n):
    return [Signal() for _ in range(n)]


def released(signals):
    return [sig.posted() for sig in signals]


def test_everyone_is_woken_at_once_and_counted_until_they_run():
    idle = []
    woken = WokenCallers(on_idle=lambda: idle.append(True))
    locks = held_locks(5)
    woken.release(locks)
    assert all(released(locks)) and woken.running == 5
    for _ in range(4):
        woken.ran()
    assert woken.running == 1 and not idle
    woken.ran()
    assert woken.running == 0 and idle == [True]


def test_a_later_batch_adds_to_the_count():
    woken = WokenCallers()
    first, second = held_locks(2), held_locks(3)
    assert woken.start(first) == first  # handed to the engine: counted, posted there
    woken.release(second)
    assert released(first + second) == [False, False, True, True, True]
    assert woken.running == 5


class Applier:
    """Plays the cluster applier on its own thread: resolves every logged record, then
    releases the deferred wake-ups at the end of each pass, as ClusterStore does."""

    def __init__(self, gc, log):
        self.gc, self.log, self.done = gc, log, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        self.gc.applier_ident = threading.get_ident()
        while not self.stop.wait(0.001):
            with self.log.lock:
                entries = self.log.entries[self.done:]
                futures = self.log.futures[self.done:]
            for i, ((node, session, items), fut) in enumerate(zip(entries, futures, strict=True),
                                                             self.done + 1):
                fut.finish()
                for seq, rec in items:
                    w = self.gc.take(node, session, seq)
                    if w is not None:
                        w.resolve(i, rec)
            self.done += len(entries)
            self.gc.release_deferred()


def test_many_blocked_callers_are_all_woken_and_counted_until_they_ran():
    log = FakeLog()
    gc = GroupCommitter(log.submit, 1, window=2)
    gc.start()
    applier = Applier(gc, log)
    applier.thread.start()
    results = {}

    def caller(k):
        for i in range(20):
            w = gc.enqueue(f"{k}:{i}".encode())
            assert gc.wait(w, 10)
            results[(k, i)] = w.result

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(40)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a caller was never woken"
        assert len(results) == 800
        assert all(results[(k, i)] == f"{k}:{i}".encode() for k, i in results)
        assert gc.woken.running == 0
        assert len(log.entries) < 800, "records were packed into shared entries"
    finally:
        applier.stop.set()
        applier.thread.join(5)
        gc.stop()


def test_a_caller_whose_time_ran_out_as_it_was_resolved_still_gets_its_result_and_is_counted():
    log = FakeLog()
    gc = GroupCommitter(log.submit, 1)
    gc.start()
    try:
        gc.applier_ident = threading.get_ident()  # this thread plays the applier
        a, b = gc.enqueue(b"a"), gc.enqueue(b"b")
        wait_until(lambda: sum(len(items) for _, _, items in log.entries) == 2, 5, "both logged")
        for seq, w in ((a.seq, a), (b.seq, b)):
            assert gc.take(1, gc.session, seq) is w
            w.resolve(7, w.seq)
        # resolved, but the wake-ups are still parked: a zero timeout cannot withdraw them
        assert not a.woken()
        outcome = {}
        t = threading.Thread(target=lambda: outcome.setdefault("a", gc.wait(a, 0.0)))
        t.start()
        gc.release_deferred()           # wakes a and b; each reports that it ran
        t.join(5)
        assert outcome == {"a": True} and a.result == a.seq
        assert gc.wait(b, 5) and b.result == b.seq
        assert gc.woken.running == 0
    finally:
        gc.stop()


def test_stop_wakes_callers_whose_wake_ups_are_still_deferred():
    log = FakeLog()
    gc = GroupCommitter(log.submit, 1)
    gc.start()
    gc.applier_ident = threading.get_ident()
    ws = [gc.enqueue(b"x") for _ in range(3)]
    wait_until(lambda: sum(len(items) for _, _, items in log.entries) == 3, 5, "all logged")
    for w in ws:
        gc.take(1, gc.session, w.seq).resolve(1, "ok")
    assert not any(w.woken() for w in ws)  # deferred to the end of the applier's slice
    gc.stop()
    assert all(w.woken() for w in ws)


def test_the_submitter_holds_back_while_woken_callers_run_but_not_longer_than_pace_hold():
    log = FakeLog()
    gc = GroupCommitter(log.submit, 1, window=4, pace_hold_s=0.05)
    gc.start()
    try:
        gc.enqueue(b"first")            # goes out at once: nothing in flight
        wait_until(lambda: len(log.entries) == 1, 5, "first entry")
        gc.woken.running = 1            # a woken caller that never runs (it hangs)
        for i in range(5):
            gc.enqueue(b"r%d" % i)
        # held while that caller is counted and "first" is in flight ...
        assert len(log.entries) == 1
        # ... but only for pace_hold_s: then the five go out together
        wait_until(lambda: len(log.entries) == 2, 5, "the held records")
        assert len(log.entries[1][2]) == 5
    finally:
        gc.woken.running = 0
        gc.stop()
