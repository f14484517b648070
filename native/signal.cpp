// bknr_cluster._raft.Signal: a futex-based one-shot binary semaphore (signal.hpp). A blocked
// caller thread waits on it with the GIL released; the applier posts a whole batch of them from
// next_committed() after releasing the GIL (module.cpp), so the woken threads do not find the
// GIL held by the thread that woke them (cluster/DESIGN.md, apply path step 3).
#include "signal.hpp"

#include "gil.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <algorithm>
#include <cmath>
#include <optional>
#include <thread>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;

namespace bknr {

namespace {

int* word(std::atomic<int>& a) { return reinterpret_cast<int*>(&a); }

}  // namespace

bool Signal::try_take() noexcept {
    int s = POSTED;
    return state_.compare_exchange_strong(s, IDLE, std::memory_order_acquire, std::memory_order_relaxed);
}

Signal::Wait Signal::wait(const struct timespec* deadline) noexcept {
    for (;;) {
        int s = state_.load(std::memory_order_acquire);
        if (s == POSTED) {
            // Several waiters: one takes the post, the others go back to sleep (below).
            if (state_.compare_exchange_weak(s, IDLE, std::memory_order_acquire, std::memory_order_relaxed))
                return TAKEN;
            continue;
        }
        if (s == IDLE && !state_.compare_exchange_weak(s, SLEEPING, std::memory_order_relaxed))
            continue;
        // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline: no drift on EINTR.
        long r = syscall(SYS_futex, word(state_), FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, SLEEPING, deadline,
                         nullptr, FUTEX_BITSET_MATCH_ANY);
        if (r == -1 && errno == ETIMEDOUT) return try_take() ? TAKEN : TIMED_OUT;
        if (r == -1 && errno == EINTR) return INTERRUPTED;
        // woken, or EAGAIN (the state changed before we slept): look again
    }
}

namespace {

// timeout None: forever; 0: poll (the GIL is kept); > 0: seconds.
bool wait_py(Signal& s, std::optional<double> timeout) {
    if (s.try_take()) return true;  // already posted: no GIL hand-off at all
    if (timeout && !(*timeout > 0.0)) return false;
    struct timespec deadline;
    const struct timespec* dl = nullptr;
    if (timeout) {
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        double secs = std::floor(*timeout);
        double add = std::min(secs, 1e9);  // "forever" in practice; avoids time_t overflow
        deadline.tv_sec += static_cast<time_t>(add);
        deadline.tv_nsec += static_cast<long>((*timeout - secs) * 1e9);
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec += 1;
            deadline.tv_nsec -= 1000000000L;
        }
        dl = &deadline;
    }
    for (;;) {
        PyThreadState* ts = PyEval_SaveThread();
        Signal::Wait r = s.wait(dl);
        retake_gil(ts);
        if (r != Signal::INTERRUPTED) return r == Signal::TAKEN;
        // A signal hit this thread: run Python's handlers (Ctrl-C), then wait again.
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
}

}  // namespace

void register_signal(py::module_& m) {
    py::class_<Signal>(m, "Signal",
                       "One-shot binary semaphore: post() wakes one wait() (the GIL is released "
                       "while waiting).")
        .def(py::init<>())
        .def("post", &Signal::post, "Wake a waiter, or let the next wait() return at once.")
        .def("wait", &wait_py, py::arg("timeout") = py::none(),
             "True once posted (the post is consumed); False after `timeout` seconds "
             "(None: no limit, 0: poll).")
        .def("posted", &Signal::posted, "True while a post is waiting to be consumed.");
}

}  // namespace bknr
