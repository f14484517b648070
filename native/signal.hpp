// A one-shot binary semaphore for waking blocked Python callers (bknr_cluster._raft.Signal).
//
// Nothing here touches Python; the binding (signal.cpp) waits with the GIL released, and
// module.cpp's next_committed() posts a list of them after releasing the GIL (DESIGN.md).
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <ctime>

namespace bknr {

class Signal {
public:
    enum Wait { TAKEN, TIMED_OUT, INTERRUPTED };

    // Any thread, with or without the GIL. Posting twice before a wait leaves one post.
    // Inline: the engine's loop thread posts one too (Node::role_signal), and node.cpp is also
    // linked without the Python binding (native/rules_test).
    void post() noexcept {
        if (state_.exchange(POSTED, std::memory_order_acq_rel) == SLEEPING)
            syscall(SYS_futex, reinterpret_cast<int*>(&state_), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
                    nullptr, 0);
    }
    // Consumes a post if there is one (never blocks).
    bool try_take() noexcept;
    // Blocks until a post (consumed), the absolute CLOCK_MONOTONIC deadline (nullptr: none)
    // or a signal delivered to this thread (INTERRUPTED: the caller checks Python's handlers
    // and waits again). Call without the GIL.
    Wait wait(const struct timespec* deadline) noexcept;
    bool posted() const noexcept { return state_.load(std::memory_order_acquire) == POSTED; }

private:
    // IDLE: nothing posted; POSTED: one post waiting; SLEEPING: nothing posted and a waiter
    // may be in futex_wait, so post() must make the wake syscall. Only post() pays a syscall,
    // and only when someone sleeps: a post that comes first costs one atomic exchange.
    enum : int { IDLE = 0, POSTED = 1, SLEEPING = 2 };
    std::atomic<int> state_{IDLE};
};

static_assert(sizeof(std::atomic<int>) == sizeof(int), "the futex word is the atomic itself");

}  // namespace bknr
