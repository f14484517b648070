// auth_test raft <mode>: real raft nodes against a rogue one (see auth_test.cpp), on loopback.
#include "harness.hpp"

#include <stdlib.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

struct Node {
    raft_id id = 0;
    std::string address, dir;
    bool auth = true;
    raft_uv_transport t{};
    raft_io io{};
    raft_fsm fsm{};
    struct raft r{};
    uint64_t applied = 0;
    bool closed = false;
};

static int fsm_apply(raft_fsm* f, const raft_buffer*, void** result) {
    static_cast<Node*>(f->data)->applied++;
    *result = nullptr;
    return 0;
}
static int fsm_snapshot(raft_fsm*, raft_buffer* bufs[], unsigned* n) {
    *bufs = static_cast<raft_buffer*>(raft_malloc(sizeof(raft_buffer)));
    (*bufs)[0].len = 8;
    (*bufs)[0].base = raft_calloc(1, 8);
    *n = 1;
    return 0;
}
static int fsm_restore(raft_fsm*, raft_buffer* buf) { raft_free(buf->base); return 0; }

static void write_metadata(const std::string& dir, uint64_t term) {
    // raft_uv's metadata file: u64le format(1), version, term, voted_for. The higher version wins.
    for (int i = 1; i <= 2; i++) {
        std::vector<unsigned char> v;
        put_le64(v, 1); put_le64(v, 100 + i); put_le64(v, term); put_le64(v, 0);
        std::string p = dir + "/metadata" + std::to_string(i);
        FILE* f = std::fopen(p.c_str(), "wb");
        std::fwrite(v.data(), 1, v.size(), f);
        std::fclose(f);
    }
}

static void node_init(Node& n, const unsigned char* secret) {
    n.t = raft_uv_transport{};
    n.io = raft_io{};
    n.r = raft{};
    n.closed = false;
    n.t.version = 1;
    int rv = n.auth ? bknr_auth_transport_init(&n.t, &loop, secret, std::strlen(reinterpret_cast<const char*>(secret)))
                    : raft_uv_tcp_init(&n.t, &loop);
    if (rv == 0 && n.auth) bknr_auth_transport_set_timeout(&n.t, 1000);
    if (rv == 0) rv = raft_uv_init(&n.io, &loop, n.dir.c_str(), &n.t);
    if (rv == 0) raft_uv_set_connect_retry_delay(&n.io, 100);
    n.fsm.version = 1;
    n.fsm.data = &n;
    n.fsm.apply = fsm_apply;
    n.fsm.snapshot = fsm_snapshot;
    n.fsm.restore = fsm_restore;
    if (rv == 0) rv = raft_init(&n.r, &n.io, &n.fsm, n.id, n.address.c_str());
    if (rv != 0) { std::printf("FAIL node %llu init: %d\n", (unsigned long long)n.id, rv); std::exit(2); }
    n.r.data = &n;
    raft_set_election_timeout(&n.r, 1000);  // generous: a loaded CI box must not elect spuriously
    raft_set_heartbeat_timeout(&n.r, 100);
    raft_set_pre_vote(&n.r, true);
}

static void node_close(Node& n) {
    raft_close(&n.r, [](struct raft* r) { static_cast<Node*>(r->data)->closed = true; });
    run_until([&] { return n.closed; }, 5000);
    raft_uv_close(&n.io);
    if (n.auth) bknr_auth_transport_close(&n.t); else raft_uv_tcp_close(&n.t);
}

static void node_start(Node& n, const std::vector<std::pair<Node*, int>>& conf, const unsigned char* secret,
                       uint64_t force_term) {
    char tmpl[] = "/tmp/bknr-auth-test-XXXXXX";
    n.dir = mkdtemp(tmpl);
    node_init(n, secret);
    raft_configuration c;
    raft_configuration_init(&c);
    for (auto& [m, role] : conf) raft_configuration_add(&c, m->id, m->address.c_str(), role);
    int rv = raft_bootstrap(&n.r, &c);
    raft_configuration_close(&c);
    if (rv != 0) { std::printf("FAIL bootstrap: %d\n", rv); std::exit(2); }
    if (force_term) {
        // raft_uv reads its metadata when initialised: rewrite it while the node is down.
        node_close(n);
        write_metadata(n.dir, force_term);
        node_init(n, secret);
    }
    rv = raft_start(&n.r);
    if (rv != 0) { std::printf("FAIL start: %d %s\n", rv, raft_errmsg(&n.r)); std::exit(2); }
}

static void node_stop(Node& n) {
    node_close(n);
    std::string cmd = "rm -rf '" + n.dir + "'";
    (void)!std::system(cmd.c_str());
}

static Node* leader_of(std::vector<Node>& ns) {
    for (auto& n : ns) if (raft_state(&n.r) == RAFT_LEADER) return &n;
    return nullptr;
}

int raft_test(const std::string& mode) {
    bool cluster_auth = mode != "control";
    bool rogue_auth = mode == "wrong-secret";
    std::vector<Node> ns(3);
    Node rogue;
    for (int i = 0; i < 3; i++) { ns[i].id = i + 1; ns[i].address = addr_of(free_port()); ns[i].auth = cluster_auth; }
    rogue.id = 4; rogue.address = addr_of(free_port()); rogue.auth = rogue_auth;
    std::vector<std::pair<Node*, int>> conf;
    for (auto& n : ns) conf.push_back({&n, RAFT_VOTER});
    for (auto& n : ns) node_start(n, conf, kSecret, 0);

    bool elected = run_until([&] {
        Node* l = leader_of(ns);
        if (!l) return false;
        for (auto& n : ns) { raft_id id; const char* a; raft_leader(&n.r, &id, &a); if (id != l->id) return false; }
        return true;
    }, 10000);
    CHECK(elected, "cluster elects one leader all members agree on");
    if (!elected) return 1;
    Node* leader = leader_of(ns);
    static struct raft_apply req;
    raft_buffer buf{raft_malloc(8), 8};
    std::memcpy(buf.base, "entry-01", 8);
    raft_apply(&leader->r, &req, &buf, 1, nullptr);
    bool replicated = run_until([&] { for (auto& n : ns) if (n.applied < 1) return false; return true; }, 5000);
    CHECK(replicated, "cluster commits and applies an entry on all members");
    raft_term term = raft_current_term(&leader->r);
    raft_index last = raft_last_index(&leader->r);
    raft_id leader_id = leader->id;

    // The rogue: term 50 on disk, sole voter of a configuration that lists 1-3 as standbys,
    // so it elects itself at once and sends them AppendEntries with term 51.
    std::vector<std::pair<Node*, int>> rconf = {{&rogue, RAFT_VOTER}};
    for (auto& n : ns) rconf.push_back({&n, RAFT_STANDBY});
    node_start(rogue, rconf, kWrong, 50);
    bool rogue_leads = run_until([&] { return raft_state(&rogue.r) == RAFT_LEADER; }, 5000);
    CHECK(rogue_leads, "rogue made itself leader of its own configuration");
    CHECK(raft_current_term(&rogue.r) >= 50, "rogue runs at term >= 50");
    // Watch for 2 s (40 heartbeats, ~20 reconnect attempts); stop early if the attack lands.
    bool disturbed = run_until([&] {
        for (auto& n : ns) if (raft_current_term(&n.r) != term) return true;
        return false;
    }, 2000);
    raft_term after_term = 0;
    raft_index after_last = 0;
    int leaders = 0;
    for (auto& n : ns) {
        after_term = std::max(after_term, raft_current_term(&n.r));
        after_last = std::max(after_last, raft_last_index(&n.r));
        leaders += raft_state(&n.r) == RAFT_LEADER;
    }
    uint64_t refused = 0;
    if (cluster_auth) for (auto& n : ns) { bknr_auth_stats s{}; bknr_auth_transport_stats(&n.t, &s); refused += s.refused_in; }
    Node* now_leader = leader_of(ns);
    std::printf("RESULT {\"mode\": \"%s\", \"term_before\": %llu, \"term_after\": %llu, \"last_before\": %llu, "
                "\"last_after\": %llu, \"leader_before\": %llu, \"leader_after\": %llu, \"refused_in\": %llu, "
                "\"disturbed\": %s}\n",
                mode.c_str(), (unsigned long long)term, (unsigned long long)after_term, (unsigned long long)last,
                (unsigned long long)after_last, (unsigned long long)leader_id,
                (unsigned long long)(now_leader ? now_leader->id : 0), (unsigned long long)refused,
                disturbed ? "true" : "false");
    if (mode == "control") {
        CHECK(disturbed && after_term >= 50, "control (no auth): the rogue's term takes over the cluster");
    } else {
        CHECK(!disturbed && after_term == term, "rogue refused: cluster term unchanged");
        CHECK(after_last == last, "rogue refused: cluster log unchanged");
        CHECK(leaders == 1 && now_leader && now_leader->id == leader_id, "rogue refused: same leader");
        CHECK(refused > 0, "rogue's connection attempts were refused and counted");
        // The cluster still works after the attack.
        static struct raft_apply req2;
        raft_buffer b2{raft_malloc(8), 8};
        std::memcpy(b2.base, "entry-02", 8);
        raft_apply(&now_leader->r, &req2, &b2, 1, nullptr);
        bool ok = run_until([&] { for (auto& n : ns) if (n.applied < 2) return false; return true; }, 5000);
        CHECK(ok, "cluster still commits after the attack");
    }
    node_stop(rogue);
    for (auto& n : ns) node_stop(n);
    return failures;
}
