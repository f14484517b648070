// Wire format and crypto of the authenticated transport's handshake. Internal to the auth_*.cpp
// files (the public API is auth_transport.hpp). Pure functions over buffers, with no libuv and
// no raft, so the protocol can be checked against docs/security.md in one place.
//
// Wire sequence on every connection (C = connecting node, A = accepting node):
//   1. C -> A  libraft's stock preamble: u64le protocol(1), u64le C's id, u64le padded length,
//              C's address (NUL-terminated, zero padded to 8). Written by raft_uv_tcp's connect,
//              which we reuse; A parses it with our own bounded reader (parse_preamble/_address).
//   2. C -> A  HELLO_C  = "BKNRAUC1" | nonce_c[32]
//   3. A -> C  HELLO_A  = "BKNRAUA1" | nonce_a[32] | mac_a[32]
//   4. C -> A  PROOF_C  = mac_c[32]                        (only after C verified mac_a)
//   mac_x = HMAC-SHA256(secret, "bknr-raft-auth/1 " label_x | nonce_c | nonce_a | u64be C id |
//                               u64be A id | u32be len | C address)
// Only after step 4 verified (A) / step 4 written (C) is the stream handed to raft. The distinct
// labels stop reflection, the two fresh nonces stop replay, the ids and address bind the proof
// to the claimed identities (a member cannot be impersonated by replaying another's proof).
//
// Every function that can refuse returns nullptr on success, else the reason that is logged
// (the wording is part of the operator-facing log, see docs/security.md).
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string>
#include <vector>

namespace bknr_auth {

constexpr size_t kNonce = 32;
constexpr size_t kMac = 32;
constexpr size_t kMagic = 8;
constexpr size_t kPreamble = 24;
constexpr size_t kHelloC = kMagic + kNonce;
constexpr size_t kHelloA = kMagic + kNonce + kMac;

using Secret = std::vector<unsigned char>;

// What both proofs are bound to, filled in as the handshake learns it.
struct Transcript {
    uint64_t c_id = 0, a_id = 0;  // connecting and accepting node ids
    std::string c_address;        // the connector's raft address, from its preamble
    unsigned char nonce_c[kNonce]{}, nonce_a[kNonce]{};
};

// A, step 1: libraft's 24-byte preamble, validated before anything the peer claims is trusted
// or sized by. Sets t.c_id only when valid; addr_len is the padded address length to read next.
const char* parse_preamble(const unsigned char in[kPreamble], Transcript& t, size_t& addr_len);

// A, step 1: the padded address; it must be non-empty and NUL-terminated inside the buffer.
const char* parse_address(const unsigned char* buf, size_t len, Transcript& t);

// C, step 2: draw nonce_c and write HELLO_C.
const char* make_hello_c(Transcript& t, unsigned char out[kHelloC]);

// A, steps 2-3: take nonce_c from HELLO_C, draw nonce_a and write HELLO_A (with mac_a).
const char* answer_hello_c(const Secret& secret, const unsigned char in[kHelloC], Transcript& t,
                           unsigned char out[kHelloA]);

// C, steps 3-4: check HELLO_A (magic and mac_a) and only then write PROOF_C.
const char* answer_hello_a(const Secret& secret, const unsigned char in[kHelloA], Transcript& t,
                           unsigned char out[kMac]);

// A, step 4: check PROOF_C.
const char* check_proof_c(const Secret& secret, const unsigned char in[kMac], const Transcript& t);

}  // namespace bknr_auth
