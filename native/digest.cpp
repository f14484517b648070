// _digest: the state digest's per-object hashing and fold, in C (bknr_cluster/store/digest.py).
//
// Computes exactly what the Python definition says (scheme bknr-digest-2, store/DESIGN.md
// "Digest"): h(o) = the 15-byte BLAKE2s of msgpack([class tag, id, values sorted by attribute
// name]) as a big-endian integer. The msgpack bytes are the ones msgpack-python's Packer
// (use_bin_type, strict_types) writes: None, bool, int that fits 64 bits, float, str, bytes and
// references to store objects are encoded here; every other value goes to the Python
// ``fallback(value) -> bytes`` (canonicalised containers, tuples, enums, datetimes...), whose
// encoding is spliced into the row (a msgpack array is its header followed by its items).
//
// Why native: the fold runs for every object a transaction writes; in Python it cost more than
// the write itself. Everything here runs with the GIL held (it reads Python objects).

#include <Python.h>
#include <structmember.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace {

using u128 = unsigned __int128;
using i128 = __int128;

// --- BLAKE2s (RFC 7693), unkeyed, any output length up to 32 ---------------------------------

const uint32_t IV[8] = {0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
                        0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19};
const uint8_t SIGMA[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

inline uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

inline uint32_t load32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

void compress(uint32_t h[8], const uint8_t block[64], uint64_t counter, bool last) {
  uint32_t m[16], v[16];
  for (int i = 0; i < 16; i++) m[i] = load32(block + 4 * i);
  for (int i = 0; i < 8; i++) {
    v[i] = h[i];
    v[i + 8] = IV[i];
  }
  v[12] ^= uint32_t(counter);
  v[13] ^= uint32_t(counter >> 32);
  if (last) v[14] = ~v[14];
#define G(a, b, c, d, x, y)          \
  v[a] = v[a] + v[b] + (x);          \
  v[d] = rotr(v[d] ^ v[a], 16);      \
  v[c] = v[c] + v[d];                \
  v[b] = rotr(v[b] ^ v[c], 12);      \
  v[a] = v[a] + v[b] + (y);          \
  v[d] = rotr(v[d] ^ v[a], 8);       \
  v[c] = v[c] + v[d];                \
  v[b] = rotr(v[b] ^ v[c], 7);
  for (int r = 0; r < 10; r++) {
    const uint8_t* s = SIGMA[r];
    G(0, 4, 8, 12, m[s[0]], m[s[1]]);
    G(1, 5, 9, 13, m[s[2]], m[s[3]]);
    G(2, 6, 10, 14, m[s[4]], m[s[5]]);
    G(3, 7, 11, 15, m[s[6]], m[s[7]]);
    G(0, 5, 10, 15, m[s[8]], m[s[9]]);
    G(1, 6, 11, 12, m[s[10]], m[s[11]]);
    G(2, 7, 8, 13, m[s[12]], m[s[13]]);
    G(3, 4, 9, 14, m[s[14]], m[s[15]]);
  }
#undef G
  for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

// The 15-byte BLAKE2s of data, as the big-endian integer Python's int.from_bytes gives.
u128 blake2s_15(const uint8_t* data, size_t len) {
  const unsigned outlen = 15;
  uint32_t h[8];
  std::memcpy(h, IV, sizeof h);
  h[0] ^= 0x01010000u ^ outlen;
  uint64_t counter = 0;
  while (len > 64) {
    counter += 64;
    compress(h, data, counter, false);
    data += 64;
    len -= 64;
  }
  uint8_t block[64] = {0};
  std::memcpy(block, data, len);
  counter += len;
  compress(h, block, counter, true);
  u128 out = 0;
  for (unsigned i = 0; i < outlen; i++) out = (out << 8) | uint8_t(h[i / 4] >> (8 * (i % 4)));
  return out;
}

// --- Python ints <-> 128-bit ------------------------------------------------------------------

bool to_i128(PyObject* v, i128* out) {
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

PyObject* from_128(u128 x, bool is_signed) {
  unsigned char buf[16];
  for (int i = 0; i < 16; i++) buf[i] = uint8_t(x >> (8 * i));
  return _PyLong_FromByteArray(buf, 16, 1, is_signed ? 1 : 0);
}

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

// --- msgpack, as msgpack-python's Packer(use_bin_type=True, strict_types=True) writes it ------

struct Row {
  std::string buf;
  void byte(uint8_t b) { buf.push_back(char(b)); }
  void be(uint64_t v, int n) {
    for (int i = n - 1; i >= 0; i--) buf.push_back(char(uint8_t(v >> (8 * i))));
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
    buf.append(p, n);
  }
  void str(const char* p, size_t n) {
    if (n < 32) byte(uint8_t(0xa0 | n));
    else if (n < 0x100) { byte(0xd9); be(n, 1); }
    else if (n < 0x10000) { byte(0xda); be(n, 2); }
    else { byte(0xdb); be(n, 4); }
    buf.append(p, n);
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
    buf.append(p, n);
  }
};

const int8_t EXT_REF = 10;  // codec.py

// Everything one hashing call needs besides the objects.
struct Context {
  PyObject* extents;   // dict: class -> {id: object}, the store's current ``_extent``
  PyObject* seen;      // list the live referenced objects are appended to, or None
  PyObject* fallback;  // value -> bytes for the types not encoded here
};

// Appends the encoding of an int known to fit in 64 bits; returns false when it does not.
bool pack_int(Row& row, PyObject* v) {
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
  row.buf.append(PyBytes_AS_STRING(b), size_t(PyBytes_GET_SIZE(b)));
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
  row.ext(EXT_REF, id.buf.data(), id.buf.size());
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
  row.buf.clear();
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
  *out = blake2s_15(reinterpret_cast<const uint8_t*>(row.buf.data()), row.buf.size());
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

// configure(StoreObject, id slot, _state_hash slot)
PyObject* py_configure(PyObject*, PyObject* args) {
  PyObject *base, *id_descr, *hash_descr;
  if (!PyArg_ParseTuple(args, "O!OO", &PyType_Type, &base, &id_descr, &hash_descr)) return nullptr;
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

// One object a fold looks at.
struct Touched {
  PyTypeObject* cls;
  PyObject* obj;
  bool operator<(const Touched& o) const { return cls != o.cls ? cls < o.cls : obj < o.obj; }
  bool operator==(const Touched& o) const { return obj == o.obj; }
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
  std::vector<Touched> touched;
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
      touched.push_back(Touched{Py_TYPE(obj), obj});
    }
  }
  std::sort(touched.begin(), touched.end());
  touched.erase(std::unique(touched.begin(), touched.end()), touched.end());

  PyObject* objs = PyList_New(0);
  PyObject* values = PyList_New(0);
  PyObject* deleted_referenced = PyList_New(0);
  PyObject* ref_classes = PyList_New(0);
  u128 delta = 0;
  Row row;
  Plan plan;
  PyTypeObject* plan_cls = nullptr;
  PyObject* extent = nullptr;
  Py_ssize_t seen_before = 0;
  bool ok = objs && values && deleted_referenced && ref_classes;
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
    PyObject* oid = slot(obj, g_id_offset);
    PyObject* current = oid ? PyDict_GetItemWithError(extent, oid) : nullptr;
    if (current == nullptr && PyErr_Occurred()) { ok = false; break; }
    if (current != obj) {  // deleted
      delta -= old_h;
      if (marked && PyList_Append(deleted_referenced, obj) < 0) ok = false;
      continue;
    }
    u128 h;
    if (!hash_object(obj, plan, ctx, row, &h)) { ok = false; break; }
    delta += h - old_h;
    PyObject* v = marked ? from_128(u128(~i128(h)), true) : from_128(h, false);
    ok = v != nullptr && PyList_Append(objs, obj) == 0 && PyList_Append(values, v) == 0;
    Py_XDECREF(v);
  }
  if (ok) ok = close_class();
  PyObject* d = ok ? from_128(delta, false) : nullptr;
  PyObject* result = d ? PyTuple_Pack(5, d, objs, values, deleted_referenced, ref_classes) : nullptr;
  Py_XDECREF(d);
  Py_XDECREF(objs);
  Py_XDECREF(values);
  Py_XDECREF(deleted_referenced);
  Py_XDECREF(ref_classes);
  return result;
}

// assign(objs, values): set each object's ``_state_hash`` (cannot fail once the lists match).
PyObject* py_assign(PyObject*, PyObject* args) {
  PyObject *objs, *values;
  if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &objs, &PyList_Type, &values)) return nullptr;
  if (!check_configured()) return nullptr;
  if (PyList_GET_SIZE(objs) != PyList_GET_SIZE(values)) {
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

PyMethodDef METHODS[] = {
    {"configure", py_configure, METH_VARARGS, "configure(StoreObject, id slot, _state_hash slot)"},
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
