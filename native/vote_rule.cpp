// The vote rule of the Raft thesis (§4.2.3), which libraft 0.22.1 applies too strictly.
//
// The thesis: a server ignores a RequestVote "within the minimum election timeout of hearing
// from a current leader" (so a removed or flapping server cannot disrupt a healthy cluster).
// libraft rejects every RequestVote while a follower still *names* a leader, and a follower
// forgets its leader only when its own randomised timer (uniform in [T, 2T]) fires. After a
// leader crash the first candidate therefore waits for the slowest survivor's timer: the
// election ends near max(T1, T2) instead of min(T1, T2), ~60 ms later on average at T = 200 ms
// (docs/failover.md). We restore the thesis rule: once this follower has heard nothing from
// its leader for a full minimum election timeout, an incoming (pre-)vote request is marked
// `disrupt_leader`, which makes libraft skip only the "has a leader" check; term, log
// up-to-dateness and one-vote-per-term are checked as before, so safety is unchanged.
//
// Second half: when that candidate's log is *behind* ours, we will refuse it (log
// up-to-dateness), and libraft would make the cluster wait for our own timer. Since the leader
// has been silent for a full election timeout and a peer noticed too, we let our election timer
// expire now instead, so this node campaigns at its next tick (<= heartbeat interval) with
// the longer log. Loop thread only (called from the receive hook in install_guard.cpp).
#include "node.hpp"

namespace bknr {

void Node::apply_vote_rule(struct raft_message* msg) {
    if (msg->type != RAFT_REQUEST_VOTE || msg->request_vote.disrupt_leader) return;
    if (raft_.state != RAFT_FOLLOWER || raft_.follower_state.current_leader.id == 0) return;
    raft_time now = io_.time(&io_);
    if (now < raft_.election_timer_start + raft_.election_timeout) return;  // leader heard recently
    msg->request_vote.disrupt_leader = true;
    relaxed_votes_++;

    raft_index last = raft_last_index(&raft_);
    raft_term last_term = compat::term_of(&raft_, last);
    if (last_term == 0) return;  // unknown here (older libraft): leave the timer alone
    const struct raft_request_vote& v = msg->request_vote;
    bool candidate_behind = v.last_log_term < last_term ||
                            (v.last_log_term == last_term && v.last_log_index < last);
    if (!candidate_behind) return;
    // The timer started at election_timer_start and has run >= election_timeout already.
    raft_.follower_state.randomized_election_timeout = raft_.election_timeout;
    early_campaigns_++;
}

}  // namespace bknr
