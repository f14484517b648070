// Work-around for a libraft 0.22.1 crash (legacy.c, takeSnapshotCb):
//
//     r->legacy.snapshot_pending = NULL;
//     persist = r->legacy.snapshot_pending;      /* always NULL */
//     rv = legacyPersistSnapshotStart(persist);  /* NULL dereference: SIGSEGV */
//
// It runs when an InstallSnapshot arrived while this node was writing a snapshot of its own
// (the install is parked as "pending" until the write completes): typically a node that was
// partitioned away rejoins while it is snapshotting. We wrap raft_io.start to see incoming
// messages first and hold back an InstallSnapshot while libraft is taking a snapshot, then
// hand it over from the loop's check phase once the local snapshot is done. Loop thread only.
#include <cstring>

#include "node.hpp"

namespace bknr {

namespace {
Node* node_of(struct raft_io* io) {
    // raft_init() points io->data at the raft instance; the engine points raft.data at itself.
    return static_cast<Node*>(static_cast<struct raft*>(io->data)->data);
}

void recv_hook(struct raft_io* io, struct raft_message* msg) { node_of(io)->on_recv(msg); }

int start_hook(struct raft_io* io, unsigned msecs, raft_io_tick_cb tick, raft_io_recv_cb recv) {
    Node* n = node_of(io);
    n->legacy_recv_ = recv;
    return n->orig_start_(io, msecs, tick, recv_hook);
}
}  // namespace

void Node::install_recv_hook() {
    // Always installed: it also carries the thesis vote rule (vote_rule.cpp).
    orig_start_ = io_.start;
    io_.start = start_hook;
}

void Node::on_recv(struct raft_message* msg) {
    apply_vote_rule(msg);
    if (compat::kInstallDuringSnapshotCrashes && msg->type == RAFT_INSTALL_SNAPSHOT && !closing_ &&
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
