// SipHash-c-d with 128-bit output (Aumasson and Bernstein), for the state digest (digest.cpp).
// Header-only: one translation unit uses it; the test vectors are in tests/store/test_digest_native.py.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace bknr_siphash {

using u128 = unsigned __int128;

// Little-endian 64-bit load: one unaligned load on a little-endian host (GCC at -O2 did not
// merge the byte loop, ~100 instructions per row).
inline uint64_t load64(const uint8_t* p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
#else
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
#endif
}

inline uint64_t rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

#define SIPROUND                                           \
  do {                                                     \
    v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32); \
    v2 += v3; v3 = rotl(v3, 16); v3 ^= v2;                 \
    v0 += v3; v3 = rotl(v3, 21); v3 ^= v0;                 \
    v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32); \
  } while (0)

// SipHash-C-D with 128-bit output of data under key, as the little-endian integer of its 16
// output bytes (SipHash-2-4 is the reference's default; the digest uses SipHash-1-3). PADDED:
// the caller guarantees 8 readable bytes past the end, so the last partial word is one load.
template <int C, int D, bool PADDED = false>
inline u128 siphash128(const uint8_t key[16], const uint8_t* data, size_t len) {
  uint64_t k0 = load64(key), k1 = load64(key + 8);
  uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
  uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
  v1 ^= 0xee;
  const uint8_t* end = data + (len - len % 8);
  for (; data != end; data += 8) {
    uint64_t m = load64(data);
    v3 ^= m;
    for (int r = 0; r < C; r++) SIPROUND;
    v0 ^= m;
  }
  uint64_t last;
  if constexpr (PADDED) {
    size_t rem = len % 8;
    last = rem == 0 ? 0 : load64(data) & (~uint64_t(0) >> (64 - 8 * rem));
  } else {
    uint8_t tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(tail, data, len % 8);
    last = load64(tail);
  }
  uint64_t b = (uint64_t(len) << 56) | last;
  v3 ^= b;
  for (int r = 0; r < C; r++) SIPROUND;
  v0 ^= b;
  v2 ^= 0xee;
  for (int r = 0; r < D; r++) SIPROUND;
  uint64_t lo = v0 ^ v1 ^ v2 ^ v3;
  v1 ^= 0xdd;
  for (int r = 0; r < D; r++) SIPROUND;
  uint64_t hi = v0 ^ v1 ^ v2 ^ v3;
  return (u128(hi) << 64) | lo;
}

#undef SIPROUND

}  // namespace bknr_siphash
