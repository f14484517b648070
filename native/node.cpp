// Futures, life cycle (bootstrap, start, stop), the loop thread and its request queue.
// Request dispatch and callbacks: requests.cpp. Every raft_* call runs on the loop thread
// (thread contract: native/DESIGN.md).
#include "node.hpp"

#include "tls_transport.hpp"  // transport selection; status.cpp reads its counters

#include <algorithm>
#include <chrono>
#include <cstring>

namespace bknr {

// ---------------------------------------------------------------- futures

void FutureState::resolve(uint64_t v) {
    std::lock_guard<std::mutex> g(mu);
    if (done) return;
    value = v;
    code = OK;
    done = true;
    cv.notify_all();
}

void FutureState::fail(int c, std::string msg, uint64_t lid, std::string laddr) {
    std::lock_guard<std::mutex> g(mu);
    if (done) return;
    code = c;
    message = std::move(msg);
    leader_id = lid;
    leader_address = std::move(laddr);
    done = true;
    cv.notify_all();
}

bool FutureState::wait_for(double seconds) {
    std::unique_lock<std::mutex> g(mu);
    if (seconds <= 0) return done;
    return cv.wait_for(g, std::chrono::duration<double>(seconds), [this] { return done; });
}

bool FutureState::is_done() {
    std::lock_guard<std::mutex> g(mu);
    return done;
}

// ---------------------------------------------------------------- libraft callbacks

namespace {
void async_cb(uv_async_t* h) { static_cast<Node*>(h->data)->on_async(); }
void close_cb(struct raft* r) { static_cast<Node*>(r->data)->on_raft_closed(); }

int fsm_apply_cb(struct raft_fsm* f, const struct raft_buffer* buf, void** result) {
    *result = nullptr;
    return static_cast<Node*>(f->data)->fsm_apply(buf);
}
int fsm_snapshot_cb(struct raft_fsm* f, struct raft_buffer* bufs[], unsigned* n) {
    return static_cast<Node*>(f->data)->fsm_snapshot(bufs, n);
}
int fsm_finalize_cb(struct raft_fsm* f, struct raft_buffer* bufs[], unsigned* n) {
    return static_cast<Node*>(f->data)->fsm_snapshot_finalize(bufs, n);
}
int fsm_restore_cb(struct raft_fsm* f, struct raft_buffer* buf) {
    return static_cast<Node*>(f->data)->fsm_restore(buf);
}
// libraft's stock TCP transport (raft_uv_tcp, used without a raft secret) leaves Nagle's
// algorithm on. Raft messages are small and latency-bound (an AppendEntries result held back
// behind an un-acknowledged segment costs a delayed-ACK round, up to 40 ms), so every raft
// connection gets TCP_NODELAY, as the authenticated transport sets it. The stock listen and
// connect calls are wrapped to set it on each stream before libraft sees it. libraft 0.22.1
// makes each call from one place with one callback (uv_recv.c, uv_send.c), so the original
// callbacks are kept process-wide; the connect callback carries no transport pointer.
std::atomic<raft_uv_accept_cb> g_tcp_accept_cb{nullptr};
std::atomic<raft_uv_connect_cb> g_tcp_connect_cb{nullptr};
using ListenFn = int (*)(struct raft_uv_transport*, raft_uv_accept_cb);
using ConnectFn = int (*)(struct raft_uv_transport*, struct raft_uv_connect*, raft_id, const char*,
                          raft_uv_connect_cb);
std::atomic<ListenFn> g_tcp_listen{nullptr};
std::atomic<ConnectFn> g_tcp_connect{nullptr};

void set_nodelay(struct uv_stream_s* s) {
    if (s && s->type == UV_TCP) uv_tcp_nodelay(reinterpret_cast<uv_tcp_t*>(s), 1);
}
void nodelay_accepted(struct raft_uv_transport* t, raft_id id, const char* address, struct uv_stream_s* s) {
    set_nodelay(s);
    g_tcp_accept_cb.load()(t, id, address, s);
}
int nodelay_listen(struct raft_uv_transport* t, raft_uv_accept_cb cb) {
    g_tcp_accept_cb.store(cb);
    return g_tcp_listen.load()(t, nodelay_accepted);
}
void nodelay_connected(struct raft_uv_connect* req, struct uv_stream_s* s, int status) {
    if (status == 0) set_nodelay(s);
    g_tcp_connect_cb.load()(req, s, status);
}
int nodelay_connect(struct raft_uv_transport* t, struct raft_uv_connect* req, raft_id id, const char* address,
                    raft_uv_connect_cb cb) {
    g_tcp_connect_cb.store(cb);
    return g_tcp_connect.load()(t, req, id, address, nodelay_connected);
}
void wrap_stock_transport(struct raft_uv_transport* t) {
    g_tcp_listen.store(t->listen);  // the same UvTcpListen/UvTcpConnect for every stock transport
    g_tcp_connect.store(t->connect);
    t->listen = nodelay_listen;
    t->connect = nodelay_connect;
}
}  // namespace

// ---------------------------------------------------------------- life cycle

Node::Node(uint64_t id, std::string address, std::string dir, Options opts)
    : id_(id), address_(std::move(address)), dir_(std::move(dir)), opts_(opts) {
    std::memset(&raft_, 0, sizeof raft_);
    std::memset(&io_, 0, sizeof io_);
    std::memset(&transport_, 0, sizeof transport_);
    std::memset(&fsm_, 0, sizeof fsm_);
}

Node::~Node() { stop(); }

int Node::setup_loop(std::string& err) {
    int rv = uv_loop_init(&loop_);
    if (rv != 0) { err = uv_strerror(rv); return E_IO; }
    async_.data = this;
    uv_async_init(&loop_, &async_, async_cb);
    compat::init_transport_version(&transport_);
    transport_.data = this;
    if (!opts_.authenticated()) {
        rv = raft_uv_tcp_init(&transport_, &loop_);
        if (rv == 0) wrap_stock_transport(&transport_);
    } else {
        rv = !opts_.tls_cert.empty()
                 ? bknr_tls_transport_init(&transport_, &loop_, opts_.tls_ca.c_str(), opts_.tls_cert.c_str(),
                                           opts_.tls_key.c_str())
                 : bknr_auth_transport_init(&transport_, &loop_,
                                            reinterpret_cast<const unsigned char*>(opts_.secret.data()),
                                            opts_.secret.size());
        if (rv == 0) {
            bknr_auth_transport_set_timeout(&transport_, opts_.auth_timeout_ms);
            // auth_log adds "[node N]" itself
            bknr_auth_transport_set_log_prefix(&transport_, opts_.tls_cert.empty() ? "bknr-auth" : "bknr-tls");
        }
    }
    if (rv != 0) { err = "transport: " + std::string(raft_strerror(rv)) + ": " + transport_.errmsg; goto fail_loop; }
    install_stream_watch();  // fast_election.cpp: notice the leader's stream closing
    io_.data = this;
    rv = raft_uv_init(&io_, &loop_, dir_.c_str(), &transport_);
    if (rv != 0) { err = "io: " + std::string(io_.errmsg); goto fail_transport; }
    // libraft's default "auto recovery" moves a corrupt last closed segment (and every open one)
    // aside and loads again without it: the node then runs without entries it may have
    // acknowledged (a leader never moves a follower's match index back, and they may have
    // counted for a quorum). Refuse instead; the one benign case, a torn tail of an open
    // segment, is cut off before start by bknr_cluster/raft_repair.py.
    raft_uv_set_auto_recovery(&io_, false);
    // libraft retries a refused connection after 1 s: a peer that restarted (a drill, a deploy)
    // heard nothing from the leader meanwhile, and a vote it asked for sat in a queue. Half an
    // election timeout keeps reconnecting cheap (a refused connect costs one round trip).
    raft_uv_set_connect_retry_delay(&io_, std::max(opts_.heartbeat_ms, std::min(1000u, opts_.election_timeout_ms / 2)));
    install_recv_hook();
    fsm_.version = compat::kFsmVersion;
    fsm_.data = this;
    fsm_.apply = fsm_apply_cb;
    fsm_.snapshot = fsm_snapshot_cb;
    fsm_.snapshot_finalize = fsm_finalize_cb;
    fsm_.restore = fsm_restore_cb;
    rv = raft_init(&raft_, &io_, &fsm_, id_, address_.c_str());
    if (rv != 0) { err = "init: " + std::string(raft_errmsg(&raft_)); goto fail_io; }
    raft_.data = this;
    compat::detach_idle_tracers(&raft_, &io_);
    raft_set_election_timeout(&raft_, opts_.election_timeout_ms);
    raft_set_heartbeat_timeout(&raft_, opts_.heartbeat_ms);
    raft_set_pre_vote(&raft_, opts_.pre_vote);
    compat::set_snapshot_threshold(&raft_, opts_.snapshot_threshold);
    compat::set_snapshot_trailing(&raft_, opts_.snapshot_trailing);
    compat::set_max_inflight_entries(&raft_, opts_.max_inflight_entries);
    return OK;
fail_io:
    raft_uv_close(&io_);
fail_transport:
    close_transport();
fail_loop:
    uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
    return rv == RAFT_NOTFOUND || rv == RAFT_INVALID ? E_INVALID : E_IO;
}

void Node::close_transport() {
    remove_stream_watch();
    if (!opts_.authenticated()) raft_uv_tcp_close(&transport_);
    else bknr_auth_transport_close(&transport_);
}

void Node::on_raft_closed() {
    close_election_timers();
    raft_uv_close(&io_);
    close_transport();
    uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
}

void Node::teardown_after_close() {
    uv_run(&loop_, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop_) != 0) {
        // Defensive: close anything libraft left behind, then retry once.
        uv_walk(&loop_, [](uv_handle_t* h, void*) { if (!uv_is_closing(h)) uv_close(h, nullptr); },
                nullptr);
        uv_run(&loop_, UV_RUN_DEFAULT);
        uv_loop_close(&loop_);
    }
}

int Node::bootstrap(const std::vector<ServerInfo>& conf, bool recover, std::string& err) {
    std::lock_guard<std::mutex> g(life_mu_);
    if (started_) { err = "bootstrap/recover must run before start()"; return E_INVALID; }
    int code = OK;
    std::thread t([&] {
        loop_tid_ = std::this_thread::get_id();
        code = setup_loop(err);
        if (code != OK) return;
        struct raft_configuration c;
        raft_configuration_init(&c);
        int rv = 0;
        for (const auto& s : conf) {
            rv = raft_configuration_add(&c, s.id, s.address.c_str(), s.role);
            if (rv != 0) { err = "configuration: " + std::string(raft_strerror(rv)); code = E_MEMBERSHIP; break; }
        }
        if (code == OK) {
            rv = recover ? raft_recover(&raft_, &c) : raft_bootstrap(&raft_, &c);
            if (rv == RAFT_CANTBOOTSTRAP) { err = "data directory already holds Raft state"; code = E_ALREADY_BOOTSTRAPPED; }
            else if (rv != 0) { err = errtext(&raft_, rv); code = code_of_sync(rv) == E_INVALID ? E_IO : code_of_sync(rv); }
        }
        raft_configuration_close(&c);
        raft_close(&raft_, close_cb);
        teardown_after_close();
    });
    t.join();
    std::memset(&raft_, 0, sizeof raft_);
    std::memset(&io_, 0, sizeof io_);
    std::memset(&transport_, 0, sizeof transport_);
    return code;
}

struct StartSync {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    int code = OK;
    std::string err;
};

int Node::start(std::string& err) {
    std::lock_guard<std::mutex> g(life_mu_);
    if (started_) { err = stopped_ ? "engine was stopped; create a new RaftNode" : "already started"; return E_INVALID; }
    started_ = true;
    auto sync = std::make_shared<StartSync>();
    thread_ = std::thread([this, sync] { run_thread(sync); });
    std::unique_lock<std::mutex> lk(sync->mu);
    sync->cv.wait(lk, [&] { return sync->done; });
    if (sync->code != OK) {
        lk.unlock();
        thread_.join();
        stopped_ = true;
        err = sync->err;
        return sync->code;
    }
    return OK;
}

void Node::run_thread(std::shared_ptr<StartSync> sync) {
    loop_tid_ = std::this_thread::get_id();
    std::string err;
    int code = setup_loop(err);
    if (code == OK) {
        int rv = raft_start(&raft_);
        if (rv != 0) {
            err = "start: " + errtext(&raft_, rv);
            code = E_IO;
            raft_close(&raft_, close_cb);
            teardown_after_close();
        }
    }
    if (code != OK) {
        applyq_.close();
        std::lock_guard<std::mutex> g(sync->mu);
        sync->code = code;
        sync->err = err;
        sync->done = true;
        sync->cv.notify_all();
        return;
    }
    start_health_timer();
    uv_check_init(&loop_, &flush_check_);
    flush_check_.data = this;
    uv_check_start(&flush_check_, [](uv_check_t* h) { static_cast<Node*>(h->data)->on_check(); });
    accepting_ = true;
    {
        std::lock_guard<std::mutex> g(sync->mu);
        sync->done = true;
        sync->cv.notify_all();
    }
    uv_run(&loop_, UV_RUN_DEFAULT);
    teardown_after_close();
    applyq_.close();
}

void Node::stop() {
    std::lock_guard<std::mutex> g(life_mu_);
    if (stopped_) return;
    if (!started_) {  // never started: refuse a later start() and release next_committed()
        stopped_ = true;
        started_ = true;
        applyq_.close();
        return;
    }
    stopped_ = true;
    {
        std::lock_guard<std::mutex> rg(req_mu_);
        accepting_ = false;
        Request r;
        r.type = R_STOP;
        reqs_.push_back(std::move(r));
        uv_async_send(&async_);
    }
    if (thread_.joinable()) thread_.join();
}

FuturePtr Node::post(Request&& r) {
    FuturePtr f = r.fut ? r.fut : std::make_shared<FutureState>();
    r.fut = f;
    {
        std::lock_guard<std::mutex> g(req_mu_);
        if (!accepting_) {
            r.free_payloads();
            f->fail(E_SHUTDOWN, started_ ? "engine is stopped" : "engine is not started");
            return f;
        }
        reqs_.push_back(std::move(r));
        // Under the lock: stop() clears accepting_ under it too, so no send can reach the
        // handle after the loop closed it. Cheap: coalesces while a wake-up is pending.
        uv_async_send(&async_);
    }
    return f;
}

// ---------------------------------------------------------------- loop thread

void Node::on_check() {
    // snapshot_now (fsm.cpp): deadlines, store snapshots that came in, restores, barriers.
    if (!snap_waiters_.empty() || forced_) advance_snapshots(true);
    // libraft has written the forced snapshot and trimmed its log with the lowered trailing.
    if (trailing_lowered_ && !compat::snapshot_taking(&raft_)) {
        compat::set_snapshot_trailing(&raft_, opts_.snapshot_trailing);
        trailing_lowered_ = false;
    }
    applyq_.flush();
    deliver_deferred();
    retry_timeout_now();
    note_election_won();
    note_role();
}

void Node::note_role() {
    int state = raft_state(&raft_);
    raft_id lid = 0;
    const char* laddr = nullptr;
    raft_leader(&raft_, &lid, &laddr);
    uint64_t transferee = state == RAFT_LEADER ? raft_transferee(&raft_) : 0;
    if (state == role_state_.load(std::memory_order_relaxed) &&
        lid == role_leader_.load(std::memory_order_relaxed) &&
        transferee == role_transferee_.load(std::memory_order_relaxed))
        return;
    // Seqlock: the only writer is this thread; readers retry while seq is odd or moved.
    uint64_t seq = role_seq_.load(std::memory_order_relaxed);
    role_seq_.store(seq + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    role_state_.store(state, std::memory_order_relaxed);
    role_leader_.store(lid, std::memory_order_relaxed);
    role_transferee_.store(transferee, std::memory_order_relaxed);
    role_seq_.store(seq + 2, std::memory_order_release);
    role_signal.post();
}

Node::Role Node::role() const noexcept {
    Role r;
    for (;;) {
        uint64_t s1 = role_seq_.load(std::memory_order_acquire);
        if (s1 & 1) continue;
        r.state = role_state_.load(std::memory_order_relaxed);
        r.leader_id = role_leader_.load(std::memory_order_relaxed);
        r.transferee = role_transferee_.load(std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_acquire);
        if (role_seq_.load(std::memory_order_relaxed) == s1) {
            r.seq = s1 / 2;
            return r;
        }
    }
}

void Node::on_async() {
    std::vector<Request> batch;
    {
        std::lock_guard<std::mutex> g(req_mu_);
        batch.swap(reqs_);
    }
    for (auto& r : batch) handle(r);
}

void Node::begin_close() {
    if (closing_) return;
    closing_ = true;
    drop_deferred();
    stop_health_timer();
    applyq_.flush();
    uv_check_stop(&flush_check_);
    uv_close(reinterpret_cast<uv_handle_t*>(&flush_check_), nullptr);
    raft_close(&raft_, close_cb);  // fails in-flight client requests via their callbacks
    for (auto& w : snap_waiters_) w.fut->fail(E_SHUTDOWN, "engine stopped");
    snap_waiters_.clear();
}

}  // namespace bknr
