// Elections after a crash: the vote rule of the Raft thesis (§4.2.3), which libraft 0.22.1
// applies too strictly, and a quick retry of a pre-vote round that went unanswered.
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
//
// Third, the pre-vote retry (called from the tick hook). libraft's TCP client never reads from
// its outgoing connections, so it does not notice when the peer at the other end restarts: the
// first message written after that goes into a dead socket and is lost without an error (the
// write after it fails and reconnects). Followers never write to each other, so after a failover
// drill restarted a node, the other follower's connection to it stays stale until the next
// election -- whose first pre-vote request or answer is then lost, and libraft re-sends only
// when the candidate timer fires, a whole election timeout (T..2T) later. Measured in
// `failover --drill` traces: 4 of 10 rounds lost their first pre-vote round that way, one
// round took 725 ms. A pre-vote round changes no state anywhere (no term bump, no vote
// persisted), so we re-run it on every tick (one heartbeat interval) until it succeeds or the
// candidate timer fires. A pre-vote answer takes a round trip without any disk write, far less
// than a heartbeat interval; a stale connection costs two lost writes (the second one fails and
// reconnects), so the election ends about two heartbeats late instead of T..2T late.
//
// Fourth, a fresh follower timer per term. libraft draws a follower's randomised timeout only
// when it stops being candidate or leader (and when the timer fires), not when the term or the
// leader changes: a node that stays follower keeps one draw across every election. Failover
// picks the survivors with low draws: the node with the lowest timer campaigns first, becomes
// leader, and is the next one a drill kills; the survivor with a high draw keeps it. Elections
// then waited on average for one fresh draw (mean 1.5 T) instead of the earlier of two
// (1.33 T); traced drills found the first candidate at +323 ms on average (T = 200 ms) where
// 277 ms was expected. We draw a new timeout, uniform in [T, 2T], whenever a follower sees a
// new term (as etcd's raft does on every becomeFollower).
#include "node.hpp"

namespace bknr {

// True when the candidate's log is behind ours (it cannot get our vote); false when it is not,
// or when this libraft cannot tell us our last term.
bool Node::candidate_behind(const struct raft_request_vote& v) {
    raft_index last = raft_last_index(&raft_);
    raft_term last_term = compat::term_of(&raft_, last);
    if (last_term == 0) return false;
    return v.last_log_term < last_term || (v.last_log_term == last_term && v.last_log_index < last);
}

bool Node::same_last_entry(const struct raft_request_vote& v) {
    raft_index last = raft_last_index(&raft_);
    return v.last_log_index == last && v.last_log_term == compat::term_of(&raft_, last);
}

void Node::apply_vote_rule(struct raft_message* msg) {
    if (msg->type != RAFT_REQUEST_VOTE) return;
    const struct raft_request_vote& v = msg->request_vote;
    if (v.pre_vote && raft_.state == RAFT_CANDIDATE && raft_.candidate_state.in_pre_vote &&
        !candidate_behind(v)) {
        // Two pre-vote candidates with the same log would each grant the other and enter the
        // real election together: each votes for itself there and the vote splits (traced:
        // one node's head start fired while the other's request sat unread in its socket,
        // a 446 ms kill round). Between equal logs the lower node id goes on; the other one
        // refuses its rival's pre-vote, which changes no state (no term, no vote recorded). The
        // node id, not the priority, decides: ids are the same in every node's configuration,
        // so two candidates can never both refuse each other.
        // Bounded: for one election timeout after the first such refusal in a term, then we
        // grant as libraft would (a one-way link must not keep both candidates stuck).
        raft_time now = io_.time(&io_);
        if (tie_term_ != raft_.current_term) {
            tie_term_ = raft_.current_term;
            tie_since_ = now;
        }
        if (v.candidate_id > id_ && same_last_entry(v) && now - tie_since_ < raft_.election_timeout) {
            msg->request_vote.last_log_index = 0;  // "your log is behind mine": refused
            msg->request_vote.last_log_term = 0;
            pre_vote_tie_refusals_++;
            trace_election("pre-vote from %llu refused: equal logs, lower id goes first",
                           (unsigned long long)v.candidate_id);
            // That rival is campaigning, so it will grant our pre-vote now (it may have refused
            // our first round, having heard the leader a moment longer): ask again at once
            // rather than at the next tick.
            retry_pre_vote_soon();
            return;
        }
        rival_pre_vote_ = true;  // a rival we grant: see retry_pre_vote
    }
    trace_election("%svote request from %llu (term %llu, last %llu/%llu)%s", v.pre_vote ? "pre-" : "",
                   (unsigned long long)v.candidate_id, (unsigned long long)v.term,
                   (unsigned long long)v.last_log_index, (unsigned long long)v.last_log_term,
                   v.disrupt_leader ? " disrupt" : "");
    if (v.disrupt_leader) return;
    // A follower that saw its leader's process die (fast_election.cpp) answers at once.
    if (leader_known_dead()) {
        msg->request_vote.disrupt_leader = true;
        relaxed_votes_++;
        note_vote_request(candidate_behind(v));
        return;
    }
    if (raft_.state != RAFT_FOLLOWER || raft_.follower_state.current_leader.id == 0) return;
    raft_time now = io_.time(&io_);
    if (now < raft_.election_timer_start + raft_.election_timeout) {  // leader heard recently
        refused_vote_at_ = now;  // fast_election.cpp: the candidate may be waiting on us
        trace_election("refused: leader %llu heard %llu ms ago", (unsigned long long)raft_.follower_state.current_leader.id,
                       (unsigned long long)(now - raft_.election_timer_start));
        return;
    }
    msg->request_vote.disrupt_leader = true;
    relaxed_votes_++;
    if (!candidate_behind(v)) return;
    // The timer started at election_timer_start and has run >= election_timeout already.
    raft_.follower_state.randomized_election_timeout = raft_.election_timeout;
    early_campaigns_++;
}

void Node::retry_pre_vote() {
    if (raft_.state != RAFT_CANDIDATE) rival_pre_vote_ = false;
    if (raft_.state != RAFT_CANDIDATE || !raft_.candidate_state.in_pre_vote) return;
    // Another candidate whose log is as long as ours asked us for a pre-vote meanwhile (libraft
    // grants it): let it go ahead. Re-running our own round now would pass too, and two
    // candidates entering the real election together split the vote (observed: a 920 ms gap).
    // A rival with a shorter log cannot win, so we keep retrying then (observed: a candidate
    // that yielded to it waited 350 ms for its own timer).
    if (rival_pre_vote_) return;
    raft_time now = io_.time(&io_);
    raft_time waited = now > raft_.election_timer_start ? now - raft_.election_timer_start : 0;
    if (waited < (raft_time)raft_.heartbeat_timeout) return;
    if (waited >= raft_.candidate_state.randomized_election_timeout) return;  // libraft re-runs it now
    trace_election("pre-vote retry after %llu ms", (unsigned long long)waited);
    // Let the candidate timer expire on this tick: libraft's electionStart re-sends the
    // pre-vote requests (still no term bump) and draws a new timer, which we cut short again.
    raft_.candidate_state.randomized_election_timeout = (unsigned)waited;
    pre_vote_retries_++;
}

void Node::retry_pre_vote_soon() {
    if (!election_timers_) return;
    uv_timer_start(&head_timer_, [](uv_timer_t* t) {  // not inside the receive hook
        Node* n = static_cast<Node*>(t->data);
        if (n->closing_ || n->raft_.state != RAFT_CANDIDATE || !n->raft_.candidate_state.in_pre_vote)
            return;
        raft_time now = n->io_.time(&n->io_);
        raft_time waited = now > n->raft_.election_timer_start ? now - n->raft_.election_timer_start : 0;
        n->raft_.candidate_state.randomized_election_timeout = (unsigned)waited;
        n->pre_vote_retries_++;
        n->trace_election("pre-vote retry now");
        n->legacy_tick_(&n->io_);  // the candidate timer has expired: libraft re-sends the pre-vote
    }, 0, 0);
}

void Node::redraw_election_timer() {
    if (raft_.current_term == timer_term_) return;
    timer_term_ = raft_.current_term;
    if (raft_.state != RAFT_FOLLOWER) return;  // a candidate has just drawn; a leader has none
    unsigned lo, hi;
    election_range(lo, hi);  // fast_election.cpp: this node's band, in head-start order
    std::uniform_int_distribution<unsigned> draw(lo, hi);
    raft_.follower_state.randomized_election_timeout = draw(timer_rng_);
}

}  // namespace bknr
