"""RaftNode.submit_many: one crossing, one future, one log entry per payload (interfaces.md §1)."""

from __future__ import annotations

import pytest

from bknr_cluster.errors import NotLeader, Shutdown, TooBig, UsageError
from tests.engine.test_api import drain, single  # noqa: F401  (fixture)


def test_entries_are_consecutive_and_in_order(single):  # noqa: F811
    datas = [b"m%d" % i for i in range(300)] + [b"", bytearray(b"odd"), memoryview(b"1234567")]
    first = single.submit_many(datas).result(10)
    entries = [x for x in drain(single, len(datas)) if x[0] == "entry"]
    assert [(i, d) for _, i, _, d in entries] == [(first + k, bytes(d)) for k, d in enumerate(datas)]
    # Each payload is its own log entry: the next submit lands right after the batch.
    assert single.submit(b"after").result(5) == first + len(datas)
    # Batches from several calls keep their order too.
    futs = [single.submit_many([b"a%d" % k, b"b%d" % k]) for k in range(50)]
    firsts = [f.result(10) for f in futs]
    assert firsts == list(range(firsts[0], firsts[0] + 100, 2))


def test_refusals_log_nothing(single):  # noqa: F811
    before = single.submit(b"before").result(5)
    with pytest.raises(TooBig):  # one oversized payload refuses the whole batch
        single.submit_many([b"ok", b"x" * 1025]).result(5)
    with pytest.raises(UsageError):
        single.submit_many([])
    with pytest.raises(TypeError):
        single.submit_many([b"ok", "not bytes"])  # type: ignore[list-item]
    assert single.submit(b"next").result(5) == before + 1
    single.stop()
    with pytest.raises(Shutdown):
        single.submit_many([b"x"]).result(1)


def test_follower_refuses_the_batch_with_leader_hint(leader_and_follower):
    leader, follower = leader_and_follower
    last = follower.status()["last_log_index"]
    with pytest.raises(NotLeader) as e:
        follower.submit_many([b"x", b"y"]).result(5)
    assert e.value.leader_id == leader.node_id
    assert follower.status()["last_log_index"] == last
