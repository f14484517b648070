// TLS mode of the authenticated transport (internal; public API: tls_transport.hpp).
//
// libraft reads and writes its peer connections itself, so the encryption cannot sit inside
// its stream. Instead, once a connection's TLS 1.3 handshake succeeded, the transport hands
// libraft one end of a Unix socket pair and keeps the TCP socket: a TlsLink on the loop thread
// decrypts what arrives on TCP (OpenSSL with memory BIOs) and writes the plaintext to its end
// of the pair, and encrypts what libraft writes into the pair before sending it on TCP. libraft
// sees a byte stream exactly like the TCP stream it would have had; an end closed on either
// side closes the other. Everything runs on the loop thread, without the GIL.
#pragma once

#include "auth_conn.hpp"

namespace bknr_auth {

// Run the TLS handshake on h->tcp (client for outgoing, server for incoming; the stock
// preamble has already been written or read), under the handshake deadline already running.
// Success: a TlsLink takes the TCP socket and raft gets the plaintext end (hand_over).
// Failure: fail(h, reason) with OpenSSL's reason.
void tls_start(Handshake* h);

// Release h->tls (called when the handshake is freed).
void tls_free_handshake(Handshake* h);

// The transport is closing: close every established link (each is removed from a->links
// once its handles are closed, then maybe_fire_close runs).
void tls_close_links(Auth* a);

}  // namespace bknr_auth
