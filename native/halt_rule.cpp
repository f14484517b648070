// A halted replica never leads (cluster/DESIGN.md, "Halting a replica").
//
// The Python applier halts when it meets a committed entry it cannot apply the way the other
// replicas did (a transaction its store definition does not know, a record its codec cannot
// decode, a snapshot holding objects of an unknown class) or when its state digest disagrees
// with the majority's at a consistency checkpoint. From then on its store lacks committed
// transactions (or holds wrong ones). It calls RaftNode.set_halted(true), and this file makes
// sure such a node can never become leader:
//
//   * it never starts an election: on every tick its election timer is restarted (followers
//     and candidates), so libraft's own timer never fires, and the pre-vote retry and the
//     per-term redraw (vote_rule.cpp) are skipped;
//   * it grants no (pre-)vote: an incoming RequestVote is made to look as if the candidate's
//     log were empty, so libraft's up-to-date check refuses it and answers "not granted"
//     (term handling, including stepping down for a higher term, is libraft's as usual); the
//     thesis vote rule (vote_rule.cpp) is not applied;
//   * a vote it may still be waiting for (it was a candidate when it halted) is dropped, so it
//     cannot win that election;
//   * it ignores TimeoutNow, so a leadership transfer cannot make it campaign.
//
// Everything else is unchanged: it still accepts AppendEntries and InstallSnapshot, stores the
// log (and counts for commit), and answers heartbeats. A halted *leader* is asked by Python to
// transfer leadership away (admin.py). The flag is an atomic written by Python (no GIL, no
// request round trip) and read on the loop thread only here and by fill_status.
#include "node.hpp"

namespace bknr {

void Node::set_halted(bool on) {
    halted_.store(on);
    may_campaign_.store(!on);  // fast_election.cpp: no early election (head start) either
}

bool Node::halted_recv(struct raft_message* msg) {
    switch (msg->type) {
        case RAFT_REQUEST_VOTE:
            msg->request_vote.last_log_index = 0;  // "your log is behind mine": not granted
            msg->request_vote.last_log_term = 0;
            msg->request_vote.disrupt_leader = false;
            halted_refused_votes_++;
            return false;
        case RAFT_REQUEST_VOTE_RESULT:
        case RAFT_TIMEOUT_NOW:
            halted_dropped_++;  // neither carries buffers: nothing to free
            return true;
        default:
            return false;
    }
}

void Node::halted_tick() {
    if (raft_.state == RAFT_FOLLOWER || raft_.state == RAFT_CANDIDATE)
        raft_.election_timer_start = io_.time(&io_);
}

}  // namespace bknr
