// Handshake wire format and crypto (see auth_handshake.hpp and docs/security.md).

#include "auth_handshake.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstring>

namespace bknr_auth {
namespace {

constexpr uint64_t kProtocol = 1;         // libraft's UV__TCP_HANDSHAKE_PROTOCOL
constexpr size_t kMaxAddress = 512;       // padded address length we accept in a preamble
constexpr char kMagicC[] = "BKNRAUC1";
constexpr char kMagicA[] = "BKNRAUA1";
constexpr char kBadProof[] = "bad proof (wrong cluster secret, or not the node it claims to be)";

void put_be(std::vector<unsigned char>& v, uint64_t x, int bytes) {
    for (int i = bytes - 1; i >= 0; i--) v.push_back(static_cast<unsigned char>(x >> (8 * i)));
}

uint64_t get_le64(const unsigned char* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

void compute_mac(const Secret& secret, const Transcript& t, const char* label, unsigned char out[kMac]) {
    std::vector<unsigned char> msg;
    static const char kDomain[] = "bknr-raft-auth/1 ";
    msg.insert(msg.end(), kDomain, kDomain + sizeof kDomain - 1);
    msg.insert(msg.end(), label, label + std::strlen(label));
    msg.insert(msg.end(), t.nonce_c, t.nonce_c + kNonce);
    msg.insert(msg.end(), t.nonce_a, t.nonce_a + kNonce);
    put_be(msg, t.c_id, 8);
    put_be(msg, t.a_id, 8);
    put_be(msg, t.c_address.size(), 4);
    msg.insert(msg.end(), t.c_address.begin(), t.c_address.end());
    unsigned int n = 0;
    HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()), msg.data(), msg.size(), out, &n);
}

// Constant time, so a peer cannot learn a valid MAC byte by byte from response timing.
bool mac_matches(const Secret& secret, const Transcript& t, const char* label, const unsigned char* got) {
    unsigned char want[kMac];
    compute_mac(secret, t, label, want);
    return CRYPTO_memcmp(want, got, kMac) == 0;
}

}  // namespace

const char* parse_preamble(const unsigned char in[kPreamble], Transcript& t, size_t& addr_len) {
    uint64_t proto = get_le64(in), id = get_le64(in + 8);
    uint64_t len = get_le64(in + 16);
    if (proto != kProtocol) return "not a raft peer (bad preamble)";
    if (id == 0 || len == 0 || len > kMaxAddress || len % 8 != 0) return "malformed raft preamble";
    t.c_id = id;
    addr_len = static_cast<size_t>(len);
    return nullptr;
}

const char* parse_address(const unsigned char* buf, size_t len, Transcript& t) {
    size_t n = strnlen(reinterpret_cast<const char*>(buf), len);
    if (n == 0 || n == len) return "malformed address in raft preamble";
    t.c_address.assign(reinterpret_cast<const char*>(buf), n);
    return nullptr;
}

const char* make_hello_c(Transcript& t, unsigned char out[kHelloC]) {
    if (RAND_bytes(t.nonce_c, kNonce) != 1) return "RAND_bytes failed";
    std::memcpy(out, kMagicC, kMagic);
    std::memcpy(out + kMagic, t.nonce_c, kNonce);
    return nullptr;
}

const char* answer_hello_c(const Secret& secret, const unsigned char in[kHelloC], Transcript& t,
                           unsigned char out[kHelloA]) {
    if (std::memcmp(in, kMagicC, kMagic) != 0)
        return "peer did not start the authentication handshake (no secret configured?)";
    std::memcpy(t.nonce_c, in + kMagic, kNonce);
    if (RAND_bytes(t.nonce_a, kNonce) != 1) return "RAND_bytes failed";
    std::memcpy(out, kMagicA, kMagic);
    std::memcpy(out + kMagic, t.nonce_a, kNonce);
    compute_mac(secret, t, "acceptor", out + kMagic + kNonce);
    return nullptr;
}

const char* answer_hello_a(const Secret& secret, const unsigned char in[kHelloA], Transcript& t,
                           unsigned char out[kMac]) {
    if (std::memcmp(in, kMagicA, kMagic) != 0)
        return "peer did not answer the authentication handshake (no secret configured?)";
    std::memcpy(t.nonce_a, in + kMagic, kNonce);
    if (!mac_matches(secret, t, "acceptor", in + kMagic + kNonce)) return kBadProof;
    compute_mac(secret, t, "connector", out);
    return nullptr;
}

const char* check_proof_c(const Secret& secret, const unsigned char in[kMac], const Transcript& t) {
    return mac_matches(secret, t, "connector", in) ? nullptr : kBadProof;
}

}  // namespace bknr_auth
