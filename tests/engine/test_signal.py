"""bknr_cluster._raft.Signal: the one-shot binary semaphore blocked callers wait on."""

import signal
import threading
import time

import pytest

from bknr_cluster._raft import Signal
from tests.support import wait_until


def test_a_post_before_the_wait_is_kept_and_posts_do_not_add_up():
    s = Signal()
    assert not s.posted() and not s.wait(0)
    s.post()
    s.post()
    assert s.posted()
    assert s.wait(0) and not s.posted()
    assert not s.wait(0)
    s.post()
    assert s.wait(None)       # no limit, but already posted: returns at once
    assert s.wait.__doc__


def test_a_wait_times_out_with_false_after_its_timeout():
    s = Signal()
    t0 = time.monotonic()
    assert s.wait(0.05) is False
    assert time.monotonic() - t0 >= 0.049
    assert s.wait(-1.0) is False  # a negative timeout polls
    s.post()
    assert s.wait(0.05) is True


def test_ping_pong_between_threads_loses_no_post():
    a, b = Signal(), Signal()
    rounds = 3000
    got = []

    def echo():
        for _ in range(rounds):
            if not a.wait(10):
                return
            b.post()
            got.append(1)

    t = threading.Thread(target=echo)
    t.start()
    try:
        for i in range(rounds):
            a.post()
            assert b.wait(10), f"round {i}: the echo never came"
    finally:
        a.post()
        t.join(10)
    assert len(got) == rounds


def test_each_post_wakes_exactly_one_of_several_waiters():
    s = Signal()
    stop = threading.Event()
    taken = []
    lock = threading.Lock()

    def waiter():
        while not stop.is_set():
            if s.wait(0.02):
                with lock:
                    taken.append(1)

    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for n in range(1, 21):
            s.post()
            wait_until(lambda n=n: len(taken) >= n, 10, f"post {n} taken")
            assert len(taken) == n
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert len(taken) == 20 and not s.posted()


def test_concurrent_posters_and_a_waiter_always_end_woken():
    for _ in range(200):
        s = Signal()
        posters = [threading.Thread(target=s.post) for _ in range(3)]
        for t in posters:
            t.start()
        assert s.wait(10)
        for t in posters:
            t.join(10)
        s.wait(0)               # a post that came after the wait may still be there
        assert not s.posted()


def test_wait_releases_the_gil():
    # The poster is a Python thread: it only runs if the waiting thread let go of the GIL.
    s = Signal()
    count = [0]

    def work_then_post():
        while count[0] < 100_000:
            count[0] += 1
        s.post()

    t = threading.Thread(target=work_then_post)
    t.start()
    assert s.wait(30), "the other Python thread never ran while this one waited"
    t.join(10)
    assert count[0] == 100_000


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="main only")
def test_python_signal_handlers_run_while_the_main_thread_waits():
    s = Signal()
    seen = []
    done = threading.Event()

    def handler(signum, frame):
        seen.append(signum)
        if len(seen) >= 3:    # by then the main thread is (almost surely) inside wait()
            s.post()

    def sender():
        for _ in range(500):
            if done.is_set():
                return
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
            done.wait(0.01)

    old = signal.signal(signal.SIGUSR1, handler)
    t = threading.Thread(target=sender)
    try:
        t.start()
        assert s.wait(10), "handlers did not run during the wait"
    finally:
        done.set()
        t.join(10)
        signal.signal(signal.SIGUSR1, old)
    assert len(seen) >= 3
