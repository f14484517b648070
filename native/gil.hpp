// Re-taking the GIL after a wait, shared by every binding that waits with the GIL released
// (module.cpp, signal.cpp).
#pragma once

#include <Python.h>

#include <chrono>
#include <thread>

namespace bknr {

// Ident of the thread that imported the module (the main thread); set once at import.
inline unsigned long& main_thread_ident() {
    static unsigned long ident = 0;
    return ident;
}

inline bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

// During interpreter finalization CPython ends any other thread that asks for the GIL with
// pthread_exit; its forced unwind would run through our C++ frames (pybind11 argument casters
// dropping references without the GIL; with a scoped-release guard even std::terminate, i.e.
// SIGABRT at every process exit with a daemon thread waiting in the engine). Such a thread is
// parked instead: the process is about to exit anyway. The main thread (which runs the
// finalization) always gets the GIL back.
inline void retake_gil(PyThreadState* ts) {
    while (interpreter_finalizing() && PyThread_get_thread_ident() != main_thread_ident())
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    PyEval_RestoreThread(ts);
}

}  // namespace bknr
