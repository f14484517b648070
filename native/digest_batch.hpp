// The undo entries of one digest fold (digest.cpp), grouped by object in log order. A hash
// table on the object's address instead of a sort: grouping costs a few instructions per entry
// whatever the batch size (sorting 1,024 entries cost ~100 per entry).
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdint>
#include <vector>

namespace bknr_digest {

struct Batch {
  static constexpr uint32_t NONE = 0xffffffffu;

  struct Group {
    PyObject* obj;
    uint32_t first, last;  // its entries: first, then next[] in log order (NONE: no entries)
    bool created;          // its first entry in the batch creates it: not live when it began
    bool deleted;          // some entry deletes it
    bool whole;            // every term recomputed (it refers to an object the batch deleted)
  };

  std::vector<PyObject*> entries;  // the undo entry tuples, in log order
  std::vector<uint32_t> next;      // per entry: the next entry of the same object, or NONE
  std::vector<Group> groups;       // objects in order of first appearance
  std::vector<uint32_t> table;     // open addressing on the address: group index + 1, 0 empty
  uint64_t mask = 0;

  // Room for n objects at most half the table.
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    table.assign(cap, 0);
    mask = cap - 1;
    entries.reserve(n);
    next.reserve(n);
    groups.reserve(n);
  }

  // The group of obj, or nullptr.
  Group* find(PyObject* obj) {
    for (uint64_t h = slot_of(obj);; h = (h + 1) & mask) {
      uint32_t g = table[h];
      if (g == 0) return nullptr;
      if (groups[g - 1].obj == obj) return &groups[g - 1];
    }
  }

  // Appends an entry of obj (kind: whether it creates or deletes it).
  void add(PyObject* entry, PyObject* obj, bool creates, bool deletes) {
    auto e = uint32_t(entries.size());
    entries.push_back(entry);
    next.push_back(NONE);
    uint64_t h = slot_of(obj);
    for (;; h = (h + 1) & mask) {
      uint32_t g = table[h];
      if (g == 0) break;
      Group& grp = groups[g - 1];
      if (grp.obj == obj) {
        next[grp.last] = e;
        grp.last = e;
        grp.deleted |= deletes;
        return;
      }
    }
    groups.push_back(Group{obj, e, e, creates, deletes, false});
    table[h] = uint32_t(groups.size());
  }

  // Marks obj's group whole, adding a group without entries when the batch does not name it.
  void add_whole(PyObject* obj) {
    if (Group* g = find(obj)) {
      g->whole = true;
      return;
    }
    uint64_t h = slot_of(obj);
    while (table[h] != 0) h = (h + 1) & mask;
    groups.push_back(Group{obj, NONE, NONE, false, false, true});
    table[h] = uint32_t(groups.size());
  }

 private:
  uint64_t slot_of(PyObject* obj) const {
    return ((uint64_t(reinterpret_cast<uintptr_t>(obj)) >> 4) * 0x9E3779B97F4A7C15ULL >> 20) & mask;
  }
};

}  // namespace bknr_digest
