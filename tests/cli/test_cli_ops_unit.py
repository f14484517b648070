"""Fast tests of the pieces behind history and leader transfer --at."""

from __future__ import annotations

import datetime as dt

import pytest
from bknrctl.leadership import parse_when

from bknr_cluster.cluster.history import LeaderHistory, read_history
from bknr_cluster.errors import UsageError


def test_parse_when() -> None:
    now = dt.datetime(2026, 1, 2, 10, 30).timestamp()
    assert parse_when("+90", now) == now + 90 and parse_when("+2m", now) == now + 120
    assert parse_when("+1h", now) == now + 3600
    assert parse_when("11:00", now) == dt.datetime(2026, 1, 2, 11, 0).timestamp()
    assert parse_when("09:00", now) == dt.datetime(2026, 1, 3, 9, 0).timestamp()   # tomorrow
    assert parse_when("2026-01-02T12:00:00+00:00", now) == dt.datetime(
        2026, 1, 2, 12, tzinfo=dt.UTC).timestamp()
    for bad in ("soon", "25:00", "+-3"):
        with pytest.raises(UsageError):
            parse_when(bad, now)


def test_history_records_changes_with_causes_and_survives_a_restart(tmp_path) -> None:
    h = LeaderHistory(engine=None, data_dir=tmp_path, node_id=2)
    assert h.observe({"leader_id": 0, "term": 1}) is None and not h.has_leader
    first = h.observe({"leader_id": 1, "term": 2})
    assert first["old_leader"] == 0 and first["new_leader"] == 1 and first["cause"] is None
    assert h.observe({"leader_id": 1, "term": 2}) is None          # same leader: no change
    h.expect("operator transfer")
    second = h.observe({"leader_id": 3, "term": 3})
    assert second["old_leader"] == 1 and second["cause"] == "operator transfer"
    assert h.observe({"leader_id": 2, "term": 4})["cause"] is None  # a cause is used once
    assert h.leader_changes == 3
    again = LeaderHistory(engine=None, data_dir=tmp_path, node_id=2)  # restarted
    assert again.observe({"leader_id": 2, "term": 4}) is None        # already recorded
    assert [r["new_leader"] for r in read_history(tmp_path / "history.jsonl")] == [1, 3, 2]
    with open(tmp_path / "history.jsonl", "a") as f:
        f.write('{"torn')                                           # a crash mid-line
    assert len(read_history(tmp_path / "history.jsonl")) == 3
    after_crash = LeaderHistory(engine=None, data_dir=tmp_path, node_id=2)
    after_crash.observe({"leader_id": 1, "term": 5})
    assert [r["term"] for r in read_history(tmp_path / "history.jsonl")] == [2, 3, 4, 5]
