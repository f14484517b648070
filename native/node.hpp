// Native Raft node: one libuv loop thread owning `struct raft` (see native/DESIGN.md).
//
// Nothing in this header touches Python: the pybind11 layer (module.cpp) wraps it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "raft_compat.hpp"
#include "signal.hpp"

namespace bknr {

// Immutable, ref-counted bytes shared between the apply queue, the snapshot tail and
// snapshot buffers handed to libraft (so one committed entry is copied exactly once).
struct Chunk {
    char* base = nullptr;
    size_t len = 0;
    bool raft_owned = false;  // adopted from libraft (raft_free) vs. our own new[]
    bool mapped = false;      // a read-only file mapping (munmap); see chunk_map_file
    Chunk() = default;
    Chunk(const Chunk&) = delete;
    Chunk& operator=(const Chunk&) = delete;
    ~Chunk();
};
using ChunkPtr = std::shared_ptr<Chunk>;
ChunkPtr chunk_copy(const void* p, size_t n);
ChunkPtr chunk_adopt(void* raft_malloced, size_t n);
// A file's contents as a chunk, mapped read-only (no copy; pages come from the page cache as
// libraft's thread pool writes them out). nullptr and `err` set on failure. Any thread.
ChunkPtr chunk_map_file(const char* path, std::string* err);

struct Slice {
    ChunkPtr chunk;
    size_t off = 0;
    size_t len = 0;
    const char* data() const { return chunk ? chunk->base + off : ""; }
};

// Entry framing. raft_uv only stores entries whose size is a multiple of 8, so every
// payload is followed by 1..8 pad bytes, the last of which holds the pad count.
inline size_t padded_size(size_t n) { return (n + 1 + 7) & ~static_cast<size_t>(7); }
inline size_t pad_entry(char* buf, size_t n) {  // buf has padded_size(n) bytes
    size_t total = padded_size(n);
    for (size_t i = n; i < total; i++) buf[i] = 0;
    buf[total - 1] = static_cast<char>(total - n);
    return total;
}
// Payload length of a framed entry, or SIZE_MAX when the framing is invalid.
inline size_t unpad_len(const char* buf, size_t n) {
    if (n == 0 || n % 8) return static_cast<size_t>(-1);
    size_t pad = static_cast<unsigned char>(buf[n - 1]);
    return pad >= 1 && pad <= 8 ? n - pad : static_cast<size_t>(-1);
}

enum ItemKind { ITEM_ENTRY = 0, ITEM_SNAPSHOT_REQUEST = 1, ITEM_RESTORE = 2 };
struct Item {
    ItemKind kind;
    uint64_t index;
    uint64_t term;
    Slice data;
    bool compressed = false;  // ITEM_RESTORE only: `data` is a zstd frame (image_codec.hpp)
};

// Outcome codes of futures; engine.py maps them onto errors.py classes.
enum Code {
    OK = 0,
    E_NOT_LEADER = 1,
    E_LEADERSHIP_LOST = 2,
    E_SHUTDOWN = 3,
    E_TOO_BIG = 4,
    E_IO = 5,
    E_MEMBERSHIP = 6,
    E_TIMEOUT = 7,
    E_ALREADY_BOOTSTRAPPED = 8,
    E_INVALID = 9,
};

struct ServerInfo {
    uint64_t id;
    std::string address;
    int role;  // RAFT_VOTER / RAFT_STANDBY / RAFT_SPARE
};

struct StatusData {
    uint64_t id = 0;
    std::string address;
    int state = RAFT_UNAVAILABLE;
    uint64_t term = 0, leader_id = 0;
    std::string leader_address;
    uint64_t transferee = 0;  // a leader handing leadership over: to whom (else 0)
    uint64_t commit_index = 0, last_applied = 0, last_log_index = 0;
    uint64_t snapshot_index = 0, snapshot_term = 0;
    uint64_t store_snapshot_index = 0;  // M of the store snapshot the engine holds
    uint64_t snapshot_store_index = 0;  // M inside the latest Raft snapshot taken or restored
    uint64_t fresh_store_snapshots = 0; // store snapshots snapshot_now() asked the applier for
    uint64_t snapshot_trailing = 0;     // log entries kept behind the latest snapshot taken
    size_t tail_entries = 0, apply_queue = 0;
    uint64_t off_loop_callbacks = 0;
    uint64_t leader_contact_ms = 0;   // follower: ms since the leader was last heard from
    uint64_t election_timer_ms = 0;   // follower/candidate: the current randomised timeout
    uint64_t deferred_installs = 0;   // InstallSnapshots held back during a local snapshot
    uint64_t relaxed_votes = 0;       // vote requests let through by the thesis rule
    uint64_t pre_vote_tie_refusals = 0;  // rival pre-votes refused on node id (equal logs)
    uint64_t timeouts_now_retried = 0;   // TimeoutNow taken on a later try (install_guard.cpp)
    uint64_t early_campaigns = 0;     // early elections against a shorter-log candidate
    uint64_t pre_vote_retries = 0;    // pre-vote rounds re-sent before the candidate timer
    uint64_t leader_closes = 0;       // follower: the leader's stream to us closed (fast_election.cpp)
    uint64_t leaders_gone = 0;        // ... and the probe of its raft port was refused or reset
    uint64_t fast_elections = 0;      // elections started by the head start, not the timer
    uint64_t fast_timeline[3] = {0, 0, 0};  // last fast election won: close->gone->campaign->leader ms
    int priority = 0;                 // leadership priority: 1 preferred, 0 none, -1 avoid
    uint64_t commit_clamps = 0;       // AppendEntries that would have lowered the commit index
    uint64_t mislabeled_snapshots = 0;  // snapshots whose contents ran past their Raft index
    bool halted = false;                // RaftNode.set_halted (halt_rule.cpp)
    uint64_t halted_refused_votes = 0, halted_dropped = 0;
    bool snapshot_taking = false;     // a local snapshot is being written
    std::string last_error;           // e.g. disk full: entries not persisted (status.cpp)
    bool auth = false;                // authenticated transport in use
    bool tls = false;                 // ... in TLS mode (tls_transport.hpp)
    // accepted, connected, refused_in/out, timeouts, cert_rejected, closed_by_peer
    uint64_t auth_stats[7] = {0, 0, 0, 0, 0, 0, 0};
    std::vector<ServerInfo> configuration;
    std::vector<std::pair<uint64_t, uint64_t>> followers;  // (id, match index), leader only
};

// A one-shot result slot. Resolved on the loop thread, waited on by Python without the GIL.
struct FutureState {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    int code = OK;
    uint64_t value = 0;
    std::string message;
    uint64_t leader_id = 0;
    std::string leader_address;
    std::shared_ptr<StatusData> status;

    void resolve(uint64_t v);
    void fail(int c, std::string msg, uint64_t lid = 0, std::string laddr = {});
    bool wait_for(double seconds);  // true once done
    bool is_done();
};
using FuturePtr = std::shared_ptr<FutureState>;

struct Options {
    unsigned election_timeout_ms = 1000;
    unsigned heartbeat_ms = 100;
    unsigned snapshot_threshold = 1024;
    unsigned snapshot_trailing = 128;
    bool pre_vote = true;
    unsigned max_inflight_entries = 8192;
    unsigned store_snapshot_every = 512;
    size_t max_entry_bytes = 64u << 20;
    // Authenticated transport (native/auth_transport.hpp, docs/security.md) when non-empty.
    std::string secret;
    unsigned auth_timeout_ms = 5000;
    // Leadership priority (1 preferred, 0 none, -1 avoid) of this node and of its peers, for
    // the election head start and timer ranges (fast_election.cpp). Unlisted peers count as 0.
    int priority = 0;
    std::vector<std::pair<uint64_t, int>> peer_priorities;
    // TLS mode of that transport (native/tls_transport.hpp) when tls_cert is non-empty: PEM
    // files of the cluster CA, this node's certificate and key. Takes precedence over secret.
    std::string tls_ca, tls_cert, tls_key;
    bool authenticated() const { return !secret.empty() || !tls_cert.empty(); }
};

// Outcome code of a synchronous libraft refusal, and its text (requests.cpp).
int code_of_sync(int rv);
std::string errtext(struct raft* r, int rv);

// R_APPLY_MANY comes last so that the values of the others stay as _raft exports them.
enum ReqType { R_APPLY, R_BARRIER, R_ADD, R_ASSIGN, R_REMOVE, R_TRANSFER, R_SNAPSHOT, R_STATUS, R_STOP,
               R_APPLY_MANY };
struct Request {
    ReqType type;
    FuturePtr fut;
    void* buf = nullptr;  // R_APPLY: raft_malloc'ed payload, owned until raft_apply accepts it
    size_t len = 0;
    // R_APPLY_MANY: raft_malloc'ed payloads, one log entry (one raft_apply) each, in order.
    std::vector<struct raft_buffer> bufs;
    void free_payloads();  // releases whatever payloads libraft has not taken (requests.cpp)
    uint64_t id = 0;
    std::string address;
    int role = 0;
    // R_SNAPSHOT: how long to wait for the applier's fresh store snapshot before falling back
    // to the latest one the engine holds (UINT64_MAX: no limit, 0: do not ask for one).
    uint64_t wait_ms = UINT64_MAX;
};

// Committed items for the Python applier, in log order.
class ApplyQueue {
public:
    // Queues without waking the applier; flush() (once per loop iteration) wakes it, so a
    // burst of commits costs one wake-up and one GIL hand-off instead of one per entry.
    void push(Item&& it);
    void flush();
    void clear();
    void close();  // no more items will ever come
    // Pops up to max_items, waiting at most `seconds` for the first one. Returns false when
    // the queue is closed and empty.
    bool pop(size_t max_items, double seconds, std::vector<Item>& out);
    size_t size();

private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<Item> q_;
    unsigned waiters_ = 0;
    bool closed_ = false;
    bool unflushed_ = false;
};

class Node {
public:
    Node(uint64_t id, std::string address, std::string dir, Options opts);
    ~Node();

    // Before start() only. They run on a short-lived loop thread of their own. 0 or a Code.
    int bootstrap(const std::vector<ServerInfo>& conf, bool recover, std::string& err);
    int start(std::string& err);
    void stop();  // idempotent; joins the loop thread
    bool running() const { return accepting_.load(); }

    FuturePtr post(Request&& r);  // any thread; fails the future with E_SHUTDOWN if not running
    ApplyQueue& queue() { return applyq_; }
    // Python hands back the store snapshot for a ("snapshot_request", M) item; `compressed`:
    // `data` is a zstd frame of it (written as snapshot format 2, fsm.cpp).
    bool store_snapshot_done(uint64_t index, ChunkPtr data, bool compressed = false);
    // Python could not produce the store snapshot for request `index` (its writer failed or
    // was killed): the request is dropped, so a later one can be made. The previous store
    // snapshot stays. False if `index` is not the outstanding request.
    bool store_snapshot_failed(uint64_t index);

    const Options& options() const { return opts_; }
    uint64_t id() const { return id_; }
    const std::string& address() const { return address_; }

    // --- loop-thread internals (public for the C callbacks in node.cpp / fsm.cpp) ---
    struct raft raft_;
    struct raft_io io_;
    struct raft_uv_transport transport_;
    struct raft_fsm fsm_;
    uv_loop_t loop_;
    uv_async_t async_;

    void on_async();
    void check_health();
    // install_guard.cpp: hold back an InstallSnapshot while a local snapshot is being taken.
    void install_recv_hook();
    void on_recv(struct raft_message* msg);
    void apply_vote_rule(struct raft_message* msg);  // vote_rule.cpp
    void on_tick();
    void retry_pre_vote();                           // vote_rule.cpp
    void retry_pre_vote_soon();                      // vote_rule.cpp: on the next loop turn
    bool candidate_behind(const struct raft_request_vote& v);
    bool same_last_entry(const struct raft_request_vote& v);
    void redraw_election_timer();                    // vote_rule.cpp
    // halt_rule.cpp: a halted replica neither campaigns nor grants votes (set from Python).
    void set_halted(bool on);
    bool halted() const { return halted_.load(std::memory_order_relaxed); }

    // The role as of the loop's last iteration (note_role, from on_check): any thread, no loop
    // round trip (GET /leader). `seq` counts the changes; role_signal is posted on each one.
    struct Role {
        int state = 0;  // RAFT_UNAVAILABLE before the first loop iteration
        uint64_t leader_id = 0;
        uint64_t transferee = 0;  // a leader handing leadership over: to whom
        uint64_t seq = 0;
    };
    Role role() const noexcept;
    Signal role_signal;  // one waiter (the API's role watch thread)
    bool halted_recv(struct raft_message* msg);      // true: drop the message
    void halted_tick();
    // fast_election.cpp: an election at once when the leader's process is gone; timer ranges.
    void install_stream_watch();  // wraps transport_.listen (stock or authenticated)
    void remove_stream_watch();
    void on_peer_stream_closed(uint64_t peer);
    void on_probe_done(int status);
    void on_head_start();
    bool leader_known_dead() const;
    void note_vote_request(bool candidate_behind);  // a vote request while leader_known_dead()
    void heard_from_leader();                       // an AppendEntries / InstallSnapshot arrived
    bool may_campaign() const;
    void election_range(unsigned& lo, unsigned& hi);
    void keep_timer_in_range();
    void close_election_timers();
    int (*orig_listen_)(struct raft_uv_transport*, raft_uv_accept_cb) = nullptr;
    raft_uv_accept_cb raft_accept_cb_ = nullptr;
    uv_tcp_t probe_tcp_;
    uv_timer_t probe_timer_;
    bool probe_open_ = false;
    bool probe_retry_ = false;  // the probe handle is closing for another connect()
    void start_probe_attempt();
    bool closing_ = false;  // loop thread only
    unsigned probe_settle_ms() const;
    unsigned probe_retry_ms() const;
    // Issue 13's halted flag clears this: the replica then never starts an early election.
    std::atomic<bool> may_campaign_{true};
    void deliver_deferred();
    void drop_deferred();
    void on_check();
    void note_role();  // loop thread: publish the role if it changed (seqlock below)
    std::atomic<uint64_t> role_seq_{0};  // odd while note_role writes
    std::atomic<int> role_state_{0};
    std::atomic<uint64_t> role_leader_{0};
    std::atomic<uint64_t> role_transferee_{0};
    int (*orig_start_)(struct raft_io*, unsigned, raft_io_tick_cb, raft_io_recv_cb) = nullptr;
    int (*orig_load_)(struct raft_io*, raft_term*, raft_id*, struct raft_snapshot**, raft_index*,
                      struct raft_entry**, size_t*) = nullptr;
    raft_io_recv_cb legacy_recv_ = nullptr;
    raft_io_tick_cb legacy_tick_ = nullptr;
    uint64_t restore_label_ = 0;  // index of the snapshot raft_start is about to restore
    void note_io_error(const std::string& what);
    void on_raft_closed();
    int fsm_apply(const struct raft_buffer* buf);
    int fsm_snapshot(struct raft_buffer* bufs[], unsigned* n_bufs);
    int fsm_snapshot_finalize(struct raft_buffer* bufs[], unsigned* n_bufs);
    int fsm_restore(struct raft_buffer* buf);
    void change_done(int status);
    void transfer_done();
    void fill_status(StatusData& s);
    void fail_not_leader(const FuturePtr& f, int rv);
    bool push_barrier();  // an internal barrier (requests.cpp); false if libraft refused it
    void barrier_done() { barrier_inflight_ = false; }

private:
    int setup_loop(std::string& err);  // loop + transport + io + raft_init, on the loop thread
    void teardown_after_close();
    void close_transport();
    void start_health_timer();
    void stop_health_timer();
    void run_thread(std::shared_ptr<struct StartSync> sync);
    void handle(Request& r);
    void apply_many(Request& r);  // R_APPLY_MANY (requests.cpp)
    void begin_close();

    uint64_t id_;
    std::string address_;
    std::string dir_;
    Options opts_;
    std::thread thread_;
    std::mutex life_mu_;  // serialises start/stop/bootstrap
    std::atomic<bool> started_{false};  // also read by post() for its error message
    bool stopped_ = false;

    std::mutex req_mu_;
    std::vector<Request> reqs_;
    std::atomic<bool> accepting_{false};
    std::thread::id loop_tid_;
    uv_timer_t health_timer_;
    uv_check_t flush_check_;  // runs after each loop iteration's I/O: wakes the applier once
    // install_guard.cpp: a TimeoutNow libraft ignored while it was persisting entries
    void keep_timeout_now(const struct raft_message& msg);
    void retry_timeout_now();
    bool timeout_now_kept_ = false;
    struct raft_message timeout_now_;
    std::string timeout_now_addr_;
    raft_term timeout_now_term_ = 0;
    raft_time timeout_now_until_ = 0;
    uint64_t timeouts_now_retried_ = 0;
    bool deferred_ = false;   // an InstallSnapshot held back (install_guard.cpp)
    struct raft_message deferred_msg_;
    std::string deferred_addr_;
    uint64_t deferred_installs_ = 0;
    uint64_t relaxed_votes_ = 0;  // vote requests let through by the thesis rule (vote_rule.cpp)
    uint64_t early_campaigns_ = 0;  // times we campaigned at once against a shorter-log candidate
    uint64_t pre_vote_retries_ = 0; // pre-vote rounds re-sent early (vote_rule.cpp)
    bool rival_pre_vote_ = false;   // as a pre-vote candidate, another one asked us (vote_rule.cpp)
    raft_term timer_term_ = 0;      // the term our follower timer was last drawn for
    // fast_election.cpp (loop thread only)
    unsigned head_start_ms();
    unsigned election_step() const;
    unsigned election_position(uint64_t leader);
    int priority_of(uint64_t id) const;
    void ensure_election_timers();
    bool election_timers_ = false;  // head_timer_ / probe_timer_ initialised
    uv_timer_t head_timer_;
    uv_timer_t flush_timer_;
    void send_flush_ping(uint64_t peer);
    void flush_stale_connection(uint64_t peer);
  public:
    std::vector<uint64_t> flush_peers_;  // second flush ping due (flush_timer_)
  private:
    uv_connect_t probe_req_;
    uint64_t probing_ = 0;          // the leader a probe is connecting to
    struct sockaddr_in probe_dest_;  // its raft address
    uint64_t probe_started_ = 0;    // loop ms of the probe's first connect()
    unsigned probe_attempts_ = 0;
    raft_term probing_term_ = 0;
    uint64_t gone_leader_ = 0;      // the leader whose process we found gone
    raft_term gone_term_ = 0;
    raft_time refused_vote_at_ = 0;  // last vote request refused because the leader was heard
    bool rival_granted_ = false;    // we let another candidate's vote request through since
    uint64_t leader_closes_ = 0, leaders_gone_ = 0, fast_elections_ = 0;
    uint64_t pre_vote_tie_refusals_ = 0;  // vote_rule.cpp: a rival pre-vote refused on node id
    raft_term tie_term_ = 0;              // ... the term of the first such refusal
    raft_time tie_since_ = 0;             // ... and when it was
    uint64_t closed_at_ = 0, gone_at_ = 0, campaign_at_ = 0;  // loop ms of the last fast election
    uint64_t fast_timeline_[3] = {0, 0, 0};  // close -> confirmed, -> campaign, -> leader (ms)
    void note_election_won();
    std::minstd_rand timer_rng_{std::random_device{}()};
    uint64_t commit_clamps_ = 0;         // install_guard.cpp (2)
    std::atomic<bool> halted_{false};    // halt_rule.cpp; written by Python, read on the loop
    uint64_t halted_refused_votes_ = 0;  // vote requests refused while halted
    uint64_t halted_dropped_ = 0;        // vote results / TimeoutNow dropped while halted
    bool trace_commit_ = false;          // BKNR_TRACE_COMMIT: log each clamp on stderr
    bool trace_election_ = false;        // BKNR_TRACE_ELECTION: one stderr line per election step
    bool trace_snapshot_ = false;        // BKNR_TRACE_STALLS: Raft snapshot steps on stderr (monotonic s)
    void trace_election(const char* fmt, ...) __attribute__((format(printf, 2, 3)));
    int traced_state_ = 0;               // the state the trace last saw (to log "leading" once)
    uint64_t mislabeled_snapshots_ = 0;  // fsm.cpp: restores trimmed to their Raft index
    uint64_t stored_seen_ = 0, stored_progress_ms_ = 0, io_error_ms_ = 0;
    std::string last_error_;
    std::atomic<uint64_t> off_loop_callbacks_{0};
    void check_thread() {
        if (std::this_thread::get_id() != loop_tid_) off_loop_callbacks_++;
    }

    ApplyQueue applyq_;

    // Membership/transfer requests in flight (libraft allows one of each; a second would
    // trip its assertions, so we refuse it ourselves). Loop thread only.
    FuturePtr change_fut_;
    FuturePtr transfer_fut_;
    uint64_t transfer_target_ = 0;
    // snapshot_now() (fsm.cpp, DESIGN.md §2): futures waiting for a Raft snapshot at >= target
    // whose store part is at >= target too ("fresh"), or any snapshot >= target once the
    // deadline (uv_now ms) passed or when one was already being written at request time.
    struct SnapWaiter {
        uint64_t target;
        FuturePtr fut;
        uint64_t deadline_ms;
        bool fresh;
    };
    std::vector<SnapWaiter> snap_waiters_;
    bool forced_ = false;            // snapshot threshold lowered to 1 for ready waiters
    bool trailing_lowered_ = false;  // trailing lowered for a forced snapshot, restored in on_check
    std::atomic<bool> wake_on_store_{false};  // store_snapshot_done() must wake the loop
    uint64_t last_snapshot_index_ = 0;
    uint64_t last_snapshot_store_ = 0;  // M of the latest Raft snapshot (status)
    uint64_t last_snapshot_trailing_ = 0;  // trailing entries kept behind it (status)
    uint64_t snapshot_taking_index_ = 0;
    std::vector<std::pair<struct raft_buffer*, void*>> holds_;  // snapshots awaiting finalize
    bool barrier_inflight_ = false;  // our own barrier (push_barrier) not completed yet
    uint64_t fresh_requests_ = 0;    // store snapshots asked for by snapshot_now (status)
    void snapshot_now(Request& r);   // R_SNAPSHOT (fsm.cpp)
    void advance_snapshots(bool top_level);  // drives the waiters; loop thread, idempotent
    void snapshot_taken(uint64_t index, uint64_t store_index);
    unsigned forced_trailing(uint64_t label);

    // Snapshot-at-index state (fsm.cpp). Guarded by snap_mu_: the loop thread appends and
    // reads it, Python's store_snapshot_done() trims it.
    std::mutex snap_mu_;
    uint64_t base_index_ = 0;       // M: the store snapshot's index (0 = empty store)
    Slice base_data_;               // store snapshot bytes at M
    bool base_compressed_ = false;  // base_data_ is a zstd frame of them (format 2)
    std::deque<Item> tail_;         // committed entries M+1..N, as handed to Python
    uint64_t pending_request_ = 0;  // index of the outstanding snapshot_request, 0 = none
    unsigned since_request_ = 0;
};

}  // namespace bknr
