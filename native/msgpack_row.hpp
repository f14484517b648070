// The msgpack writer of the state digest's rows (digest.cpp): exactly the bytes
// msgpack-python's Packer(use_bin_type=True, strict_types=True) writes for the types digest.cpp
// encodes natively. No Python objects here: the caller reads them and hands over C values.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

namespace bknr_msgpack {

// The row being encoded. A length over a buffer that only grows (one compare per write, no
// std::string bookkeeping per byte: ~100 instructions per row less).
struct Row {
  std::string store = std::string(256, '\0');
  size_t len = 0;
  char* reserve(size_t n) {
    if (len + n > store.size()) store.resize(std::max(2 * store.size(), len + n));
    return &store[len];
  }
  void clear() { len = 0; }
  const char* data() const { return store.data(); }
  size_t size() const { return len; }
  void append(const char* p, size_t n) {
    if (n == 0) return;
    std::memcpy(reserve(n), p, n);
    len += n;
  }
  void byte(uint8_t b) {
    *reserve(1) = char(b);
    len++;
  }
  void be(uint64_t v, int n) {
    char* p = reserve(size_t(n));
    for (int i = 0; i < n; i++) p[i] = char(uint8_t(v >> (8 * (n - 1 - i))));
    len += size_t(n);
  }
  void array_header(size_t n) {
    if (n < 16) byte(uint8_t(0x90 | n));
    else if (n < 0x10000) { byte(0xdc); be(n, 2); }
    else { byte(0xdd); be(n, 4); }
  }
  void bin(const char* p, size_t n) {
    if (n < 0x100) { byte(0xc4); be(n, 1); }
    else if (n < 0x10000) { byte(0xc5); be(n, 2); }
    else { byte(0xc6); be(n, 4); }
    append(p, n);
  }
  void str(const char* p, size_t n) {
    if (n < 32) byte(uint8_t(0xa0 | n));
    else if (n < 0x100) { byte(0xd9); be(n, 1); }
    else if (n < 0x10000) { byte(0xda); be(n, 2); }
    else { byte(0xdb); be(n, 4); }
    append(p, n);
  }
  void int_signed(long long x) {
    if (x < -(1LL << 5)) {
      if (x < -(1LL << 15)) {
        if (x < -(1LL << 31)) { byte(0xd3); be(uint64_t(x), 8); }
        else { byte(0xd2); be(uint64_t(x), 4); }
      } else if (x < -(1LL << 7)) { byte(0xd1); be(uint64_t(x), 2); }
      else { byte(0xd0); be(uint64_t(x), 1); }
    } else if (x < (1LL << 7)) {
      byte(uint8_t(x));
    } else {
      int_unsigned(uint64_t(x));
    }
  }
  void int_unsigned(uint64_t x) {
    if (x < (1ULL << 7)) byte(uint8_t(x));
    else if (x < (1ULL << 8)) { byte(0xcc); be(x, 1); }
    else if (x < (1ULL << 16)) { byte(0xcd); be(x, 2); }
    else if (x < (1ULL << 32)) { byte(0xce); be(x, 4); }
    else { byte(0xcf); be(x, 8); }
  }
  void ext(int8_t code, const char* p, size_t n) {
    switch (n) {
      case 1: byte(0xd4); break;
      case 2: byte(0xd5); break;
      case 4: byte(0xd6); break;
      case 8: byte(0xd7); break;
      case 16: byte(0xd8); break;
      default:
        if (n < 0x100) { byte(0xc7); be(n, 1); }
        else if (n < 0x10000) { byte(0xc8); be(n, 2); }
        else { byte(0xc9); be(n, 4); }
    }
    byte(uint8_t(code));
    append(p, n);
  }
};

}  // namespace bknr_msgpack
