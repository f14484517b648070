// Authenticated Raft transport (see auth_transport.hpp and docs/security.md).
//
// Wire sequence on every connection (C = connecting node, A = accepting node):
//   1. C -> A  libraft's stock preamble: u64le protocol(1), u64le C's id, u64le padded length,
//              C's address (NUL-terminated, zero padded to 8). Written by raft_uv_tcp's connect,
//              which we reuse; A parses it with our own bounded reader (see below).
//   2. C -> A  HELLO_C  = "BKNRAUC1" | nonce_c[32]
//   3. A -> C  HELLO_A  = "BKNRAUA1" | nonce_a[32] | mac_a[32]
//   4. C -> A  PROOF_C  = mac_c[32]                        (only after C verified mac_a)
//   mac_x = HMAC-SHA256(secret, "bknr-raft-auth/1 " label_x | nonce_c | nonce_a | u64be C id |
//                               u64be A id | u32be len | C address)
// Only after step 4 verified (A) / step 4 written (C) is the stream handed to raft. The distinct
// labels stop reflection, the two fresh nonces stop replay, the ids and address bind the proof
// to the claimed identities (a member cannot be impersonated by replaying another's proof).
//
// Why the stock preamble comes first: we wrap raft_uv_tcp for outgoing connections, and it
// writes the preamble before it hands the stream over, so it is necessarily first on the wire.
// But we do NOT use raft_uv_tcp's listener: it reads the preamble with no deadline, trusts a
// peer-chosen address length and passes the address to raft (strcpy) without checking the NUL,
// all before any authentication. Our listener reads the same preamble with hard bounds and the
// handshake deadline, so an unauthenticated peer never reaches libraft code.
//
// Everything runs on the loop thread with async reads/writes; reads ask libuv for exactly the
// bytes of the current message, so nothing the peer sends after the handshake is consumed here.

#include "auth_transport.hpp"

// raft.h's ABI self-checks are C-only (sizeof of an anonymous struct); neutralise them while
// including, exactly as native/raft_compat.hpp does.
#define static_assert(...) static_assert(true, "raft.h ABI check (checked in C)")
extern "C" {
#include <raft.h>
#include <raft/uv.h>
}
#undef static_assert
#include <uv.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <arpa/inet.h>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <list>
#include <new>
#include <netdb.h>
#include <string>
#include <vector>

namespace {

constexpr size_t kNonce = 32;
constexpr size_t kMac = 32;
constexpr size_t kMagic = 8;
constexpr size_t kPreamble = 24;
constexpr uint64_t kProtocol = 1;         // libraft's UV__TCP_HANDSHAKE_PROTOCOL
constexpr size_t kMaxAddress = 512;       // padded address length we accept in a preamble
constexpr char kMagicC[] = "BKNRAUC1";
constexpr char kMagicA[] = "BKNRAUA1";
constexpr size_t kHelloC = kMagic + kNonce;
constexpr size_t kHelloA = kMagic + kNonce + kMac;
constexpr int kLogBurst = 5;              // stderr lines per second before suppression

struct Auth;

enum class Step { Connecting, Preamble, Address, HelloC, HelloA, ProofC, Done, Failed };

struct Handshake {
    Auth* a = nullptr;
    bool outgoing = false;
    Step step = Step::Connecting;
    uv_tcp_t* tcp = nullptr;              // raft_malloc'd: raft frees it with raft_free
    uv_timer_t timer{};
    int open_handles = 0;                 // handles still to be closed before we free this
    int writes_pending = 0;
    bool verified = false;
    int fail_status = RAFT_NOCONNECTION;  // reported to raft's connect callback on failure
    // outgoing
    raft_uv_connect* outer_req = nullptr;
    raft_uv_connect inner_req{};
    // identities bound into the MAC
    raft_id c_id = 0, a_id = 0;
    std::string c_address;
    std::string peer;                     // for log lines
    // reading
    unsigned char* rdst = nullptr;
    size_t rlen = 0, rgot = 0;
    unsigned char preamble[kPreamble]{};
    std::vector<unsigned char> addrbuf;
    unsigned char in[kHelloA]{};
    unsigned char nonce_c[kNonce]{}, nonce_a[kNonce]{};
    // writing (a handshake writes at most one message per direction, so one buffer each)
    unsigned char out[kHelloA]{};
    uv_write_t wreq{};
};

struct Auth {
    raft_uv_transport* outer = nullptr;
    raft_uv_transport inner{};            // stock TCP transport, used for connect() only
    uv_loop_t* loop = nullptr;
    std::vector<unsigned char> secret;
    raft_id id = 0;
    std::string address, bind_address, log_prefix = "bknr-auth";
    unsigned timeout_ms = BKNR_AUTH_DEFAULT_TIMEOUT_MS;
    unsigned max_pending = BKNR_AUTH_DEFAULT_MAX_PENDING;
    unsigned pending_in = 0;
    uv_tcp_t listener{};
    bool listener_open = false;
    raft_uv_accept_cb accept_cb = nullptr;
    bool closing = false, inner_closed = false, close_fired = false;
    raft_uv_transport_close_cb close_cb = nullptr;
    std::list<Handshake*> live;
    bknr_auth_stats stats{};
    uint64_t log_second = 0;
    int log_count = 0;
    uint64_t log_suppressed = 0;
};

Auth* impl(const raft_uv_transport* t) { return static_cast<Auth*>(t->impl); }

// One stderr line per refusal, rate limited so a hostile peer cannot flood the log.
void auth_log(Auth* a, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void auth_log(Auth* a, const char* fmt, ...) {
    uint64_t sec = uv_now(a->loop) / 1000;
    if (sec != a->log_second) { a->log_second = sec; a->log_count = 0; }
    if (++a->log_count > kLogBurst) { a->log_suppressed++; return; }
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (a->log_suppressed) {
        fprintf(stderr, "%s[node %llu]: %s (%llu similar lines suppressed)\n", a->log_prefix.c_str(),
                (unsigned long long)a->id, msg, (unsigned long long)a->log_suppressed);
        a->log_suppressed = 0;
    } else {
        fprintf(stderr, "%s[node %llu]: %s\n", a->log_prefix.c_str(), (unsigned long long)a->id, msg);
    }
}

void maybe_fire_close(Auth* a) {
    if (!a->closing || a->close_fired || !a->inner_closed || a->listener_open || !a->live.empty()) return;
    a->close_fired = true;
    // The callback may free the transport object: touch nothing afterwards.
    if (a->close_cb) a->close_cb(a->outer);
}

void put_be(std::vector<unsigned char>& v, uint64_t x, int bytes) {
    for (int i = bytes - 1; i >= 0; i--) v.push_back(static_cast<unsigned char>(x >> (8 * i)));
}

void compute_mac(const Handshake* h, const char* label, unsigned char out[kMac]) {
    std::vector<unsigned char> msg;
    static const char kDomain[] = "bknr-raft-auth/1 ";
    msg.insert(msg.end(), kDomain, kDomain + sizeof kDomain - 1);
    msg.insert(msg.end(), label, label + std::strlen(label));
    msg.insert(msg.end(), h->nonce_c, h->nonce_c + kNonce);
    msg.insert(msg.end(), h->nonce_a, h->nonce_a + kNonce);
    put_be(msg, h->c_id, 8);
    put_be(msg, h->a_id, 8);
    put_be(msg, h->c_address.size(), 4);
    msg.insert(msg.end(), h->c_address.begin(), h->c_address.end());
    unsigned int n = 0;
    HMAC(EVP_sha256(), h->a->secret.data(), static_cast<int>(h->a->secret.size()), msg.data(), msg.size(),
         out, &n);
}

const char* who(const Handshake* h, char* buf, size_t n) {
    if (h->outgoing)
        snprintf(buf, n, "outgoing connection to node %llu at %s", (unsigned long long)h->a_id, h->peer.c_str());
    else if (h->c_id)
        snprintf(buf, n, "incoming connection from %s (claims node %llu at %s)", h->peer.c_str(),
                 (unsigned long long)h->c_id, h->c_address.c_str());
    else
        snprintf(buf, n, "incoming connection from %s", h->peer.c_str());
    return buf;
}

void handle_closed(uv_handle_t* handle);

// Tear the handshake down. `reason` == nullptr means a quiet cancel (transport closing).
void fail(Handshake* h, const char* reason, bool timeout = false) {
    if (h->step == Step::Failed || h->step == Step::Done) return;
    Auth* a = h->a;
    h->step = Step::Failed;
    if (reason) {
        char buf[700];
        auth_log(a, "refused %s: %s", who(h, buf, sizeof buf), reason);
        if (timeout) a->stats.timeouts++;
        if (h->outgoing) a->stats.refused_out++; else a->stats.refused_in++;
    }
    if (a->closing) h->fail_status = RAFT_CANCELED;
    uv_timer_stop(&h->timer);
    h->open_handles = 1;
    uv_close(reinterpret_cast<uv_handle_t*>(&h->timer), handle_closed);
    if (h->tcp) {
        h->open_handles++;
        h->tcp->data = h;
        // Pending writes complete with UV_ECANCELED before this close callback runs.
        uv_close(reinterpret_cast<uv_handle_t*>(h->tcp), handle_closed);
    }
}

void handle_closed(uv_handle_t* handle) {
    auto* h = static_cast<Handshake*>(handle->data);
    if (--h->open_handles > 0) return;
    Auth* a = h->a;
    if (h->step == Step::Failed) {
        if (h->tcp) raft_free(h->tcp);
        if (!h->outgoing) a->pending_in--;
        if (h->outgoing) h->outer_req->cb(h->outer_req, nullptr, h->fail_status);
    }
    a->live.remove(h);
    delete h;
    maybe_fire_close(a);
}

void timer_cb(uv_timer_t* timer) {
    auto* h = static_cast<Handshake*>(timer->data);
    fail(h, "handshake timed out", true);
}

// Hand the authenticated stream to raft. The timer handle is closed afterwards; the
// Handshake is freed in its close callback (it no longer owns the stream).
void succeed(Handshake* h) {
    Auth* a = h->a;
    h->step = Step::Done;
    uv_timer_stop(&h->timer);
    h->open_handles = 1;
    uv_close(reinterpret_cast<uv_handle_t*>(&h->timer), handle_closed);
    // Raft traffic is small request/response messages: Nagle plus delayed ACKs would add up to
    // 40 ms to a pipelined append (measured: 16-caller p99 43 ms -> 15 ms with it off).
    uv_tcp_nodelay(h->tcp, 1);
    auto* stream = reinterpret_cast<uv_stream_t*>(h->tcp);
    stream->data = nullptr;
    h->tcp = nullptr;
    if (h->outgoing) {
        a->stats.connected++;
        h->outer_req->cb(h->outer_req, stream, 0);
    } else {
        a->pending_in--;
        a->stats.accepted++;
        a->accept_cb(a->outer, h->c_id, h->c_address.c_str(), stream);
    }
}

void maybe_succeed(Handshake* h) {
    if (h->step != Step::Failed && h->verified && h->writes_pending == 0) succeed(h);
}

void on_message(Handshake* h);

void alloc_cb(uv_handle_t* handle, size_t, uv_buf_t* buf) {
    auto* h = static_cast<Handshake*>(handle->data);
    // Exactly the rest of the current message: later bytes stay in the socket for raft.
    buf->base = reinterpret_cast<char*>(h->rdst + h->rgot);
    buf->len = h->rlen - h->rgot;
}

void read_cb(uv_stream_t* stream, ssize_t nread, const uv_buf_t*) {
    auto* h = static_cast<Handshake*>(stream->data);
    if (nread == 0) return;
    if (nread < 0) {
        fail(h, nread == UV_EOF ? "peer closed the connection during the handshake (no or wrong secret?)"
                                : uv_strerror(static_cast<int>(nread)));
        return;
    }
    h->rgot += static_cast<size_t>(nread);
    if (h->rgot < h->rlen) return;
    uv_read_stop(stream);
    on_message(h);
}

void read_next(Handshake* h, Step step, unsigned char* dst, size_t len) {
    h->step = step;
    h->rdst = dst;
    h->rlen = len;
    h->rgot = 0;
    int rv = uv_read_start(reinterpret_cast<uv_stream_t*>(h->tcp), alloc_cb, read_cb);
    if (rv != 0) fail(h, uv_strerror(rv));
}

void write_cb(uv_write_t* req, int status) {
    auto* h = static_cast<Handshake*>(req->data);
    h->writes_pending--;
    if (status != 0) {
        if (status != UV_ECANCELED) fail(h, uv_strerror(status));
        return;
    }
    maybe_succeed(h);
}

void send(Handshake* h, size_t len) {
    uv_buf_t buf = uv_buf_init(reinterpret_cast<char*>(h->out), static_cast<unsigned>(len));
    h->wreq.data = h;
    h->writes_pending++;
    int rv = uv_write(&h->wreq, reinterpret_cast<uv_stream_t*>(h->tcp), &buf, 1, write_cb);
    if (rv != 0) {
        h->writes_pending--;
        fail(h, uv_strerror(rv));
    }
}

uint64_t get_le64(const unsigned char* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

void on_message(Handshake* h) {
    switch (h->step) {
    case Step::Preamble: {  // acceptor: libraft preamble, validated before trusting anything
        uint64_t proto = get_le64(h->preamble), id = get_le64(h->preamble + 8);
        uint64_t len = get_le64(h->preamble + 16);
        if (proto != kProtocol) return fail(h, "not a raft peer (bad preamble)");
        if (id == 0 || len == 0 || len > kMaxAddress || len % 8 != 0)
            return fail(h, "malformed raft preamble");
        h->c_id = id;
        h->addrbuf.assign(len, 0);
        return read_next(h, Step::Address, h->addrbuf.data(), len);
    }
    case Step::Address: {
        size_t n = strnlen(reinterpret_cast<const char*>(h->addrbuf.data()), h->addrbuf.size());
        if (n == 0 || n == h->addrbuf.size()) return fail(h, "malformed address in raft preamble");
        h->c_address.assign(reinterpret_cast<const char*>(h->addrbuf.data()), n);
        return read_next(h, Step::HelloC, h->in, kHelloC);
    }
    case Step::HelloC: {  // acceptor: challenge from the connector; answer with ours + proof
        if (std::memcmp(h->in, kMagicC, kMagic) != 0)
            return fail(h, "peer did not start the authentication handshake (no secret configured?)");
        std::memcpy(h->nonce_c, h->in + kMagic, kNonce);
        if (RAND_bytes(h->nonce_a, kNonce) != 1) return fail(h, "RAND_bytes failed");
        std::memcpy(h->out, kMagicA, kMagic);
        std::memcpy(h->out + kMagic, h->nonce_a, kNonce);
        compute_mac(h, "acceptor", h->out + kMagic + kNonce);
        send(h, kHelloA);
        if (h->step == Step::Failed) return;
        return read_next(h, Step::ProofC, h->in, kMac);
    }
    case Step::ProofC: {  // acceptor: the connector's proof
        unsigned char want[kMac];
        compute_mac(h, "connector", want);
        if (CRYPTO_memcmp(want, h->in, kMac) != 0)
            return fail(h, "bad proof (wrong cluster secret, or not the node it claims to be)");
        h->verified = true;
        return maybe_succeed(h);
    }
    case Step::HelloA: {  // connector: acceptor's nonce and proof; verify before proving ourselves
        if (std::memcmp(h->in, kMagicA, kMagic) != 0)
            return fail(h, "peer did not answer the authentication handshake (no secret configured?)");
        std::memcpy(h->nonce_a, h->in + kMagic, kNonce);
        unsigned char want[kMac];
        compute_mac(h, "acceptor", want);
        if (CRYPTO_memcmp(want, h->in + kMagic + kNonce, kMac) != 0)
            return fail(h, "bad proof (wrong cluster secret, or not the node it claims to be)");
        compute_mac(h, "connector", h->out);
        h->verified = true;
        return send(h, kMac);
    }
    default:
        return;
    }
}

Handshake* new_handshake(Auth* a, bool outgoing) {
    auto* h = new Handshake();
    h->a = a;
    h->outgoing = outgoing;
    uv_timer_init(a->loop, &h->timer);
    h->timer.data = h;
    a->live.push_back(h);
    return h;
}

void start_timer(Handshake* h) { uv_timer_start(&h->timer, timer_cb, h->a->timeout_ms, 0); }

// ------------------------------------------------------------------ outgoing

void inner_connect_cb(raft_uv_connect* req, uv_stream_t* stream, int status) {
    auto* h = static_cast<Handshake*>(req->data);
    Auth* a = h->a;
    if (status != 0 || a->closing) {
        h->tcp = reinterpret_cast<uv_tcp_t*>(stream);  // normally null; closed by fail()
        h->fail_status = a->closing ? RAFT_CANCELED : status;
        h->step = Step::HelloA;  // any live step, so that fail() proceeds
        return fail(h, nullptr);
    }
    h->tcp = reinterpret_cast<uv_tcp_t*>(stream);
    stream->data = h;
    start_timer(h);
    if (RAND_bytes(h->nonce_c, kNonce) != 1) return fail(h, "RAND_bytes failed");
    std::memcpy(h->out, kMagicC, kMagic);
    std::memcpy(h->out + kMagic, h->nonce_c, kNonce);
    send(h, kHelloC);
    if (h->step == Step::Failed) return;
    read_next(h, Step::HelloA, h->in, kHelloA);
}

int auth_connect(raft_uv_transport* t, raft_uv_connect* req, raft_id id, const char* address,
                 raft_uv_connect_cb cb) {
    Auth* a = impl(t);
    if (a->closing) return RAFT_CANCELED;
    req->cb = cb;
    Handshake* h = new_handshake(a, true);
    h->outer_req = req;
    h->inner_req.data = h;
    h->c_id = a->id;
    h->a_id = id;
    h->c_address = a->address;
    h->peer = address;
    int rv = a->inner.connect(&a->inner, &h->inner_req, id, address, inner_connect_cb);
    if (rv != 0) {
        std::snprintf(t->errmsg, sizeof t->errmsg, "%s", a->inner.errmsg);
        // No callback will come for this request: drop it without calling raft's cb.
        h->step = Step::Done;
        h->open_handles = 1;
        uv_close(reinterpret_cast<uv_handle_t*>(&h->timer), handle_closed);
    }
    return rv;
}

// ------------------------------------------------------------------ incoming

void on_connection(uv_stream_t* server, int status) {
    auto* a = static_cast<Auth*>(server->data);
    if (status != 0 || a->closing) return;
    auto* tcp = static_cast<uv_tcp_t*>(raft_malloc(sizeof(uv_tcp_t)));
    if (!tcp) return;
    uv_tcp_init(a->loop, tcp);
    if (uv_accept(server, reinterpret_cast<uv_stream_t*>(tcp)) != 0) {
        uv_close(reinterpret_cast<uv_handle_t*>(tcp), [](uv_handle_t* hd) { raft_free(hd); });
        return;
    }
    char peer[INET6_ADDRSTRLEN + 8] = "?";
    sockaddr_storage ss{};
    int sl = sizeof ss;
    if (uv_tcp_getpeername(tcp, reinterpret_cast<sockaddr*>(&ss), &sl) == 0) {
        char ip[INET6_ADDRSTRLEN] = "";
        if (ss.ss_family == AF_INET) {
            auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
            uv_ip4_name(s4, ip, sizeof ip);
            snprintf(peer, sizeof peer, "%s:%u", ip, ntohs(s4->sin_port));
        } else if (ss.ss_family == AF_INET6) {
            auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
            uv_ip6_name(s6, ip, sizeof ip);
            snprintf(peer, sizeof peer, "[%s]:%u", ip, ntohs(s6->sin6_port));
        }
    }
    if (a->pending_in >= a->max_pending) {
        // Too many unauthenticated connections at once: shed load rather than queue it.
        auth_log(a, "refused incoming connection from %s: %u handshakes already pending", peer, a->pending_in);
        a->stats.refused_in++;
        uv_close(reinterpret_cast<uv_handle_t*>(tcp), [](uv_handle_t* hd) { raft_free(hd); });
        return;
    }
    Handshake* h = new_handshake(a, false);
    a->pending_in++;
    h->tcp = tcp;
    tcp->data = h;
    h->a_id = a->id;
    h->peer = peer;
    start_timer(h);
    read_next(h, Step::Preamble, h->preamble, kPreamble);
}

bool split_host_port(const std::string& address, std::string& host, std::string& port) {
    size_t colon = address.rfind(':');
    if (colon == std::string::npos) { host = address; port = "8080"; return !host.empty(); }
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
    return !port.empty();
}

int auth_listen(raft_uv_transport* t, raft_uv_accept_cb cb) {
    Auth* a = impl(t);
    a->accept_cb = cb;
    std::string host, port;
    const std::string& where = a->bind_address.empty() ? a->address : a->bind_address;
    if (!split_host_port(where, host, port)) {
        snprintf(t->errmsg, sizeof t->errmsg, "cannot split %s into host and port", where.c_str());
        return RAFT_INVALID;
    }
    addrinfo hints{};
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    hints.ai_family = AF_INET;  // as raft_uv_tcp: IPv4
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res) != 0 || !res) {
        snprintf(t->errmsg, sizeof t->errmsg, "cannot resolve listen address %s", where.c_str());
        return RAFT_IOERR;
    }
    uv_tcp_init(a->loop, &a->listener);
    a->listener.data = a;
    a->listener_open = true;
    int rv = uv_tcp_bind(&a->listener, res->ai_addr, 0);
    if (rv == 0) rv = uv_listen(reinterpret_cast<uv_stream_t*>(&a->listener), 128, on_connection);
    freeaddrinfo(res);
    if (rv != 0) {
        snprintf(t->errmsg, sizeof t->errmsg, "listen on %s: %s", where.c_str(), uv_strerror(rv));
        uv_close(reinterpret_cast<uv_handle_t*>(&a->listener), [](uv_handle_t* hd) {
            auto* aa = static_cast<Auth*>(hd->data);
            aa->listener_open = false;
            maybe_fire_close(aa);
        });
        return RAFT_IOERR;
    }
    return 0;
}

// ------------------------------------------------------------------ life cycle

int auth_init(raft_uv_transport* t, raft_id id, const char* address) {
    Auth* a = impl(t);
    a->id = id;
    a->address = address;
    return a->inner.init(&a->inner, id, a->address.c_str());
}

void inner_close_cb(raft_uv_transport* inner) {
    auto* a = static_cast<Auth*>(inner->data);
    a->inner_closed = true;
    maybe_fire_close(a);
}

void auth_close(raft_uv_transport* t, raft_uv_transport_close_cb cb) {
    Auth* a = impl(t);
    a->closing = true;
    a->close_cb = cb;
    if (a->listener_open) {
        uv_close(reinterpret_cast<uv_handle_t*>(&a->listener), [](uv_handle_t* hd) {
            auto* aa = static_cast<Auth*>(hd->data);
            aa->listener_open = false;
            maybe_fire_close(aa);
        });
    }
    // Cancel handshakes in flight. Ones still inside raft_uv_tcp's connect are cancelled by
    // its close below and come back through inner_connect_cb with RAFT_CANCELED.
    std::vector<Handshake*> cancel;
    for (Handshake* h : a->live)
        if (h->step != Step::Connecting && h->step != Step::Done && h->step != Step::Failed) cancel.push_back(h);
    for (Handshake* h : cancel) fail(h, nullptr);
    a->inner.close(&a->inner, inner_close_cb);
}

}  // namespace

extern "C" {

int bknr_auth_transport_init(raft_uv_transport* t, uv_loop_t* loop, const unsigned char* secret,
                             size_t secret_len) {
    if (t->version != 1) {
        snprintf(t->errmsg, sizeof t->errmsg, "Invalid version: %d", t->version);
        return RAFT_INVALID;
    }
    if (secret == nullptr || secret_len < BKNR_AUTH_MIN_SECRET) {
        snprintf(t->errmsg, sizeof t->errmsg, "cluster secret must be at least %d bytes",
                 BKNR_AUTH_MIN_SECRET);
        return RAFT_INVALID;
    }
    auto* a = new (std::nothrow) Auth();
    if (!a) return RAFT_NOMEM;
    a->outer = t;
    a->loop = loop;
    a->secret.assign(secret, secret + secret_len);
    a->inner.version = 1;
    int rv = raft_uv_tcp_init(&a->inner, loop);
    if (rv != 0) {
        snprintf(t->errmsg, sizeof t->errmsg, "%s", a->inner.errmsg);
        delete a;
        return rv;
    }
    a->inner.data = a;  // raft_uv_tcp_init keeps data; set after to be explicit
    t->impl = a;
    t->init = auth_init;
    t->listen = auth_listen;
    t->connect = auth_connect;
    t->close = auth_close;
    return 0;
}

int bknr_auth_transport_set_bind_address(raft_uv_transport* t, const char* address) {
    std::string host, port;
    if (!address || !split_host_port(address, host, port)) return RAFT_INVALID;
    impl(t)->bind_address = address;
    return 0;
}

void bknr_auth_transport_set_timeout(raft_uv_transport* t, unsigned timeout_ms) {
    impl(t)->timeout_ms = timeout_ms ? timeout_ms : 1;
}

void bknr_auth_transport_set_max_pending(raft_uv_transport* t, unsigned max_pending) {
    impl(t)->max_pending = max_pending ? max_pending : 1;
}

void bknr_auth_transport_set_log_prefix(raft_uv_transport* t, const char* prefix) {
    impl(t)->log_prefix = prefix ? prefix : "bknr-auth";
}

void bknr_auth_transport_stats(const raft_uv_transport* t, bknr_auth_stats* out) { *out = impl(t)->stats; }

void bknr_auth_transport_close(raft_uv_transport* t) {
    Auth* a = impl(t);
    if (!a) return;
    raft_uv_tcp_close(&a->inner);
    OPENSSL_cleanse(a->secret.data(), a->secret.size());
    delete a;
    t->impl = nullptr;
}

}  // extern "C"
