"""The huge-page keeper (store/huge_pages.py): dense anonymous memory goes back on huge pages,
sparse memory is left alone, and nothing is collapsed while a snapshot child shares the pages."""

from __future__ import annotations

import ctypes
import mmap

import pytest

from bknr_cluster.store import Store, StoreDefinition, huge_pages, snapshot_fork, transaction
from examples.bank import app as bank
from tests.support import wait_until

pytestmark = pytest.mark.skipif(not huge_pages.supported(), reason="no transparent huge pages")

MiB = 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)


def _region(size: int, touch_every: int) -> tuple[mmap.mmap, int, int]:
    """A private anonymous mapping (never advised), touched every ``touch_every`` bytes; its
    first and last huge-page-aligned addresses. One inaccessible page at each end keeps it a
    mapping of its own: otherwise the kernel may merge it with an adjacent anonymous mapping of
    this process (one the keeper collapsed in an earlier test), and smaps would report that
    neighbour's huge pages as ours."""
    page = mmap.PAGESIZE
    m = mmap.mmap(-1, size + 2 * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = ctypes.addressof(ctypes.c_char.from_buffer(m))
    for guard in (start, start + size + page):
        assert _libc.mprotect(ctypes.c_void_p(guard), ctypes.c_size_t(page), 0) == 0  # PROT_NONE
    for i in range(0, size, touch_every):
        m[page + i] = 1
    base = start + page
    lo = (base + huge_pages.HUGE_PAGE - 1) & ~(huge_pages.HUGE_PAGE - 1)
    return m, lo, (base + size) & ~(huge_pages.HUGE_PAGE - 1)


def _resident_pages(lo: int, hi: int) -> int:
    vec = (ctypes.c_ubyte * ((hi - lo) // mmap.PAGESIZE))()
    assert huge_pages._libc.mincore(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), vec) == 0
    return sum(b & 1 for b in vec)


def _smaps_kib(lo: int, hi: int, field: str) -> int:
    """``field`` (kB) summed over the mappings that overlap [lo, hi) (adjacent anonymous
    mappings may have been merged into one: then it counts more than [lo, hi))."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                a, b = (int(x, 16) for x in head.split("-"))
                inside = a < hi and b > lo
            elif inside and line.startswith(field + ":"):
                total += int(line.split()[1])
    return total


def test_dense_memory_is_collapsed_and_sparse_memory_is_not():
    k = huge_pages.HugePageKeeper()
    dense, dlo, dhi = _region(12 * MiB, mmap.PAGESIZE)
    sparse, slo, shi = _region(12 * MiB, huge_pages.HUGE_PAGE)  # one page per 2 MiB
    try:
        sparse_resident = _resident_pages(slo, shi)
        assert sparse_resident <= (shi - slo) // huge_pages.HUGE_PAGE + 1
        p = k.collapse_once()
        assert not p.interrupted
        assert p.dense >= dhi - dlo
        # every aligned 2 MiB of the dense region is now one huge page
        assert _smaps_kib(dlo, dhi, "AnonHugePages") >= (dhi - dlo) // 1024
        # the sparse one stayed as it was: a collapse would have made all of it resident
        assert _resident_pages(slo, shi) == sparse_resident
    finally:
        dense.close()
        sparse.close()


def test_no_collapse_while_held():
    k = huge_pages.HugePageKeeper()
    m, lo, hi = _region(8 * MiB, mmap.PAGESIZE)
    try:
        k.hold()
        p = k.collapse_once()
        assert p.interrupted and p.collapsed == 0
        assert _smaps_kib(lo, hi, "AnonHugePages") == 0 or huge_pages_always()
        k.release()
        assert not k.held()
        assert k.collapse_once().collapsed > 0
    finally:
        m.close()


def huge_pages_always() -> bool:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
        return "[always]" in f.read()


@transaction("open_some")
def open_some(n: int) -> int:
    for i in range(n):
        bank.Account(owner=f"o{i}", balance=1)
    return n


def test_a_snapshot_child_holds_the_keeper_until_it_is_reaped(tmp_path):
    definition = StoreDefinition(name="bank", classes=[bank.Account, bank.Transfer],
                                 transactions=[open_some])
    store = Store(None, definition)
    store.execute(open_some, 100)
    k = huge_pages.keeper()
    assert not k.held()
    child = snapshot_fork.fork_snapshot(store, str(tmp_path / "s.snap"))
    assert k.held()  # the child shares the pages: a collapse now would copy them
    child.wait()
    assert not k.held()


def test_a_pass_follows_growth_of_the_resident_set_without_waiting_for_the_interval():
    # A store just loaded or restored must not wait for the periodic pass (30 s in a node): its
    # first snapshot's fork would copy the page tables of all of it at 4 KiB.
    k = huge_pages.HugePageKeeper(interval=3600)
    assert k.start()
    try:
        passes = k.passes
        m, lo, hi = _region(max(96 * MiB, huge_pages._resident() // 4), mmap.PAGESIZE)
        try:
            wait_until(lambda: k.passes > passes, 30, "a pass after 96+ MiB more became resident")
            wait_until(lambda: _smaps_kib(lo, hi, "AnonHugePages") >= (hi - lo) // 1024, 30,
                       "the new region on huge pages")
        finally:
            m.close()
    finally:
        k.stop()
