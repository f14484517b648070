// Work-arounds for two libraft 0.22.1 bugs, both applied where messages and the on-disk state
// enter libraft (we wrap raft_io.start and raft_io.load). Loop thread only. The same hooks carry
// the vote rule and the pre-vote retry (vote_rule.cpp), on every message and every tick, and
// the rules of a halted replica (halt_rule.cpp).
//
// 1. A crash (legacy.c, takeSnapshotCb):
//
//     r->legacy.snapshot_pending = NULL;
//     persist = r->legacy.snapshot_pending;      /* always NULL */
//     rv = legacyPersistSnapshotStart(persist);  /* NULL dereference: SIGSEGV */
//
//    It runs when an InstallSnapshot arrived while this node was writing a snapshot of its own
//    (the install is parked as "pending" until the write completes): typically a node that was
//    partitioned away rejoins while it is snapshotting. We hold back an InstallSnapshot while
//    libraft is taking a snapshot, then hand it over from the loop's check phase once the local
//    snapshot is done.
//
// 2. A follower's commit index can go DOWN (replication.c, replicationAppend):
//
//     if (args->leader_commit > r->commit_index)
//         r->commit_index = min(args->leader_commit, prev_log_index + n_entries);
//
//    An AppendEntries whose last entry is below the follower's commit index (a heartbeat or
//    probe built from the leader's stale view of a follower that just restarted and caught
//    up) lowers commit_index below last_applied. libraft then takes its next snapshot *at
//    commit_index* (legacyTakeSnapshot labels it with r->commit_index; the asserts that would
//    catch last_applied != commit_index are compiled out) while the state machine is at
//    last_applied: a snapshot labelled C holding the state after A > C. A restart or an
//    install from it re-applies C+1..A on top: those transactions run twice (the silent
//    divergence of the 22-minute chaos run). We clamp leader_commit to our own commit index
//    in such a message, so the condition above is false and the commit index never regresses
//    (etcd does the same: it only ever moves the commit index forward). DESIGN.md §1.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "node.hpp"

namespace bknr {

namespace {
Node* node_of(struct raft_io* io) {
    // raft_init() points io->data at the raft instance; the engine points raft.data at itself.
    return static_cast<Node*>(static_cast<struct raft*>(io->data)->data);
}

void recv_hook(struct raft_io* io, struct raft_message* msg) { node_of(io)->on_recv(msg); }
void tick_hook(struct raft_io* io) { node_of(io)->on_tick(); }

int start_hook(struct raft_io* io, unsigned msecs, raft_io_tick_cb tick, raft_io_recv_cb recv) {
    Node* n = node_of(io);
    n->legacy_recv_ = recv;
    n->legacy_tick_ = tick;
    return n->orig_start_(io, msecs, tick_hook, recv_hook);
}

int load_hook(struct raft_io* io, raft_term* term, raft_id* voted_for, struct raft_snapshot** snapshot,
              raft_index* start_index, struct raft_entry* entries[], size_t* n_entries) {
    Node* n = node_of(io);
    int rv = n->orig_load_(io, term, voted_for, snapshot, start_index, entries, n_entries);
    // raft_start() restores this snapshot right after load, before it sets any index the
    // FSM could read: remember the index libraft will consider applied (fsm.cpp).
    n->restore_label_ = (rv == 0 && *snapshot != nullptr) ? (*snapshot)->index : 0;
    return rv;
}
}  // namespace

void Node::install_recv_hook() {
    trace_commit_ = std::getenv("BKNR_TRACE_COMMIT") != nullptr;  // one stderr line per clamp
    trace_election_ = std::getenv("BKNR_TRACE_ELECTION") != nullptr;  // fast_election.cpp
    const char* stalls = std::getenv("BKNR_TRACE_STALLS");  // cluster/stall_trace.py
    trace_snapshot_ = stalls != nullptr && *stalls != 0 && std::strcmp(stalls, "0") != 0;
    // Always installed: it also carries the thesis vote rule (vote_rule.cpp).
    orig_start_ = io_.start;
    io_.start = start_hook;
    orig_load_ = io_.load;
    io_.load = load_hook;
}

void Node::on_tick() {
    if (halted()) {
        halted_tick();  // halt_rule.cpp: never campaign
    } else {
        redraw_election_timer();
        keep_timer_in_range();  // fast_election.cpp
        retry_pre_vote();
    }
    int before = raft_.state;
    legacy_tick_(&io_);
    if (before == RAFT_FOLLOWER && raft_.state == RAFT_CANDIDATE)
        trace_election("timer expired: campaign (term %llu)", (unsigned long long)raft_.current_term);
}

void Node::on_recv(struct raft_message* msg) {
    if (halted()) {
        if (halted_recv(msg)) return;  // halt_rule.cpp: grant no vote, take no TimeoutNow
    } else {
        apply_vote_rule(msg);
    }
    if (msg->type == RAFT_APPEND_ENTRIES || msg->type == RAFT_INSTALL_SNAPSHOT) heard_from_leader();
    if (msg->type == RAFT_TIMEOUT_NOW) trace_election("timeout-now from %llu", (unsigned long long)msg->server_id);
    if (msg->type == RAFT_APPEND_ENTRIES && compat::kFollowerCommitCanRegress) {
        struct raft_append_entries* ae = &msg->append_entries;
        uint64_t commit = raft_.commit_index;
        if (ae->leader_commit > commit && ae->prev_log_index + ae->n_entries < commit) {
            if (trace_commit_)
                std::fprintf(stderr, "bknr: clamp leader_commit %llu -> %llu (prev %llu + %u entries, applied %llu)\n",
                             (unsigned long long)ae->leader_commit, (unsigned long long)commit,
                             (unsigned long long)ae->prev_log_index, ae->n_entries,
                             (unsigned long long)raft_.last_applied);
            ae->leader_commit = commit;  // see (2) above: never let the commit index go back
            commit_clamps_++;
        }
    }
    if (msg->type == RAFT_INSTALL_SNAPSHOT && compat::kInstallDuringSnapshotCrashes && !closing_ &&
        compat::snapshot_taking(&raft_)) {
        if (deferred_) drop_deferred();  // a newer install supersedes the parked one
        deferred_msg_ = *msg;            // takes over data and configuration
        deferred_addr_ = msg->server_address ? msg->server_address : "";
        deferred_msg_.server_address = deferred_addr_.c_str();
        deferred_ = true;
        deferred_installs_++;
        return;
    }
    legacy_recv_(&io_, msg);
    if (msg->type == RAFT_TIMEOUT_NOW) keep_timeout_now(*msg);
}

// libraft ignores a TimeoutNow that arrives while this follower is still persisting entries
// (or before its log matches the leader's), and the leader's transfer then waits a whole
// election timeout for nothing: traced under load, 2 of 15 planned transfers took ~240 ms
// instead of ~20. A TimeoutNow carries no buffers; we keep a copy and hand it to libraft again
// after each loop iteration (on_check: disk writes complete there) until it starts the election,
// for at most one election timeout, while the term and the leader that sent it are unchanged.
// A late delivery is only a delayed message, which Raft always allows.
void Node::keep_timeout_now(const struct raft_message& msg) {
    if (raft_.state != RAFT_FOLLOWER || raft_.follower_state.current_leader.id != msg.server_id)
        return;  // taken (we are candidate now), or from a node we do not follow
    timeout_now_ = msg;
    timeout_now_addr_ = msg.server_address ? msg.server_address : "";
    timeout_now_.server_address = timeout_now_addr_.c_str();
    timeout_now_term_ = raft_.current_term;
    timeout_now_until_ = io_.time(&io_) + raft_.election_timeout;
    timeout_now_kept_ = true;
    trace_election("timeout-now from %llu kept: libraft ignored it", (unsigned long long)msg.server_id);
}

void Node::retry_timeout_now() {
    if (!timeout_now_kept_ || closing_) return;
    if (raft_.state != RAFT_FOLLOWER || raft_.current_term != timeout_now_term_ ||
        raft_.follower_state.current_leader.id != timeout_now_.server_id || halted() ||
        io_.time(&io_) > timeout_now_until_) {
        timeout_now_kept_ = false;
        return;
    }
    struct raft_message m = timeout_now_;
    legacy_recv_(&io_, &m);
    if (raft_.state != RAFT_FOLLOWER) {
        timeout_now_kept_ = false;
        timeouts_now_retried_++;
        trace_election("kept timeout-now taken");
    }
}

void Node::deliver_deferred() {
    if (!deferred_ || closing_ || compat::snapshot_taking(&raft_)) return;
    deferred_ = false;
    struct raft_message m = deferred_msg_;
    legacy_recv_(&io_, &m);
}

void Node::drop_deferred() {
    if (!deferred_) return;
    deferred_ = false;
    raft_configuration_close(&deferred_msg_.install_snapshot.conf);
    raft_free(deferred_msg_.install_snapshot.data.base);
}

}  // namespace bknr
