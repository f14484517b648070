// Elections at once when the leader's *process* is gone, and the election timer ranges.
//
// Most leader failures are a process that dies on a machine whose kernel stays up: that kernel
// closes the dead process's sockets at once, so a follower's incoming stream from the leader
// (libraft's leader connects to each follower and sends AppendEntries on that stream) reads EOF
// or ECONNRESET within a millisecond. libraft only tears the stream down; the follower keeps
// waiting for its election timer. Here (loop thread only):
//
// 1. Watch. We wrap the transport's `listen` (stock raft_uv_tcp and the authenticated one alike:
//    both hand libraft each accepted stream through the accept callback we wrap). Once libraft's
//    accept callback has started reading (uv_recv.c starts exactly once per stream), we put our
//    read callback in front of libraft's; it calls libraft's and, on a negative read (EOF, reset),
//    reports which peer's stream closed.
// 2. Confirm. A close alone proves nothing (a leader reconnecting closes its old stream too), so
//    when the closed stream was our current leader's we connect() to the leader's raft address:
//    ECONNREFUSED means no process listens there any more; so does a reset of our connection by
//    the listener (the dying process closed it with our connection in its queue). Anything else
//    (connected and kept: the leader is alive; timeout or unreachable: not a process death)
//    leaves the timer path alone.
// 3. Head start. Surviving followers all confirm within a millisecond, and campaigning together
//    would split the vote, so each waits a short delay ordered by (priority desc, node id asc)
//    among the voters that could lead, a follower whose log ends below the commit index it knows
//    going after all others: 1 ms + position x step (step = heartbeat / 2, at least 2 ms). When
//    it fires and nobody has asked us for a vote we would grant meanwhile, the follower lets its
//    election timer expire and runs libraft's tick now: libraft starts the pre-vote as if the
//    timer had fired. A priority -1 node never takes this head start (it campaigns only on its
//    timer, or when the candidate in front of it has a shorter log: vote_rule.cpp).
// 4. Grant. A follower that confirmed its leader gone lets (pre-)vote requests through at once
//    (vote_rule.cpp marks them disrupt_leader); term, log and one-vote-per-term checks stay.
//    A follower that did NOT see the leader die (it still hears it) refuses as before, so a live
//    leader that closed one connection cannot be deposed: the candidate never gets a majority.
// Any AppendEntries or InstallSnapshot received (a leader is alive) clears the confirmation.
//
// Election timer bands (the timeout path: SIGSTOP, partitions, powered-off hosts): libraft
// draws a follower's timeout uniformly in [T, 2T], so the first of two survivors fires at
// T + T/3 on average and at 2T at worst, and two that fire within a round trip of each other
// split the vote. We give each follower a band in the same order as the head start:
// [T + T/5 + p x step, + step/2] ms for position p (step = heartbeat / 2), drawn anew every term
// and whenever libraft draws outside it. The best-placed survivor fires 1.2T after its last
// heartbeat and the next one step later, so their pre-votes never cross; a priority -1 node's
// band lies after every better node's. Candidates keep libraft's random [T, 2T].
#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <unordered_map>

#include "node.hpp"

namespace bknr {

namespace {

// Which Node owns a transport (libraft takes transport->data for itself) and which peer an
// accepted stream comes from. Several engines can share a process (tests), each on its own
// loop thread, hence the lock; entries are touched once per connection, never per message.
std::mutex g_watch_mu;
std::unordered_map<const struct raft_uv_transport*, Node*> g_transports;
struct Watched {
    Node* node;
    uint64_t peer;
    uv_read_cb raft_read;
};
std::unordered_map<const uv_stream_t*, Watched> g_streams;
std::atomic<uv_read_cb> g_raft_read{nullptr};  // libraft has one read callback (uv_recv.c)

Node* node_of(const struct raft_uv_transport* t) {
    std::lock_guard<std::mutex> g(g_watch_mu);
    auto it = g_transports.find(t);
    return it == g_transports.end() ? nullptr : it->second;
}

void watched_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
    Watched w{};
    {
        std::lock_guard<std::mutex> g(g_watch_mu);
        auto it = g_streams.find(s);
        if (it == g_streams.end()) {  // cannot happen: we only swap registered streams
            g_raft_read.load()(s, nread, buf);
            return;
        }
        w = it->second;
        if (nread < 0) g_streams.erase(it);  // libraft closes the stream now
    }
    w.raft_read(s, nread, buf);
    if (nread < 0) w.node->on_peer_stream_closed(w.peer);
}

void watch_accepted(struct raft_uv_transport* t, raft_id id, const char* address, struct uv_stream_s* s) {
    Node* n = node_of(t);
    n->raft_accept_cb_(t, id, address, s);
    // libraft's accept callback started reading (uv_read_start) unless it failed and closed it.
    if (s->read_cb == nullptr || uv_is_closing(reinterpret_cast<uv_handle_t*>(s))) return;
    {
        std::lock_guard<std::mutex> g(g_watch_mu);
        g_streams[s] = Watched{n, id, s->read_cb};
    }
    g_raft_read.store(s->read_cb);
    s->read_cb = watched_read;
}

int watch_listen(struct raft_uv_transport* t, raft_uv_accept_cb cb) {
    Node* n = node_of(t);
    n->raft_accept_cb_ = cb;
    return n->orig_listen_(t, watch_accepted);
}

void probe_closed(uv_handle_t* h) {
    Node* n = static_cast<Node*>(h->data);
    n->probe_open_ = false;
    if (n->probe_retry_) {
        n->probe_retry_ = false;
        n->start_probe_attempt();
    }
}

void end_probe(Node* n) {
    if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&n->probe_timer_))) uv_timer_stop(&n->probe_timer_);
    if (n->probe_open_ && !uv_is_closing(reinterpret_cast<uv_handle_t*>(&n->probe_tcp_)))
        uv_close(reinterpret_cast<uv_handle_t*>(&n->probe_tcp_), probe_closed);
}

void probe_alloc(uv_handle_t*, size_t, uv_buf_t* buf) {
    static char sink[64];  // whatever a live listener sends first is not looked at
    *buf = uv_buf_init(sink, sizeof sink);
}

void probe_read(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
    Node* n = static_cast<Node*>(s->data);
    if (nread == 0) return;
    // Reset or closed right after the handshake: the dying process's listener was closed
    // with our connection still in its accept queue. A live listener keeps it open.
    n->on_probe_done(nread < 0 ? UV_ECONNREFUSED : 0);
    end_probe(n);
}

void probe_connected(uv_connect_t* req, int status) {
    Node* n = static_cast<Node*>(req->data);
    if (n->probe_retry_) return;  // cancelled by us: the next connect() follows (probe_closed)
    if (status != 0 || n->closing_) {
        n->on_probe_done(status);
        end_probe(n);
        return;
    }
    // Connected. A process being killed closes its sockets one by one, so our connect() can
    // still be completed by the kernel for a listener that is about to close: it resets the
    // connection when it does. Wait for that before calling the leader alive.
    uv_read_start(reinterpret_cast<uv_stream_t*>(&n->probe_tcp_), probe_alloc, probe_read);
    uv_timer_start(&n->probe_timer_, [](uv_timer_t* t) {
        Node* node = static_cast<Node*>(t->data);
        node->on_probe_done(0);
        end_probe(node);
    }, n->probe_settle_ms(), 0);
}

// A do-nothing message (an AppendEntries result for term 0: every receiver drops a message of
// an older term) sent through libraft's own client to a peer, to flush a stale connection.
struct FlushPing {
    struct raft_io_send req;
};
void flush_sent(struct raft_io_send* req, int) { delete static_cast<FlushPing*>(req->data); }

}  // namespace

void Node::trace_election(const char* fmt, ...) {
    // A diagnosis aid (why an election did or did not start early): CLOCK_MONOTONIC ms, which
    // the drill's time.monotonic() shares, so node lines and client samples line up.
    if (!trace_election_) return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    static const char* states = "?FCL";
    std::fprintf(stderr, "bknr-election[node %llu] %.1f %c term %llu: %s\n", (unsigned long long)id_,
                 ts.tv_sec * 1e3 + ts.tv_nsec / 1e6, raft_.state <= 3 ? states[raft_.state] : '?',
                 (unsigned long long)raft_.current_term, msg);
}

void Node::send_flush_ping(uint64_t peer) {
    const char* address = nullptr;
    for (unsigned i = 0; i < raft_.configuration.n; i++)
        if (raft_.configuration.servers[i].id == peer) address = raft_.configuration.servers[i].address;
    if (address == nullptr || peer == id_ || closing_) return;
    struct raft_message m;
    std::memset(&m, 0, sizeof m);
    m.type = RAFT_APPEND_ENTRIES_RESULT;
    m.server_id = peer;
    m.server_address = address;
    auto* p = new FlushPing;
    p->req.data = p;
    if (io_.send(&io_, &p->req, &m, flush_sent) != 0) delete p;
}

void Node::flush_stale_connection(uint64_t peer) {
    // The peer's stream to us closed: its process died or restarted, so libraft's connection
    // to it is probably dead too, and libraft only notices when a write fails -- the write
    // before that one is lost without an error (vote_rule.cpp, "pre-vote retry"). Spend those
    // two writes now on do-nothing messages instead of on the next election's: the first
    // draws the peer kernel's reset, the second then fails and makes libraft reconnect.
    send_flush_ping(peer);
    flush_peers_.push_back(peer);
    uv_timer_start(&flush_timer_, [](uv_timer_t* t) {
        Node* n = static_cast<Node*>(t->data);
        std::vector<uint64_t> peers;
        peers.swap(n->flush_peers_);
        for (uint64_t id : peers) n->send_flush_ping(id);
    }, std::max(2u, opts_.heartbeat_ms / 8), 0);  // a reset takes one round trip to come back
}

void Node::install_stream_watch() {
    {
        std::lock_guard<std::mutex> g(g_watch_mu);
        g_transports[&transport_] = this;
    }
    orig_listen_ = transport_.listen;
    transport_.listen = watch_listen;
}

void Node::remove_stream_watch() {
    std::lock_guard<std::mutex> g(g_watch_mu);
    g_transports.erase(&transport_);
    for (auto it = g_streams.begin(); it != g_streams.end();)
        it = it->second.node == this ? g_streams.erase(it) : std::next(it);
}

bool Node::may_campaign() const {
    // The engine-level predicate every early campaign consults (head start, shorter-log rival).
    // Issue 13's "halted" replica (neither campaigns nor grants votes) clears may_campaign_.
    return may_campaign_.load(std::memory_order_relaxed);
}

int Node::priority_of(uint64_t id) const {
    if (id == id_) return opts_.priority;
    for (const auto& [peer, prio] : opts_.peer_priorities)
        if (peer == id) return prio;
    return 0;
}

unsigned Node::election_step() const { return std::max(2u, opts_.heartbeat_ms / 2); }

// Our place among the voters that could lead once `leader` is gone: priority (higher first),
// then node id; a log ending below the commit index we know puts us after all of them.
unsigned Node::election_position(uint64_t leader) {
    unsigned position = 0, voters = 0;
    int mine = opts_.priority;
    for (unsigned i = 0; i < raft_.configuration.n; i++) {
        const auto& sv = raft_.configuration.servers[i];
        if (sv.role != RAFT_VOTER || sv.id == leader) continue;
        voters++;
        int theirs = priority_of(sv.id);
        if (sv.id != id_ && (theirs > mine || (theirs == mine && sv.id < id_))) position++;
    }
    if (raft_last_index(&raft_) < raft_.commit_index) position += voters;
    return position;
}

unsigned Node::head_start_ms() { return 1 + election_position(gone_leader_) * election_step(); }

void Node::ensure_election_timers() {
    if (election_timers_) return;
    uv_timer_init(&loop_, &head_timer_);
    head_timer_.data = this;
    uv_timer_init(&loop_, &probe_timer_);
    probe_timer_.data = this;
    uv_timer_init(&loop_, &flush_timer_);
    flush_timer_.data = this;
    election_timers_ = true;
}

void Node::close_election_timers() {
    if (probe_open_ && !uv_is_closing(reinterpret_cast<uv_handle_t*>(&probe_tcp_)))
        uv_close(reinterpret_cast<uv_handle_t*>(&probe_tcp_), probe_closed);
    if (!election_timers_) return;
    election_timers_ = false;
    uv_close(reinterpret_cast<uv_handle_t*>(&head_timer_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&probe_timer_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&flush_timer_), nullptr);
}

void Node::on_peer_stream_closed(uint64_t peer) {
    if (closing_ || peer == 0) return;
    ensure_election_timers();
    flush_stale_connection(peer);
    trace_election("stream from %llu closed (leader %llu)", (unsigned long long)peer,
                   raft_.state == RAFT_FOLLOWER ? (unsigned long long)raft_.follower_state.current_leader.id : 0ULL);
    if (raft_.state != RAFT_FOLLOWER) return;
    if (raft_.follower_state.current_leader.id != peer) return;
    leader_closes_++;
    closed_at_ = uv_now(&loop_);
    const char* address = raft_.follower_state.current_leader.address;
    if (probe_open_ || address == nullptr) {  // one probe at a time
        trace_election("no probe: %s", probe_open_ ? "one is open" : "no address");
        return;
    }
    std::string a(address);
    size_t colon = a.rfind(':');
    if (colon == std::string::npos) return;
    struct sockaddr_in dest;
    if (uv_ip4_addr(a.substr(0, colon).c_str(), std::atoi(a.c_str() + colon + 1), &dest) != 0)
        return;  // a host name: no probe (resolving it would block the loop); timer path
    probe_dest_ = dest;
    probing_ = peer;
    probing_term_ = raft_.current_term;
    probe_started_ = uv_now(&loop_);
    probe_attempts_ = 0;
    start_probe_attempt();
}

// One connect() of the probe. A SYN that reaches a dying process's listener while the kernel
// tears it down can be dropped without an answer (traced: 2 of 15 kill rounds, the probe then
// hung until its deadline and that follower refused the candidate for the whole election
// timeout): the client would only resend it after TCP's initial 1 s. A connect() to a live
// loopback or LAN listener completes within a round trip, so one still pending after a
// quarter heartbeat is dropped and started again: a fresh SYN to a closed port is refused at
// once. A host that stopped answering (partition) leaves every connect() pending: give up after
// one election timeout, the timer path is as quick by then.
void Node::start_probe_attempt() {
    if (closing_ || !election_timers_ || raft_.state != RAFT_FOLLOWER ||
        raft_.current_term != probing_term_ || raft_.follower_state.current_leader.id != probing_)
        return;  // the leader changed or spoke meanwhile: nothing left to confirm
    uv_tcp_init(&loop_, &probe_tcp_);
    probe_tcp_.data = this;
    probe_req_.data = this;
    probe_open_ = true;
    probe_attempts_++;
    if (uv_tcp_connect(&probe_req_, &probe_tcp_, reinterpret_cast<const sockaddr*>(&probe_dest_),
                       probe_connected) != 0) {
        end_probe(this);
        return;
    }
    uv_timer_start(&probe_timer_, [](uv_timer_t* t) {
        Node* n = static_cast<Node*>(t->data);
        uint64_t spent = uv_now(&n->loop_) - n->probe_started_;
        if (spent + n->probe_retry_ms() < n->opts_.election_timeout_ms) {
            n->probe_retry_ = true;  // probe_closed starts the next attempt
            n->trace_election("probe attempt %u pending after %u ms: again", n->probe_attempts_,
                              n->probe_retry_ms());
        }
        end_probe(n);  // closing the handle cancels the pending connect()
    }, probe_retry_ms(), 0);
}

unsigned Node::probe_retry_ms() const { return std::max(2u, opts_.heartbeat_ms / 4); }

// A dying process closes its sockets one by one, and a loaded machine can preempt it in between:
// the reset of a connection its listener had queued may come many milliseconds after the
// stream's EOF. A live leader keeps the probe connection open, so waiting costs nothing there.
unsigned Node::probe_settle_ms() const { return opts_.election_timeout_ms; }

void Node::on_probe_done(int status) {
    trace_election("probe of %llu: %s, %llu ms after the close, attempt %u", (unsigned long long)probing_,
                   status == 0 ? "alive" : uv_err_name(status), (unsigned long long)(uv_now(&loop_) - closed_at_),
                   probe_attempts_);
    // A connect() reset during the handshake is the listener closing with our SYN queued (seen in
    // a traced kill round: that follower then refused the candidate until its timer fired,
    // 227 ms); a live listener never resets a connection it is accepting.
    const bool gone = status == UV_ECONNREFUSED || status == UV_ECONNRESET;
    if (closing_ || !gone) return;  // alive, cancelled, or not a process death
    if (raft_.state != RAFT_FOLLOWER || raft_.current_term != probing_term_ ||
        raft_.follower_state.current_leader.id != probing_) {
        trace_election("leader changed meanwhile (leader %llu)",
                       (unsigned long long)raft_.follower_state.current_leader.id);
        return;
    }
    gone_leader_ = probing_;
    gone_term_ = probing_term_;
    gone_at_ = uv_now(&loop_);
    rival_granted_ = false;
    leaders_gone_++;
    if (!may_campaign() || opts_.priority < 0) return;
    // A candidate asked us before we knew (its head start beat our probe) and we refused: it
    // now waits for its pre-vote retry, a tick away. Campaign at once instead; it grants our
    // pre-vote as a rival with a log as long as its own, or we refuse each other on logs and
    // the longer one wins.
    raft_time now = io_.time(&io_);
    bool refused = refused_vote_at_ != 0 && now - refused_vote_at_ < raft_.election_timeout;
    trace_election("leader %llu gone: head start %u ms%s", (unsigned long long)gone_leader_,
                   refused ? 0 : head_start_ms(), refused ? " (refused a candidate)" : "");
    uv_timer_start(&head_timer_, [](uv_timer_t* t) {
        static_cast<Node*>(t->data)->on_head_start();
    }, refused ? 0 : head_start_ms(), 0);
}

bool Node::leader_known_dead() const {
    return gone_leader_ != 0 && raft_.state == RAFT_FOLLOWER && raft_.current_term == gone_term_ &&
           (raft_.follower_state.current_leader.id == gone_leader_ ||
            raft_.follower_state.current_leader.id == 0);
}

void Node::note_vote_request(bool candidate_behind) {
    if (!candidate_behind) {
        rival_granted_ = true;  // it goes first; our own head start would split the vote
        return;
    }
    // It cannot win against our log: campaign now rather than after our head start. Not
    // inside the receive hook (libraft has yet to handle the request): on the next loop turn.
    if (election_timers_ && may_campaign())
        uv_timer_start(&head_timer_, [](uv_timer_t* t) {
            static_cast<Node*>(t->data)->on_head_start();
        }, 0, 0);
}

void Node::on_head_start() {
    if (closing_ || !leader_known_dead() || rival_granted_) {
        trace_election("head start dropped: %s", closing_ ? "closing" : rival_granted_ ? "a rival went first"
                                                                    : "leader no longer known dead");
        return;
    }
    // A priority -1 node comes here only when a candidate with a shorter log asked us: then
    // no better node can win, so it campaigns.
    if (!may_campaign()) return;
    raft_time now = io_.time(&io_);
    raft_time waited = now > raft_.election_timer_start ? now - raft_.election_timer_start : 0;
    raft_.follower_state.randomized_election_timeout = static_cast<unsigned>(waited);
    fast_elections_++;
    campaign_at_ = uv_now(&loop_);
    trace_election("head start: campaign");
    legacy_tick_(&io_);  // libraft's tick: the timer has expired, it starts the (pre-)vote
}

void Node::note_election_won() {
    // Called from the check phase: the last fast election's steps, for status and the docs.
    if (raft_.state == RAFT_LEADER && traced_state_ != RAFT_LEADER) trace_election("leading");
    traced_state_ = raft_.state;
    if (campaign_at_ == 0 || raft_.state != RAFT_LEADER) return;
    uint64_t now = uv_now(&loop_);
    fast_timeline_[0] = gone_at_ >= closed_at_ ? gone_at_ - closed_at_ : 0;
    fast_timeline_[1] = campaign_at_ >= gone_at_ ? campaign_at_ - gone_at_ : 0;
    fast_timeline_[2] = now - campaign_at_;
    campaign_at_ = 0;
}

void Node::heard_from_leader() {
    if (gone_leader_ == 0) return;
    gone_leader_ = 0;
    if (election_timers_) uv_timer_stop(&head_timer_);
}

void Node::election_range(unsigned& lo, unsigned& hi) {
    unsigned t = raft_.election_timeout, step = election_step();
    uint64_t leader = raft_.state == RAFT_FOLLOWER ? raft_.follower_state.current_leader.id : 0;
    // T/5 past T: a leader whose loop thread was not scheduled for a little more than T (an
    // overloaded machine) is not deposed at once (the steady run saw such gaps), and the
    // follower that grants us has not heard the leader for T either (thesis rule).
    lo = std::min(t + t / 5 + election_position(leader) * step, 2 * t - step / 2);
    hi = lo + step / 2;
}

void Node::keep_timer_in_range() {
    if (raft_.state != RAFT_FOLLOWER) return;
    unsigned lo, hi;
    election_range(lo, hi);
    unsigned& cur = raft_.follower_state.randomized_election_timeout;
    // Our own deliberate expiries (head start, early campaign) are below lo and are consumed by
    // the tick that follows them; anything else outside the range is one of libraft's [T, 2T]
    // draws. Redrawing only those keeps the result uniform in [lo, hi].
    if (cur > hi || (cur < lo && cur != raft_.election_timeout)) {
        std::uniform_int_distribution<unsigned> draw(lo, hi);
        cur = draw(timer_rng_);
    }
}

}  // namespace bknr
