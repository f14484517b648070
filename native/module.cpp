// pybind11 binding: bknr_cluster._raft. The only file that touches Python objects; the
// loop thread never enters it (DESIGN.md rule 2). engine.py is the public wrapper.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <optional>
#include <thread>
#include <type_traits>

#include "gil.hpp"
#include "image_codec.hpp"
#include "node.hpp"
#include "signal.hpp"

namespace bknr {
bool use_huge_page_arenas();  // huge_arenas.cpp
}

namespace py = pybind11;
using namespace bknr;

namespace bknr {
void register_signal(py::module_& m);  // signal.cpp
}

namespace {

// Waits are cut into slices so that Python signal handlers (Ctrl-C) run between them.
constexpr double kSlice = 0.05;

// Runs f() with the GIL released, re-taking it through retake_gil() (never in a destructor).
template <typename F>
auto nogil(F&& f) -> decltype(f()) {
    PyThreadState* ts = PyEval_SaveThread();
    if constexpr (std::is_void_v<decltype(f())>) {
        try {
            f();
        } catch (...) {
            retake_gil(ts);
            throw;
        }
        retake_gil(ts);
    } else {
        decltype(f()) r;
        try {
            r = f();
        } catch (...) {
            retake_gil(ts);
            throw;
        }
        retake_gil(ts);
        return r;
    }
}

const char* state_name(int s) {
    switch (s) {
        case RAFT_FOLLOWER: return "follower";
        case RAFT_CANDIDATE: return "candidate";
        case RAFT_LEADER: return "leader";
        default: return "unavailable";
    }
}

const char* role_name(int r) {
    switch (r) {
        case RAFT_VOTER: return "voter";
        case RAFT_STANDBY: return "standby";
        case RAFT_SPARE: return "spare";
        default: return "unknown";
    }
}

int role_code(const std::string& r) {
    if (r == "voter") return RAFT_VOTER;
    if (r == "standby") return RAFT_STANDBY;
    if (r == "spare") return RAFT_SPARE;
    throw py::value_error("role must be 'voter', 'standby' or 'spare', not '" + r + "'");
}

// Copies a bytes-like object into memory obtained from `alloc`, without the GIL when large.
template <typename Alloc>
char* copy_bytes(const py::object& data, size_t* len, Alloc alloc) {
    const char* src;
    size_t n;
    py::buffer_info info;
    if (PyBytes_Check(data.ptr())) {
        src = PyBytes_AS_STRING(data.ptr());
        n = static_cast<size_t>(PyBytes_GET_SIZE(data.ptr()));
    } else {
        info = py::reinterpret_borrow<py::buffer>(data).request();
        if (info.ndim > 1 || (info.ndim == 1 && info.strides[0] != info.itemsize))
            throw py::type_error("data must be a contiguous bytes-like object");
        src = static_cast<const char*>(info.ptr);
        n = static_cast<size_t>(info.size * info.itemsize);
    }
    char* dst = alloc(n ? n : 1);
    if (!dst) throw std::bad_alloc();
    if (n >= (1u << 20)) {
        // `data` stays referenced by the caller's frame; bytes are immutable.
        nogil([&] { std::memcpy(dst, src, n); });
    } else if (n) {
        std::memcpy(dst, src, n);
    }
    *len = n;
    return dst;
}

py::dict status_dict(const StatusData& s) {
    py::dict d;
    d["id"] = s.id;
    d["address"] = s.address;
    d["state"] = state_name(s.state);
    d["term"] = s.term;
    d["leader_id"] = s.leader_id;
    d["leader_address"] = s.leader_address;
    d["transferee"] = s.transferee;
    d["commit_index"] = s.commit_index;
    d["last_applied"] = s.last_applied;
    d["last_log_index"] = s.last_log_index;
    d["snapshot_index"] = s.snapshot_index;
    d["snapshot_term"] = s.snapshot_term;
    d["store_snapshot_index"] = s.store_snapshot_index;
    d["snapshot_store_index"] = s.snapshot_store_index;
    d["fresh_store_snapshots"] = s.fresh_store_snapshots;
    d["snapshot_trailing"] = s.snapshot_trailing;
    d["tail_entries"] = s.tail_entries;
    d["apply_queue"] = s.apply_queue;
    d["off_loop_callbacks"] = s.off_loop_callbacks;
    d["leader_contact_ms"] = s.leader_contact_ms;
    d["election_timer_ms"] = s.election_timer_ms;
    d["last_error"] = s.last_error;
    d["deferred_installs"] = s.deferred_installs;
    d["relaxed_votes"] = s.relaxed_votes;
    d["pre_vote_tie_refusals"] = s.pre_vote_tie_refusals;
    d["timeouts_now_retried"] = s.timeouts_now_retried;
    d["early_campaigns"] = s.early_campaigns;
    d["pre_vote_retries"] = s.pre_vote_retries;
    d["leader_closes"] = s.leader_closes;
    d["leaders_gone"] = s.leaders_gone;
    d["fast_elections"] = s.fast_elections;
    d["fast_election_ms"] = py::make_tuple(s.fast_timeline[0], s.fast_timeline[1], s.fast_timeline[2]);
    d["priority"] = s.priority;
    d["commit_clamps"] = s.commit_clamps;
    d["mislabeled_snapshots"] = s.mislabeled_snapshots;
    d["snapshot_taking"] = s.snapshot_taking;
    d["halted"] = s.halted;
    d["halted_refused_votes"] = s.halted_refused_votes;
    d["halted_dropped"] = s.halted_dropped;
    if (s.auth) {
        py::dict a;
        const char* names[] = {"accepted", "connected", "refused_in", "refused_out", "timeouts",
                               "cert_rejected", "closed_by_peer"};
        for (int i = 0; i < 7; i++) a[names[i]] = s.auth_stats[i];
        a["tls"] = s.tls;
        d["auth"] = a;
    }
    py::list conf;
    for (const auto& c : s.configuration) {
        py::dict e;
        e["id"] = c.id;
        e["address"] = c.address;
        e["role"] = role_name(c.role);
        conf.append(e);
    }
    d["configuration"] = conf;
    py::list fol;
    for (const auto& f : s.followers) {
        py::dict e;
        e["id"] = f.first;
        e["match_index"] = f.second;
        fol.append(e);
    }
    d["followers"] = fol;
    return d;
}

FuturePtr failed(int code, std::string msg) {
    auto f = std::make_shared<FutureState>();
    f->fail(code, std::move(msg));
    return f;
}

const char* kinds[] = {"entry", "snapshot_request", "restore", "restore_failed"};
PyObject* kind_str[4];  // interned once: no new str object per committed item
constexpr int kRestoreFailed = 3;  // not an ItemKind: a restore whose image cannot be read

// The bytes of a compressed restore item, decompressed straight into a new bytes object (the
// GIL released meanwhile: nothing else can see the object yet). nullptr and `err` set when the
// frame is damaged: the applier then halts on a "restore_failed" item instead of applying on.
PyObject* restore_bytes(const Item& it, std::string* err) {
    uint64_t size = 0;
    if (!image_content_size(it.data.data(), it.data.len, PY_SSIZE_T_MAX, &size)) {
        *err = "the store image in this snapshot does not declare a readable size";
        return nullptr;
    }
    PyObject* b = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size));
    if (!b) throw py::error_already_set();
    char* out = PyBytes_AS_STRING(b);
    bool ok = nogil([&] { return decompress_image(it.data.data(), it.data.len, out, size, err); });
    if (!ok) {
        Py_DECREF(b);
        *err = "the compressed store image in this snapshot is damaged: " + *err;
        return nullptr;
    }
    return b;
}

// The (kind, index, term, data) tuples of next_committed(), built with the C API: this runs
// once per committed entry, and pybind11's generic casts cost more than the entry's bytes.
// Consecutive items share one term object (terms change rarely).
py::object committed_list(const std::vector<Item>& items) {
    py::list out(items.size());
    py::object term;
    uint64_t term_value = 0;
    for (size_t i = 0; i < items.size(); i++) {
        const Item& it = items[i];
        if (!term || it.term != term_value) {
            term = py::reinterpret_steal<py::object>(PyLong_FromUnsignedLongLong(it.term));
            if (!term) throw py::error_already_set();
            term_value = it.term;
        }
        PyObject* t = PyTuple_New(4);
        if (!t) throw py::error_already_set();
        PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), t);  // owned by the list from here
        PyObject* b = nullptr;
        int kind = it.kind;
        if (it.compressed) {
            std::string err;
            b = restore_bytes(it, &err);
            if (!b) {
                kind = kRestoreFailed;
                b = PyBytes_FromStringAndSize(err.data(), static_cast<Py_ssize_t>(err.size()));
            }
        } else {
            b = PyBytes_FromStringAndSize(it.data.data(), static_cast<Py_ssize_t>(it.data.len));
        }
        if (!b) throw py::error_already_set();
        PyTuple_SET_ITEM(t, 3, b);
        Py_INCREF(kind_str[kind]);
        PyTuple_SET_ITEM(t, 0, kind_str[kind]);
        PyObject* index = PyLong_FromUnsignedLongLong(it.index);
        if (!index) throw py::error_already_set();
        PyTuple_SET_ITEM(t, 1, index);
        Py_INCREF(term.ptr());
        PyTuple_SET_ITEM(t, 2, term.ptr());
    }
    return std::move(out);
}

// Future waits: 100 ms slices with the GIL released; Python signal handlers run in between.
constexpr double kFutureSlice = 0.1;

bool wait_sliced(FutureState& f, double timeout) {  // timeout < 0: no deadline
    if (f.is_done()) return true;
    auto start = std::chrono::steady_clock::now();
    for (;;) {
        double spent = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        double slice = timeout < 0 ? kFutureSlice : std::min(kFutureSlice, std::max(timeout - spent, 0.0));
        if (nogil([&] { return f.wait_for(slice); })) return true;
        if (timeout >= 0 && spent + slice >= timeout) return false;
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
}

// Raises bknr_cluster.errors.<cls>(*args): the one exception hierarchy lives in Python.
[[noreturn]] void raise_error(const char* cls, const py::tuple& args) {
    py::object exc = py::module_::import("bknr_cluster.errors").attr(cls)(*args);
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    throw py::error_already_set();
}

const char* error_class(int code) {
    switch (code) {
        case E_NOT_LEADER: return "NotLeader";
        case E_LEADERSHIP_LOST: return "LeadershipLost";
        case E_SHUTDOWN: return "Shutdown";
        case E_TOO_BIG: return "TooBig";
        case E_IO: return "EngineIOError";
        case E_MEMBERSHIP: return "MembershipError";
        case E_TIMEOUT: return "Timeout";
        case E_ALREADY_BOOTSTRAPPED: return "AlreadyBootstrapped";
        case E_INVALID: return "UsageError";
        default: return "EngineError";
    }
}

// The request's value (log index, leader id, ...) or the mapped errors.py exception.
// (Timeouts arrive as std::optional<double>, not py::object: no Python reference is held by a
// frame that waits without the GIL.)
uint64_t future_result(FutureState& f, std::optional<double> timeout) {
    double t = timeout ? *timeout : -1.0;
    if (!wait_sliced(f, t))
        raise_error("Timeout", py::make_tuple(py::str("engine request still pending after {}s "
                                                      "(outcome unknown)").format(t)));
    int code;
    uint64_t value, lid;
    std::string msg, laddr;
    {
        std::lock_guard<std::mutex> g(f.mu);
        code = f.code;
        value = f.value;
        msg = f.message;
        lid = f.leader_id;
        laddr = f.leader_address;
    }
    if (code == OK) return value;
    if (code == E_NOT_LEADER) raise_error("NotLeader", py::make_tuple(lid, laddr));
    raise_error(error_class(code), py::make_tuple(msg));
}

}  // namespace

PYBIND11_MODULE(_raft, m) {
    m.doc() = "Native Raft engine over libraft (private; use bknr_cluster.engine)";
    // A dying peer socket must not kill a healthy node (DESIGN.md rule 6).
    std::signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < 4; i++) kind_str[i] = PyUnicode_InternFromString(kinds[i]);  // kept for life
    main_thread_ident() = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();

    m.attr("LIBRAFT_VERSION") = BKNR_RAFT_VERSION_STRING;
    m.attr("OK") = static_cast<int>(OK);
    m.attr("E_NOT_LEADER") = static_cast<int>(E_NOT_LEADER);
    m.attr("E_LEADERSHIP_LOST") = static_cast<int>(E_LEADERSHIP_LOST);
    m.attr("E_SHUTDOWN") = static_cast<int>(E_SHUTDOWN);
    m.attr("E_TOO_BIG") = static_cast<int>(E_TOO_BIG);
    m.attr("E_IO") = static_cast<int>(E_IO);
    m.attr("E_MEMBERSHIP") = static_cast<int>(E_MEMBERSHIP);
    m.attr("E_TIMEOUT") = static_cast<int>(E_TIMEOUT);
    m.attr("E_ALREADY_BOOTSTRAPPED") = static_cast<int>(E_ALREADY_BOOTSTRAPPED);
    m.attr("E_INVALID") = static_cast<int>(E_INVALID);

    m.def("_hold_gil", [](double seconds) {
        // Test helper: keep the GIL (no release) to prove the loop thread never needs it.
        auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
        while (std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }, py::arg("seconds"));

    m.def("use_huge_page_arenas", &use_huge_page_arenas,
          "Process-wide, once: Python's object arenas from huge-page regions (huge_arenas.cpp); "
          "False if already installed.");

    register_signal(m);

    py::class_<FutureState, FuturePtr>(m, "Future")
        .def("result", &future_result, py::arg("timeout") = py::none(),
             "The value once done (waits with the GIL released); raises the errors.py exception.")
        .def("wait", [](FutureState& f, std::optional<double> timeout) {
            return wait_sliced(f, timeout ? *timeout : -1.0);
        }, py::arg("timeout") = py::none(), "True once done, False on timeout; never raises.")
        .def("done", &FutureState::is_done)
        .def("outcome", [](FutureState& f) {
            std::lock_guard<std::mutex> g(f.mu);
            return py::make_tuple(f.code, f.value, f.message, f.leader_id, f.leader_address);
        })
        .def("status", [](FutureState& f) -> py::object {
            std::shared_ptr<StatusData> s;
            {
                std::lock_guard<std::mutex> g(f.mu);
                s = f.status;
            }
            if (!s) return py::none();
            return status_dict(*s);
        });

    py::class_<Node>(m, "Node")
        .def(py::init([](uint64_t id, std::string address, std::string dir, unsigned election_timeout_ms,
                         unsigned heartbeat_ms, unsigned snapshot_threshold, unsigned snapshot_trailing,
                         bool pre_vote, unsigned max_inflight_entries, unsigned store_snapshot_every,
                         size_t max_entry_bytes, py::bytes secret, unsigned auth_timeout_ms, int priority,
                         std::vector<std::pair<uint64_t, int>> peer_priorities,
                         std::string tls_ca, std::string tls_cert, std::string tls_key) {
                 Options o;
                 o.election_timeout_ms = election_timeout_ms;
                 o.heartbeat_ms = heartbeat_ms;
                 o.snapshot_threshold = snapshot_threshold;
                 o.snapshot_trailing = snapshot_trailing;
                 o.pre_vote = pre_vote;
                 o.max_inflight_entries = max_inflight_entries;
                 o.store_snapshot_every = store_snapshot_every;
                 o.max_entry_bytes = max_entry_bytes;
                 o.secret = std::string(secret);
                 o.auth_timeout_ms = auth_timeout_ms;
                 o.priority = priority;
                 o.peer_priorities = std::move(peer_priorities);
                 o.tls_ca = std::move(tls_ca);
                 o.tls_cert = std::move(tls_cert);
                 o.tls_key = std::move(tls_key);
                 return new Node(id, std::move(address), std::move(dir), o);
             }),
             py::arg("node_id"), py::arg("address"), py::arg("data_dir"), py::arg("election_timeout_ms"),
             py::arg("heartbeat_ms"), py::arg("snapshot_threshold"), py::arg("snapshot_trailing"),
             py::arg("pre_vote"), py::arg("max_inflight_entries"), py::arg("store_snapshot_every"),
             py::arg("max_entry_bytes"), py::arg("secret") = py::bytes(), py::arg("auth_timeout_ms") = 5000,
             py::arg("priority") = 0, py::arg("peer_priorities") = std::vector<std::pair<uint64_t, int>>{},
             py::arg("tls_ca") = "", py::arg("tls_cert") = "", py::arg("tls_key") = "")
        .def("bootstrap", [](Node& n, const std::vector<std::tuple<uint64_t, std::string, std::string>>& conf,
                             bool recover) {
            std::vector<ServerInfo> servers;
            for (const auto& [id, addr, role] : conf) servers.push_back({id, addr, role_code(role)});
            std::string err;
            int code = nogil([&] { return n.bootstrap(servers, recover, err); });
            return py::make_tuple(code, err);
        }, py::arg("configuration"), py::arg("recover"))
        .def("start", [](Node& n) {
            std::string err;
            int code = nogil([&] { return n.start(err); });
            return py::make_tuple(code, err);
        })
        .def("stop", [](Node& n) {
            nogil([&] { n.stop(); });  // the loop thread never needs the GIL to finish
        })
        .def("running", &Node::running)
        .def("submit", [](Node& n, const py::object& data) {
            size_t len = 0;
            size_t limit = n.options().max_entry_bytes;
            if (PyBytes_Check(data.ptr()) && static_cast<size_t>(PyBytes_GET_SIZE(data.ptr())) > limit)
                return failed(E_TOO_BIG, "entry of " + std::to_string(PyBytes_GET_SIZE(data.ptr())) +
                                             " bytes exceeds max_entry_bytes=" + std::to_string(limit));
            // raft_uv requires entry sizes in multiples of 8: pad_entry() frames the payload.
            size_t cap = 0;
            char* buf = copy_bytes(data, &len, [&cap](size_t k) {
                cap = padded_size(k);
                return static_cast<char*>(raft_malloc(cap));
            });
            if (len > limit) {
                raft_free(buf);
                return failed(E_TOO_BIG, "entry exceeds max_entry_bytes=" + std::to_string(limit));
            }
            Request r;
            r.type = R_APPLY;
            r.buf = buf;
            r.len = pad_entry(buf, len);
            return n.post(std::move(r));
        }, py::arg("data"))
        .def("submit_many", [](Node& n, const py::sequence& datas) {
            // One Python->engine crossing for the whole batch: the payloads are framed here,
            // with the GIL (they are small by intent), and posted as one request.
            size_t limit = n.options().max_entry_bytes;
            Request r;
            r.type = R_APPLY_MANY;
            Py_ssize_t count = PySequence_Size(datas.ptr());
            if (count < 0) throw py::error_already_set();
            r.bufs.reserve(static_cast<size_t>(count));
            try {
                for (Py_ssize_t i = 0; i < count; i++) {
                    py::object data = datas[static_cast<size_t>(i)];
                    if (PyBytes_Check(data.ptr()) && static_cast<size_t>(PyBytes_GET_SIZE(data.ptr())) > limit) {
                        r.free_payloads();
                        return failed(E_TOO_BIG, "entry " + std::to_string(i) + " of " +
                                                     std::to_string(PyBytes_GET_SIZE(data.ptr())) +
                                                     " bytes exceeds max_entry_bytes=" + std::to_string(limit));
                    }
                    size_t len = 0;
                    char* buf = copy_bytes(data, &len, [](size_t k) {
                        return static_cast<char*>(raft_malloc(padded_size(k)));
                    });
                    struct raft_buffer b;
                    b.base = buf;
                    b.len = pad_entry(buf, len);
                    r.bufs.push_back(b);
                    if (len > limit) {
                        r.free_payloads();
                        return failed(E_TOO_BIG, "entry " + std::to_string(i) + " exceeds max_entry_bytes=" +
                                                     std::to_string(limit));
                    }
                }
            } catch (...) {
                r.free_payloads();
                throw;
            }
            if (r.bufs.empty()) throw py::value_error("submit_many needs at least one entry");
            return n.post(std::move(r));
        }, py::arg("datas"))
        .def("request", [](Node& n, int type, uint64_t id, std::string address, std::string role) {
            Request r;
            r.type = static_cast<ReqType>(type);
            if (r.type == R_APPLY || r.type == R_STOP || type < 0 || type > R_STOP)
                throw py::value_error("bad request type");
            r.id = id;
            r.address = std::move(address);
            if (r.type == R_ASSIGN) r.role = role_code(role);
            return n.post(std::move(r));
        }, py::arg("type"), py::arg("node_id") = 0, py::arg("address") = "", py::arg("role") = "")
        .def("snapshot_now", [](Node& n, double store_wait) {
            // store_wait < 0: wait for the applier's store snapshot without limit.
            Request r;
            r.type = R_SNAPSHOT;
            r.wait_ms = store_wait < 0 ? UINT64_MAX : static_cast<uint64_t>(store_wait * 1000.0);
            return n.post(std::move(r));
        }, py::arg("store_wait"))
        .def("next_committed", [](Node& n, size_t max_items, double timeout, const py::object& wake) -> py::object {
            // `wake`: Signals to post once the GIL is released (cluster/DESIGN.md, apply path).
            std::vector<py::object> keep;  // alive until we are back, whatever the caller does
            std::vector<Signal*> posts;
            if (!wake.is_none()) {
                for (py::handle h : wake) {
                    if (h.is_none()) throw py::type_error("wake: a list of Signal");
                    posts.push_back(h.cast<Signal*>());
                    keep.push_back(py::reinterpret_borrow<py::object>(h));
                }
            }
            std::vector<Item> items;
            // Always pops with the GIL released, even when items are waiting: measured with 256
            // caller threads, keeping the GIL here starved the woken callers (slower overall).
            auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout);
            bool open = true;
            for (;;) {
                double left = std::chrono::duration<double>(end - std::chrono::steady_clock::now()).count();
                open = nogil([&] {
                    for (Signal* sig : posts) sig->post();  // the woken find the GIL free
                    posts.clear();
                    return n.queue().pop(max_items, std::min(std::max(left, 0.0), kSlice), items);
                });
                if (!items.empty() || !open || left <= kSlice) break;
                if (PyErr_CheckSignals() != 0) throw py::error_already_set();
            }
            if (!open) return py::none();
            return committed_list(items);
        }, py::arg("max_items"), py::arg("timeout"), py::arg("wake") = py::none())
        .def("store_snapshot_done", [](Node& n, uint64_t index, const py::object& data) {
            size_t len = 0;
            char* buf = copy_bytes(data, &len, [](size_t k) { return new char[k]; });
            auto c = std::make_shared<Chunk>();
            c->base = buf;
            c->len = len;
            return n.store_snapshot_done(index, c);
        }, py::arg("index"), py::arg("data"))
        .def("store_snapshot_file", [](Node& n, uint64_t index, const std::string& path,
                                       int compress_level) {
            // Mapped, not read: nothing of the file is touched here or on the loop thread
            // (libraft's thread pool reads the pages when it writes a Raft snapshot). With a
            // level, compressed here instead (the caller's thread, the GIL released) and the
            // mapping dropped: libraft then writes and sends the frame (format 2, fsm.cpp).
            std::string err;
            ChunkPtr c = nogil([&]() -> ChunkPtr {
                ChunkPtr raw = chunk_map_file(path.c_str(), &err);
                if (!raw || compress_level <= 0 || raw->len == 0) return raw;
                return compress_image(raw->base, raw->len, compress_level, &err);
            });
            if (!c) raise_error("EngineIOError", py::make_tuple(py::str(err)));
            return n.store_snapshot_done(index, c, compress_level > 0 && c->len > 0);
        }, py::arg("index"), py::arg("path"), py::arg("compress_level") = 0)
        .def("store_snapshot_failed", [](Node& n, uint64_t index) {
            return n.store_snapshot_failed(index);
        }, py::arg("index"))
        // An atomic flag the loop thread reads (halt_rule.cpp): no request, no GIL needed.
        .def("set_halted", [](Node& n, bool on) { n.set_halted(on); }, py::arg("on"))
        .def("halted", [](Node& n) { return n.halted(); })
        .def("role", [](Node& n) {
            // (state, leader_id, transferee, changes) as of the loop's last iteration; a
            // stopped node is "unavailable" whatever it was
            Node::Role r = n.role();
            bool up = n.running();
            return py::make_tuple(state_name(up ? r.state : 0), up ? r.leader_id : 0,
                                  up ? r.transferee : 0, r.seq);
        })
        .def_property_readonly("role_signal", [](Node& n) -> Signal& { return n.role_signal; },
                               py::return_value_policy::reference_internal);

    m.attr("R_BARRIER") = static_cast<int>(R_BARRIER);
    m.attr("R_ADD") = static_cast<int>(R_ADD);
    m.attr("R_ASSIGN") = static_cast<int>(R_ASSIGN);
    m.attr("R_REMOVE") = static_cast<int>(R_REMOVE);
    m.attr("R_TRANSFER") = static_cast<int>(R_TRANSFER);
    m.attr("R_SNAPSHOT") = static_cast<int>(R_SNAPSHOT);
    m.attr("R_STATUS") = static_cast<int>(R_STATUS);
}
