// TLS handshake and encrypted links of the authenticated transport (see tls_conn.hpp).
//
// OpenSSL never touches a socket here: it reads ciphertext from a memory BIO we fill from
// libuv reads and writes ciphertext to a memory BIO we drain into libuv writes, so nothing
// blocks and everything stays on the loop thread.

#include "tls_conn.hpp"

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace bknr_auth {

struct TlsHandshake {
    SSL* ssl = nullptr;
    bool reading = false;
    char buf[16384];
};

struct TlsLink {
    Auth* a = nullptr;
    SSL* ssl = nullptr;
    uv_tcp_t* tcp = nullptr;   // raft_malloc'd (accepted by us or connected by raft_uv_tcp)
    uv_pipe_t pipe{};          // our end of the socket pair; raft holds the other
    uint64_t peer_id = 0;
    bool outgoing = false;
    bool received = false;     // any plaintext from the peer yet
    bool closing = false;
    bool tcp_paused = false, pipe_paused = false;
    int open_handles = 0;
    char tcp_buf[65536];
    char pipe_buf[65536];
};

namespace {

// Bytes queued for one direction before we stop reading the other side (back-pressure: a slow
// peer must not make us buffer a whole snapshot in memory), and where reading resumes.
constexpr size_t kQueueHigh = 4u << 20;
constexpr size_t kQueueLow = 1u << 20;

struct WriteReq {
    uv_write_t req{};
    std::vector<char> data;
    TlsLink* link = nullptr;   // null for handshake writes: their outcome shows up on the reads
};

void close_link(TlsLink* l);
void resume_reads(TlsLink* l);

void write_cb(uv_write_t* req, int status) {
    auto* w = static_cast<WriteReq*>(req->data);
    TlsLink* l = w->link;
    delete w;
    if (!l || l->closing) return;
    if (status != 0) return close_link(l);
    resume_reads(l);
}

// Write everything OpenSSL has queued in its output BIO to `stream`.
int flush_ciphertext(SSL* ssl, uv_stream_t* stream, TlsLink* link) {
    BIO* wbio = SSL_get_wbio(ssl);
    size_t pending = BIO_ctrl_pending(wbio);
    if (pending == 0) return 0;
    auto* w = new WriteReq();
    w->link = link;
    w->data.resize(pending);
    int n = BIO_read(wbio, w->data.data(), static_cast<int>(pending));
    w->data.resize(n > 0 ? static_cast<size_t>(n) : 0);
    w->req.data = w;
    uv_buf_t b = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
    int rv = uv_write(&w->req, stream, &b, 1, write_cb);
    if (rv != 0) delete w;
    return rv;
}

std::string host_of(const std::string& address) {
    size_t colon = address.rfind(':');
    std::string host = colon == std::string::npos ? address : address.substr(0, colon);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    return host;
}

bool is_ip(const std::string& host) {
    unsigned char b[16];
    return inet_pton(AF_INET, host.c_str(), b) == 1 || inet_pton(AF_INET6, host.c_str(), b) == 1;
}

// The host the peer's certificate must name: the one we dialled, or the one it claims.
std::string expected_host(const Handshake* h) { return host_of(h->outgoing ? h->peer : h->tr.c_address); }

// One line on why a handshake failed, from the verification result or OpenSSL's error queue.
std::string failure_reason(Handshake* h) {
    SSL* ssl = h->tls->ssl;
    long vr = SSL_get_verify_result(ssl);
    std::string why;
    if (vr == X509_V_ERR_IP_ADDRESS_MISMATCH || vr == X509_V_ERR_HOSTNAME_MISMATCH) {
        h->a->stats.cert_rejected++;
        why = "peer certificate does not name " + expected_host(h) +
              (h->outgoing ? ", the host we dialled" : ", the host it claims");
    } else if (vr != X509_V_OK) {
        h->a->stats.cert_rejected++;
        why = std::string("peer certificate rejected: ") + X509_verify_cert_error_string(vr);
    } else if (unsigned long e = ERR_peek_last_error()) {
        const char* r = ERR_reason_error_string(e);
        why = std::string("TLS handshake failed: ") + (r ? r : "unknown error");
        int reason = ERR_GET_REASON(e);
        if (reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_PACKET_LENGTH_TOO_LONG ||
            reason == SSL_R_HTTP_REQUEST || reason == SSL_R_UNSUPPORTED_PROTOCOL)
            why += " (the peer does not speak TLS 1.3: a node without TLS configured?)";
        else if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)
            h->a->stats.cert_rejected++;
    } else {
        why = "TLS handshake failed";
    }
    ERR_clear_error();
    return why;
}

void tls_drive(Handshake* h);

void hs_alloc(uv_handle_t* handle, size_t, uv_buf_t* buf) {
    auto* h = static_cast<Handshake*>(handle->data);
    *buf = uv_buf_init(h->tls->buf, sizeof h->tls->buf);
}

void hs_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
    auto* h = static_cast<Handshake*>(stream->data);
    if (nread == 0) return;
    if (nread < 0) {
        return fail(h, nread == UV_EOF ? "peer closed the connection during the TLS handshake "
                                         "(it rejected our certificate, or does not speak TLS?)"
                                       : uv_strerror(static_cast<int>(nread)));
    }
    BIO_write(SSL_get_rbio(h->tls->ssl), buf->base, static_cast<int>(nread));
    tls_drive(h);
}

// ------------------------------------------------------------------ established links

void link_closed(uv_handle_t* handle) {
    auto* l = static_cast<TlsLink*>(handle->data);
    if (--l->open_handles > 0) return;
    Auth* a = l->a;
    raft_free(l->tcp);
    SSL_free(l->ssl);
    a->links.remove(l);
    delete l;
    maybe_fire_close(a);
}

void close_link(TlsLink* l) {
    if (l->closing) return;
    l->closing = true;
    l->open_handles = 2;
    // Pending writes complete with UV_ECANCELED before these close callbacks run. Closing our
    // end of the pair is what raft sees: EOF on its stream, exactly as a closed TCP socket.
    uv_close(reinterpret_cast<uv_handle_t*>(l->tcp), link_closed);
    uv_close(reinterpret_cast<uv_handle_t*>(&l->pipe), link_closed);
}

void peer_closed(TlsLink* l, const char* why) {
    Auth* a = l->a;
    a->stats.closed_by_peer++;
    if (why)
        auth_log(a, "closed encrypted %s node %llu: %s", l->outgoing ? "connection to" : "connection from",
                 (unsigned long long)l->peer_id, why);
    if (a->close_hook) a->close_hook(a->close_hook_arg, l->peer_id, l->outgoing ? 1 : 0);
    close_link(l);
}

// TLS 1.3: the connector finishes its handshake before the acceptor has judged its certificate;
// a refusal arrives as an alert on the first read of the link. Report that as what it is.
void refused_by_peer(TlsLink* l, const char* alert) {
    Auth* a = l->a;
    a->stats.refused_out++;
    a->stats.cert_rejected++;
    auth_log(a, "refused outgoing connection to node %llu: the peer rejected our certificate (%s)",
             (unsigned long long)l->peer_id, alert);
    close_link(l);
}

void tcp_alloc(uv_handle_t* handle, size_t, uv_buf_t* buf) {
    auto* l = static_cast<TlsLink*>(handle->data);
    *buf = uv_buf_init(l->tcp_buf, sizeof l->tcp_buf);
}

void pipe_alloc(uv_handle_t* handle, size_t, uv_buf_t* buf) {
    auto* l = static_cast<TlsLink*>(handle->data);
    *buf = uv_buf_init(l->pipe_buf, sizeof l->pipe_buf);
}

void tcp_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
void pipe_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);

size_t queued(const void* stream) { return uv_stream_get_write_queue_size(static_cast<const uv_stream_t*>(stream)); }

void resume_reads(TlsLink* l) {
    if (l->tcp_paused && queued(&l->pipe) < kQueueLow) {
        l->tcp_paused = false;
        uv_read_start(reinterpret_cast<uv_stream_t*>(l->tcp), tcp_alloc, tcp_read);
    }
    if (l->pipe_paused && queued(l->tcp) < kQueueLow) {
        l->pipe_paused = false;
        uv_read_start(reinterpret_cast<uv_stream_t*>(&l->pipe), pipe_alloc, pipe_read);
    }
}

// Decrypt whatever complete records OpenSSL holds and pass the plaintext to raft.
void pump_in(TlsLink* l) {
    auto* w = new WriteReq();
    w->link = l;
    const char* error = nullptr;
    bool eof = false, alert = false;
    ERR_clear_error();
    for (;;) {
        size_t old = w->data.size();
        w->data.resize(old + 16384);
        int n = SSL_read(l->ssl, w->data.data() + old, 16384);
        w->data.resize(old + (n > 0 ? static_cast<size_t>(n) : 0));
        if (n > 0) continue;
        int e = SSL_get_error(l->ssl, n);
        if (e == SSL_ERROR_ZERO_RETURN) eof = true;
        else if (e != SSL_ERROR_WANT_READ) {
            unsigned long code = ERR_peek_last_error();
            error = code ? ERR_reason_error_string(code) : "TLS record error";
            if (!error) error = "TLS record error";
            alert = code && ERR_GET_REASON(code) >= SSL_AD_REASON_OFFSET;  // an alert from the peer
        }
        break;
    }
    ERR_clear_error();
    flush_ciphertext(l->ssl, reinterpret_cast<uv_stream_t*>(l->tcp), l);  // e.g. a KeyUpdate reply
    bool w_empty = w->data.empty();
    if (!w_empty) {
        w->req.data = w;
        uv_buf_t b = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
        if (uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&l->pipe), &b, 1, write_cb) != 0) {
            delete w;
            return close_link(l);
        }
    } else {
        delete w;
    }
    if (!w_empty) l->received = true;
    if (error && alert && l->outgoing && !l->received) return refused_by_peer(l, error);
    if (error) return peer_closed(l, error);
    if (eof) return peer_closed(l, nullptr);
    if (queued(&l->pipe) > kQueueHigh && !l->tcp_paused) {
        l->tcp_paused = true;
        uv_read_stop(reinterpret_cast<uv_stream_t*>(l->tcp));
    }
}

void tcp_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
    auto* l = static_cast<TlsLink*>(stream->data);
    if (nread == 0 || l->closing) return;
    if (nread < 0) return peer_closed(l, nread == UV_EOF ? nullptr : uv_strerror(static_cast<int>(nread)));
    BIO_write(SSL_get_rbio(l->ssl), buf->base, static_cast<int>(nread));
    pump_in(l);
}

// raft wrote to its end of the pair: encrypt and send.
void pipe_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
    auto* l = static_cast<TlsLink*>(stream->data);
    if (nread == 0 || l->closing) return;
    if (nread < 0) return close_link(l);  // raft closed the connection
    ERR_clear_error();
    if (SSL_write(l->ssl, buf->base, static_cast<int>(nread)) != nread) {
        ERR_clear_error();
        return close_link(l);
    }
    if (flush_ciphertext(l->ssl, reinterpret_cast<uv_stream_t*>(l->tcp), l) != 0) return close_link(l);
    if (queued(l->tcp) > kQueueHigh && !l->pipe_paused) {
        l->pipe_paused = true;
        uv_read_stop(stream);
    }
}

// ------------------------------------------------------------------ handshake

// The handshake succeeded: check the peer's identity, then set up the link and the pair.
void tls_done(Handshake* h) {
    Auth* a = h->a;
    auto* tcp_stream = reinterpret_cast<uv_stream_t*>(h->tcp);
    uv_read_stop(tcp_stream);
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
        std::string why = std::string("socketpair: ") + std::strerror(errno);
        return fail(h, why.c_str());
    }
    auto* raft_end = static_cast<uv_pipe_t*>(raft_malloc(sizeof(uv_pipe_t)));
    auto* l = new TlsLink();
    if (!raft_end) {
        ::close(fds[0]);
        ::close(fds[1]);
        delete l;
        return fail(h, "out of memory");
    }
    l->a = a;
    l->ssl = h->tls->ssl;
    h->tls->ssl = nullptr;
    l->tcp = h->tcp;
    h->tcp = nullptr;
    l->tcp->data = l;
    l->peer_id = h->outgoing ? h->tr.a_id : h->tr.c_id;
    l->outgoing = h->outgoing;
    uv_pipe_init(a->loop, &l->pipe, 0);
    uv_pipe_open(&l->pipe, fds[0]);
    l->pipe.data = l;
    uv_pipe_init(a->loop, raft_end, 0);
    uv_pipe_open(raft_end, fds[1]);
    a->links.push_back(l);
    uv_tcp_nodelay(l->tcp, 1);  // see succeed() in auth_conn.cpp
    uv_read_start(reinterpret_cast<uv_stream_t*>(l->tcp), tcp_alloc, tcp_read);
    uv_read_start(reinterpret_cast<uv_stream_t*>(&l->pipe), pipe_alloc, pipe_read);
    hand_over(h, reinterpret_cast<uv_stream_t*>(raft_end));
    pump_in(l);  // records that arrived together with the end of the handshake
}

void tls_drive(Handshake* h) {
    SSL* ssl = h->tls->ssl;
    ERR_clear_error();
    int rv = SSL_do_handshake(ssl);
    int e = rv == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl, rv);
    // Send what the step produced (including an alert when it failed) before anything else.
    flush_ciphertext(ssl, reinterpret_cast<uv_stream_t*>(h->tcp), nullptr);
    if (rv == 1) return tls_done(h);
    if (e == SSL_ERROR_WANT_READ) {
        if (!h->tls->reading) {
            h->tls->reading = true;
            int r = uv_read_start(reinterpret_cast<uv_stream_t*>(h->tcp), hs_alloc, hs_read);
            if (r != 0) return fail(h, uv_strerror(r));
        }
        return;
    }
    std::string why = failure_reason(h);
    fail(h, why.c_str());
}

}  // namespace

void tls_start(Handshake* h) {
    Auth* a = h->a;
    h->step = Step::Tls;
    h->tls = new TlsHandshake();
    SSL* ssl = SSL_new(a->tls_ctx);
    if (!ssl) return fail(h, "SSL_new failed (out of memory?)");
    h->tls->ssl = ssl;
    SSL_set_bio(ssl, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
    // The peer's certificate must name the host we dialled (connector), or the host of the
    // address it claims in its preamble (acceptor), so one member cannot pose as another host's
    // node. Checked during verification, so a mismatch is refused with a TLS alert.
    std::string host = expected_host(h);
    if (is_ip(host)) X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str());
    else SSL_set1_host(ssl, host.c_str());
    if (h->outgoing) SSL_set_connect_state(ssl);
    else SSL_set_accept_state(ssl);
    tls_drive(h);
}

void tls_free_handshake(Handshake* h) {
    if (h->tls->ssl) SSL_free(h->tls->ssl);
    delete h->tls;
    h->tls = nullptr;
}

void tls_close_links(Auth* a) {
    std::vector<TlsLink*> all(a->links.begin(), a->links.end());
    for (TlsLink* l : all) close_link(l);
}

}  // namespace bknr_auth
