// Loop thread, request queue and client-request callbacks of the native Raft node.
// Thread contract: native/DESIGN.md. Every raft_* call below runs on the loop thread.
#include "node.hpp"

#include "auth_transport.hpp"  // transport selection; status.cpp reads its counters

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

// ---------------------------------------------------------------- error mapping

// Synchronous rejections (the request never entered the log).
static int code_of_sync(int rv) {
    switch (rv) {
        case RAFT_NOTLEADER: return E_NOT_LEADER;
        case RAFT_TOOBIG: return E_TOO_BIG;
        case RAFT_NOMEM: case RAFT_IOERR: case RAFT_NOSPACE: case RAFT_CORRUPT: return E_IO;
        case RAFT_SHUTDOWN: case RAFT_CANCELED: return E_SHUTDOWN;
        case RAFT_BADID: case RAFT_DUPLICATEID: case RAFT_DUPLICATEADDRESS: case RAFT_BADROLE:
        case RAFT_CANTCHANGE: case RAFT_NOTFOUND: case RAFT_NOCONNECTION: return E_MEMBERSHIP;
        default: return E_INVALID;
    }
}

// Completion callbacks: the entry was already handed to libraft (appended, maybe sent to
// followers), so whatever the status, it may still commit under the next leader. The only
// honest answer is "outcome unknown": a linearizability checker must not count it as failed.
static int code_of_cb(int status) {
    (void)status;
    return E_LEADERSHIP_LOST;
}

static std::string errtext(struct raft* r, int rv) {
    std::string s = raft_strerror(rv);
    const char* m = raft_errmsg(r);
    if (m && *m && s != m) s += std::string(": ") + m;
    return s;
}

void Node::fail_not_leader(const FuturePtr& f, int rv) {
    raft_id lid = 0;
    const char* laddr = nullptr;
    raft_leader(&raft_, &lid, &laddr);
    if (rv == RAFT_NOTLEADER) {
        f->fail(E_NOT_LEADER, "not the leader", lid, laddr ? laddr : "");
    } else {
        f->fail(code_of_sync(rv), errtext(&raft_, rv), lid, laddr ? laddr : "");
    }
}

// ---------------------------------------------------------------- libraft callbacks

namespace {
struct ApplyReq {
    struct raft_apply req;
    FuturePtr fut;
};
struct BarrierReq {
    struct raft_barrier req;
    FuturePtr fut;  // null for internal barriers (snapshot_now)
};
struct ChangeReq {
    struct raft_change req;
    Node* node;
};
struct TransferReq {
    struct raft_transfer req;
    Node* node;
};

void apply_cb(struct raft_apply* req, int status, void*) {
    auto* a = reinterpret_cast<ApplyReq*>(req);
    if (status == 0) {
        a->fut->resolve(req->index);
    } else {
        a->fut->fail(code_of_cb(status), std::string("outcome unknown: ") + raft_strerror(status));
    }
    delete a;
}

void barrier_cb(struct raft_barrier* req, int status) {
    auto* b = reinterpret_cast<BarrierReq*>(req);
    if (b->fut) {
        if (status == 0) b->fut->resolve(req->index);
        else b->fut->fail(code_of_cb(status), std::string("outcome unknown: ") + raft_strerror(status));
    }
    delete b;
}

void change_cb(struct raft_change* req, int status) {
    auto* c = reinterpret_cast<ChangeReq*>(req);
    c->node->change_done(status);
    delete c;
}

void transfer_cb(struct raft_transfer* req) {
    auto* t = reinterpret_cast<TransferReq*>(req);
    t->node->transfer_done();
    delete t;
}

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
}  // namespace

void Node::change_done(int status) {
    FuturePtr f = std::move(change_fut_);
    change_fut_.reset();
    if (!f) return;
    if (status == 0) f->resolve(0);
    else if (status == RAFT_NOCONNECTION) f->fail(E_MEMBERSHIP, "the new voter failed to catch up");
    else f->fail(code_of_cb(status), raft_strerror(status));
}

void Node::transfer_done() {
    FuturePtr f = std::move(transfer_fut_);
    transfer_fut_.reset();
    if (!f) return;
    raft_id lid = 0;
    const char* laddr = nullptr;
    raft_leader(&raft_, &lid, &laddr);
    if (lid != 0 && lid != id_ && (transfer_target_ == 0 || lid == transfer_target_)) {
        f->resolve(lid);
    } else {
        f->fail(E_TIMEOUT, "leadership transfer did not complete in time", lid, laddr ? laddr : "");
    }
}

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
    if (opts_.secret.empty()) {
        rv = raft_uv_tcp_init(&transport_, &loop_);
    } else {
        rv = bknr_auth_transport_init(&transport_, &loop_,
                                      reinterpret_cast<const unsigned char*>(opts_.secret.data()),
                                      opts_.secret.size());
        if (rv == 0) {
            bknr_auth_transport_set_timeout(&transport_, opts_.auth_timeout_ms);
            std::string prefix = "bknr-auth[node " + std::to_string(id_) + "]";
            bknr_auth_transport_set_log_prefix(&transport_, prefix.c_str());
        }
    }
    if (rv != 0) { err = "transport: " + std::string(raft_strerror(rv)) + ": " + transport_.errmsg; goto fail_loop; }
    io_.data = this;
    rv = raft_uv_init(&io_, &loop_, dir_.c_str(), &transport_);
    if (rv != 0) { err = "io: " + std::string(io_.errmsg); goto fail_transport; }
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
    if (opts_.secret.empty()) raft_uv_tcp_close(&transport_);
    else bknr_auth_transport_close(&transport_);
}

void Node::on_raft_closed() {
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
            if (r.buf) raft_free(r.buf);
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
    applyq_.flush();
    deliver_deferred();
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
    for (auto& w : snap_waiters_) w.second->fail(E_SHUTDOWN, "engine stopped");
    snap_waiters_.clear();
}

static bool is_voter_conf(const struct raft_configuration& c, uint64_t id, int* voters) {
    bool found = false;
    *voters = 0;
    for (unsigned i = 0; i < c.n; i++) {
        if (c.servers[i].role == RAFT_VOTER) (*voters)++;
        if (c.servers[i].id == id && c.servers[i].role == RAFT_VOTER) found = true;
    }
    return found;
}

void Node::handle(Request& r) {
    if (closing_) {
        if (r.buf) raft_free(r.buf);
        if (r.type != R_STOP) r.fut->fail(E_SHUTDOWN, "engine is stopping");
        return;
    }
    int rv = 0;
    switch (r.type) {
        case R_STOP:
            begin_close();
            return;
        case R_APPLY: {
            auto* a = new ApplyReq();
            a->fut = r.fut;
            struct raft_buffer b;
            b.base = r.buf;
            b.len = r.len;
            rv = raft_apply(&raft_, &a->req, &b, 1, apply_cb);
            if (rv == 0) return;  // libraft owns the payload now
            // RAFT_NOTLEADER is returned before libraft touches the entry: still ours. Any
            // other error comes from deeper down, after libraft released the payload (0.22.1
            // legacyHandleUpdateEntries frees the batch before io->append can fail with, e.g.,
            // RAFT_NOSPACE on a full disk), so we must not free it again.
            if (rv == RAFT_NOTLEADER) raft_free(r.buf);
            if (code_of_sync(rv) == E_IO) note_io_error("append failed: " + errtext(&raft_, rv));
            fail_not_leader(r.fut, rv);
            delete a;
            return;
        }
        case R_BARRIER: {
            auto* b = new BarrierReq();
            b->fut = r.fut;
            rv = raft_barrier(&raft_, &b->req, barrier_cb);
            if (rv == 0) return;
            fail_not_leader(r.fut, rv);
            delete b;
            return;
        }
        case R_ADD: case R_ASSIGN: case R_REMOVE: {
            if (raft_state(&raft_) != RAFT_LEADER) { fail_not_leader(r.fut, RAFT_NOTLEADER); return; }
            if (change_fut_) { r.fut->fail(E_MEMBERSHIP, "another configuration change is in progress"); return; }
            int voters = 0;
            bool voter = is_voter_conf(raft_.configuration, r.id, &voters);
            if (r.type == R_REMOVE && voter && voters <= 1) {
                r.fut->fail(E_MEMBERSHIP, "cannot remove the last voter");
                return;
            }
            if (r.type == R_ASSIGN && voter && voters <= 1 && r.role != RAFT_VOTER) {
                r.fut->fail(E_MEMBERSHIP, "cannot demote the last voter");
                return;
            }
            auto* c = new ChangeReq();
            c->node = this;
            if (r.type == R_ADD) rv = raft_add(&raft_, &c->req, r.id, r.address.c_str(), change_cb);
            else if (r.type == R_ASSIGN) rv = raft_assign(&raft_, &c->req, r.id, r.role, change_cb);
            else rv = raft_remove(&raft_, &c->req, r.id, change_cb);
            if (rv == 0) { change_fut_ = r.fut; return; }
            delete c;
            if (rv == RAFT_NOTLEADER) fail_not_leader(r.fut, rv);
            else r.fut->fail(code_of_sync(rv) == E_INVALID ? E_MEMBERSHIP : code_of_sync(rv), errtext(&raft_, rv));
            return;
        }
        case R_TRANSFER: {
            if (raft_state(&raft_) != RAFT_LEADER) { fail_not_leader(r.fut, RAFT_NOTLEADER); return; }
            if (transfer_fut_) { r.fut->fail(E_MEMBERSHIP, "a leadership transfer is already in progress"); return; }
            if (r.id == id_) { r.fut->resolve(id_); return; }
            if (r.id != 0) {
                int voters = 0;
                if (!is_voter_conf(raft_.configuration, r.id, &voters)) {
                    r.fut->fail(E_MEMBERSHIP, "transfer target " + std::to_string(r.id) + " is not a voter");
                    return;
                }
            }
            auto* t = new TransferReq();
            t->node = this;
            rv = raft_transfer(&raft_, &t->req, r.id, transfer_cb);
            if (rv == 0) { transfer_fut_ = r.fut; transfer_target_ = r.id; return; }
            delete t;
            if (rv == RAFT_NOTLEADER) fail_not_leader(r.fut, rv);
            else r.fut->fail(E_MEMBERSHIP, errtext(&raft_, rv));
            return;
        }
        case R_SNAPSHOT: {
            uint64_t commit = raft_.commit_index;
            uint64_t have = std::max<uint64_t>(last_snapshot_index_, compat::snapshot_index(&raft_));
            if (have >= commit && snapshot_taking_index_ == 0) { r.fut->resolve(have); return; }
            snap_waiters_.emplace_back(commit, r.fut);
            // libraft has no "snapshot now" call: a threshold of 1 makes the next event take
            // one; the threshold is restored once every waiter is served (fsm.cpp).
            compat::set_snapshot_threshold(&raft_, 1);
            if (raft_state(&raft_) == RAFT_LEADER) {
                auto* b = new BarrierReq();
                if (raft_barrier(&raft_, &b->req, barrier_cb) != 0) delete b;
            }
            return;
        }
        case R_STATUS: {
            auto s = std::make_shared<StatusData>();
            fill_status(*s);
            {
                std::lock_guard<std::mutex> g(r.fut->mu);
                r.fut->status = s;
            }
            r.fut->resolve(0);
            return;
        }
    }
}

}  // namespace bknr
