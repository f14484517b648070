"""Keeping a large store mapped by transparent huge pages, so that a snapshot's fork() stays short.

``fork()`` holds the GIL while the kernel copies the process's page tables: one entry per
resident 4 KiB page, one per 2 MiB huge page. Two things leave a store on 4 KiB pages although
its object arenas are carved from ``MADV_HUGEPAGE`` regions (native/huge_arenas.cpp):

* every snapshot: the first write by the parent to a huge page it shares with a snapshot child
  splits the parent's mapping of it into 512 small entries (the kernel copies 4 KiB, not 2 MiB,
  on such a fault), and the split stays after the child exits. With writes spread over the store
  (or the freed-and-reused memory of any busy process) every huge page is split after one
  snapshot, and the next fork of a 2M-object store took 40-100 ms instead of 3-9 ms;
* ``malloc``'s memory (the extent and index dicts: a quarter of a store) is on 4 KiB pages from
  the start (the host's THP policy is usually ``madvise``).

The keeper is one background thread per process that puts dense anonymous memory back on huge
pages with ``MADV_COLLAPSE`` (Linux 6.1+; synchronous, the GIL released): after each snapshot
child has exited, every ``interval`` seconds, and within ``_GROWTH_CHECK`` seconds of the
resident set growing by ``_GROWTH`` since the last pass (a store just loaded or restored: its
``malloc``'d dicts are on 4 KiB pages until a pass, and the first snapshot's fork pays for
them). Only 2 MiB ranges of which at least
``MIN_RESIDENT`` of the pages are resident are collapsed (a collapse makes the whole 2 MiB
resident: thread stacks and sparse heaps are left alone), so the resident set grows by at most
1/16. It never collapses while a snapshot child lives (``hold``/``release``): a collapse copies
the pages, which would un-share them with the child (memory); a fork that starts during a
pass can overlap the collapse of one huge page at most. Collapses are paced (one huge page,
then a 1 ms pause) and start 1 s after a child exits (``_SETTLE``), after the hand-over.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("bknr.store")

HUGE_PAGE = 2 << 20
MIN_RESIDENT = 15 / 16
_MADV_COLLAPSE = 25
# One huge page per madvise call, then a pause: each collapse holds the mmap lock (every page
# fault of the process waits) while it copies 2 MiB; back to back they stalled /health 65 ms at
# the end of a 1M snapshot (load 16). Also where the hold flag is checked.
_RUN = HUGE_PAGE
_PAUSE = 0.001
_SETTLE = 1.0  # after a child exits: the engine takes its image first
_GROWTH_CHECK = 2.0  # how often the resident set is read (a counter: no page-table walk)
_GROWTH = (64 << 20, 1 / 8)  # a pass when it grew by this much and this fraction since the last
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

try:
    _libc: Any = ctypes.CDLL(None, use_errno=True)
    _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
    _libc = None


@dataclass
class CollapsePass:
    """What one pass did: bytes of dense memory found, bytes asked to collapse (not yet on huge
    pages, as far as residency tells: a range already huge costs the kernel a table lookup),
    calls that failed (no huge page free, a page pinned...), and its wall time."""
    dense: int = 0
    collapsed: int = 0
    failed: int = 0
    seconds: float = 0.0
    interrupted: bool = False


def _anonymous_ranges() -> list[tuple[int, int]]:
    """Private writable anonymous mappings (the malloc heap, mmap'd arenas and blocks), aligned
    inwards to huge pages."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 5 or parts[1] != "rw-p":
                continue
            if len(parts) > 5 and parts[5] != "[heap]":  # a file, [stack], [vvar]...
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            lo = (lo + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
            hi &= ~(HUGE_PAGE - 1)
            if hi > lo:
                out.append((lo, hi))
    return out


def _dense_chunks(lo: int, hi: int, min_resident: float) -> list[int]:
    """Start addresses of the 2 MiB chunks of [lo, hi) resident to at least ``min_resident``."""
    pages = (hi - lo) // _PAGE
    vec = (ctypes.c_ubyte * pages)()
    if _libc.mincore(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), vec) != 0:
        return []  # unmapped meanwhile (ENOMEM): skip it
    raw = bytes(vec)
    per = HUGE_PAGE // _PAGE
    need = int(per * min_resident)
    return [lo + i * _PAGE for i in range(0, pages, per)
            if per - raw[i:i + per].count(0) >= need]


class HugePageKeeper:
    """The process's collapse thread; see the module docstring."""

    def __init__(self, interval: float = 30.0, min_resident: float = MIN_RESIDENT) -> None:
        self.interval = interval
        self.min_resident = min_resident
        self.last: CollapsePass | None = None
        self.passes = 0
        self._holds = 0
        self._mu = threading.Lock()
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._disabled = not supported()
        self._resident_at_pass = 0

    def start(self) -> bool:
        """Start the thread (once); False if the host cannot collapse (THP off, old kernel)."""
        with self._mu:
            if self._disabled or self._thread is not None:
                return False
            self._thread = threading.Thread(target=self._run, name="bknr-hugepages", daemon=True)
            self._thread.start()
            return True

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=10)

    def hold(self) -> None:
        """A snapshot child is about to be forked: no collapse until ``release``."""
        with self._mu:
            self._holds += 1

    def release(self) -> None:
        """A snapshot child has exited: collapse what the parent's writes split, now."""
        with self._mu:
            self._holds = max(0, self._holds - 1)
            if self._holds == 0:
                self._kick.set()

    def held(self) -> bool:
        with self._mu:
            return self._holds > 0

    def collapse_once(self) -> CollapsePass:
        """One pass over the process's dense anonymous memory (GIL released in the syscalls)."""
        t0 = time.monotonic()
        p = CollapsePass()
        for lo, hi in _anonymous_ranges():
            chunks = _dense_chunks(lo, hi, self.min_resident)
            p.dense += len(chunks) * HUGE_PAGE
            for start, length in _runs(chunks):
                if self.held() or self._stop.is_set():
                    p.interrupted = True
                    p.seconds = time.monotonic() - t0
                    return p
                if _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length),
                                 _MADV_COLLAPSE) != 0:
                    err = ctypes.get_errno()
                    if err == 22:  # EINVAL: this kernel has no MADV_COLLAPSE
                        self._disabled = True
                        break
                    p.failed += 1
                else:
                    p.collapsed += length
                self._stop.wait(_PAUSE)
        p.seconds = time.monotonic() - t0
        return p

    def _run(self) -> None:
        # Not niced: this thread takes the GIL (between the syscalls) and the mmap lock (each
        # collapse); at a lower priority on a busy host it gets preempted holding either, and
        # every thread of the node waits for it (a 0.48 s stall seen at nice 10, load 25).
        due = time.monotonic() + self.interval
        while not self._stop.is_set():
            if self._kick.wait(min(_GROWTH_CHECK, self.interval)):
                self._kick.clear()
                self._stop.wait(_SETTLE)
            elif time.monotonic() < due and not self._grown():
                continue
            if self._stop.is_set() or self._disabled or self.held():
                continue
            due = time.monotonic() + self.interval
            self._resident_at_pass = _resident()
            try:
                p = self.collapse_once()
            except Exception:  # pragma: no cover - /proc unreadable etc.: never kill the node
                log.exception("huge-page collapse pass failed")
                continue
            self.last, self.passes = p, self.passes + 1
            if p.seconds > 0.05 or p.failed:
                log.info("huge pages: %d MiB dense, %d MiB collapsed (%d calls failed) in "
                         "%.3f s%s", p.dense >> 20, p.collapsed >> 20, p.failed, p.seconds,
                         ", interrupted by a snapshot" if p.interrupted else "")


    def _grown(self) -> bool:
        """The resident set grew by ``_GROWTH`` since the last pass."""
        grown = _resident() - self._resident_at_pass
        return grown >= _GROWTH[0] and grown >= self._resident_at_pass * _GROWTH[1]


def _resident() -> int:
    """This process's resident set in bytes, from counters (``statm``): reading it does not
    walk the page tables (``smaps`` would, holding the mmap lock a fork must take)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _runs(chunks: list[int]) -> list[tuple[int, int]]:
    """Contiguous chunks merged into (start, length) runs of at most ``_RUN`` bytes."""
    runs: list[tuple[int, int]] = []
    for c in chunks:
        if runs and runs[-1][0] + runs[-1][1] == c and runs[-1][1] < _RUN:
            runs[-1] = (runs[-1][0], runs[-1][1] + HUGE_PAGE)
        else:
            runs.append((c, HUGE_PAGE))
    return runs


def supported() -> bool:
    """Linux with transparent huge pages not switched off."""
    if _libc is None:
        return False
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


_keeper = HugePageKeeper()


def keeper() -> HugePageKeeper:
    """The process's keeper (started by ``use_huge_pages``)."""
    return _keeper


def use_huge_pages() -> bool:
    """Put this process's Python objects on huge pages and keep them there (the keeper), so
    that a store snapshot's ``fork()`` stays short; whether the arenas were installed now.
    Call it before a large store is created or loaded (objects allocated earlier keep their
    4 KiB arenas). Process-wide and opt-in: bknr-node calls it (``freeze_gc``); a standalone
    application with millions of objects may (a fork of a 5M-object store on 4 KiB pages
    paused it ~30-40 ms, ~6 ms this way: docs/performance.md). Freed arenas are kept for reuse
    rather than returned to the OS (native/huge_arenas.cpp)."""
    try:
        from bknr_cluster import _raft
    except ImportError:  # pragma: no cover - the native extension is not built
        return False
    installed = bool(_raft.use_huge_page_arenas())
    _keeper.start()  # keeps them (and malloc's dense memory) on huge pages between snapshots
    return installed
