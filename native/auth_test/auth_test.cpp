// Standalone test of the authenticated Raft transport (native/auth_transport.cpp), on loopback.
//
//   auth_test transport       transport-level cases (same secret, wrong secret, stock peer,
//                             silent peer, malformed preamble, overload, close mid-handshake)
//   auth_test raft <mode>     3 real raft nodes + a rogue raft node 4 that has a higher term and
//                             makes itself leader of a configuration listing 1-3 as standbys, so it
//                             sends AppendEntries to them. Modes:
//                               wrong-secret : cluster authenticated, rogue has another secret
//                               no-secret    : cluster authenticated, rogue uses stock TCP
//                               control      : everything stock TCP (expects the rogue to WIN,
//                                              proving the scenario really is an attack)
// Exit status 0 when every expectation held; each check prints one "ok"/"FAIL" line, and the
// raft mode ends with a line "RESULT {json}" read by tests/security/test_raft_transport.py.
#include "../auth_transport.hpp"

#define static_assert(...) static_assert(true, "raft.h ABI check (checked in C)")
extern "C" {
#include <raft.h>
#include <raft/uv.h>
}
#undef static_assert

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

static int failures = 0;
#define CHECK(cond, what)                                                   \
    do {                                                                    \
        if (cond) std::printf("ok   %s\n", what);                           \
        else { std::printf("FAIL %s  (%s:%d)\n", what, __FILE__, __LINE__); failures++; } \
        std::fflush(stdout);                                                \
    } while (0)

static uv_loop_t loop;

// Run the loop until pred() holds or timeout_ms passes; a repeating timer keeps it waking.
static bool run_until(const std::function<bool()>& pred, unsigned timeout_ms) {
    uv_timer_t tick;
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, [](uv_timer_t*) {}, 5, 5);
    uint64_t deadline = uv_now(&loop) + timeout_ms;
    bool ok = pred();
    while (!ok && uv_now(&loop) < deadline) {
        uv_run(&loop, UV_RUN_ONCE);
        ok = pred();
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
    uv_run(&loop, UV_RUN_NOWAIT);
    return ok;
}

static int free_port() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    socklen_t sl = sizeof sa;
    getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &sl);
    close(fd);
    return ntohs(sa.sin_port);
}

static std::string addr_of(int port) { return "127.0.0.1:" + std::to_string(port); }

static const unsigned char kSecret[] = "correct horse battery staple 0123456789";
static const unsigned char kWrong[] = "wrong horse battery staple 0123456789!";

// ------------------------------------------------------------------ transport-level

struct Endpoint {
    raft_uv_transport t{};
    std::string address;
    raft_id id = 0;
    bool auth = true;
    bool closed = false;
    // accept side
    int accepted = 0;
    raft_id last_id = 0;
    std::string last_address;
    uv_stream_t* last_stream = nullptr;
    std::string received;
};

static Endpoint* endpoint_of(raft_uv_transport* t) { return static_cast<Endpoint*>(t->data); }

static void make(Endpoint& e, raft_id id, bool auth, const unsigned char* secret, unsigned timeout_ms = 2000) {
    e.id = id;
    e.auth = auth;
    e.address = addr_of(free_port());
    e.t.version = 1;
    int rv = auth ? bknr_auth_transport_init(&e.t, &loop, secret, std::strlen(reinterpret_cast<const char*>(secret)))
                  : raft_uv_tcp_init(&e.t, &loop);
    if (rv != 0) { std::printf("FAIL transport init: %d %s\n", rv, e.t.errmsg); std::exit(2); }
    e.t.data = &e;
    if (auth) {
        bknr_auth_transport_set_timeout(&e.t, timeout_ms);
        bknr_auth_transport_set_log_prefix(&e.t, "auth-test");
    }
    e.t.init(&e.t, id, e.address.c_str());
}

static void listen(Endpoint& e) {
    int rv = e.t.listen(&e.t, [](raft_uv_transport* t, raft_id id, const char* address, uv_stream_t* s) {
        Endpoint* ep = endpoint_of(t);
        ep->accepted++;
        ep->last_id = id;
        ep->last_address = address;
        ep->last_stream = s;
        s->data = ep;
        uv_read_start(s,
                      [](uv_handle_t*, size_t n, uv_buf_t* b) { b->base = static_cast<char*>(std::malloc(n)); b->len = n; },
                      [](uv_stream_t* st, ssize_t n, const uv_buf_t* b) {
                          if (n > 0) static_cast<Endpoint*>(st->data)->received.append(b->base, static_cast<size_t>(n));
                          std::free(b->base);
                      });
    });
    if (rv != 0) { std::printf("FAIL listen: %d %s\n", rv, e.t.errmsg); std::exit(2); }
}

static void shutdown(Endpoint& e) {
    if (e.last_stream) {
        uv_read_stop(e.last_stream);
        uv_close(reinterpret_cast<uv_handle_t*>(e.last_stream), [](uv_handle_t* h) { raft_free(h); });
        e.last_stream = nullptr;
    }
    e.t.close(&e.t, [](raft_uv_transport* t) { endpoint_of(t)->closed = true; });
    bool ok = run_until([&] { return e.closed; }, 5000);
    CHECK(ok, ("transport close callback fired for node " + std::to_string(e.id)).c_str());
    if (e.auth) bknr_auth_transport_close(&e.t); else raft_uv_tcp_close(&e.t);
}

struct Dial {
    raft_uv_connect req{};
    bool done = false;
    int status = -1;
    uv_stream_t* stream = nullptr;
};

static void dial(Endpoint& from, Dial& d, const Endpoint& to) {
    d.req.data = &d;
    int rv = from.t.connect(&from.t, &d.req, to.id, to.address.c_str(), [](raft_uv_connect* r, uv_stream_t* s, int st) {
        auto* dd = static_cast<Dial*>(r->data);
        dd->done = true;
        dd->status = st;
        dd->stream = s;
    });
    if (rv != 0) { d.done = true; d.status = rv; }
}

static void drop(Dial& d) {
    if (d.stream) uv_close(reinterpret_cast<uv_handle_t*>(d.stream), [](uv_handle_t* h) { raft_free(h); });
    d.stream = nullptr;
}

static bknr_auth_stats stats(Endpoint& e) { bknr_auth_stats s{}; bknr_auth_transport_stats(&e.t, &s); return s; }

// A raw blocking TCP client, for byte-level abuse.
static int raw_connect(const Endpoint& to) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(std::stoi(to.address.substr(to.address.rfind(':') + 1))));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) { perror("connect"); std::exit(2); }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

static bool raw_closed_by_peer(int fd) {
    char buf[256];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

static void put_le64(std::vector<unsigned char>& v, uint64_t x) {
    for (int i = 0; i < 8; i++) v.push_back(static_cast<unsigned char>(x >> (8 * i)));
}

static std::vector<unsigned char> preamble(uint64_t proto, uint64_t id, uint64_t len) {
    std::vector<unsigned char> v;
    put_le64(v, proto); put_le64(v, id); put_le64(v, len);
    return v;
}

static int transport_tests() {
    Endpoint a, b, wrong, stock, quiet;
    make(a, 1, true, kSecret);
    make(b, 2, true, kSecret);
    make(wrong, 3, true, kWrong);
    make(stock, 4, false, nullptr);
    listen(a);

    // 1. Same secret: both sides hand the stream to raft, and bytes written afterwards arrive
    //    intact (the handshake consumed exactly its own bytes).
    {
        Dial d;
        dial(b, d, a);
        run_until([&] { return d.done && a.accepted == 1; }, 3000);
        CHECK(d.done && d.status == 0 && d.stream, "same secret: outgoing connection authenticated");
        CHECK(a.accepted == 1 && a.last_id == 2 && a.last_address == b.address,
              "same secret: acceptor hands raft the connector's id and address");
        if (d.stream) {
            static char msg[] = "raft-message-bytes";
            uv_buf_t buf = uv_buf_init(msg, sizeof msg - 1);
            static uv_write_t w;
            uv_write(&w, d.stream, &buf, 1, nullptr);
        }
        run_until([&] { return a.received == "raft-message-bytes"; }, 2000);
        CHECK(a.received == "raft-message-bytes", "same secret: raft bytes after the handshake arrive intact");
        drop(d);
        CHECK(stats(a).accepted == 1 && stats(b).connected == 1, "same secret: counters");
    }
    // 2. Wrong secret: the connector detects the acceptor's bad proof, neither side hands over.
    {
        Dial d;
        dial(wrong, d, a);
        run_until([&] { return d.done && stats(a).refused_in >= 1; }, 3000);
        CHECK(d.done && d.status == RAFT_NOCONNECTION && !d.stream, "wrong secret: connect fails");
        CHECK(a.accepted == 1, "wrong secret: acceptor never hands the stream to raft");
        CHECK(stats(a).refused_in == 1 && stats(wrong).refused_out == 1, "wrong secret: refusals counted");
    }
    // 3. Wrong secret at the acceptor: a genuine node connecting to an impostor listener also refuses.
    {
        listen(wrong);
        Dial d;
        dial(b, d, wrong);
        run_until([&] { return d.done; }, 3000);
        CHECK(d.done && d.status == RAFT_NOCONNECTION, "impostor acceptor: genuine connector refuses it");
        CHECK(wrong.accepted == 0, "impostor acceptor: gets no raft stream");
    }
    // 3b. Replay: relay a genuine handshake B -> A through a tap, then send the recorded bytes
    //     of B again on a fresh connection. A's new nonce makes the recorded proof worthless.
    {
        int lfd = socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
        socklen_t sl = sizeof sa;
        getsockname(lfd, reinterpret_cast<sockaddr*>(&sa), &sl);
        ::listen(lfd, 4);
        fcntl(lfd, F_SETFL, O_NONBLOCK);
        if (a.last_stream) {  // case 1's raft stream
            uv_read_stop(a.last_stream);
            uv_close(reinterpret_cast<uv_handle_t*>(a.last_stream), [](uv_handle_t* h) { raft_free(h); });
            a.last_stream = nullptr;
        }
        Endpoint tap;  // only an address: B believes node 1 lives there
        tap.id = a.id;
        tap.address = addr_of(ntohs(sa.sin_port));
        Dial d;
        int before_acc = a.accepted;
        dial(b, d, tap);
        int fb = -1;
        run_until([&] { fb = accept(lfd, nullptr, nullptr); return fb >= 0; }, 3000);
        CHECK(fb >= 0, "replay: genuine connector reached the tap");
        fcntl(fb, F_SETFL, O_NONBLOCK);
        int fa = raw_connect(a);
        std::string recorded;
        auto pump = [&](int from, int to, std::string* rec) {
            char buf[4096];
            ssize_t n = recv(from, buf, sizeof buf, 0);
            if (n > 0) { (void)!send(to, buf, static_cast<size_t>(n), MSG_NOSIGNAL); if (rec) rec->append(buf, static_cast<size_t>(n)); }
        };
        run_until([&] {
            pump(fb, fa, &recorded);
            pump(fa, fb, nullptr);
            return d.done && a.accepted == before_acc + 1;
        }, 3000);
        CHECK(d.done && d.status == 0 && a.accepted == before_acc + 1, "replay: relayed genuine handshake succeeds");
        CHECK(recorded.size() > 24 + 40, "replay: handshake bytes recorded");
        drop(d);
        close(fb);
        close(fa);
        close(lfd);
        if (a.last_stream) {  // the relayed raft stream: close it so later cases start clean
            uv_read_stop(a.last_stream);
            uv_close(reinterpret_cast<uv_handle_t*>(a.last_stream), [](uv_handle_t* h) { raft_free(h); });
            a.last_stream = nullptr;
        }
        uint64_t refused = stats(a).refused_in;
        int fr = raw_connect(a);
        (void)!write(fr, recorded.data(), recorded.size());
        bool closed = run_until([&] { return raw_closed_by_peer(fr); }, 2000);
        CHECK(closed && stats(a).refused_in == refused + 1 && a.accepted == before_acc + 1,
              "replay: recorded handshake refused on a new connection");
        close(fr);
    }
    // 4. Stock libraft TCP transport (no secret) connecting and sending raft bytes: refused
    //    as soon as the first 40 bytes are not a HELLO.
    {
        Dial d;
        int accepted_before = a.accepted;
        dial(stock, d, a);
        run_until([&] { return d.done; }, 3000);
        CHECK(d.done && d.status == 0, "stock peer: its TCP connect + preamble succeed");
        if (d.stream) {
            static char junk[64];
            std::memset(junk, 7, sizeof junk);
            uv_buf_t buf = uv_buf_init(junk, sizeof junk);
            static uv_write_t w;
            uv_write(&w, d.stream, &buf, 1, nullptr);
        }
        uint64_t before = stats(a).refused_in;
        run_until([&] { return stats(a).refused_in > before; }, 2000);
        CHECK(stats(a).refused_in == before + 1 && stats(a).timeouts == 0, "stock peer: refused without waiting for the timeout");
        CHECK(a.accepted == accepted_before, "stock peer: no raft stream");
        drop(d);
    }
    // 5. Malformed preambles are refused at once, before any allocation sized by the peer.
    {
        struct Case { const char* what; std::vector<unsigned char> bytes; };
        std::vector<unsigned char> unterminated = preamble(1, 9, 8);
        unterminated.insert(unterminated.end(), 8, 'x');
        std::vector<Case> cases = {
            {"huge address length", preamble(1, 9, uint64_t(1) << 40)},
            {"zero node id", preamble(1, 0, 16)},
            {"wrong protocol", preamble(77, 9, 16)},
            {"unterminated address", unterminated},
        };
        for (auto& c : cases) {
            uint64_t before = stats(a).refused_in;
            int fd = raw_connect(a);
            (void)!write(fd, c.bytes.data(), c.bytes.size());
            bool closed = run_until([&] { return raw_closed_by_peer(fd); }, 1500);
            CHECK(closed && stats(a).refused_in == before + 1 && stats(a).timeouts == 0,
                  (std::string("malformed preamble refused immediately: ") + c.what).c_str());
            close(fd);
        }
    }
    // 6. A silent peer is disconnected at the deadline (it cannot hold a slot).
    {
        bknr_auth_transport_set_timeout(&a.t, 300);
        int fd = raw_connect(a);
        uint64_t t0 = uv_now(&loop);
        bool closed = run_until([&] { return raw_closed_by_peer(fd); }, 3000);
        uint64_t waited = uv_now(&loop) - t0;
        CHECK(closed && stats(a).timeouts == 1, "silent peer: disconnected by the handshake timeout");
        CHECK(waited >= 250, "silent peer: not before the deadline");
        close(fd);
    }
    // 7. Overload: beyond max_pending unauthenticated connections, new ones are shed at once.
    {
        bknr_auth_transport_set_timeout(&a.t, 5000);
        bknr_auth_transport_set_max_pending(&a.t, 2);
        int f1 = raw_connect(a), f2 = raw_connect(a);
        run_until([] { return false; }, 100);  // let the loop accept them
        int f3 = raw_connect(a);
        bool shed = run_until([&] { return raw_closed_by_peer(f3); }, 1500);
        CHECK(shed, "overload: connection beyond max_pending is closed at once");
        CHECK(!raw_closed_by_peer(f1) && !raw_closed_by_peer(f2), "overload: pending handshakes keep their slots");
        // 8. Closing the transport with handshakes in flight cancels them cleanly.
        shutdown(a);
        CHECK(run_until([&] { return raw_closed_by_peer(f1) && raw_closed_by_peer(f2); }, 1500),
              "close: pending incoming handshakes are closed");
        close(f1); close(f2); close(f3);
    }
    // 9. Closing while an outgoing handshake waits on a silent acceptor: raft's connect
    //    callback still fires (RAFT_CANCELED) and the close completes.
    {
        make(quiet, 5, false, nullptr);
        int qport = std::stoi(quiet.address.substr(quiet.address.rfind(':') + 1));
        int lfd = socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_port = htons(static_cast<uint16_t>(qport));
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
        ::listen(lfd, 4);  // accepts in the kernel, never answers
        Dial d;
        dial(b, d, quiet);
        run_until([] { return false; }, 100);
        CHECK(!d.done, "silent acceptor: outgoing handshake still waiting");
        shutdown(b);
        CHECK(d.done && d.status == RAFT_CANCELED, "close: pending outgoing handshake reported as canceled");
        close(lfd);
        quiet.t.close(&quiet.t, [](raft_uv_transport* t) { endpoint_of(t)->closed = true; });
        run_until([&] { return quiet.closed; }, 2000);
        raft_uv_tcp_close(&quiet.t);
    }
    shutdown(wrong);
    shutdown(stock);
    return failures;
}

// ------------------------------------------------------------------ raft-level

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

static int raft_test(const std::string& mode) {
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

int main(int argc, char** argv) {
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    std::string what = argc > 1 ? argv[1] : "transport";
    int rc = 0;
    if (what == "transport") rc = transport_tests();
    else if (what == "raft" && argc > 2) rc = raft_test(argv[2]);
    else { std::fprintf(stderr, "usage: auth_test transport | raft wrong-secret|no-secret|control\n"); return 2; }
    // Everything we opened must be closed: a non-zero uv_loop_close means a leaked handle.
    uv_run(&loop, UV_RUN_DEFAULT);
    int lc = uv_loop_close(&loop);
    if (lc != 0)
        uv_walk(&loop, [](uv_handle_t* h, void*) {
            std::printf("     open handle: %s%s\n", uv_handle_type_name(h->type), uv_is_closing(h) ? " (closing)" : "");
        }, nullptr);
    CHECK(lc == 0, "no libuv handle leaked");
    std::printf("%s: %d failure(s)\n", what.c_str(), failures);
    return (failures || rc) ? 1 : 0;
}
