// The value encoding of the state digest's rows (digest.cpp): store values -> the msgpack bytes
// the store codec writes (msgpack-python's Packer, use_bin_type, strict_types). None, bool, int
// that fits 64 bits, float, str, bytes and references to store objects are encoded here; every
// other value goes to a Python ``fallback(value) -> bytes`` (canonicalised containers, enums,
// datetimes...), whose encoding is spliced in. Runs with the GIL held (it reads Python objects).
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "msgpack_row.hpp"

namespace bknr_digest {

using bknr_msgpack::Row;

inline PyTypeObject* g_store_object = nullptr;  // StoreObject
inline Py_ssize_t g_id_offset = -1;             // StoreObject.id slot
inline Py_ssize_t g_mark_offset = -1;           // StoreObject._referenced slot

inline PyObject*& slot(PyObject* o, Py_ssize_t offset) {
  return *reinterpret_cast<PyObject**>(reinterpret_cast<char*>(o) + offset);
}

inline Py_ssize_t member_offset(PyObject* descr) {
  if (!PyObject_TypeCheck(descr, &PyMemberDescr_Type)) {
    PyErr_SetString(PyExc_TypeError, "expected a slot (member descriptor)");
    return -1;
  }
  PyMemberDef* m = reinterpret_cast<PyMemberDescrObject*>(descr)->d_member;
  if (m->type != T_OBJECT_EX) {
    PyErr_SetString(PyExc_TypeError, "expected an object slot");
    return -1;
  }
  return m->offset;
}

const int8_t EXT_REF = 10;  // codec.py

// Which objects were live when a fold's batch began: those live now and not created in the
// batch, plus those the batch deleted (ids are never reused, and a deleted object never comes
// back except through a rollback, which never reaches a fold). Both lists sorted by address.
struct Liveness {
  std::vector<PyObject*> created, deleted;
  bool created_in_batch(PyObject* o) const { return std::binary_search(created.begin(), created.end(), o); }
  bool deleted_in_batch(PyObject* o) const { return std::binary_search(deleted.begin(), deleted.end(), o); }
};

// Everything one encoding needs besides the value.
struct Context {
  PyObject* extents;   // dict: class -> {id: object}, the store's current ``_extent``
  PyObject* seen;      // list the live referenced objects are appended to, or None
  PyObject* fallback;  // value -> bytes for the types not encoded here
  const Liveness* before = nullptr;  // set: references encoded as of the batch's start, none noted
};

// Appends the encoding of an int known to fit in 64 bits; returns false when it does not.
inline bool pack_int(Row& row, PyObject* v) {
#if PY_VERSION_HEX < 0x030C0000
  Py_ssize_t size = Py_SIZE(v);  // the usual small int: at most one 30-bit digit
  if (size == 0 || size == 1 || size == -1) {
    long long d = size == 0 ? 0 : (long long)reinterpret_cast<PyLongObject*>(v)->ob_digit[0];
    row.int_signed(size < 0 ? -d : d);
    return true;
  }
#endif
  int overflow = 0;
  long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
  if (overflow == 0) {
    if (x == -1 && PyErr_Occurred()) return false;
    row.int_signed(x);
    return true;
  }
  if (overflow > 0) {
    unsigned long long u = PyLong_AsUnsignedLongLong(v);
    if (!(u == (unsigned long long)-1 && PyErr_Occurred())) {
      row.int_unsigned(u);
      return true;
    }
  }
  PyErr_Clear();
  return false;  // a big int: the fallback encodes it (EXT_BIGINT)
}

inline bool pack_fallback(Row& row, PyObject* v, const Context& ctx) {
  PyObject* b = PyObject_CallOneArg(ctx.fallback, v);
  if (b == nullptr) return false;
  if (!PyBytes_Check(b)) {
    Py_DECREF(b);
    PyErr_SetString(PyExc_TypeError, "digest fallback must return bytes");
    return false;
  }
  row.append(PyBytes_AS_STRING(b), size_t(PyBytes_GET_SIZE(b)));
  Py_DECREF(b);
  return true;
}

// Whether v is a live object of this store now: 1, 0, or -1 with an exception set. A value the
// extents cannot answer for (a non-dict extent) gives -2: the caller uses the fallback.
inline int live_now(PyObject* v, PyObject* extents) {
  PyObject* oid = slot(v, g_id_offset);
  PyObject* extent = oid ? PyDict_GetItemWithError(extents, reinterpret_cast<PyObject*>(Py_TYPE(v))) : nullptr;
  if (extent == nullptr) return PyErr_Occurred() ? -1 : 0;
  if (!PyDict_Check(extent)) return -2;
  PyObject* found = PyDict_GetItemWithError(extent, oid);
  if (found == nullptr && PyErr_Occurred()) return -1;
  return found == v ? 1 : 0;
}

inline bool pack_ref(Row& row, PyObject* v, const Context& ctx) {
  int live = live_now(v, ctx.extents);
  if (live == -1) return false;
  if (live == -2) return pack_fallback(row, v, ctx);
  if (ctx.before != nullptr)
    live = !ctx.before->created_in_batch(v) && (live == 1 || ctx.before->deleted_in_batch(v));
  if (!live) {  // deleted, or of another store: encoded as None (lenient, as in snapshots)
    row.byte(0xc0);
    return true;
  }
  if (ctx.before == nullptr && ctx.seen != Py_None && PyList_Append(ctx.seen, v) < 0) return false;
  PyObject* oid = slot(v, g_id_offset);
  Row id;
  if (!PyLong_CheckExact(oid) || !pack_int(id, oid)) return pack_fallback(row, v, ctx);
  row.ext(EXT_REF, id.data(), id.size());
  return true;
}

inline bool pack_value(Row& row, PyObject* v, const Context& ctx) {
  PyTypeObject* t = Py_TYPE(v);
  if (v == Py_None) { row.byte(0xc0); return true; }
  if (t == &PyLong_Type) {
    if (pack_int(row, v)) return true;
    if (PyErr_Occurred()) return false;
    return pack_fallback(row, v, ctx);
  }
  if (t == &PyUnicode_Type) {
    if (PyUnicode_IS_COMPACT_ASCII(v)) {  // ASCII is its own UTF-8: no conversion call
      row.str(static_cast<const char*>(PyUnicode_DATA(v)), size_t(PyUnicode_GET_LENGTH(v)));
      return true;
    }
    Py_ssize_t n;
    const char* p = PyUnicode_AsUTF8AndSize(v, &n);
    if (p == nullptr) {  // lone surrogates: the packer's own error, through the fallback
      PyErr_Clear();
      return pack_fallback(row, v, ctx);
    }
    row.str(p, size_t(n));
    return true;
  }
  if (v == Py_True) { row.byte(0xc3); return true; }
  if (v == Py_False) { row.byte(0xc2); return true; }
  if (t == &PyFloat_Type) {
    double d = PyFloat_AS_DOUBLE(v);
    uint64_t bits;
    std::memcpy(&bits, &d, 8);
    row.byte(0xcb);
    row.be(bits, 8);
    return true;
  }
  if (t == &PyBytes_Type) {
    row.bin(PyBytes_AS_STRING(v), size_t(PyBytes_GET_SIZE(v)));
    return true;
  }
  if (PyType_IsSubtype(t, g_store_object)) return pack_ref(row, v, ctx);
  return pack_fallback(row, v, ctx);
}

}  // namespace bknr_digest
