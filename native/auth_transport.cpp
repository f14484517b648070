// Authenticated Raft transport (see auth_transport.hpp and docs/security.md): libraft's
// raft_uv_transport interface (listen, connect, life cycle) and the C API. The handshake every
// connection goes through is in auth_conn.cpp (driving it on libuv) and auth_handshake.cpp (wire
// format and crypto, where the wire sequence is described).
//
// Why the stock preamble comes first: we wrap raft_uv_tcp for outgoing connections, and it
// writes the preamble before it hands the stream over, so it is necessarily first on the wire.
// But we do NOT use raft_uv_tcp's listener: it reads the preamble with no deadline, trusts a
// peer-chosen address length and passes the address to raft (strcpy) without checking the NUL,
// all before any authentication. Our listener reads the same preamble with hard bounds and the
// handshake deadline, so an unauthenticated peer never reaches libraft code.

#include "auth_conn.hpp"
#include "tls_conn.hpp"

#include <openssl/crypto.h>

#include <arpa/inet.h>
#include <cstdio>
#include <new>
#include <netdb.h>
#include <string>
#include <vector>

namespace bknr_auth {
namespace {

Auth* impl(const raft_uv_transport* t) { return static_cast<Auth*>(t->impl); }

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
    start_outgoing(h);
}

int auth_connect(raft_uv_transport* t, raft_uv_connect* req, raft_id id, const char* address,
                 raft_uv_connect_cb cb) {
    Auth* a = impl(t);
    if (a->closing) return RAFT_CANCELED;
    req->cb = cb;
    Handshake* h = new_handshake(a, true);
    h->outer_req = req;
    h->inner_req.data = h;
    h->tr.c_id = a->id;
    h->tr.a_id = id;
    h->tr.c_address = a->address;
    h->peer = address;
    int rv = a->inner.connect(&a->inner, &h->inner_req, id, address, inner_connect_cb);
    if (rv != 0) {
        std::snprintf(t->errmsg, sizeof t->errmsg, "%s", a->inner.errmsg);
        // No callback will come for this request: drop it without calling raft's cb.
        discard(h);
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
    h->tr.a_id = a->id;
    h->peer = peer;
    start_incoming(h);
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
    tls_close_links(a);
    a->inner.close(&a->inner, inner_close_cb);
}

}  // namespace
}  // namespace bknr_auth

int bknr_auth::new_auth(raft_uv_transport* t, uv_loop_t* loop) {
    auto* a = new (std::nothrow) Auth();
    if (!a) return RAFT_NOMEM;
    a->outer = t;
    a->loop = loop;
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

using namespace bknr_auth;  // the C API below wraps the internals above

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
    int rv = new_auth(t, loop);
    if (rv == 0) impl(t)->secret.assign(secret, secret + secret_len);
    return rv;
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

void bknr_auth_transport_set_close_hook(raft_uv_transport* t, bknr_auth_close_hook hook, void* arg) {
    impl(t)->close_hook = hook;
    impl(t)->close_hook_arg = arg;
}

void bknr_auth_transport_stats(const raft_uv_transport* t, bknr_auth_stats* out) { *out = impl(t)->stats; }

void bknr_auth_transport_close(raft_uv_transport* t) {
    Auth* a = impl(t);
    if (!a) return;
    raft_uv_tcp_close(&a->inner);
    OPENSSL_cleanse(a->secret.data(), a->secret.size());
    if (a->tls_ctx) SSL_CTX_free(a->tls_ctx);
    delete a;
    t->impl = nullptr;
}

}  // extern "C"
