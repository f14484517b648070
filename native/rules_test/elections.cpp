// Election scenarios of rules_test (issue 17): the equal-log pre-vote tie, the kept TimeoutNow,
// and a follower cut off from a live leader. The harness is fixture.hpp; the expected outcome
// of each arm is stated in tests/engine/test_rules_fixture.py.
#include "fixture.hpp"

namespace rules {


// The leader (server 0) dies and both survivors' election timers expire in the same tick with
// equal logs, so each receives the other's pre-vote request while in its own pre-vote round.
// Stock libraft grants both: both enter the real election, each votes for itself, the vote
// splits and the next try waits for a candidate timer (T..2T). With the engine's tie rule the
// higher id (server 2) is refused by the lower one (server 1), which alone passes the pre-vote.
int pre_vote_tie(bool hooks) {
    Cluster c(3, hooks);
    elect_first(c);
    c.step_until([] { return false; }, 3 * kHeartbeatMs);
    raft_term term0 = c.raft(1)->current_term;
    raft_time t0 = c.now();
    raft_fixture_kill(c.f(), 0);
    // The same heartbeat reached both (equal latency): timers that expire after exactly T run
    // out in the same tick. T itself is left alone by the engine's band (keep_timer_in_range
    // treats it as a deliberate expiry), so both arms time out together.
    if (c.raft(1)->election_timer_start != c.raft(2)->election_timer_start) {
        std::fprintf(stderr, "survivors heard the last heartbeat at different times\n");
        return 3;
    }
    for (unsigned i = 1; i < 3; i++) c.raft(i)->follower_state.randomized_election_timeout = kElectionMs;
    Seen seen(3);
    raft_term max_term = term0;
    c.step_until([&] { return c.leader() < 3; }, 10 * kElectionMs, [&] {
        seen.note(c, t0);
        for (unsigned i = 1; i < 3; i++) max_term = std::max<raft_term>(max_term, c.raft(i)->current_term);
    });
    std::printf("{\"candidate_ms\": %s, \"leader_ms\": %s, \"leader_now\": %u, \"term_rise\": %llu, "
                "\"tie_refusals\": [0, %llu, %llu]}\n",
                ids_json(seen.candidate).c_str(), ids_json(seen.leader).c_str(), c.leader(),
                (unsigned long long)(max_term - term0), (unsigned long long)c.status(1).pre_vote_tie_refusals,
                (unsigned long long)c.status(2).pre_vote_tie_refusals);
    return 0;
}

// A TimeoutNow from the leader reaches follower 1 before the last entry it names (the follower
// has not stored it yet): libraft ignores it. The engine keeps it and hands it to libraft again
// from the check phase until it is taken, within one election timeout, while the term and
// the leader are unchanged. Stock libraft drops it: follower 1 never campaigns.
int kept_timeout_now(bool hooks) {
    Cluster c(3, hooks);
    elect_first(c);
    c.step_until([] { return false; }, 3 * kHeartbeatMs);
    struct raft* leader = c.raft(0);
    static struct raft_barrier req;
    if (raft_barrier(leader, &req, barrier_done) != 0) std::abort();
    raft_index idx = raft_last_index(leader);
    raft_index follower_last = raft_last_index(c.raft(1));
    struct raft_message m;
    std::memset(&m, 0, sizeof m);
    m.type = RAFT_TIMEOUT_NOW;
    m.server_id = leader->id;
    m.server_address = leader->address;
    m.timeout_now.term = leader->current_term;
    m.timeout_now.last_log_index = idx;
    m.timeout_now.last_log_term = bknr::compat::term_of(leader, idx);
    raft_time t0 = c.now();
    c.deliver(1, &m);
    bool ignored = raft_state(c.raft(1)) == RAFT_FOLLOWER;
    Seen seen(3);
    c.step_until([&] { return c.leader() == 1; }, 2 * kElectionMs, [&] { seen.note(c, t0); });
    std::printf("{\"ignored_at_first\": %s, \"follower_last\": %llu, \"index\": %llu, "
                "\"candidate_ms\": %s, \"leader_ms\": %s, \"leader_now\": %u, "
                "\"timeouts_now_retried\": %llu}\n",
                ignored ? "true" : "false", (unsigned long long)follower_last, (unsigned long long)idx,
                ids_json(seen.candidate).c_str(), ids_json(seen.leader).c_str(), c.leader(),
                (unsigned long long)c.status(1).timeouts_now_retried);
    return 0;
}

// Server 2 loses both directions of its link to the leader (server 0) for 10 election
// timeouts; server 1 still hears the leader and refuses server 2's pre-votes (thesis rule), so
// server 2 keeps re-running pre-vote rounds without ever raising its term (nothing is
// persisted in a pre-vote). When the link is back the leader's heartbeats make it a follower
// again, under the same leader and term: no disruption.
int cut_off_follower(bool hooks) {
    Cluster c(3, hooks);
    elect_first(c);
    c.step_until([] { return false; }, 3 * kHeartbeatMs);
    raft_term term0 = c.raft(0)->current_term;
    raft_fixture_disconnect(c.f(), 0, 2);
    raft_fixture_disconnect(c.f(), 2, 0);
    raft_term max_term = term0;
    auto watch = [&] {
        for (unsigned i = 0; i < 3; i++) max_term = std::max<raft_term>(max_term, c.raft(i)->current_term);
    };
    raft_time t0 = c.now();
    Seen cut(3);
    c.step_until([] { return false; }, 10 * kElectionMs, [&] { watch(); cut.note(c, t0); });
    raft_term term_cut = max_term;
    raft_fixture_reconnect(c.f(), 0, 2);
    raft_fixture_reconnect(c.f(), 2, 0);
    c.step_until([&] { return raft_state(c.raft(2)) == RAFT_FOLLOWER &&
                              c.raft(2)->follower_state.current_leader.id == c.raft(0)->id; },
                 5 * kElectionMs, watch);
    c.step_until([] { return false; }, 2 * kElectionMs, watch);
    std::printf("{\"candidate_ms\": %s, \"term_rise_cut\": %llu, \"term_rise\": %llu, \"leader_now\": %u, "
                "\"follower_2\": %s, \"pre_vote_retries_2\": %llu}\n",
                ids_json(cut.candidate).c_str(), (unsigned long long)(term_cut - term0),
                (unsigned long long)(max_term - term0), c.leader(),
                raft_state(c.raft(2)) == RAFT_FOLLOWER &&
                        c.raft(2)->follower_state.current_leader.id == c.raft(0)->id ? "true" : "false",
                (unsigned long long)c.status(2).pre_vote_retries);
    return 0;
}

}  // namespace rules
