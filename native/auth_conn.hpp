// One connection's authentication handshake, driven on the libuv loop (internal to the auth_*.cpp
// files; the public API is auth_transport.hpp). auth_transport.cpp owns the transport (listener,
// connect, life cycle) and starts a Handshake per connection; auth_conn.cpp runs it: async
// reads/writes of the messages of auth_handshake.hpp, the deadline, and the hand-over to raft
// or the teardown. Everything runs on the loop thread.
#pragma once

#include "auth_handshake.hpp"
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

#include <openssl/ssl.h>

#include <list>
#include <string>
#include <vector>

namespace bknr_auth {

struct Auth;
struct TlsHandshake;  // tls_conn.cpp: the TLS state of a handshake in progress
struct TlsLink;       // tls_conn.cpp: an established encrypted connection

enum class Step { Connecting, Preamble, Address, HelloC, HelloA, ProofC, Tls, Done, Failed };

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
    Transcript tr;                        // ids, address and nonces bound into the MACs
    std::string peer;                     // for log lines
    // reading
    unsigned char* rdst = nullptr;
    size_t rlen = 0, rgot = 0;
    unsigned char preamble[kPreamble]{};
    std::vector<unsigned char> addrbuf;
    unsigned char in[kHelloA]{};
    // writing (a handshake writes at most one message per direction, so one buffer each)
    unsigned char out[kHelloA]{};
    uv_write_t wreq{};
    TlsHandshake* tls = nullptr;          // TLS mode: replaces HELLO_C/HELLO_A/PROOF_C
};

struct Auth {
    raft_uv_transport* outer = nullptr;
    raft_uv_transport inner{};            // stock TCP transport, used for connect() only
    uv_loop_t* loop = nullptr;
    Secret secret;
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
    SSL_CTX* tls_ctx = nullptr;           // TLS mode (tls_transport.cpp) when set; owned
    std::list<TlsLink*> links;            // established TLS connections, until both ends closed
    bknr_auth_close_hook close_hook = nullptr;
    void* close_hook_arg = nullptr;
    uint64_t log_second = 0;
    int log_count = 0;
    uint64_t log_suppressed = 0;
};

// One stderr line per refusal, rate limited so a hostile peer cannot flood the log.
void auth_log(Auth* a, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// Fire the transport's close callback once everything it owns is closed. The callback may free
// the transport object: the caller must touch nothing afterwards.
void maybe_fire_close(Auth* a);

// A new handshake in a->live with its deadline timer initialised (not started).
Handshake* new_handshake(Auth* a, bool outgoing);

// C: raft_uv_tcp's connect handed us h->tcp (preamble already written): start the deadline,
// send HELLO_C and wait for HELLO_A.
void start_outgoing(Handshake* h);

// A: h->tcp was just accepted: start the deadline and read the preamble.
void start_incoming(Handshake* h);

// Tear the handshake down. `reason` == nullptr means a quiet cancel (transport closing).
void fail(Handshake* h, const char* reason, bool timeout = false);

// Hand `stream` to raft as the authenticated connection of h (the TCP socket itself, or in TLS
// mode the plaintext end of the link's socket pair); the handshake is freed afterwards.
void hand_over(Handshake* h, uv_stream_t* stream);

// An empty transport on `loop` (stock TCP connect inside), stored in t->impl; errors as init.
int new_auth(raft_uv_transport* t, uv_loop_t* loop);

// Free a handshake whose request raft never learnt about (its connect() returned an error):
// closes the timer without calling raft's connect callback.
void discard(Handshake* h);

}  // namespace bknr_auth
