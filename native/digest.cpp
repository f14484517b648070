// _digest: the state digest's hashing and fold, in C (bknr_cluster/store/digest.py).
//
// Computes exactly what the definition says (scheme bknr-digest-4, store/DESIGN.md "Digest"):
// h(o) = t(o) + sum over o's persistent attributes i (sorted by name) of t(o, i), where
// t(o) = SipHash-2-4-128 under a fixed key of msgpack([class tag, id]) and t(o, i) the same of
// msgpack([class tag, id, i, v_i]), each read as a little-endian integer and cut to 120 bits.
// Values are encoded as the store codec writes them (digest_values.hpp).
//
// Why per-attribute terms: a write then changes S by t(o, i, new) - t(o, i, old), with the old
// value taken from the undo log, so a fold reads only what the write itself touched (the
// object, the old and the new value); a whole-row hash had to read every other attribute and
// a per-object hash int again, cache misses that cost the write path +40 % on a large store.
//
// Why native: the fold runs for every object a transaction writes; in Python it cost more than
// the write itself. Everything here runs with the GIL held (it reads Python objects).

#include "digest_batch.hpp"
#include "digest_values.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "pyint128.hpp"
#include "siphash.hpp"

namespace {

using namespace bknr_digest;
using u128 = unsigned __int128;

// SipHash-1-3 (not BLAKE2s, bknr-digest-2): one BLAKE2s block costs ~1,800 instructions,
// SipHash-1-3 hashes a ~25-byte term in ~150, and a write hashes two terms. The key is public and
// fixed (digest.ROW_KEY), so this is no defence against someone crafting colliding states (a sum
// of hashes never was); it is a well-mixed 128-bit function (the variant CPython and Rust use
// for their hash tables), so two different rows give one term by accident with probability
// ~2**-120.
uint8_t g_key[16];  // digest.ROW_KEY, set by configure()
const u128 MASK120 = (u128(1) << 120) - 1;

// A row's term. The row's buffer always has 8 bytes to spare past its end (read, never used).
inline u128 row_hash(Row& row, size_t len) {
  row.reserve(8);  // len <= row.size()
  return bknr_siphash::siphash128<1, 3, true>(g_key, reinterpret_cast<const uint8_t*>(row.data()), len) & MASK120;
}

using bknr_pyint128::from_128;

const long UNDO_SET = 0, UNDO_CREATE = 1, UNDO_DELETE = 2;  // model.py

// The kind of an undo entry (a small int: its digit read directly on 3.11), or -1.
inline long undo_kind(PyObject* kind) {
  if (!PyLong_CheckExact(kind)) return -1;
#if PY_VERSION_HEX < 0x030C0000
  Py_ssize_t size = Py_SIZE(kind);
  if (size == 0) return 0;
  if (size == 1) return long(reinterpret_cast<PyLongObject*>(kind)->ob_digit[0]);
  return -1;
#else
  long k = PyLong_AsLong(kind);
  if (k == -1 && PyErr_Occurred()) PyErr_Clear();
  return k;
#endif
}

// A class's plan, from the Python ``plan(cls)``: (tag bytes, tuple of the persistent attributes'
// slots sorted by name, dict AttrSpec -> its position in that tuple).
struct Plan {
  PyObject* tag;         // borrowed from the plan tuple, which the plans dict keeps
  PyObject* spec_index;  // borrowed likewise
  std::vector<Py_ssize_t> offsets;
};

bool parse_plan(PyObject* p, Plan* out) {
  if (!PyTuple_Check(p) || PyTuple_GET_SIZE(p) != 3 || !PyBytes_Check(PyTuple_GET_ITEM(p, 0)) ||
      !PyTuple_Check(PyTuple_GET_ITEM(p, 1)) || !PyDict_Check(PyTuple_GET_ITEM(p, 2))) {
    PyErr_SetString(PyExc_TypeError, "a plan is (tag bytes, tuple of slots, dict spec -> position)");
    return false;
  }
  out->tag = PyTuple_GET_ITEM(p, 0);
  out->spec_index = PyTuple_GET_ITEM(p, 2);
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

// --- terms ------------------------------------------------------------------------------------
// One object's rows share the prefix [header, tag, id]: encoded once, then each term truncates
// the row back to it. The header byte is for four items (a term); t(o) patches it to two.

bool begin_object(Row& row, PyObject* obj, const Plan& plan, const Context& ctx, size_t* prefix) {
  PyObject* oid = slot(obj, g_id_offset);
  if (oid == nullptr) {
    PyErr_SetString(PyExc_AttributeError, "id");
    return false;
  }
  row.clear();
  row.array_header(4);
  row.bin(PyBytes_AS_STRING(plan.tag), size_t(PyBytes_GET_SIZE(plan.tag)));
  if (!pack_value(row, oid, ctx)) return false;
  *prefix = row.size();
  return true;
}

u128 base_term(Row& row, size_t prefix) {
  row.store[0] = char(0x92);
  u128 h = row_hash(row, prefix);
  row.store[0] = char(0x94);
  return h;
}

bool attr_term(Row& row, size_t prefix, size_t i, PyObject* v, const Context& ctx, u128* out) {
  row.len = prefix;
  row.int_unsigned(i);
  if (!pack_value(row, v, ctx)) return false;
  *out = row_hash(row, row.size());
  return true;
}

// h(o) with the values the object holds, or with ``values`` (one per attribute) when given.
bool object_hash(PyObject* obj, const Plan& plan, const Context& ctx, Row& row, PyObject* const* values,
                 u128* out) {
  size_t prefix;
  if (!begin_object(row, obj, plan, ctx, &prefix)) return false;
  u128 h = base_term(row, prefix);
  for (size_t i = 0; i < plan.offsets.size(); i++) {
    PyObject* v = values != nullptr ? values[i] : slot(obj, plan.offsets[i]);
    if (v == nullptr) {
      PyErr_Format(PyExc_AttributeError, "%s object has an unset attribute slot", Py_TYPE(obj)->tp_name);
      return false;
    }
    u128 t;
    if (!attr_term(row, prefix, i, v, ctx, &t)) return false;
    h += t;
  }
  *out = h & MASK120;
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
  *ctx = Context{extents, seen, fallback, nullptr};
  return true;
}

// configure(StoreObject, id slot, _referenced slot, row key)
PyObject* py_configure(PyObject*, PyObject* args) {
  PyObject *base, *id_descr, *mark_descr;
  const char* key;
  Py_ssize_t key_len;
  if (!PyArg_ParseTuple(args, "O!OOy#", &PyType_Type, &base, &id_descr, &mark_descr, &key, &key_len))
    return nullptr;
  if (key_len != 16) {
    PyErr_SetString(PyExc_ValueError, "the row key is 16 bytes");
    return nullptr;
  }
  std::memcpy(g_key, key, 16);
  Py_ssize_t id_off = member_offset(id_descr), mark_off = member_offset(mark_descr);
  if (id_off < 0 || mark_off < 0) return nullptr;
  Py_INCREF(base);
  Py_XDECREF(reinterpret_cast<PyObject*>(g_store_object));
  g_store_object = reinterpret_cast<PyTypeObject*>(base);
  g_id_offset = id_off;
  g_mark_offset = mark_off;
  Py_RETURN_NONE;
}

// hashes(plan, objs, extents, seen, fallback) -> list of h (objects of one class, as they are)
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
    if (object_hash(obj, plan, ctx, row, nullptr, &h)) v = from_128(h, false);
    if (v == nullptr) {
      Py_CLEAR(out);
      break;
    }
    PyList_SET_ITEM(out, i, v);
  }
  return out;
}

// --- the fold ---------------------------------------------------------------------------------

// While prepare() runs: the batch's start state, for was_live() (the Python fallback's view of
// references inside containers in the batch's old values). Folds never nest.
const Liveness* g_fold_before = nullptr;
PyObject* g_fold_extents = nullptr;

struct FoldScope {
  FoldScope(const Liveness* before, PyObject* extents) {
    g_fold_before = before;
    g_fold_extents = extents;
  }
  ~FoldScope() {
    g_fold_before = nullptr;
    g_fold_extents = nullptr;
  }
};

// The position of spec among the plan's attributes, or -1 with an exception set. The last
// answer is kept: a batch usually writes one attribute of many objects of one class.
struct SpecCache {
  PyTypeObject* cls = nullptr;  // positions differ between a class and its subclasses
  PyObject* spec = nullptr;
  Py_ssize_t position = -1;
};

Py_ssize_t spec_position(PyTypeObject* cls, const Plan& plan, PyObject* spec, SpecCache& cache) {
  if (cache.cls == cls && cache.spec == spec) return cache.position;
  PyObject* i = PyDict_GetItemWithError(plan.spec_index, spec);
  if (i == nullptr) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "an undo entry names an attribute its class lacks");
    return -1;
  }
  Py_ssize_t n = PyLong_AsSsize_t(i);
  if (n < 0 || size_t(n) >= plan.offsets.size()) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_IndexError, "attribute position out of range");
    return -1;
  }
  cache = SpecCache{cls, spec, n};
  return n;
}

// The plans of the classes one fold meets (a handful), parsed once each.
struct PlanCache {
  PyObject* plans;
  PyObject* plan_fn;
  std::vector<std::pair<PyTypeObject*, Plan>> parsed;

  // Valid until the next call.
  const Plan* get(PyTypeObject* cls) {
    for (auto& [c, p] : parsed)
      if (c == cls) return &p;
    Plan p;
    if (!get_plan(plans, plan_fn, cls, &p)) return nullptr;
    parsed.emplace_back(cls, std::move(p));
    return &parsed.back().second;
  }
};

// prepare(pending, extents, plans, plan_fn, seen, fallback, fallback_before, whole)
//   -> (delta, deleted_referenced, ref_classes)
// Everything a fold computes, nothing changed (a fold is all or nothing): ``delta`` is
// S_new - S_old mod 2**128 over the objects named in ``pending``, plus the objects in ``whole``
// (a list, or None): live referrers of an object the batch deleted, whose every term is
// recomputed. ``deleted_referenced`` lists the deleted objects marked as referenced,
// ``ref_classes`` the classes whose new terms saw a live reference (both for digest.py's
// referrer scan). ``fallback_before`` encodes the other values as of the batch's start.
PyObject* py_prepare(PyObject*, PyObject* args) {
  PyObject *pending, *extents, *plans, *plan_fn, *seen, *fallback, *fallback_before, *whole;
  if (!PyArg_ParseTuple(args, "O!OO!OOOOO", &PyList_Type, &pending, &extents, &PyDict_Type, &plans, &plan_fn,
                        &seen, &fallback, &fallback_before, &whole))
    return nullptr;
  Context now;
  if (!check_configured() || !parse_context(extents, seen, fallback, &now)) return nullptr;
  if (!PyCallable_Check(fallback_before) || !(whole == Py_None || PyList_Check(whole))) {
    PyErr_SetString(PyExc_TypeError, "expected fallback_before callable, whole list or None");
    return nullptr;
  }
  size_t count = whole == Py_None ? 0 : size_t(PyList_GET_SIZE(whole));
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pending); i++) {
    PyObject* undo = PyList_GET_ITEM(pending, i);
    if (!PyList_Check(undo)) {
      PyErr_SetString(PyExc_TypeError, "pending holds undo lists");
      return nullptr;
    }
    count += size_t(PyList_GET_SIZE(undo));
  }
  if (count >= Batch::NONE / 2) {
    PyErr_SetString(PyExc_OverflowError, "digest fold: too many undo entries in one batch");
    return nullptr;
  }
  Batch batch;
  batch.reserve(count);
  PyTypeObject* checked = nullptr;  // the last type known to be a store class
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pending); i++) {
    PyObject* undo = PyList_GET_ITEM(pending, i);
    for (Py_ssize_t j = 0; j < PyList_GET_SIZE(undo); j++) {
      PyObject* entry = PyList_GET_ITEM(undo, j);
      if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) < 2) {
        PyErr_SetString(PyExc_TypeError, "an undo entry is (kind, store object, ...)");
        return nullptr;
      }
      PyObject* obj = PyTuple_GET_ITEM(entry, 1);
      if (Py_TYPE(obj) != checked) {
        if (!PyObject_TypeCheck(obj, g_store_object)) {
          PyErr_SetString(PyExc_TypeError, "an undo entry is (kind, store object, ...)");
          return nullptr;
        }
        checked = Py_TYPE(obj);
      }
      long kind = undo_kind(PyTuple_GET_ITEM(entry, 0));
      batch.add(entry, obj, kind == UNDO_CREATE, kind == UNDO_DELETE);
    }
  }
  Liveness before;
  for (const Batch::Group& g : batch.groups) {
    if (g.created) before.created.push_back(g.obj);
    if (g.deleted) before.deleted.push_back(g.obj);
  }
  std::sort(before.created.begin(), before.created.end());
  std::sort(before.deleted.begin(), before.deleted.end());
  for (Py_ssize_t i = 0; whole != Py_None && i < PyList_GET_SIZE(whole); i++) {  // rare: the referrer scan
    PyObject* o = PyList_GET_ITEM(whole, i);
    if (!PyObject_TypeCheck(o, g_store_object)) {
      PyErr_SetString(PyExc_TypeError, "whole lists store objects");
      return nullptr;
    }
    batch.add_whole(o);
  }

  Context then{extents, Py_None, fallback_before, &before};
  FoldScope scope(&before, extents);
  PyObject* deleted_referenced = PyList_New(0);
  PyObject* ref_classes = PyList_New(0);
  u128 delta = 0;
  Row row;
  PlanCache plans_seen{plans, plan_fn, {}};
  SpecCache specs;
  std::vector<PyTypeObject*> referring;  // classes whose new terms saw a live reference
  std::vector<PyObject*> olds, values;
  std::vector<size_t> written;
  bool ok = deleted_referenced && ref_classes;
  for (size_t gi = 0; ok && gi < batch.groups.size(); gi++) {
    const Batch::Group& g = batch.groups[gi];
    if (g.created && g.deleted) continue;  // born and gone within the batch
    PyObject* obj = g.obj;
    PyTypeObject* cls = Py_TYPE(obj);
    const Plan* plan = plans_seen.get(cls);
    if (plan == nullptr) { ok = false; break; }
    Py_ssize_t seen_before = now.seen == Py_None ? 0 : PyList_GET_SIZE(now.seen);
    u128 h;
    if (g.created) {
      ok = object_hash(obj, *plan, now, row, nullptr, &h);
      delta += h;
    } else {
      // each written attribute's value when the batch began: the old value of its first write
      olds.assign(plan->offsets.size(), nullptr);
      written.clear();
      for (uint32_t e = g.first; ok && e != Batch::NONE; e = batch.next[e]) {
        PyObject* entry = batch.entries[e];
        if (undo_kind(PyTuple_GET_ITEM(entry, 0)) != UNDO_SET) continue;
        if (PyTuple_GET_SIZE(entry) < 4) {
          PyErr_SetString(PyExc_TypeError, "a set entry is (kind, object, spec, old)");
          ok = false;
          break;
        }
        Py_ssize_t i = spec_position(cls, *plan, PyTuple_GET_ITEM(entry, 2), specs);
        if (i < 0) { ok = false; break; }
        if (olds[size_t(i)] == nullptr) {
          olds[size_t(i)] = PyTuple_GET_ITEM(entry, 3);
          written.push_back(size_t(i));
        }
      }
      // An object leaves its extent only by a delete, which the log records: only those are
      // looked up (one cache miss less per written object on a large store).
      bool live_after = true;
      if (ok && g.deleted) {
        PyObject* extent = PyDict_GetItemWithError(extents, reinterpret_cast<PyObject*>(cls));
        PyObject* oid = slot(obj, g_id_offset);
        PyObject* current = extent && oid && PyDict_Check(extent) ? PyDict_GetItemWithError(extent, oid) : nullptr;
        if (current == nullptr && PyErr_Occurred()) ok = false;
        live_after = current == obj;
      }
      if (ok && !live_after) {  // its terms as they were when the batch began leave S
        values.resize(plan->offsets.size());
        for (size_t i = 0; i < values.size(); i++)
          values[i] = olds[i] != nullptr ? olds[i] : slot(obj, plan->offsets[i]);
        ok = object_hash(obj, *plan, then, row, values.data(), &h);
        delta -= h;
        if (ok && slot(obj, g_mark_offset) == Py_True) ok = PyList_Append(deleted_referenced, obj) == 0;
      } else if (ok) {  // live before and after: the changed terms
        size_t prefix;
        ok = begin_object(row, obj, *plan, now, &prefix);
        if (g.whole) {
          written.clear();
          for (size_t i = 0; i < plan->offsets.size(); i++) written.push_back(i);
        }
        for (size_t i : written) {
          if (!ok) break;
          PyObject* cur = slot(obj, plan->offsets[i]);
          PyObject* old = olds[i] != nullptr ? olds[i] : cur;
          if (cur == nullptr) {
            PyErr_Format(PyExc_AttributeError, "%s object has an unset attribute slot", cls->tp_name);
            ok = false;
            break;
          }
          if (old == cur && !g.whole) continue;
          u128 t_new, t_old;
          ok = attr_term(row, prefix, i, cur, now, &t_new) && attr_term(row, prefix, i, old, then, &t_old);
          delta += t_new - t_old;
        }
      }
    }
    if (ok && now.seen != Py_None && PyList_GET_SIZE(now.seen) != seen_before &&
        std::find(referring.begin(), referring.end(), cls) == referring.end()) {
      referring.push_back(cls);
      ok = PyList_Append(ref_classes, reinterpret_cast<PyObject*>(cls)) == 0;
    }
  }
  PyObject* d = ok ? from_128(delta, false) : nullptr;
  PyObject* result = d ? PyTuple_Pack(3, d, deleted_referenced, ref_classes) : nullptr;
  Py_XDECREF(d);
  Py_XDECREF(deleted_referenced);
  Py_XDECREF(ref_classes);
  return result;
}

// was_live(obj) -> bool: whether obj was live when the batch of the running prepare() began.
PyObject* py_was_live(PyObject*, PyObject* obj) {
  if (g_fold_before == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "was_live() outside a fold");
    return nullptr;
  }
  if (!PyObject_TypeCheck(obj, g_store_object)) Py_RETURN_FALSE;
  int live = live_now(obj, g_fold_extents);
  if (live == -1) return nullptr;
  live = !g_fold_before->created_in_batch(obj) && (live == 1 || g_fold_before->deleted_in_batch(obj));
  return PyBool_FromLong(live);
}

// mark(objs): mark each object as referenced by some term (``_referenced = True``, sticky).
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
    PyObject*& s = slot(obj, g_mark_offset);
    if (s == Py_True) continue;
    PyObject* old = s;
    Py_INCREF(Py_True);
    s = Py_True;
    Py_XDECREF(old);
  }
  Py_RETURN_NONE;
}

// siphash128(key, data, c=2, d=4) -> int: SipHash-c-d-128 itself, for the tests' reference
// vectors (2-4) and the digest's terms (1-3).
PyObject* py_siphash128(PyObject*, PyObject* args) {
  Py_buffer key, data;
  int c = 2, d = 4;
  if (!PyArg_ParseTuple(args, "y*y*|ii", &key, &data, &c, &d)) return nullptr;
  auto buf = static_cast<const uint8_t*>(data.buf);
  auto k = static_cast<const uint8_t*>(key.buf);
  size_t n = size_t(data.len);
  PyObject* out = nullptr;
  if (key.len != 16) PyErr_SetString(PyExc_ValueError, "the key is 16 bytes");
  else if (c == 2 && d == 4) out = from_128(bknr_siphash::siphash128<2, 4>(k, buf, n), false);
  else if (c == 1 && d == 3) out = from_128(bknr_siphash::siphash128<1, 3>(k, buf, n), false);
  else PyErr_SetString(PyExc_ValueError, "rounds are 2-4 or 1-3");
  PyBuffer_Release(&key);
  PyBuffer_Release(&data);
  return out;
}

PyMethodDef METHODS[] = {
    {"siphash128", py_siphash128, METH_VARARGS, "siphash128(key, data, c=2, d=4) -> int (SipHash-c-d-128)"},
    {"configure", py_configure, METH_VARARGS, "configure(StoreObject, id slot, _referenced slot, row key)"},
    {"hashes", py_hashes, METH_VARARGS, "hashes(plan, objs, extents, seen, fallback) -> list of h"},
    {"prepare", py_prepare, METH_VARARGS,
     "prepare(pending, extents, plans, plan_fn, seen, fallback, fallback_before, whole) -> (delta, "
     "deleted_referenced, ref_classes)"},
    {"was_live", py_was_live, METH_O, "was_live(obj): live when the running fold's batch began"},
    {"mark", py_mark, METH_O, "mark(objs): mark each object as referenced"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_digest", "Native state-digest fold (store/digest.py).", -1,
                      METHODS, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__digest() { return PyModule_Create(&MODULE); }
