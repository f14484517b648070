// 128-bit integers -> Python ints for the state digest (digest.cpp).
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

namespace bknr_pyint128 {

using u128 = unsigned __int128;
using i128 = __int128;

// The fold's sums and hashes become Python ints here (the digest stays below 2**128).
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

}  // namespace bknr_pyint128
