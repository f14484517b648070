// One connection's authentication handshake on the libuv loop (see auth_conn.hpp).
//
// Reads ask libuv for exactly the bytes of the current message, so nothing the peer sends after
// the handshake is consumed here: the first raft message stays in the socket for raft.

#include "auth_conn.hpp"
#include "tls_conn.hpp"

#include <cstdarg>
#include <cstdio>

namespace bknr_auth {
namespace {

constexpr int kLogBurst = 5;              // stderr lines per second before suppression

const char* who(const Handshake* h, char* buf, size_t n) {
    const Transcript& t = h->tr;
    if (h->outgoing)
        snprintf(buf, n, "outgoing connection to node %llu at %s", (unsigned long long)t.a_id, h->peer.c_str());
    else if (t.c_id)
        snprintf(buf, n, "incoming connection from %s (claims node %llu at %s)", h->peer.c_str(),
                 (unsigned long long)t.c_id, t.c_address.c_str());
    else
        snprintf(buf, n, "incoming connection from %s", h->peer.c_str());
    return buf;
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
    if (h->tls) tls_free_handshake(h);
    delete h;
    maybe_fire_close(a);
}

void timer_cb(uv_timer_t* timer) {
    auto* h = static_cast<Handshake*>(timer->data);
    fail(h, "handshake timed out", true);
}

void start_timer(Handshake* h) { uv_timer_start(&h->timer, timer_cb, h->a->timeout_ms, 0); }

// HMAC mode: hand the authenticated TCP stream itself to raft.
void succeed(Handshake* h) {
    // Raft traffic is small request/response messages: Nagle plus delayed ACKs would add up to
    // 40 ms to a pipelined append (measured: 16-caller p99 43 ms -> 15 ms with it off).
    uv_tcp_nodelay(h->tcp, 1);
    auto* stream = reinterpret_cast<uv_stream_t*>(h->tcp);
    h->tcp = nullptr;
    hand_over(h, stream);
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

// Write the first `len` bytes of h->out.
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

// A complete message for h->step has arrived: check it and move on (or refuse).
void on_message(Handshake* h) {
    const Secret& secret = h->a->secret;
    const char* err = nullptr;
    switch (h->step) {
    case Step::Preamble: {  // acceptor: libraft preamble, validated before trusting anything
        size_t len = 0;
        if ((err = parse_preamble(h->preamble, h->tr, len))) return fail(h, err);
        h->addrbuf.assign(len, 0);
        return read_next(h, Step::Address, h->addrbuf.data(), len);
    }
    case Step::Address:
        if ((err = parse_address(h->addrbuf.data(), h->addrbuf.size(), h->tr))) return fail(h, err);
        if (h->a->tls_ctx) return tls_start(h);  // TLS replaces the HMAC messages
        return read_next(h, Step::HelloC, h->in, kHelloC);
    case Step::HelloC:  // acceptor: challenge from the connector; answer with ours + proof
        if ((err = answer_hello_c(secret, h->in, h->tr, h->out))) return fail(h, err);
        send(h, kHelloA);
        if (h->step == Step::Failed) return;
        return read_next(h, Step::ProofC, h->in, kMac);
    case Step::ProofC:  // acceptor: the connector's proof
        if ((err = check_proof_c(secret, h->in, h->tr))) return fail(h, err);
        h->verified = true;
        return maybe_succeed(h);
    case Step::HelloA:  // connector: acceptor's nonce and proof; verify before proving ourselves
        if ((err = answer_hello_a(secret, h->in, h->tr, h->out))) return fail(h, err);
        h->verified = true;
        return send(h, kMac);
    default:
        return;
    }
}

}  // namespace

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
    if (!a->closing || a->close_fired || !a->inner_closed || a->listener_open || !a->live.empty() ||
        !a->links.empty())
        return;
    a->close_fired = true;
    // The callback may free the transport object: touch nothing afterwards.
    if (a->close_cb) a->close_cb(a->outer);
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

// The timer and h are released in the timer's close callback; h no longer owns the stream.
void hand_over(Handshake* h, uv_stream_t* stream) {
    Auth* a = h->a;
    h->step = Step::Done;
    uv_timer_stop(&h->timer);
    h->open_handles = 1;
    uv_close(reinterpret_cast<uv_handle_t*>(&h->timer), handle_closed);
    stream->data = nullptr;
    if (h->outgoing) {
        a->stats.connected++;
        h->outer_req->cb(h->outer_req, stream, 0);
    } else {
        a->pending_in--;
        a->stats.accepted++;
        a->accept_cb(a->outer, h->tr.c_id, h->tr.c_address.c_str(), stream);
    }
}

void start_outgoing(Handshake* h) {
    start_timer(h);
    if (h->a->tls_ctx) return tls_start(h);  // TLS replaces the HMAC messages
    if (const char* err = make_hello_c(h->tr, h->out)) return fail(h, err);
    send(h, kHelloC);
    if (h->step == Step::Failed) return;
    read_next(h, Step::HelloA, h->in, kHelloA);
}

void start_incoming(Handshake* h) {
    start_timer(h);
    read_next(h, Step::Preamble, h->preamble, kPreamble);
}

void fail(Handshake* h, const char* reason, bool timeout) {
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

void discard(Handshake* h) {
    h->step = Step::Done;
    h->open_handles = 1;
    uv_close(reinterpret_cast<uv_handle_t*>(&h->timer), handle_closed);
}

}  // namespace bknr_auth
