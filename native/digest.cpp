// _digest: the state digest's per-object hashing and fold, in C (bknr_cluster/store/digest.py).
//
// Computes exactly what the definition says (scheme bknr-digest-3, store/DESIGN.md "Digest"):
// h(o) = SipHash-2-4-128 under a fixed key of msgpack([class tag, id, values sorted by
// attribute name]), the low 120 bits of its little-endian integer. The msgpack bytes are the ones msgpack-python's Packer
// (use_bin_type, strict_types) writes: None, bool, int that fits 64 bits, float, str, bytes and
// references to store objects are encoded here; every other value goes to the Python
// ``fallback(value) -> bytes`` (canonicalised containers, tuples, enums, datetimes...), whose
// encoding is spliced into the row (a msgpack array is its header followed by its items).
//
// Why native: the fold runs for every object a transaction writes; in Python it cost more than
// the write itself. Everything here runs with the GIL held (it reads Python objects).

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "msgpack_row.hpp"
#include "pyint128.hpp"
#include "siphash.hpp"

namespace {

using u128 = unsigned __int128;
using i128 = __int128;

// --- SipHash-2-4, 128-bit output ---------------------------------------------------------------
// Why not BLAKE2s (the bknr-digest-2 scheme): one BLAKE2s block costs ~1,800 instructions, more
// than everything else the fold does for an object; SipHash-2-4 hashes a typical row (~40
// bytes) in ~300. The key is public and fixed (digest.ROW_KEY), so this is not a defence against someone
// crafting colliding states (the sum of per-object hashes never was); it is a well-mixed
// 128-bit function, so two different rows give one h by accident with probability ~2**-120.

uint8_t g_key[16];  // digest.ROW_KEY, set by configure()
using bknr_siphash::siphash128;


const u128 MASK120 = (u128(1) << 120) - 1;

// h of one encoded row: its keyed SipHash-2-4-128, reduced to 120 bits.
inline u128 row_hash(const uint8_t* data, size_t len) { return siphash128(g_key, data, len) & MASK120; }

using bknr_pyint128::from_128;
using bknr_pyint128::to_i128;

// --- module state -----------------------------------------------------------------------------

PyTypeObject* g_store_object = nullptr;  // StoreObject
Py_ssize_t g_id_offset = -1;             // StoreObject.id slot
Py_ssize_t g_hash_offset = -1;           // StoreObject._state_hash slot

inline PyObject*& slot(PyObject* o, Py_ssize_t offset) {
  return *reinterpret_cast<PyObject**>(reinterpret_cast<char*>(o) + offset);
}

Py_ssize_t member_offset(PyObject* descr) {
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

// --- msgpack rows (msgpack_row.hpp) -------------------------------------------------------------

using bknr_msgpack::Row;

const int8_t EXT_REF = 10;  // codec.py
const long UNDO_DELETE = 2;  // model.py: the undo entry (UNDO_DELETE, obj)

// Everything one hashing call needs besides the objects.
struct Context {
  PyObject* extents;   // dict: class -> {id: object}, the store's current ``_extent``
  PyObject* seen;      // list the live referenced objects are appended to, or None
  PyObject* fallback;  // value -> bytes for the types not encoded here
};

// Appends the encoding of an int known to fit in 64 bits; returns false when it does not.
bool pack_int(Row& row, PyObject* v) {
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

bool pack_value(Row& row, PyObject* v, const Context& ctx);

bool pack_fallback(Row& row, PyObject* v, const Context& ctx) {
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

bool pack_ref(Row& row, PyObject* v, const Context& ctx) {
  PyObject* oid = slot(v, g_id_offset);
  PyObject* extent = oid ? PyDict_GetItemWithError(ctx.extents, reinterpret_cast<PyObject*>(Py_TYPE(v)))
                         : nullptr;
  if (extent == nullptr && PyErr_Occurred()) return false;
  PyObject* live = nullptr;
  if (extent != nullptr) {
    if (!PyDict_Check(extent)) return pack_fallback(row, v, ctx);
    live = PyDict_GetItemWithError(extent, oid);
    if (live == nullptr && PyErr_Occurred()) return false;
  }
  if (live != v) {  // deleted, or of another store: encoded as None (lenient, as in snapshots)
    row.byte(0xc0);
    return true;
  }
  if (ctx.seen != Py_None && PyList_Append(ctx.seen, v) < 0) return false;
  Row id;
  if (!PyLong_CheckExact(oid) || !pack_int(id, oid)) return pack_fallback(row, v, ctx);
  row.ext(EXT_REF, id.data(), id.size());
  return true;
}

bool pack_value(Row& row, PyObject* v, const Context& ctx) {
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

// A class's plan: (tag bytes, tuple of slot offsets), from the Python ``plan(cls)``.
struct Plan {
  PyObject* tag;  // borrowed from the plan tuple, which the plans dict keeps
  std::vector<Py_ssize_t> offsets;
};

bool parse_plan(PyObject* p, Plan* out) {
  if (!PyTuple_Check(p) || PyTuple_GET_SIZE(p) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(p, 0)) ||
      !PyTuple_Check(PyTuple_GET_ITEM(p, 1))) {
    PyErr_SetString(PyExc_TypeError, "a plan is (tag bytes, tuple of slots)");
    return false;
  }
  out->tag = PyTuple_GET_ITEM(p, 0);
  PyObject* descrs = PyTuple_GET_ITEM(p, 1);
  out->offsets.clear();
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(descrs); i++) {
    Py_ssize_t off = member_offset(PyTuple_GET_ITEM(descrs, i));
    if (off < 0) return false;
    out->offsets.push_back(off);
  }
  return true;
}

// The plan of cls from ``plans``, made by ``plan_fn(cls)`` (which stores it there) when missing.
bool get_plan(PyObject* plans, PyObject* plan_fn, PyTypeObject* cls, Plan* out) {
  PyObject* key = reinterpret_cast<PyObject*>(cls);
  PyObject* p = PyDict_GetItemWithError(plans, key);
  if (p == nullptr) {
    if (PyErr_Occurred()) return false;
    PyObject* made = PyObject_CallOneArg(plan_fn, key);
    if (made == nullptr) return false;
    Py_DECREF(made);
    p = PyDict_GetItemWithError(plans, key);
    if (p == nullptr) {
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "plan() did not store the plan");
      return false;
    }
  }
  return parse_plan(p, out);
}

bool hash_object(PyObject* obj, const Plan& plan, const Context& ctx, Row& row, u128* out) {
  row.clear();
  row.array_header(plan.offsets.size() + 2);
  row.bin(PyBytes_AS_STRING(plan.tag), size_t(PyBytes_GET_SIZE(plan.tag)));
  PyObject* oid = slot(obj, g_id_offset);
  if (oid == nullptr) {
    PyErr_SetString(PyExc_AttributeError, "id");
    return false;
  }
  if (!pack_value(row, oid, ctx)) return false;
  for (Py_ssize_t off : plan.offsets) {
    PyObject* v = slot(obj, off);
    if (v == nullptr) {
      PyErr_Format(PyExc_AttributeError, "%s object has an unset attribute slot", Py_TYPE(obj)->tp_name);
      return false;
    }
    if (!pack_value(row, v, ctx)) return false;
  }
  *out = row_hash(reinterpret_cast<const uint8_t*>(row.data()), row.size());
  return true;
}

bool check_configured() {
  if (g_store_object == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "_digest.configure() was not called");
    return false;
  }
  return true;
}

bool parse_context(PyObject* extents, PyObject* seen, PyObject* fallback, Context* ctx) {
  if (!PyDict_Check(extents) || !(seen == Py_None || PyList_Check(seen)) || !PyCallable_Check(fallback)) {
    PyErr_SetString(PyExc_TypeError, "expected extents dict, seen list or None, fallback callable");
    return false;
  }
  *ctx = Context{extents, seen, fallback};
  return true;
}

// configure(StoreObject, id slot, _state_hash slot, row key)
PyObject* py_configure(PyObject*, PyObject* args) {
  PyObject *base, *id_descr, *hash_descr;
  const char* key;
  Py_ssize_t key_len;
  if (!PyArg_ParseTuple(args, "O!OOy#", &PyType_Type, &base, &id_descr, &hash_descr, &key, &key_len))
    return nullptr;
  if (key_len != 16) {
    PyErr_SetString(PyExc_ValueError, "the row key is 16 bytes");
    return nullptr;
  }
  std::memcpy(g_key, key, 16);
  Py_ssize_t id_off = member_offset(id_descr), hash_off = member_offset(hash_descr);
  if (id_off < 0 || hash_off < 0) return nullptr;
  Py_INCREF(base);
  Py_XDECREF(reinterpret_cast<PyObject*>(g_store_object));
  g_store_object = reinterpret_cast<PyTypeObject*>(base);
  g_id_offset = id_off;
  g_hash_offset = hash_off;
  Py_RETURN_NONE;
}

// hashes(plan, objs, extents, seen, fallback) -> list of h (objects of one class)
PyObject* py_hashes(PyObject*, PyObject* args) {
  PyObject *plan_tuple, *objs, *extents, *seen, *fallback;
  if (!PyArg_ParseTuple(args, "O!O!OOO", &PyTuple_Type, &plan_tuple, &PyList_Type, &objs, &extents, &seen,
                        &fallback))
    return nullptr;
  Context ctx;
  if (!check_configured() || !parse_context(extents, seen, fallback, &ctx)) return nullptr;
  Plan plan;
  if (!parse_plan(plan_tuple, &plan)) return nullptr;
  Py_ssize_t n = PyList_GET_SIZE(objs);
  PyObject* out = PyList_New(n);
  Row row;
  for (Py_ssize_t i = 0; out != nullptr && i < n; i++) {
    u128 h;
    PyObject* obj = PyList_GET_ITEM(objs, i);
    PyObject* v = nullptr;
    if (hash_object(obj, plan, ctx, row, &h)) v = from_128(h, false);
    if (v == nullptr) {
      Py_CLEAR(out);
      break;
    }
    PyList_SET_ITEM(out, i, v);
  }
  return out;
}

// Whether an undo entry's kind is UNDO_DELETE (a small int: read its digit on 3.11).
inline bool is_delete(PyObject* kind) {
  if (!PyLong_CheckExact(kind)) return false;
#if PY_VERSION_HEX < 0x030C0000
  return Py_SIZE(kind) == 1 && reinterpret_cast<PyLongObject*>(kind)->ob_digit[0] == digit(UNDO_DELETE);
#else
  return PyLong_AsLong(kind) == UNDO_DELETE;
#endif
}

// One object a fold looks at.
struct Touched {
  PyTypeObject* cls;
  PyObject* obj;
  bool deleted;  // some undo entry deletes it (it may have been created again: never, ids are new)
};

// prepare(pending, extents, plans, plan_fn, seen, fallback)
//   -> (delta, objs, values, deleted_referenced, ref_classes)
// Everything a fold computes, nothing assigned (a fold is all or nothing): ``delta`` is
// S_new - S_old mod 2**128 over the objects named in ``pending``; ``values`` the ``_state_hash``
// each live one gets (the "referenced" mark kept); ``deleted_referenced`` the deleted objects
// some hash saw a reference to; ``ref_classes`` the classes whose hashes saw a reference.
PyObject* py_prepare(PyObject*, PyObject* args) {
  PyObject *pending, *extents, *plans, *plan_fn, *seen, *fallback;
  if (!PyArg_ParseTuple(args, "O!OO!OOO", &PyList_Type, &pending, &extents, &PyDict_Type, &plans, &plan_fn,
                        &seen, &fallback))
    return nullptr;
  Context ctx;
  if (!check_configured() || !parse_context(extents, seen, fallback, &ctx)) return nullptr;
  // Each entry as one 128-bit key, class pointer high and object pointer low, its bit 0 (free:
  // objects are aligned) set when the entry deletes: sorting plain integers groups by class and
  // brings an object's entries together at a fraction of the cost of sorting structs.
  std::vector<u128> keys;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pending); i++) {
    PyObject* undo = PyList_GET_ITEM(pending, i);
    if (!PyList_Check(undo)) {
      PyErr_SetString(PyExc_TypeError, "pending holds undo lists");
      return nullptr;
    }
    for (Py_ssize_t j = 0; j < PyList_GET_SIZE(undo); j++) {
      PyObject* entry = PyList_GET_ITEM(undo, j);
      if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) < 2) {
        PyErr_SetString(PyExc_TypeError, "an undo entry is (kind, object, ...)");
        return nullptr;
      }
      PyObject* obj = PyTuple_GET_ITEM(entry, 1);
      bool deletes = is_delete(PyTuple_GET_ITEM(entry, 0));
      keys.push_back((u128(reinterpret_cast<uintptr_t>(Py_TYPE(obj))) << 64) |
                     u128(reinterpret_cast<uintptr_t>(obj) | uintptr_t(deletes)));
    }
  }
  std::sort(keys.begin(), keys.end());
  std::vector<Touched> touched;  // unique objects, each deleted if any of its entries deletes it
  touched.reserve(keys.size());
  for (u128 key : keys) {
    auto cls = reinterpret_cast<PyTypeObject*>(uintptr_t(key >> 64));
    auto bits = uintptr_t(uint64_t(key));
    auto obj = reinterpret_cast<PyObject*>(bits & ~uintptr_t(1));
    if (!touched.empty() && touched.back().obj == obj) touched.back().deleted |= (bits & 1) != 0;
    else touched.push_back(Touched{cls, obj, (bits & 1) != 0});
  }

  PyObject* objs = PyList_New(0);
  std::vector<i128> new_values;
  new_values.reserve(touched.size());
  PyObject* deleted_referenced = PyList_New(0);
  PyObject* ref_classes = PyList_New(0);
  u128 delta = 0;
  Row row;
  Plan plan;
  PyTypeObject* plan_cls = nullptr;
  PyObject* extent = nullptr;
  Py_ssize_t seen_before = 0;
  bool ok = objs && deleted_referenced && ref_classes;
  auto close_class = [&]() -> bool {  // note the class whose hashes saw a reference
    if (plan_cls != nullptr && ctx.seen != Py_None && PyList_GET_SIZE(ctx.seen) != seen_before)
      return PyList_Append(ref_classes, reinterpret_cast<PyObject*>(plan_cls)) == 0;
    return true;
  };
  for (size_t k = 0; ok && k < touched.size(); k++) {
    PyObject* obj = touched[k].obj;
    if (touched[k].cls != plan_cls) {
      if (!close_class()) { ok = false; break; }
      plan_cls = touched[k].cls;
      seen_before = ctx.seen == Py_None ? 0 : PyList_GET_SIZE(ctx.seen);
      extent = PyDict_GetItemWithError(extents, reinterpret_cast<PyObject*>(plan_cls));
      if (extent == nullptr) {
        if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, reinterpret_cast<PyObject*>(plan_cls));
        ok = false;
        break;
      }
      if (!get_plan(plans, plan_fn, plan_cls, &plan)) { ok = false; break; }
    }
    i128 old = 0;
    PyObject* stored = slot(obj, g_hash_offset);
    if (stored != nullptr && !to_i128(stored, &old)) { ok = false; break; }
    bool marked = old < 0;
    u128 old_h = u128(marked ? ~old : old);
    // An object leaves its extent only by a delete, which the undo log records, and a store
    // object is never written after its delete: so only those the log deletes are looked up
    // (one cache miss less per written object on a large store).
    PyObject* current = obj;
    if (touched[k].deleted) {
      PyObject* oid = slot(obj, g_id_offset);
      current = oid ? PyDict_GetItemWithError(extent, oid) : nullptr;
      if (current == nullptr && PyErr_Occurred()) { ok = false; break; }
    }
    if (current != obj) {  // deleted
      delta -= old_h;
      if (marked && PyList_Append(deleted_referenced, obj) < 0) ok = false;
      continue;
    }
    u128 h;
    if (!hash_object(obj, plan, ctx, row, &h)) { ok = false; break; }
    delta += h - old_h;
    new_values.push_back(marked ? ~i128(h) : i128(h));
    ok = PyList_Append(objs, obj) == 0;
  }
  if (ok) ok = close_class();
  // the new values as 16-byte native integers: no int per object until assign(), which mostly
  // overwrites the old int in place
  PyObject* values = ok ? PyBytes_FromStringAndSize(reinterpret_cast<const char*>(new_values.data()),
                                                    Py_ssize_t(new_values.size() * sizeof(i128)))
                        : nullptr;
  ok = values != nullptr;
  PyObject* d = ok ? from_128(delta, false) : nullptr;
  PyObject* result = d ? PyTuple_Pack(5, d, objs, values, deleted_referenced, ref_classes) : nullptr;
  Py_XDECREF(d);
  Py_XDECREF(objs);
  Py_XDECREF(values);
  Py_XDECREF(deleted_referenced);
  Py_XDECREF(ref_classes);
  return result;
}

// assign(objs, values): set each object's ``_state_hash``; values is a list of ints or the
// bytes of 16-byte integers prepare() returns. Cannot fail once the arguments are checked, so
// a fold stays all or nothing.
PyObject* py_assign(PyObject*, PyObject* args) {
  PyObject *objs, *values;
  if (!PyArg_ParseTuple(args, "O!O", &PyList_Type, &objs, &values)) return nullptr;
  if (!check_configured()) return nullptr;
  bool packed = PyBytes_Check(values);
  if (!packed && !PyList_Check(values)) {
    PyErr_SetString(PyExc_TypeError, "values is a list or bytes");
    return nullptr;
  }
  Py_ssize_t count = packed ? PyBytes_GET_SIZE(values) / Py_ssize_t(sizeof(i128)) : PyList_GET_SIZE(values);
  if ((packed && PyBytes_GET_SIZE(values) % Py_ssize_t(sizeof(i128)) != 0) || PyList_GET_SIZE(objs) != count) {
    PyErr_SetString(PyExc_ValueError, "objs and values differ in length");
    return nullptr;
  }
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(objs); i++) {
    PyObject* obj = PyList_GET_ITEM(objs, i);
    if (!PyObject_TypeCheck(obj, g_store_object)) {
      PyErr_SetString(PyExc_TypeError, "not a store object");
      return nullptr;
    }
  }
  if (packed) {
    const char* p = PyBytes_AS_STRING(values);
    std::vector<PyObject*> built;  // new ints, made before anything is assigned
    std::vector<i128> xs(static_cast<size_t>(count));
    if (count > 0) std::memcpy(xs.data(), p, size_t(count) * sizeof(i128));
    for (Py_ssize_t i = 0; i < count; i++) {  // prepare() lists each object once
      PyObject* s = slot(PyList_GET_ITEM(objs, i), g_hash_offset);
      PyObject* v = nullptr;
      if (!bknr_pyint128::fits_in_place(s, xs[size_t(i)])) {
        v = from_128(u128(xs[size_t(i)]), true);
        if (v == nullptr) {
          for (PyObject* b : built) Py_XDECREF(b);
          return nullptr;
        }
      }
      built.push_back(v);
    }
    for (Py_ssize_t i = 0; i < count; i++) {  // nothing below can fail
      PyObject*& s = slot(PyList_GET_ITEM(objs, i), g_hash_offset);
      PyObject* v = built[size_t(i)];
      if (v == nullptr) {
        bknr_pyint128::write_in_place(s, xs[size_t(i)]);
        continue;
      }
      PyObject* old = s;
      s = v;
      Py_XDECREF(old);
    }
    Py_RETURN_NONE;
  }
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(objs); i++) {
    PyObject*& s = slot(PyList_GET_ITEM(objs, i), g_hash_offset);
    PyObject* old = s;
    PyObject* v = PyList_GET_ITEM(values, i);
    Py_INCREF(v);
    s = v;
    Py_XDECREF(old);
  }
  Py_RETURN_NONE;
}

// mark(objs): store ``~h`` for each object whose ``_state_hash`` is a non-negative h.
PyObject* py_mark(PyObject*, PyObject* arg) {
  if (!PyList_Check(arg)) {
    PyErr_SetString(PyExc_TypeError, "expected a list");
    return nullptr;
  }
  if (!check_configured()) return nullptr;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(arg); i++) {
    PyObject* obj = PyList_GET_ITEM(arg, i);
    if (!PyObject_TypeCheck(obj, g_store_object)) {
      PyErr_SetString(PyExc_TypeError, "not a store object");
      return nullptr;
    }
    PyObject*& s = slot(obj, g_hash_offset);
    if (s == nullptr || _PyLong_Sign(s) < 0) continue;  // unset (not hashed yet) or already marked
    i128 h;
    if (!to_i128(s, &h)) return nullptr;
    PyObject* v = from_128(u128(~h), true);
    if (v == nullptr) return nullptr;
    PyObject* old = s;
    s = v;
    Py_DECREF(old);
  }
  Py_RETURN_NONE;
}

// siphash128(key, data) -> int: the keyed hash itself, for the tests' reference vectors.
PyObject* py_siphash128(PyObject*, PyObject* args) {
  Py_buffer key, data;
  if (!PyArg_ParseTuple(args, "y*y*", &key, &data)) return nullptr;
  PyObject* out = nullptr;
  if (key.len != 16) PyErr_SetString(PyExc_ValueError, "the key is 16 bytes");
  else out = from_128(siphash128(static_cast<const uint8_t*>(key.buf), static_cast<const uint8_t*>(data.buf),
                                 size_t(data.len)), false);
  PyBuffer_Release(&key);
  PyBuffer_Release(&data);
  return out;
}

PyMethodDef METHODS[] = {
    {"siphash128", py_siphash128, METH_VARARGS, "siphash128(key, data) -> int (SipHash-2-4-128)"},
    {"configure", py_configure, METH_VARARGS, "configure(StoreObject, id slot, _state_hash slot, row key)"},
    {"hashes", py_hashes, METH_VARARGS, "hashes(plan, objs, extents, seen, fallback) -> list of h"},
    {"prepare", py_prepare, METH_VARARGS,
     "prepare(pending, extents, plans, plan_fn, seen, fallback) -> (delta, objs, values, "
     "deleted_referenced, ref_classes)"},
    {"assign", py_assign, METH_VARARGS, "assign(objs, values): set _state_hash"},
    {"mark", py_mark, METH_O, "mark(objs): mark each hashed object as referenced"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_digest", "Native state-digest fold (store/digest.py).", -1,
                      METHODS, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__digest() { return PyModule_Create(&MODULE); }
