// auth_test transport: the transport-level cases (see auth_test.cpp), on loopback.
#include "harness.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

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


static std::vector<unsigned char> preamble(uint64_t proto, uint64_t id, uint64_t len) {
    std::vector<unsigned char> v;
    put_le64(v, proto); put_le64(v, id); put_le64(v, len);
    return v;
}

int transport_tests() {
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
