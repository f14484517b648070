// TLS mode of the authenticated Raft transport (native/auth_transport.hpp): every peer
// connection runs a TLS 1.3 handshake with mutual certificate authentication against the
// cluster CA instead of the HMAC challenge-response, and every raft message afterwards travels
// encrypted. Design, wire sequence and checks: docs/security.md ("TLS on the Raft transport").
//
// Same threading and life-cycle contract as bknr_auth_transport_init; the set_* functions,
// stats and bknr_auth_transport_close of auth_transport.hpp apply unchanged.
#pragma once

#include "auth_transport.hpp"

#ifdef __cplusplus
extern "C" {
#endif

// Initialise *t as a TLS transport on `loop`. Files are PEM: the CA certificate(s) that peers'
// certificates must chain to, this node's certificate (chain) and its private key. They are
// read now (the key is checked against the certificate); errors: RAFT_INVALID with the reason
// in t->errmsg, RAFT_NOMEM.
int bknr_tls_transport_init(struct raft_uv_transport *t, struct uv_loop_s *loop, const char *ca_file,
                            const char *cert_file, const char *key_file);

#ifdef __cplusplus
}
#endif
