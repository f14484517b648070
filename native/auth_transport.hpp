// Authenticated Raft transport: libraft's raft_uv_transport with a mutual HMAC-SHA256
// challenge-response over a shared cluster secret on every connection, before any raft
// message reaches struct raft. Design and wire format: docs/security.md.
//
// Threading: every function except init/close runs on the libuv loop thread that owns the
// raft instance (libraft calls the transport from there). init may run on any thread before
// raft_uv_init(); close (which frees memory, like raft_uv_tcp_close) after the transport's
// close callback has fired, i.e. after raft_close()/raft_uv_close() completed.
#pragma once

#include <stddef.h>
#include <stdint.h>

// Forward declarations only, so this header can be included from C and C++ before or after
// <raft.h> (whose ABI self-checks do not compile as C++; see raft_compat.hpp).
struct raft_uv_transport;
struct uv_loop_s;

#ifdef __cplusplus
extern "C" {
#endif

// Shortest secret accepted (bytes). bknrctl generates 32 random bytes, hex encoded.
#define BKNR_AUTH_MIN_SECRET 16
// Default time a peer gets to complete the handshake before it is disconnected.
#define BKNR_AUTH_DEFAULT_TIMEOUT_MS 5000
// Default cap on incoming connections that are still in the handshake.
#define BKNR_AUTH_DEFAULT_MAX_PENDING 64

// Initialise *t (t->version must be 1, t->data is preserved) as an authenticated TCP transport
// on `loop`. The secret is copied. Returns 0, RAFT_INVALID (bad version / secret shorter than
// BKNR_AUTH_MIN_SECRET; message in t->errmsg) or RAFT_NOMEM.
int bknr_auth_transport_init(struct raft_uv_transport *t, struct uv_loop_s *loop,
                             const unsigned char *secret, size_t secret_len);

// Optional, before raft_init(): bind the listener to this "host:port" instead of the node's
// raft address (same meaning as raft_uv_tcp_set_bind_address). Returns 0 or RAFT_INVALID.
int bknr_auth_transport_set_bind_address(struct raft_uv_transport *t, const char *address);

// Optional: handshake deadline in milliseconds (default BKNR_AUTH_DEFAULT_TIMEOUT_MS) and the
// cap on concurrent incoming handshakes (default BKNR_AUTH_DEFAULT_MAX_PENDING).
void bknr_auth_transport_set_timeout(struct raft_uv_transport *t, unsigned timeout_ms);
void bknr_auth_transport_set_max_pending(struct raft_uv_transport *t, unsigned max_pending);

// Optional: prefix for the stderr log lines (default "bknr-auth"). Copied.
void bknr_auth_transport_set_log_prefix(struct raft_uv_transport *t, const char *prefix);

// Counters, for status and tests. Read on the loop thread (or after the loop stopped).
struct bknr_auth_stats {
    uint64_t accepted;     // incoming connections authenticated and handed to raft
    uint64_t connected;    // outgoing connections authenticated and handed to raft
    uint64_t refused_in;   // incoming connections closed: bad preamble/proof, EOF, overload
    uint64_t refused_out;  // outgoing connections closed: the peer failed to prove the secret
    uint64_t timeouts;     // handshakes (either direction) that hit the deadline
    // TLS mode only (tls_transport.hpp):
    uint64_t cert_rejected;   // handshakes refused because a certificate failed verification
    uint64_t closed_by_peer;  // established connections the peer (or the network) closed
};
void bknr_auth_transport_stats(const struct raft_uv_transport *t, struct bknr_auth_stats *out);

// Optional, TLS mode: called on the loop thread when an established connection is closed by
// the peer or the network (EOF, reset), before raft sees the end of its stream. `outgoing` is
// 1 for connections this node opened. The hook must not call back into the transport.
typedef void (*bknr_auth_close_hook)(void *arg, uint64_t peer_id, int outgoing);
void bknr_auth_transport_set_close_hook(struct raft_uv_transport *t, bknr_auth_close_hook hook, void *arg);

// Release the memory and wipe the secret. Call only once the transport's close callback fired
// (libraft calls t->close during raft_close); same contract as raft_uv_tcp_close().
void bknr_auth_transport_close(struct raft_uv_transport *t);

#ifdef __cplusplus
}
#endif
