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
// work-around is what makes the difference.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../node.hpp"

extern "C" {
#include <raft/fixture.h>
}

namespace {

// Node::timer_rng_ is private; the election timer draws must be seeded for a deterministic
// run. Explicit instantiation may name private members (a standard-conforming way in).
template <typename Tag, typename Tag::type Member>
struct Expose {
    friend typename Tag::type member_of(Tag) { return Member; }
};
struct TimerRng {
    using type = std::minstd_rand bknr::Node::*;
    friend type member_of(TimerRng);
};
template struct Expose<TimerRng, &bknr::Node::timer_rng_>;

constexpr unsigned kElectionMs = 1000;
constexpr unsigned kHeartbeatMs = 100;

struct Server {
    unsigned index = 0;
    struct raft* r = nullptr;    // the fixture's instance
    struct raft_io* io = nullptr;  // the fixture's in-memory io
    std::unique_ptr<bknr::Node> node;
    int (*fixture_start)(struct raft_io*, unsigned, raft_io_tick_cb, raft_io_recv_cb) = nullptr;
    raft_io_tick_cb tick = nullptr;  // libraft's callbacks
    raft_io_recv_cb recv = nullptr;
    bool hooks = true;  // false: stock libraft
};

std::vector<Server*> g_servers;

Server& by_fixture_io(struct raft_io* io) {
    for (Server* s : g_servers)
        if (s->io == io) return *s;
    std::abort();
}

Server& by_node_io(struct raft_io* io) {
    for (Server* s : g_servers)
        if (&s->node->io_ == io) return *s;
    std::abort();
}

void pull(Server& s) {
    std::memcpy(&s.node->raft_, s.r, sizeof *s.r);
    s.node->io_ = *s.io;  // same impl pointer: io_.time() reads the fixture's clock
}

void push(Server& s) { std::memcpy(s.r, &s.node->raft_, sizeof *s.r); }

// What the engine's hooks call as "libraft" (Node::legacy_tick_ / legacy_recv_).
void libraft_tick(struct raft_io* node_io) {
    Server& s = by_node_io(node_io);
    push(s);
    s.tick(s.io);
    pull(s);
}

void libraft_recv(struct raft_io* node_io, struct raft_message* msg) {
    Server& s = by_node_io(node_io);
    push(s);
    s.recv(s.io, msg);
    pull(s);
}

// What the fixture calls: the engine's hooks (install_guard.cpp), or libraft directly.
void hook_tick(struct raft_io* io) {
    Server& s = by_fixture_io(io);
    if (!s.hooks) return s.tick(io);
    pull(s);
    s.node->on_tick();
    push(s);
}

void hook_recv(struct raft_io* io, struct raft_message* msg) {
    Server& s = by_fixture_io(io);
    if (!s.hooks) return s.recv(io, msg);
    pull(s);
    s.node->on_recv(msg);
    push(s);
}

int hook_start(struct raft_io* io, unsigned msecs, raft_io_tick_cb tick, raft_io_recv_cb recv) {
    Server& s = by_fixture_io(io);
    s.tick = tick;
    s.recv = recv;
    return s.fixture_start(io, msecs, hook_tick, hook_recv);
}

int fsm_apply(struct raft_fsm*, const struct raft_buffer*, void** result) {
    *result = nullptr;
    return 0;
}

class Cluster {
public:
    // libraft's draws of election timeouts are the fixture's 1000 + 100 i ms (server i); the
    // engine's hooks keep followers in their bands (fast_election.cpp).
    Cluster(unsigned n, bool hooks) : servers_(n) {
        if (raft_fixture_init(&f_) != 0) std::abort();
        fsms_.resize(n);
        for (unsigned i = 0; i < n; i++) {
            std::memset(&fsms_[i], 0, sizeof fsms_[i]);
            fsms_[i].version = 1;
            fsms_[i].apply = fsm_apply;
            if (raft_fixture_grow(&f_, &fsms_[i]) != 0) std::abort();
            Server& s = servers_[i];
            s.index = i;
            s.r = raft_fixture_get(&f_, i);
            s.io = s.r->io;
            s.hooks = hooks;
            if (std::getenv("LIBRAFT_TRACE") == nullptr) s.r->tracer = nullptr;  // as the engine does
            // The engine's settings (node.cpp, setup_loop) at the test timing.
            raft_set_election_timeout(s.r, kElectionMs);
            raft_set_heartbeat_timeout(s.r, kHeartbeatMs);
            raft_set_pre_vote(s.r, true);
            raft_set_snapshot_threshold(s.r, 1u << 30);  // no snapshots: the FSM has none
            bknr::Options opts;
            opts.election_timeout_ms = kElectionMs;
            opts.heartbeat_ms = kHeartbeatMs;
            s.node = std::make_unique<bknr::Node>(s.r->id, s.r->address, "", opts);
            (s.node.get()->*member_of(TimerRng{})).seed(1 + i);
            s.node->legacy_tick_ = libraft_tick;
            s.node->legacy_recv_ = libraft_recv;
            s.fixture_start = s.io->start;
            s.io->start = hook_start;
            g_servers.push_back(&s);
        }
        struct raft_configuration conf;
        if (raft_fixture_configuration(&f_, n, &conf) != 0 || raft_fixture_bootstrap(&f_, &conf) != 0)
            std::abort();
        raft_configuration_close(&conf);
        if (raft_fixture_start(&f_) != 0) std::abort();
    }

    ~Cluster() {
        raft_fixture_close(&f_);
        g_servers.clear();
    }

    raft_fixture* f() { return &f_; }
    struct raft* raft(unsigned i) { return servers_[i].r; }
    bknr::Node& node(unsigned i) { return *servers_[i].node; }
    raft_time now() { return raft_fixture_time(&f_); }
    unsigned n() const { return static_cast<unsigned>(servers_.size()); }

    // The engine's counters as status() reports them (status.cpp), on a fresh copy.
    bknr::StatusData status(unsigned i) {
        pull(servers_[i]);
        bknr::StatusData st;
        servers_[i].node->fill_status(st);
        return st;
    }

    // Index of the alive server that is leader, or n() if none is.
    unsigned leader() {
        for (unsigned i = 0; i < n(); i++)
            if (raft_fixture_alive(&f_, i) && raft_state(raft(i)) == RAFT_LEADER) return i;
        return n();
    }

    // One fixture event at a time until `done()` or `max_ms` simulated ms passed; `watch()`
    // sees the state after every event. After each event every live server with the hooks
    // runs the engine's check phase (Node::on_check), as the loop does after each iteration:
    // that is where a kept TimeoutNow is handed to libraft again.
    bool step_until(const std::function<bool()>& done, unsigned max_ms,
                    const std::function<void()>& watch = [] {}) {
        raft_time deadline = now() + max_ms;
        while (now() < deadline) {
            raft_fixture_step(&f_);
            check_phase();
            watch();
            if (done()) return true;
        }
        return false;
    }

    void check_phase() {
        for (Server& s : servers_) {
            if (!s.hooks || !raft_fixture_alive(&f_, s.index)) continue;
            pull(s);
            s.node->on_check();
            push(s);
        }
    }

    void deliver(unsigned i, struct raft_message* msg) { hook_recv(servers_[i].io, msg); }

private:
    raft_fixture f_;
    std::vector<Server> servers_;
    std::vector<struct raft_fsm> fsms_;
};

// First time (simulated ms) each server was seen in each state after `since`.
struct Seen {
    std::vector<long long> candidate, leader;
    explicit Seen(unsigned n) : candidate(n, -1), leader(n, -1) {}
    void note(Cluster& c, raft_time since) {
        for (unsigned i = 0; i < c.n(); i++) {
            if (!raft_fixture_alive(c.f(), i)) continue;
            long long t = static_cast<long long>(c.now() - since);
            int st = raft_state(c.raft(i));
            if (st == RAFT_CANDIDATE && candidate[i] < 0) candidate[i] = t;
            if (st == RAFT_LEADER && leader[i] < 0) leader[i] = t;
        }
    }
};

std::string ids_json(const std::vector<long long>& v) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); i++) out += (i ? ", " : "") + std::to_string(v[i]);
    return out + "]";
}

void elect_first(Cluster& c) {
    if (!c.step_until([&] { return c.leader() == 0; }, 10 * kElectionMs)) {
        std::fprintf(stderr, "server 0 did not become the first leader\n");
        std::exit(3);
    }
}

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

void barrier_done(struct raft_barrier*, int) {}

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
    std::fprintf(stderr, "unknown scenario %s\n", scenario.c_str());
    return 2;
}
