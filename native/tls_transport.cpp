// TLS mode of the authenticated transport: the OpenSSL context and the C entry point (see
// tls_transport.hpp). The per-connection work is in tls_conn.cpp.

#include "tls_transport.hpp"

#include "auth_conn.hpp"

#include <openssl/err.h>
#include <openssl/x509.h>

#include <cstdio>
#include <string>

namespace {

std::string openssl_error() {
    unsigned long e = ERR_get_error();
    ERR_clear_error();
    if (!e) return "unknown OpenSSL error";
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    return buf;
}

// A context for both directions: TLS 1.3 only, peers must present a certificate of the CA,
// no session tickets (raft connections are long-lived; a ticket is only bytes on the wire).
SSL_CTX* make_context(const char* ca, const char* cert, const char* key, std::string& err) {
    SSL_CTX* ctx = SSL_CTX_new(TLS_method());
    if (!ctx) { err = openssl_error(); return nullptr; }
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (SSL_CTX_load_verify_locations(ctx, ca, nullptr) != 1) {
        err = std::string("CA certificate ") + ca + ": " + openssl_error();
    } else if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        err = std::string("certificate ") + cert + ": " + openssl_error();
    } else if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        bool mismatch = ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH;
        err = std::string("private key ") + key + (mismatch ? " does not match certificate " + std::string(cert)
                                                             : ": " + openssl_error());
        ERR_clear_error();
    } else if (SSL_CTX_check_private_key(ctx) != 1) {
        err = std::string("private key ") + key + " does not match certificate " + cert;
    } else if (X509* own = SSL_CTX_get0_certificate(ctx); X509_cmp_current_time(X509_get0_notAfter(own)) <= 0) {
        err = std::string("certificate ") + cert + " has expired (bknrctl certs rotate)";
    } else {
        return ctx;
    }
    SSL_CTX_free(ctx);
    return nullptr;
}

}  // namespace

extern "C" int bknr_tls_transport_init(raft_uv_transport* t, uv_loop_t* loop, const char* ca_file,
                                       const char* cert_file, const char* key_file) {
    if (t->version != 1) {
        snprintf(t->errmsg, sizeof t->errmsg, "Invalid version: %d", t->version);
        return RAFT_INVALID;
    }
    std::string err;
    SSL_CTX* ctx = make_context(ca_file, cert_file, key_file, err);
    if (!ctx) {
        snprintf(t->errmsg, sizeof t->errmsg, "TLS: %s", err.c_str());
        return RAFT_INVALID;
    }
    int rv = bknr_auth::new_auth(t, loop);
    if (rv != 0) {
        SSL_CTX_free(ctx);
        return rv;
    }
    static_cast<bknr_auth::Auth*>(t->impl)->tls_ctx = ctx;
    return 0;
}
