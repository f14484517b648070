// Huge-page arenas for Python's small-object allocator (store/DESIGN.md, "Snapshots without a
// pause").
//
// A store is millions of small objects, all in obmalloc arenas (1 MiB each in CPython 3.11,
// one mmap each, 4 KiB pages). A store snapshot forks the process (store/snapshot_fork.py),
// and fork() copies one page-table entry per resident 4 KiB page while the forking thread
// holds the GIL: ~22 ms per GB on the development VM, so ~30 ms for 5M objects, during which
// every Python thread of the node waits. With 2 MiB transparent huge pages fork copies one
// entry per 2 MiB instead (measured < 1 ms per GB). The system's THP policy is usually
// "madvise", so arenas are carved here from 64 MiB regions marked MADV_HUGEPAGE.
//
// Freed arenas are kept for reuse, not returned to the OS (giving back half a huge page would
// split it). Arenas of another size, or when a region cannot be mapped, go to the allocator
// that was installed before. Called with the GIL held (as every arena call is), so no lock.
#include <Python.h>
#include <sys/mman.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace bknr {

namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kRegion = size_t(64) << 20;

PyObjectArenaAllocator g_previous;
bool g_installed = false;
size_t g_arena_size = 0;                          // the first arena size asked for
std::vector<std::pair<char*, char*>> g_regions;   // [begin, end) of our regions
std::vector<void*> g_free;                        // freed arenas, reused first
char* g_next = nullptr;                           // unused rest of the newest region
size_t g_left = 0;

bool new_region() {
    const size_t len = kRegion + kHugePage;  // room to align the start to a huge page
    void* raw = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return false;
    auto start = reinterpret_cast<uintptr_t>(raw);
    uintptr_t begin = (start + kHugePage - 1) & ~(kHugePage - 1);
    uintptr_t end = begin + kRegion;
    if (begin > start) munmap(raw, begin - start);
    if (start + len > end) munmap(reinterpret_cast<void*>(end), start + len - end);
    madvise(reinterpret_cast<void*>(begin), kRegion, MADV_HUGEPAGE);  // advice: may be ignored
    g_regions.emplace_back(reinterpret_cast<char*>(begin), reinterpret_cast<char*>(end));
    g_next = reinterpret_cast<char*>(begin);
    g_left = kRegion;
    return true;
}

void* arena_alloc(void*, size_t size) {
    if (g_arena_size == 0 && size <= kHugePage && kRegion % size == 0) g_arena_size = size;
    if (size == g_arena_size) {
        if (!g_free.empty()) {
            void* p = g_free.back();
            g_free.pop_back();
            return p;
        }
        if (g_left >= size || new_region()) {
            void* p = g_next;
            g_next += size;
            g_left -= size;
            return p;
        }
    }
    return g_previous.alloc(g_previous.ctx, size);
}

void arena_free(void*, void* p, size_t size) {
    char* c = static_cast<char*>(p);
    for (const auto& r : g_regions) {
        if (c >= r.first && c < r.second) {
            g_free.push_back(p);
            return;
        }
    }
    g_previous.free(g_previous.ctx, p, size);
}

}  // namespace

// Installs the huge-page arena allocator (once; later calls do nothing). Objects allocated
// before keep their arenas. GIL held.
bool use_huge_page_arenas() {
    if (g_installed) return false;
    PyObject_GetArenaAllocator(&g_previous);
    PyObjectArenaAllocator mine{nullptr, arena_alloc, arena_free};
    PyObject_SetArenaAllocator(&mine);
    g_installed = true;
    return true;
}

}  // namespace bknr
