// Deterministic tests of the engine's libraft work-arounds on libraft's own in-memory cluster
// fixture (raft/fixture.h): simulated time, disk and network, no sockets, no sleeping. Run by
// tests/engine/test_rules_fixture.py, which builds it with native/rules_test/CMakeLists.txt.
//
//   rules_test SCENARIO ARM    prints one JSON object with what happened
//
// Scenarios (the Python test states the expected outcome of each arm):
//   halt_election  bknr | unhalted   the leader dies; a halted survivor never campaigns and
//                                    grants no vote, so no leader (halt_rule.cpp)
//   halt_transfer  bknr | unhalted   a leadership transfer to a halted node does not happen
//   halt_replicates bknr | unhalted  a halted node still stores entries and counts for commit
//   vote_rule      bknr | libraft    the first candidate after a leader crash wins without
//                                    waiting for the other survivor's timer (vote_rule.cpp)
//   pre_vote_retry bknr | libraft    a lost pre-vote round is re-run a heartbeat later, not
//                                    after the candidate timer (vote_rule.cpp)
//   commit_clamp   bknr | libraft    a stale AppendEntries does not lower a follower's commit
//                                    index (install_guard.cpp, bug 2)
//   pre_vote_tie   bknr | libraft    two survivors with equal logs start their pre-votes in the
//                                    same tick: the lower id wins at once, no split vote
//                                    (vote_rule.cpp, fast_election.cpp 5a)
//   kept_timeout_now bknr | libraft  a TimeoutNow that libraft ignores (the follower's log is
//                                    not up to date yet) is taken once the log catches up
//                                    (install_guard.cpp, keep_timeout_now)
//   cut_off_follower bknr | libraft  a follower cut off from a live leader (the other follower
//                                    still hears it) never raises its term, and rejoins under
//                                    the same leader and term when the link is back
//
// How the engine's code runs on fixture servers: every fixture server gets a real bknr::Node
// (never started: no loop, no sockets). Its raft_io's start is wrapped exactly as the engine
// wraps raft_uv's (install_guard.cpp), so each tick and each received message goes through
// Node::on_tick / Node::on_recv -- the production hooks, with the vote rule, the pre-vote retry,
// the halt rule and the commit clamp in them. Those methods work on the Node's own `raft_` and
// `io_` members, while the fixture owns its raft instances; so around each hook the fixture's
// struct raft is copied into the Node ("pull") and back ("push"), and the hooks' calls into
// libraft (Node::legacy_tick_ / legacy_recv_) push, run libraft on the fixture's instance and
// pull again. Only the hooks' own code ever runs on the copy, and it reads and writes plain
// fields (it follows no pointer back into the struct), so the copy is faithful. Arm "libraft"
// bypasses the hooks: stock libraft on the same scenario, the control that shows each
// work-around is what makes the difference. After every fixture event the engine's check phase
// (Node::on_check) runs too, as after each loop iteration.
//
// Files: fixture.hpp (the harness: Cluster, the hooks, pull/push), elections.cpp (the scenarios
// pre_vote_tie, kept_timeout_now, cut_off_follower), this file (the others and main).
#include "fixture.hpp"

using namespace rules;

// Node::timer_rng_ is private: this explicit instantiation defines member_of(TimerRng)
// (fixture.hpp), once for the whole program.
namespace rules {
template struct Expose<TimerRng, &bknr::Node::timer_rng_>;
}  // namespace rules

namespace {

// The leader (server 0) dies; server 2 is halted (arm "bknr") or not ("unhalted").
int halt_election(bool halted) {
    Cluster c(3, true);
    elect_first(c);
    c.step_until([] { return false; }, 3 * kHeartbeatMs);  // everyone knows the leader
    c.node(2).set_halted(halted);
    raft_time t0 = c.now();
    raft_fixture_kill(c.f(), 0);
    Seen seen(3);
    c.step_until([] { return false; }, 10 * kElectionMs, [&] { seen.note(c, t0); });
    auto st1 = c.status(1), st2 = c.status(2);
    std::printf("{\"candidate_ms\": %s, \"leader_ms\": %s, \"term_1\": %llu, "
                "\"halted_refused_votes\": %llu, \"halted_dropped\": %llu}\n",
                ids_json(seen.candidate).c_str(), ids_json(seen.leader).c_str(),
                (unsigned long long)st1.term, (unsigned long long)st2.halted_refused_votes,
                (unsigned long long)st2.halted_dropped);
    return 0;
}


// Server 2 is halted (arm "bknr") and server 1 is down: the leader's entries commit only if
// the halted replica still stores them and counts for the majority.
int halt_replicates(bool halted) {
    Cluster c(3, true);
    elect_first(c);
    c.step_until([] { return false; }, 3 * kHeartbeatMs);
    c.node(2).set_halted(halted);
    raft_fixture_kill(c.f(), 1);
    static struct raft_barrier reqs[3];
    for (auto& r : reqs)
        if (raft_barrier(c.raft(0), &r, barrier_done) != 0) std::abort();
    raft_index idx = raft_last_index(c.raft(0));
    raft_time t0 = c.now();
    bool committed = c.step_until([&] { return c.raft(0)->commit_index >= idx; }, 5 * kElectionMs);
    std::printf("{\"committed\": %s, \"commit_ms\": %lld, \"leader_now\": %u, \"last_index_2\": %llu, "
                "\"index\": %llu}\n",
                committed ? "true" : "false", committed ? (long long)(c.now() - t0) : -1LL, c.leader(),
                (unsigned long long)raft_last_index(c.raft(2)), (unsigned long long)idx);
    return 0;
}

void transfer_done(struct raft_transfer*) {}

int halt_transfer(bool halted) {
    Cluster c(3, true);
    elect_first(c);
    c.step_until([] { return false; }, 3 * kHeartbeatMs);
    c.node(2).set_halted(halted);
    raft_time t0 = c.now();
    static struct raft_transfer req;
    int rv = raft_transfer(c.raft(0), &req, c.raft(2)->id, transfer_done);
    Seen seen(3);
    c.step_until([] { return false; }, 5 * kElectionMs, [&] { seen.note(c, t0); });
    auto st2 = c.status(2);
    std::printf("{\"transfer_rv\": %d, \"candidate_ms\": %s, \"leader_ms\": %s, \"leader_now\": %u, "
                "\"halted_dropped\": %llu}\n",
                rv, ids_json(seen.candidate).c_str(), ids_json(seen.leader).c_str(), c.leader(),
                (unsigned long long)st2.halted_dropped);
    return 0;
}

// The leader (server 0) crashes after its last heartbeat to server 1 was lost, so the two
// survivors' timers expire in different ticks: the first candidate's request reaches the other
// survivor while that one still names the leader -- but has not heard it for longer than an
// election timeout.
int vote_rule(bool hooks) {
    Cluster c(3, hooks);
    elect_first(c);
    c.step_until([] { return false; }, 3 * kHeartbeatMs);
    raft_fixture_saturate(c.f(), 0, 1);
    c.step_until([] { return false; }, kHeartbeatMs);
    raft_time t0 = c.now();
    raft_fixture_kill(c.f(), 0);
    raft_fixture_desaturate(c.f(), 0, 1);
    Seen seen(3);
    c.step_until([&] { return c.leader() < 3; }, 10 * kElectionMs, [&] { seen.note(c, t0); });
    std::printf("{\"candidate_ms\": %s, \"leader_ms\": %s, \"relaxed_votes\": [0, %llu, %llu]}\n",
                ids_json(seen.candidate).c_str(), ids_json(seen.leader).c_str(),
                (unsigned long long)c.status(1).relaxed_votes, (unsigned long long)c.status(2).relaxed_votes);
    return 0;
}

// Server 2 misses an entry (it is down while server 0 commits it with server 1), comes back
// as the leader dies, and server 1's first pre-vote round is lost (the two are disconnected
// until that round was sent). Server 2's log is behind, so only server 1 can win.
int pre_vote_retry(bool hooks) {
    Cluster c(3, hooks);
    elect_first(c);
    c.step_until([] { return false; }, 3 * kHeartbeatMs);
    raft_fixture_kill(c.f(), 2);
    static struct raft_barrier req;
    if (raft_barrier(c.raft(0), &req, barrier_done) != 0) std::abort();
    raft_index idx = raft_last_index(c.raft(0));
    if (!c.step_until([&] { return raft_last_applied(c.raft(1)) >= idx; }, 2 * kElectionMs)) std::abort();
    raft_time t0 = c.now();
    raft_fixture_kill(c.f(), 0);
    raft_fixture_revive(c.f(), 2);
    raft_fixture_disconnect(c.f(), 1, 2);
    raft_fixture_disconnect(c.f(), 2, 1);
    Seen seen(3);
    auto watch = [&] { seen.note(c, t0); };
    c.step_until([&] { return raft_state(c.raft(1)) == RAFT_CANDIDATE; }, 5 * kElectionMs, watch);
    // Its pre-vote requests are flushed (and fail) within a few events; then the link is back.
    c.step_until([] { return false; }, 20, watch);
    raft_fixture_reconnect(c.f(), 1, 2);
    raft_fixture_reconnect(c.f(), 2, 1);
    c.step_until([&] { return c.leader() < 3; }, 10 * kElectionMs, watch);
    auto st1 = c.status(1);
    std::printf("{\"candidate_ms\": %s, \"leader_ms\": %s, \"pre_vote_retries_1\": %llu}\n",
                ids_json(seen.candidate).c_str(), ids_json(seen.leader).c_str(),
                (unsigned long long)st1.pre_vote_retries);
    return 0;
}

// An AppendEntries from the current leader whose last entry lies below the follower's commit
// index (a probe built from a stale view of the follower) but whose leader_commit is above it.
int commit_clamp(bool hooks) {
    Cluster c(3, hooks);
    elect_first(c);
    static struct raft_barrier reqs[5];
    for (auto& r : reqs)
        if (raft_barrier(c.raft(0), &r, barrier_done) != 0) std::abort();
    raft_index idx = raft_last_index(c.raft(0));
    if (!c.step_until([&] { return raft_last_applied(c.raft(1)) >= idx; }, 2 * kElectionMs)) std::abort();
    struct raft* follower = c.raft(1);
    raft_index before = follower->commit_index, applied = raft_last_applied(follower);
    struct raft_message m;
    std::memset(&m, 0, sizeof m);
    m.type = RAFT_APPEND_ENTRIES;
    m.server_id = c.raft(0)->id;
    m.server_address = c.raft(0)->address;
    m.append_entries.term = c.raft(0)->current_term;
    m.append_entries.prev_log_index = 2;
    m.append_entries.prev_log_term = bknr::compat::term_of(follower, 2);
    m.append_entries.leader_commit = before + 1;
    c.deliver(1, &m);
    raft_index after = follower->commit_index;
    // The cluster goes on: the follower's commit index must not go back later either.
    raft_index lowest = after;
    c.step_until([] { return false; }, 2 * kElectionMs,
                 [&] { lowest = std::min<raft_index>(lowest, follower->commit_index); });
    auto st = c.status(1);
    std::printf("{\"commit_before\": %llu, \"applied\": %llu, \"commit_after\": %llu, "
                "\"commit_lowest\": %llu, \"commit_clamps\": %llu}\n",
                (unsigned long long)before, (unsigned long long)applied, (unsigned long long)after,
                (unsigned long long)lowest, (unsigned long long)st.commit_clamps);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: rules_test SCENARIO ARM\n");
        return 2;
    }
    std::string scenario = argv[1], arm = argv[2];
    bool bknr = arm == "bknr";
    if (!bknr && arm != "libraft" && arm != "unhalted") {
        std::fprintf(stderr, "unknown arm %s\n", arm.c_str());
        return 2;
    }
    if (scenario == "halt_election") return halt_election(bknr);
    if (scenario == "halt_transfer") return halt_transfer(bknr);
    if (scenario == "halt_replicates") return halt_replicates(bknr);
    if (scenario == "vote_rule") return vote_rule(bknr);
    if (scenario == "pre_vote_retry") return pre_vote_retry(bknr);
    if (scenario == "commit_clamp") return commit_clamp(bknr);
    if (scenario == "pre_vote_tie") return pre_vote_tie(bknr);
    if (scenario == "kept_timeout_now") return kept_timeout_now(bknr);
    if (scenario == "cut_off_follower") return cut_off_follower(bknr);
    std::fprintf(stderr, "unknown scenario %s\n", scenario.c_str());
    return 2;
}
