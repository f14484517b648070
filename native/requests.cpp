// Client requests on the loop thread: dispatch to libraft, completion callbacks, error
// mapping (synchronous refusals vs. outcome unknown). Thread contract: native/DESIGN.md.
#include <string>

#include "node.hpp"

namespace bknr {

// ---------------------------------------------------------------- error mapping

// Synchronous rejections (the request never entered the log).
int code_of_sync(int rv) {
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

std::string errtext(struct raft* r, int rv) {
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
// One submit_many() call: n raft_apply requests sharing one future, resolved (to the first
// entry's index) when the last of them completes. Loop thread only, so no locking.
struct ManyState {
    FuturePtr fut;
    uint64_t first = 0;
    size_t remaining = 0;
    int code = OK;
    std::string message;
};
struct ManyReq {
    struct raft_apply req;
    std::shared_ptr<ManyState> batch;
};
struct BarrierReq {
    struct raft_barrier req;
    FuturePtr fut;         // null for internal barriers (snapshot_now)
    Node* node = nullptr;  // set for internal barriers
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

void many_cb(struct raft_apply* req, int status, void*) {
    auto* a = reinterpret_cast<ManyReq*>(req);
    ManyState& b = *a->batch;
    if (status != 0 && b.code == OK) {
        b.code = code_of_cb(status);
        b.message = std::string("outcome unknown: ") + raft_strerror(status);
    }
    if (--b.remaining == 0) {
        if (b.code == OK) b.fut->resolve(b.first);
        else b.fut->fail(b.code, b.message);
    }
    delete a;
}

void barrier_cb(struct raft_barrier* req, int status) {
    auto* b = reinterpret_cast<BarrierReq*>(req);
    if (b->node) b->node->barrier_done();
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

static bool is_voter_conf(const struct raft_configuration& c, uint64_t id, int* voters) {
    bool found = false;
    *voters = 0;
    for (unsigned i = 0; i < c.n; i++) {
        if (c.servers[i].role == RAFT_VOTER) (*voters)++;
        if (c.servers[i].id == id && c.servers[i].role == RAFT_VOTER) found = true;
    }
    return found;
}

void Request::free_payloads() {
    if (buf) raft_free(buf);
    buf = nullptr;
    for (auto& b : bufs)
        if (b.base) raft_free(b.base);
    bufs.clear();
}

// submit_many(): each payload becomes its own log entry through its own raft_apply, exactly as
// n submit() calls would, but the batch crossed from Python once (one lock, one wake-up) and
// completes through one future. Called back-to-back on the loop thread, the entries get
// consecutive indexes (raft_apply appends at last index + 1 synchronously).
void Node::apply_many(Request& r) {
    auto batch = std::make_shared<ManyState>();
    batch->fut = r.fut;
    batch->remaining = r.bufs.size();
    for (size_t i = 0; i < r.bufs.size(); i++) {
        auto* a = new ManyReq();
        a->batch = batch;
        int rv = raft_apply(&raft_, &a->req, &r.bufs[i], 1, many_cb);
        if (rv == 0) {
            if (i == 0) batch->first = a->req.index;
            r.bufs[i].base = nullptr;  // libraft owns it now
            continue;
        }
        delete a;
        // As for R_APPLY: only a RAFT_NOTLEADER refusal leaves the payload with us.
        if (rv == RAFT_NOTLEADER) raft_free(r.bufs[i].base);
        r.bufs[i].base = nullptr;
        if (code_of_sync(rv) == E_IO) note_io_error("append failed: " + errtext(&raft_, rv));
        for (size_t j = i + 1; j < r.bufs.size(); j++) raft_free(r.bufs[j].base);
        r.bufs.clear();
        if (i == 0) {  // nothing entered the log: a certain, synchronous refusal
            fail_not_leader(r.fut, rv);
            return;
        }
        // Entries 0..i-1 are in the log and may commit: the batch's outcome is unknown.
        batch->code = E_LEADERSHIP_LOST;
        batch->message = "outcome unknown: " + std::to_string(i) + " of " +
                         std::to_string(batch->remaining) + " entries appended, then " + errtext(&raft_, rv);
        batch->remaining = i;  // the callbacks of the appended ones complete the future
        return;
    }
    r.bufs.clear();
}

bool Node::push_barrier() {
    auto* b = new BarrierReq();
    b->node = this;
    if (raft_barrier(&raft_, &b->req, barrier_cb) == 0) return true;
    delete b;
    return false;
}

void Node::handle(Request& r) {
    if (closing_) {
        r.free_payloads();
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
        case R_APPLY_MANY:
            apply_many(r);
            return;
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
        case R_SNAPSHOT:
            snapshot_now(r);  // fsm.cpp: fresh store snapshot first, then libraft's snapshot
            return;
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
