"""Group committer: packing, error fan-out, size limits, exactly-once resolution."""

import threading

import pytest

from bknr_cluster.cluster.batch import decode_batch
from bknr_cluster.cluster.commit import GroupCommitter
from bknr_cluster.errors import LeadershipLost, NotLeader, Shutdown, TooBig
from tests.support import wait_until


class FakeFuture:
    def __init__(self):
        self._done = threading.Event()
        self.error = None

    def finish(self, error=None):
        self.error = error
        self._done.set()

    def result(self, timeout=None):
        self._done.wait(timeout)
        if self.error:
            raise self.error
        return 1

    def done(self):
        return self._done.is_set()


class FakeLog:
    """Records submitted batches; futures are completed by the test."""

    def __init__(self):
        self.entries, self.futures = [], []
        self.lock = threading.Lock()

    def submit(self, data):
        f = FakeFuture()
        with self.lock:
            self.entries.append(decode_batch(data))
            self.futures.append(f)
        return f


def apply_all(gc, log, start=0):
    """Play the applier: resolve the waiters of every logged item with its record."""
    for i, (node, session, items) in enumerate(log.entries[start:], start + 1):
        for seq, rec in items:
            w = gc.take(node, session, seq)
            if w:
                w.resolve(i, rec)


def test_concurrent_records_are_packed_while_a_batch_is_in_flight():
    log = FakeLog()
    gc = GroupCommitter(log.submit, 1, window=1)
    gc.start()
    try:
        first = gc.enqueue(b"r0")
        wait_until(lambda: len(log.entries) == 1, 5, "first batch")
        waiters = [gc.enqueue(b"r%d" % i) for i in range(1, 51)]
        log.futures[0].finish()
        wait_until(lambda: len(log.entries) == 2, 5, "second batch")
        assert [r for _, r in log.entries[1][2]] == [b"r%d" % i for i in range(1, 51)]
        log.futures[1].finish()
        apply_all(gc, log)
        assert first.wait(1) and first.result == b"r0" and first.index == 1
        assert all(w.wait(1) and w.index == 2 for w in waiters)
        assert [w.result for w in waiters] == [b"r%d" % i for i in range(1, 51)]
    finally:
        gc.stop()


def test_batches_are_bounded_by_count_and_bytes():
    log = FakeLog()
    gc = GroupCommitter(log.submit, 1, window=1, max_count=4, max_bytes=4096)
    gc.start()
    try:
        gc.enqueue(b"x")
        wait_until(lambda: len(log.entries) == 1, 5, "first batch")
        for _ in range(10):
            gc.enqueue(b"y" * 1500)
        for _ in range(12):
            with log.lock:
                pending = [f for f in log.futures if not f.done()]
            for f in pending:
                f.finish()
            if sum(len(e[2]) for e in log.entries) == 11:
                break
            wait_until(lambda: any(not f.done() for f in log.futures), 5, "next batch")
        sizes = [len(e[2]) for e in log.entries[1:]]
        assert sum(sizes) == 10 and max(sizes) <= 2  # 2 * 1500 fits in 4096, 3 do not
        with pytest.raises(TooBig):
            gc.enqueue(b"z" * 5000)
    finally:
        gc.stop()


def test_a_failed_submission_fails_every_waiter_of_that_batch_once():
    log = FakeLog()
    mapped = []

    def map_error(e):
        mapped.append(e)
        return NotLeader(3, "127.0.0.1:1", leader_api="http://127.0.0.1:2") if isinstance(e, NotLeader) else e
    gc = GroupCommitter(log.submit, 1, window=1, map_error=map_error)
    gc.start()
    try:
        w0 = gc.enqueue(b"a")
        wait_until(lambda: len(log.entries) == 1, 5, "first batch")
        ws = [gc.enqueue(b"b"), gc.enqueue(b"c")]
        log.futures[0].finish(LeadershipLost("lost"))
        assert w0.wait(2) and isinstance(w0.error, LeadershipLost)
        wait_until(lambda: len(log.entries) == 2, 5, "second batch")
        log.futures[1].finish(NotLeader(3, "127.0.0.1:1"))
        for w in ws:
            assert w.wait(2) and isinstance(w.error, NotLeader) and w.error.leader_api
        apply_all(gc, log)  # a late apply of the failed entries resolves nothing twice
        assert w0.result is None and all(w.result is None for w in ws)
    finally:
        gc.stop()


def test_stop_fails_pending_waiters_and_refuses_new_ones():
    log = FakeLog()
    gc = GroupCommitter(log.submit, 1, window=1)
    gc.start()
    w = gc.enqueue(b"a")
    wait_until(lambda: len(log.entries) == 1, 5, "batch")
    log.futures[0].finish()
    gc.stop()
    assert w.wait(1) and isinstance(w.error, Shutdown)
    with pytest.raises(Shutdown):
        gc.enqueue(b"b")


def test_entries_of_another_session_are_not_ours():
    gc = GroupCommitter(FakeLog().submit, 1)
    gc.start()
    try:
        w = gc.enqueue(b"a")
        assert gc.take(1, gc.session + 1, w.seq) is None
        assert gc.take(2, gc.session, w.seq) is None
        assert gc.take(1, gc.session, w.seq) is w
        assert gc.abandon(w) is False
    finally:
        gc.stop()
