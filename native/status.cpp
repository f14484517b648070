// Status snapshot and the disk health check of the node (loop thread only).
#include <sys/statvfs.h>

#include "auth_transport.hpp"
#include "node.hpp"

namespace bknr {

namespace {
void health_cb(uv_timer_t* t) { static_cast<Node*>(t->data)->check_health(); }
}  // namespace

// libraft's uv backend retries failed disk writes (e.g. ENOSPC while creating a segment)
// silently, forever, or refuses appends with RAFT_NOSPACE. To make a full disk visible,
// status()["last_error"] reports, in this order: appended entries not persisted for kStallMs;
// a disk error libraft returned in the last kStallMs (note_io_error); less than one log
// segment free in the data directory. It is cleared when none of these holds any more.
static constexpr uint64_t kHealthMs = 500;
static constexpr uint64_t kStallMs = 3000;

void Node::start_health_timer() {
    uv_timer_init(&loop_, &health_timer_);
    health_timer_.data = this;
    uv_timer_start(&health_timer_, health_cb, kHealthMs, kHealthMs);
}

void Node::stop_health_timer() {
    uv_timer_stop(&health_timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(&health_timer_), nullptr);
}

// "<dir>: N bytes free" and whether that is less than one raft_uv segment (8 MB).
static std::string disk_space(const std::string& dir, bool* full) {
    struct statvfs fs;
    *full = false;
    if (statvfs(dir.c_str(), &fs) != 0) return dir + ": free space unknown";
    uint64_t avail = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
    *full = avail < (8u << 20);
    return dir + ": " + std::to_string(avail) + " bytes free";
}

// A disk error that libraft reported synchronously (e.g. an append it could not even start).
void Node::note_io_error(const std::string& what) {
    bool full = false;
    std::string space = disk_space(dir_, &full);
    io_error_ms_ = uv_now(&loop_);
    last_error_ = std::string(full ? "no space left on device: " : "disk error: ") + what + " (" + space + ")";
}

void Node::check_health() {
    uint64_t now = uv_now(&loop_);
    uint64_t stored = raft_.last_stored, last = raft_last_index(&raft_);
    if (last <= stored || stored != stored_seen_) {
        stored_seen_ = stored;
        stored_progress_ms_ = now;
    }
    bool full = false;
    std::string space = disk_space(dir_, &full);
    if (last > stored && now - stored_progress_ms_ >= kStallMs) {
        last_error_ = std::string(full ? "no space left on device: " : "disk writes stalled: ") +
                      std::to_string(last - stored) + " log entries not persisted for " +
                      std::to_string((now - stored_progress_ms_) / 1000) + " s (" + space + ")";
    } else if (io_error_ms_ && now - io_error_ms_ < kStallMs) {
        // keep the message note_io_error() set
    } else if (full) {
        last_error_ = "no space left on device: less than one 8 MB log segment free (" + space + ")";
    } else {
        last_error_.clear();
    }
}

void Node::fill_status(StatusData& s) {
    s.id = id_;
    s.address = address_;
    s.state = raft_state(&raft_);
    s.term = raft_.current_term;
    raft_id lid = 0;
    const char* laddr = nullptr;
    raft_leader(&raft_, &lid, &laddr);
    s.leader_id = lid;
    s.leader_address = laddr ? laddr : "";
    s.transferee = s.state == RAFT_LEADER ? raft_transferee(&raft_) : 0;
    s.commit_index = raft_.commit_index;
    s.last_applied = raft_last_applied(&raft_);
    s.last_log_index = raft_last_index(&raft_);
    s.snapshot_index = std::max<uint64_t>(last_snapshot_index_, compat::snapshot_index(&raft_));
    s.snapshot_term = compat::snapshot_term(&raft_);
    s.snapshot_store_index = last_snapshot_store_;
    s.fresh_store_snapshots = fresh_requests_;
    s.snapshot_trailing = last_snapshot_trailing_;
    {
        std::lock_guard<std::mutex> g(snap_mu_);
        s.store_snapshot_index = base_index_;
        s.tail_entries = tail_.size();
    }
    s.apply_queue = applyq_.size();
    s.off_loop_callbacks = off_loop_callbacks_.load();
    s.last_error = last_error_;
    s.deferred_installs = deferred_installs_;
    s.relaxed_votes = relaxed_votes_;
    s.pre_vote_tie_refusals = pre_vote_tie_refusals_;
    s.timeouts_now_retried = timeouts_now_retried_;
    s.early_campaigns = early_campaigns_;
    s.pre_vote_retries = pre_vote_retries_;
    s.leader_closes = leader_closes_;
    s.leaders_gone = leaders_gone_;
    s.fast_elections = fast_elections_;
    for (int i = 0; i < 3; i++) s.fast_timeline[i] = fast_timeline_[i];
    s.priority = opts_.priority;
    s.commit_clamps = commit_clamps_;
    s.mislabeled_snapshots = mislabeled_snapshots_;
    s.halted = halted();
    s.halted_refused_votes = halted_refused_votes_;
    s.halted_dropped = halted_dropped_;
    s.snapshot_taking = compat::snapshot_taking(&raft_);
    if (opts_.authenticated()) {
        struct bknr_auth_stats a;
        bknr_auth_transport_stats(&transport_, &a);
        s.auth = true;
        s.tls = !opts_.tls_cert.empty();
        uint64_t v[7] = {a.accepted, a.connected, a.refused_in, a.refused_out, a.timeouts, a.cert_rejected,
                         a.closed_by_peer};
        for (int i = 0; i < 7; i++) s.auth_stats[i] = v[i];
    }
    if (s.state == RAFT_FOLLOWER) s.election_timer_ms = raft_.follower_state.randomized_election_timeout;
    if (s.state == RAFT_CANDIDATE) s.election_timer_ms = raft_.candidate_state.randomized_election_timeout;
    if (s.state == RAFT_FOLLOWER && lid != 0) {
        // libraft restarts the election timer on every AppendEntries/InstallSnapshot from
        // the leader, so this is the current heartbeat gap as the follower sees it.
        raft_time now = io_.time(&io_);
        s.leader_contact_ms = now > raft_.election_timer_start ? now - raft_.election_timer_start : 0;
    }
    for (unsigned i = 0; i < raft_.configuration.n; i++) {
        const auto& sv = raft_.configuration.servers[i];
        s.configuration.push_back({sv.id, sv.address ? sv.address : "", sv.role});
        if (s.state == RAFT_LEADER && sv.id != id_) {
            raft_index m = 0;
            if (raft_match_index(&raft_, sv.id, &m) == 0) s.followers.emplace_back(sv.id, m);
        }
    }
}

}  // namespace bknr
