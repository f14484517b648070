// The in-memory cluster harness of rules_test (see rules_test.cpp for how the engine's hooks
// run on libraft's fixture): shared by the scenario files. Test only.
#pragma once

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

namespace rules {

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

inline constexpr unsigned kElectionMs = 1000;
inline constexpr unsigned kHeartbeatMs = 100;

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

inline std::vector<Server*> g_servers;

inline Server& by_fixture_io(struct raft_io* io) {
    for (Server* s : g_servers)
        if (s->io == io) return *s;
    std::abort();
}

inline Server& by_node_io(struct raft_io* io) {
    for (Server* s : g_servers)
        if (&s->node->io_ == io) return *s;
    std::abort();
}

inline void pull(Server& s) {
    std::memcpy(&s.node->raft_, s.r, sizeof *s.r);
    s.node->io_ = *s.io;  // same impl pointer: io_.time() reads the fixture's clock
}

inline void push(Server& s) { std::memcpy(s.r, &s.node->raft_, sizeof *s.r); }

// What the engine's hooks call as "libraft" (Node::legacy_tick_ / legacy_recv_).
inline void libraft_tick(struct raft_io* node_io) {
    Server& s = by_node_io(node_io);
    push(s);
    s.tick(s.io);
    pull(s);
}

inline void libraft_recv(struct raft_io* node_io, struct raft_message* msg) {
    Server& s = by_node_io(node_io);
    push(s);
    s.recv(s.io, msg);
    pull(s);
}

// What the fixture calls: the engine's hooks (install_guard.cpp), or libraft directly.
inline void hook_tick(struct raft_io* io) {
    Server& s = by_fixture_io(io);
    if (!s.hooks) return s.tick(io);
    pull(s);
    s.node->on_tick();
    push(s);
}

inline void hook_recv(struct raft_io* io, struct raft_message* msg) {
    Server& s = by_fixture_io(io);
    if (!s.hooks) return s.recv(io, msg);
    pull(s);
    s.node->on_recv(msg);
    push(s);
}

inline int hook_start(struct raft_io* io, unsigned msecs, raft_io_tick_cb tick, raft_io_recv_cb recv) {
    Server& s = by_fixture_io(io);
    s.tick = tick;
    s.recv = recv;
    return s.fixture_start(io, msecs, hook_tick, hook_recv);
}

inline int fsm_apply(struct raft_fsm*, const struct raft_buffer*, void** result) {
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

inline std::string ids_json(const std::vector<long long>& v) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); i++) out += (i ? ", " : "") + std::to_string(v[i]);
    return out + "]";
}

inline void elect_first(Cluster& c) {
    if (!c.step_until([&] { return c.leader() == 0; }, 10 * kElectionMs)) {
        std::fprintf(stderr, "server 0 did not become the first leader\n");
        std::exit(3);
    }
}

inline void barrier_done(struct raft_barrier*, int) {}

// elections.cpp
int pre_vote_tie(bool hooks);
int kept_timeout_now(bool hooks);
int cut_off_follower(bool hooks);

}  // namespace rules
