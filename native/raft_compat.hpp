// The ONE place that knows about differences between libraft releases (0.18.1 .. 0.22.x).
//
// Everything else in native/ includes this header instead of <raft.h> / <raft/uv.h> and uses
// the compat_* helpers below, so supporting another release means editing only this file.
#pragma once

#include <cstdlib>

// raft.h's ABI self-checks use sizeof(struct {...}) inside static_assert, which is valid C but
// not C++. The checks guard libraft's own ABI (already verified when libraft was compiled), so
// while including the headers we turn C++ static_assert into a no-op that drops its arguments.
#define static_assert(...) static_assert(true, "raft.h ABI check (checked in C)")
extern "C" {
#include <raft.h>
#include <raft/uv.h>
}
#undef static_assert

// 0.18 headers predate RAFT_VERSION_NUMBER; derive it from the parts every release has.
#ifndef RAFT_VERSION_NUMBER
#define RAFT_VERSION_NUMBER (RAFT_VERSION_MAJOR * 10000 + RAFT_VERSION_MINOR * 100 + RAFT_VERSION_RELEASE)
#endif

// Backstop for the CMake check: releases before 0.18.1 carry Jepsen-found safety bugs.
#if RAFT_VERSION_NUMBER < 1801
#error "libraft >= 0.18.1 required: older releases have Jepsen-found safety bugs"
#endif

#define BKNR_STR2(x) #x
#define BKNR_STR(x) BKNR_STR2(x)
#define BKNR_RAFT_VERSION_STRING \
    BKNR_STR(RAFT_VERSION_MAJOR) "." BKNR_STR(RAFT_VERSION_MINOR) "." BKNR_STR(RAFT_VERSION_RELEASE)

namespace bknr::compat {

// The FSM struct version we fill in: 2 adds snapshot_finalize (we keep ownership of the
// snapshot buffers and hand them out zero-copy). Version 3 (snapshot_async) is not used:
// the legacy raft_io of 0.18-0.22 has no async work hook, so it would still run on the loop.
constexpr int kFsmVersion = 2;

// The transport struct's version must be filled in by the user before raft_uv_init (0.22
// refuses an unset one: "transport->version must be set"); 1 is the only version so far.
inline void init_transport_version(struct raft_uv_transport* t) { t->version = 1; }

// 0.22 installs its stderr tracer on every raft and raft_uv instance and formats each trace
// message with snprintf (into a static buffer shared by all threads) before checking whether
// tracing is enabled: a measurable share of the loop thread's CPU under load. Every trace site
// checks for a NULL tracer first, so unless LIBRAFT_TRACE asks for traces we detach it.
inline void detach_idle_tracers(struct raft* r, struct raft_io* io) {
#if RAFT_VERSION_NUMBER >= 2200
    if (std::getenv("LIBRAFT_TRACE") != nullptr) return;
    r->tracer = nullptr;
    raft_uv_set_tracer(io, nullptr);
#else
    (void)r;
    (void)io;
#endif
}

// 0.22.1's takeSnapshotCb dereferences NULL when an InstallSnapshot was parked while a local
// snapshot was being written (native/install_guard.cpp). Checked in 0.22.1 only.
#if RAFT_VERSION_NUMBER >= 2200
constexpr bool kInstallDuringSnapshotCrashes = true;
inline bool snapshot_taking(const struct raft* r) { return r->legacy.snapshot_taking; }
#else
constexpr bool kInstallDuringSnapshotCrashes = false;
inline bool snapshot_taking(const struct raft*) { return false; }
#endif

// 0.22.1's replicationAppend can lower a follower's commit index below last_applied, and
// legacyTakeSnapshot then labels a snapshot with that lower index (native/install_guard.cpp).
// Checked in 0.22.1 only; 0.18's replicationAppend takes the min with the last log index,
// which never goes below the commit index.
constexpr bool kFollowerCommitCanRegress = RAFT_VERSION_NUMBER >= 2200;

// libraft >= 0.19 caps un-acknowledged entries per follower (default 32), which halves
// pipelined throughput; older releases have no cap and no setter.
inline void set_max_inflight_entries(struct raft* r, unsigned n) {
#if RAFT_VERSION_NUMBER >= 1900
    raft_set_max_inflight_entries(r, n);
#else
    (void)r;
    (void)n;
#endif
}

// Term of log entry `index`. 0.22 keeps index->term records in the public `trail` struct;
// there is no public accessor, so we read the circular buffer directly (layout is part of
// the stable header). Returns 0 when unknown (older releases, or index outside the trail).
inline raft_term term_of(const struct raft* r, raft_index index) {
#if RAFT_VERSION_NUMBER >= 2200
    const struct raft_trail* t = &r->trail;
    if (index == 0) return 0;
    if (index == t->snapshot.index) return t->snapshot.term;
    if (t->size == 0 || index <= t->offset) return 0;
    unsigned n = t->front <= t->back ? t->back - t->front : t->size - t->front + t->back;
    // Records hold the last index of each term run, oldest first: the first record whose
    // index is >= `index` carries its term.
    for (unsigned k = 0; k < n; k++) {
        unsigned pos = (t->front + k) % t->size;
        if (t->records[pos].index >= index) return t->records[pos].term;
    }
    return 0;
#else
    (void)r;
    (void)index;
    return 0;
#endif
}

// Index/term of the last snapshot libraft knows about (taken, installed or loaded).
inline raft_index snapshot_index(const struct raft* r) {
#if RAFT_VERSION_NUMBER >= 2200
    return r->trail.snapshot.index;
#else
    (void)r;
    return 0;  // unknown: the engine falls back to its own bookkeeping
#endif
}
inline raft_term snapshot_term(const struct raft* r) {
#if RAFT_VERSION_NUMBER >= 2200
    return r->trail.snapshot.term;
#else
    (void)r;
    return 0;
#endif
}

// Snapshot threshold/trailing live in different places across releases; the setters exist in
// all of them, but reading the current value does not.
inline void set_snapshot_threshold(struct raft* r, unsigned n) { raft_set_snapshot_threshold(r, n); }
inline void set_snapshot_trailing(struct raft* r, unsigned n) { raft_set_snapshot_trailing(r, n); }

// During fsm->apply the legacy layer has not yet advanced last_applied for the entry being
// applied (verified in 0.22.1 legacy.c applyCommand: last_applied = index after apply()),
// and barriers/config changes bump it as they pass, so the command's index is +1.
inline raft_index applying_index(const struct raft* r) { return r->last_applied + 1; }

}  // namespace bknr::compat
