"""The engine's libraft work-arounds, deterministically: on libraft's in-memory cluster fixture
(raft/fixture.h) with simulated time, through the engine's own receive and tick hooks
(native/rules_test/rules_test.cpp says how). No sockets, no sleeping: each scenario is one run
of a few hundred simulated milliseconds and always ends the same way.

Every scenario has a control arm: stock libraft ("libraft", the hooks bypassed) or the rule
switched off ("unhalted"). The control shows what the work-around changes; a control that stops
failing means libraft changed and the work-around may no longer be needed (native/DESIGN.md).
The real-process tests (test_vote_rule.py, test_pre_vote_retry.py, test_halt_rule.py,
test_commit_regression.py) stay: they cover the sockets and timers this fixture replaces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

SOURCE = ROOT / "native" / "rules_test"
BUILD = ROOT / "build" / "rules_test"
ELECTION_MS, HEARTBEAT_MS = 1000, 100  # rules_test.cpp


def _cmake() -> str:
    venv_cmake = Path(sys.executable).with_name("cmake")
    return str(venv_cmake) if venv_cmake.exists() else (shutil.which("cmake") or "cmake")


@pytest.fixture(scope="session")
def rules_test() -> Path:
    """The scenario program, built by CMake (incremental: a no-op when nothing changed)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if not (BUILD / "CMakeCache.txt").exists():
        gen = ["-G", "Ninja"] if shutil.which("ninja", path=env["PATH"]) else []
        r = subprocess.run([_cmake(), "-S", str(SOURCE), "-B", str(BUILD), *gen],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([_cmake(), "--build", str(BUILD)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return BUILD / "rules_test"


def run(program: Path, scenario: str, arm: str) -> dict:
    r = subprocess.run([str(program), scenario, arm], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{scenario} {arm}: exit {r.returncode}: {r.stderr[-2000:]}"
    return json.loads(r.stdout)


def never(ms: int) -> bool:
    return ms < 0


def test_runs_are_deterministic(rules_test):
    for scenario in ("vote_rule", "pre_vote_retry", "pre_vote_tie", "kept_timeout_now"):
        assert run(rules_test, scenario, "bknr") == run(rules_test, scenario, "bknr")


def test_halted_survivor_never_campaigns_and_grants_no_vote(rules_test):
    # Leader 0 dies; survivor 2 is halted. 1 needs 2's vote, which 2 never grants, and 2 never
    # campaigns itself: no leader for 10 election timeouts.
    out = run(rules_test, "halt_election", "bknr")
    assert never(out["candidate_ms"][2]), out
    assert all(never(ms) for ms in out["leader_ms"]), out
    assert out["candidate_ms"][1] >= 0 and out["halted_refused_votes"] > 0, out
    # Control: the same survivor, not halted, takes part and a leader is elected.
    ctl = run(rules_test, "halt_election", "unhalted")
    assert any(ms >= 0 for ms in ctl["leader_ms"][1:]), ctl
    assert ctl["halted_refused_votes"] == 0, ctl


def test_leadership_transfer_to_a_halted_node_does_not_happen(rules_test):
    out = run(rules_test, "halt_transfer", "bknr")
    assert out["transfer_rv"] == 0, out  # libraft accepted the request ...
    assert out["leader_now"] == 0 and never(out["candidate_ms"][2]), out  # ... 2 never ran
    assert out["halted_dropped"] >= 1, out  # the TimeoutNow was dropped
    ctl = run(rules_test, "halt_transfer", "unhalted")
    assert ctl["leader_now"] == 2 and ctl["leader_ms"][2] >= 0, ctl


def test_halted_replica_still_stores_the_log_and_counts_for_commit(rules_test):
    # The leader and the halted replica are the only live voters: the leader's entries commit
    # (in a few network round trips), as they do when the replica is not halted.
    out = run(rules_test, "halt_replicates", "bknr")
    ctl = run(rules_test, "halt_replicates", "unhalted")
    assert out["committed"] and out["leader_now"] == 0, out
    assert out["last_index_2"] >= out["index"], out
    assert out["commit_ms"] == ctl["commit_ms"] < ELECTION_MS, (out, ctl)


def test_first_candidate_wins_without_waiting_for_the_other_survivors_timer(rules_test):
    # The survivors' timers expire a tick apart. With the thesis rule, the other survivor grants
    # the first candidate's (pre-)vote because it has not heard the leader for an election
    # timeout: the first candidate wins and the other never needs to campaign.
    out = run(rules_test, "vote_rule", "bknr")
    first = min((1, 2), key=lambda i: out["candidate_ms"][i] if out["candidate_ms"][i] >= 0 else 10**9)
    other = 3 - first
    assert out["candidate_ms"][first] >= 0 and out["leader_ms"][first] >= 0, out
    assert never(out["candidate_ms"][other]), out
    assert out["relaxed_votes"][other] >= 1, out
    assert out["leader_ms"][first] - out["candidate_ms"][first] < 2 * HEARTBEAT_MS, out
    # Stock libraft: the other survivor still names the dead leader and refuses; nobody wins
    # before its own timer fires.
    ctl = run(rules_test, "vote_rule", "libraft")
    won = [ms for ms in ctl["leader_ms"] if ms >= 0]
    assert won and min(won) >= max(ctl["candidate_ms"][1:]) >= 0, \
        "libraft now grants this vote itself: " + str(ctl)
    assert min(won) - min(ms for ms in ctl["candidate_ms"] if ms >= 0) >= HEARTBEAT_MS, ctl


def test_lost_pre_vote_round_is_rerun_a_heartbeat_later(rules_test):
    # Survivor 2 is behind (it missed an entry), so only 1 can win; 1's first pre-vote round to
    # 2 is lost. The retry re-runs it on the tick after a heartbeat interval.
    out = run(rules_test, "pre_vote_retry", "bknr")
    first = out["candidate_ms"][1]
    assert first >= 0 and out["leader_ms"][1] >= 0, out
    assert out["pre_vote_retries_1"] >= 1, out
    assert out["leader_ms"][1] - first < 3 * HEARTBEAT_MS, out
    # Stock libraft re-sends only when the candidate timer fires: an election timeout or more.
    ctl = run(rules_test, "pre_vote_retry", "libraft")
    assert ctl["pre_vote_retries_1"] == 0 and ctl["leader_ms"][1] >= 0, ctl
    assert ctl["leader_ms"][1] - ctl["candidate_ms"][1] >= ELECTION_MS, \
        "libraft now re-runs a lost pre-vote round early itself: " + str(ctl)


def test_stale_append_entries_does_not_lower_the_commit_index(rules_test):
    out = run(rules_test, "commit_clamp", "bknr")
    assert out["commit_before"] == out["applied"] > 2, out
    assert out["commit_after"] == out["commit_before"] and out["commit_lowest"] == out["commit_before"], out
    assert out["commit_clamps"] == 1, out
    # Stock libraft 0.22.1 lowers the commit index below what was applied (install_guard.cpp, 2).
    ctl = run(rules_test, "commit_clamp", "libraft")
    assert ctl["commit_after"] < ctl["applied"], "libraft no longer lowers the commit index: " + str(ctl)
    assert ctl["commit_clamps"] == 0, ctl


def test_equal_log_pre_vote_tie_goes_to_the_lower_id(rules_test):
    # Both survivors time out in the same tick with equal logs and ask each other for a pre-vote
    # while in their own pre-vote round. The lower id (server 1) refuses the higher one's and
    # alone passes the pre-vote: one real election, term + 1, a leader within a round trip or two.
    out = run(rules_test, "pre_vote_tie", "bknr")
    assert out["candidate_ms"][1] == out["candidate_ms"][2] >= 0, out  # a real tie
    assert out["leader_now"] == 1 and never(out["leader_ms"][2]), out
    assert out["leader_ms"][1] - out["candidate_ms"][1] < 2 * HEARTBEAT_MS, out
    assert out["term_rise"] == 1, out
    assert out["tie_refusals"] == [0, 1, 0], out  # the lower id refused, the higher id granted
    # Stock libraft: both pass the pre-vote, the real vote splits (two terms), and the next try
    # waits for a candidate timer.
    ctl = run(rules_test, "pre_vote_tie", "libraft")
    assert ctl["candidate_ms"][1] == ctl["candidate_ms"][2] >= 0, ctl
    assert ctl["term_rise"] >= 2, "libraft no longer splits this vote: " + str(ctl)
    won = [ms for ms in ctl["leader_ms"] if ms >= 0]
    assert won and min(won) - ctl["candidate_ms"][1] >= ELECTION_MS, ctl


def test_ignored_timeout_now_is_taken_once_the_log_catches_up(rules_test):
    # The TimeoutNow names an entry follower 1 has not stored yet, so libraft ignores it on
    # arrival; the kept copy is handed over again after each loop iteration and taken as soon
    # as the entry is in: follower 1 leads a few network round trips later.
    out = run(rules_test, "kept_timeout_now", "bknr")
    assert out["ignored_at_first"] and out["follower_last"] < out["index"], out
    assert out["leader_now"] == 1 and out["timeouts_now_retried"] == 1, out
    assert 0 <= out["candidate_ms"][1] < HEARTBEAT_MS * 3 and out["leader_ms"][1] >= 0, out
    # Stock libraft drops it for good: no election, the old leader stays (the transfer would
    # time out after an election timeout).
    ctl = run(rules_test, "kept_timeout_now", "libraft")
    assert ctl["ignored_at_first"], ctl
    assert ctl["leader_now"] == 0 and never(ctl["candidate_ms"][1]), \
        "libraft now takes a TimeoutNow for an entry still in flight: " + str(ctl)
    assert ctl["timeouts_now_retried"] == 0, ctl


def test_a_follower_cut_off_from_a_live_leader_never_raises_its_term(rules_test):
    # Server 2 cannot reach the leader for 10 election timeouts while server 1 still hears it:
    # server 2's pre-votes are refused, it re-runs them (no term bump: nothing is persisted in a
    # pre-vote) and rejoins under the same leader and term once the link is back. Guards the
    # engine's hooks (thesis rule, tie rule, pre-vote retry, kept TimeoutNow) against disrupting
    # a leader that a majority still hears (issue 17: "no extra disruption").
    for arm in ("bknr", "libraft"):
        out = run(rules_test, "cut_off_follower", arm)
        assert out["candidate_ms"][2] >= 0, out  # it did time out and campaign ...
        assert out["term_rise_cut"] == 0 and out["term_rise"] == 0, out  # ... without a new term
        assert out["leader_now"] == 0 and out["follower_2"], out
    assert run(rules_test, "cut_off_follower", "bknr")["pre_vote_retries_2"] > 0
