// Python ints <-> 128-bit integers for the state digest (digest.cpp): the per-object hashes
// live in Python ints, read and built here without the generic byte-array calls.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

namespace bknr_pyint128 {

using u128 = unsigned __int128;
using i128 = __int128;

// Every stored value is below 2**120 in magnitude. CPython 3.11 keeps an int as 30-bit digits
// with the sign in the size: read and build those directly (the generic byte-array calls cost
// several hundred instructions per object); later versions changed the layout.
inline bool to_i128(PyObject* v, i128* out) {
#if PY_VERSION_HEX < 0x030C0000
  Py_ssize_t size = Py_SIZE(v);
  Py_ssize_t n = size < 0 ? -size : size;
  if (n <= 5) {
    const digit* d = reinterpret_cast<PyLongObject*>(v)->ob_digit;
    u128 x = 0;
    for (Py_ssize_t i = n - 1; i >= 0; i--) x = (x << PyLong_SHIFT) | d[i];
    *out = size < 0 ? -i128(x) : i128(x);
    return true;
  }
#endif
  unsigned char buf[16];
#if PY_VERSION_HEX >= 0x030D0000
  if (_PyLong_AsByteArray(reinterpret_cast<PyLongObject*>(v), buf, 16, 1, 1, 1) < 0) return false;
#else
  if (_PyLong_AsByteArray(reinterpret_cast<PyLongObject*>(v), buf, 16, 1, 1) < 0) return false;
#endif
  u128 x = 0;
  for (int i = 15; i >= 0; i--) x = (x << 8) | buf[i];
  *out = i128(x);
  return true;
}

inline PyObject* from_128(u128 x, bool is_signed) {
#if PY_VERSION_HEX < 0x030C0000
  bool negative = is_signed && i128(x) < 0;
  u128 m = negative ? u128(-i128(x)) : x;
  if (m >> 120 == 0) {
    Py_ssize_t n = 0;
    for (u128 t = m; t != 0; t >>= PyLong_SHIFT) n++;
    if (n == 0) return PyLong_FromLong(0);
    PyLongObject* v = _PyLong_New(n);
    if (v == nullptr) return nullptr;
    for (Py_ssize_t i = 0; i < n; i++, m >>= PyLong_SHIFT) v->ob_digit[i] = digit(m & PyLong_MASK);
    if (negative) Py_SET_SIZE(v, -n);
    return reinterpret_cast<PyObject*>(v);
  }
#endif
  unsigned char buf[16];
  for (int i = 0; i < 16; i++) buf[i] = uint8_t(x >> (8 * i));
  return _PyLong_FromByteArray(buf, 16, 1, is_signed ? 1 : 0);
}

// Whether the int ``v`` may be overwritten with x invisibly to everyone: v is an exact int whose
// only reference is the caller's (a ``_state_hash`` slot about to be replaced) and x needs as
// many digits as v has. Overwriting saves a fold the allocation of the new int and the free of
// the old one, and touches no new memory (the old int was just read).
inline bool fits_in_place(PyObject* v, i128 x) {
#if PY_VERSION_HEX < 0x030C0000
  if (v == nullptr || !PyLong_CheckExact(v) || Py_REFCNT(v) != 1) return false;
  u128 m = x < 0 ? u128(-x) : u128(x);
  if (m == 0 || m >> 120 != 0) return false;
  uint64_t hi = uint64_t(m >> 64);
  int bits = hi ? 128 - __builtin_clzll(hi) : 64 - __builtin_clzll(uint64_t(m));
  Py_ssize_t n = (bits + PyLong_SHIFT - 1) / PyLong_SHIFT;
  Py_ssize_t size = Py_SIZE(v);
  return (size < 0 ? -size : size) == n;
#else
  (void)v; (void)x;
  return false;
#endif
}

// Overwrites v with x; only after fits_in_place(v, x).
inline void write_in_place(PyObject* v, i128 x) {
#if PY_VERSION_HEX < 0x030C0000
  u128 m = x < 0 ? u128(-x) : u128(x);
  Py_ssize_t size = Py_SIZE(v), n = size < 0 ? -size : size;
  digit* d = reinterpret_cast<PyLongObject*>(v)->ob_digit;
  for (Py_ssize_t i = 0; i < n; i++, m >>= PyLong_SHIFT) d[i] = digit(m & PyLong_MASK);
  Py_SET_SIZE(v, x < 0 ? -n : n);
#else
  (void)v; (void)x;
#endif
}

}  // namespace bknr_pyint128
