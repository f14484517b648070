// FSM side of the node: the apply queue and the snapshot-at-index protocol (DESIGN.md §2).
//
// libraft calls fsm->apply/snapshot/restore synchronously on the loop thread, so none of
// these may wait for Python: apply copies the entry into the apply queue, snapshot returns
// bytes Python already produced (store snapshot at M) plus the raw entries M+1..N.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "image_codec.hpp"
#include "node.hpp"

namespace bknr {

// ---------------------------------------------------------------- byte blocks

Chunk::~Chunk() {
    if (!base) return;
    if (mapped) munmap(base, len);
    else if (raft_owned) raft_free(base);
    else delete[] base;
}

ChunkPtr chunk_copy(const void* p, size_t n) {
    auto c = std::make_shared<Chunk>();
    c->base = new char[n ? n : 1];
    c->len = n;
    if (n) std::memcpy(c->base, p, n);
    return c;
}

ChunkPtr chunk_adopt(void* raft_malloced, size_t n) {
    auto c = std::make_shared<Chunk>();
    c->base = static_cast<char*>(raft_malloced);
    c->len = n;
    c->raft_owned = true;
    return c;
}

ChunkPtr chunk_map_file(const char* path, std::string* err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *err = std::string("cannot open ") + path + ": " + std::strerror(errno);
        return nullptr;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        *err = std::string("cannot stat ") + path + ": " + std::strerror(errno);
        close(fd);
        return nullptr;
    }
    auto c = std::make_shared<Chunk>();
    if (st.st_size == 0) {  // mmap refuses length 0: an empty chunk of our own
        close(fd);
        c->base = new char[1];
        return c;
    }
    void* p = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);  // the mapping keeps the file (even once unlinked)
    if (p == MAP_FAILED) {
        *err = std::string("cannot map ") + path + ": " + std::strerror(e);
        return nullptr;
    }
    c->base = static_cast<char*>(p);
    c->len = static_cast<size_t>(st.st_size);
    c->mapped = true;
    return c;
}

// ---------------------------------------------------------------- apply queue

void ApplyQueue::push(Item&& it) {
    std::lock_guard<std::mutex> g(mu_);
    q_.push_back(std::move(it));
    unflushed_ = true;
}

void ApplyQueue::flush() {
    std::lock_guard<std::mutex> g(mu_);
    // Only pay for a futex wake when the applier is actually asleep.
    if (unflushed_ && waiters_) cv_.notify_one();
    unflushed_ = false;
}

void ApplyQueue::clear() {
    std::lock_guard<std::mutex> g(mu_);
    q_.clear();
}

void ApplyQueue::close() {
    std::lock_guard<std::mutex> g(mu_);
    closed_ = true;
    cv_.notify_all();
}

size_t ApplyQueue::size() {
    std::lock_guard<std::mutex> g(mu_);
    return q_.size();
}

bool ApplyQueue::pop(size_t max_items, double seconds, std::vector<Item>& out) {
    std::unique_lock<std::mutex> g(mu_);
    if (q_.empty() && !closed_ && seconds > 0) {
        waiters_++;
        cv_.wait_for(g, std::chrono::duration<double>(seconds), [this] { return !q_.empty() || closed_; });
        waiters_--;
    }
    while (!q_.empty() && out.size() < max_items) {
        out.push_back(std::move(q_.front()));
        q_.pop_front();
    }
    return !(closed_ && q_.empty() && out.empty());
}

// ---------------------------------------------------------------- snapshot format
//
// [magic "BKNRSNP1"][u64 format][u64 M][u64 store_len][u64 n_entries][u64 N]
// [store snapshot bytes]
// n_entries x [u64 index][u64 term][u64 len][bytes]
// All integers little-endian. Format 1: the store snapshot bytes as Python wrote them; format
// 2: one zstd frame of them (image_codec.hpp), written only once every member reads it (the
// cluster layer decides, cluster/DESIGN.md). Both are read.

static const char kMagic[8] = {'B', 'K', 'N', 'R', 'S', 'N', 'P', '1'};
static constexpr size_t kHeader = 48;
// A store image larger than this in a format 2 header is taken for damage, not allocated.
static constexpr uint64_t kMaxImage = uint64_t{1} << 40;

static void put64(char* p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
static uint64_t get64(const char* p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
    return v;
}

namespace {
// BKNR_TRACE_STALLS: when libraft takes and finishes a snapshot, on the clock the stall tracer
// (cluster/stall_trace.py) and the bench use, so slow calls can be placed against these steps.
void trace_step(bool on, const char* what, uint64_t index) {
    if (!on) return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    std::fprintf(stderr, "bknr: trace %s t=%.6f index=%llu\n", what,
                 static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9,
                 static_cast<unsigned long long>(index));
}

// Keeps the buffers of one snapshot alive until libraft calls snapshot_finalize.
struct SnapshotHold {
    std::vector<struct raft_buffer> bufs;
    std::unique_ptr<char[]> header, tail;
    ChunkPtr store;
    uint64_t index;
    uint64_t base;      // M: the store snapshot inside it
    unsigned trailing;  // log entries libraft keeps behind it
};
}  // namespace

int Node::fsm_apply(const struct raft_buffer* buf) {
    check_thread();
    Item it{ITEM_ENTRY, compat::applying_index(&raft_), 0, {}};
    it.term = compat::term_of(&raft_, it.index);
    size_t len = unpad_len(static_cast<const char*>(buf->base), buf->len);
    if (len == static_cast<size_t>(-1)) len = buf->len;  // not ours: hand it over unchanged
    it.data.chunk = chunk_copy(buf->base, len);
    it.data.len = len;
    bool request = false;
    {
        std::lock_guard<std::mutex> g(snap_mu_);
        // An index the state already has can only come from a snapshot whose contents ran past
        // its Raft index (written before the commit-index fix, install_guard.cpp (2)): the
        // applier refuses and counts it, and the tail must not hold it twice.
        uint64_t last = tail_.empty() ? base_index_ : tail_.back().index;
        if (it.index > last) tail_.push_back(it);  // shares the chunk with the queued item
        if (++since_request_ >= opts_.store_snapshot_every && pending_request_ == 0) {
            pending_request_ = it.index;
            since_request_ = 0;
            request = true;
        }
    }
    uint64_t index = it.index;
    applyq_.push(std::move(it));
    if (request) applyq_.push(Item{ITEM_SNAPSHOT_REQUEST, index, 0, {}});
    return 0;
}

bool Node::store_snapshot_done(uint64_t index, ChunkPtr data, bool compressed) {
    {
        std::lock_guard<std::mutex> g(snap_mu_);
        // A restore (or an older request) may have superseded this one: then ignore it.
        if (pending_request_ == 0 || index != pending_request_) return false;
        pending_request_ = 0;
        base_index_ = index;
        base_data_ = Slice{data, 0, data ? data->len : 0};
        base_compressed_ = compressed && data && data->len;
        while (!tail_.empty() && tail_.front().index <= index) tail_.pop_front();
    }
    // A snapshot_now() waits for this: wake the loop now rather than at its next tick. Under
    // req_mu_ with accepting_, as post() does, so no send reaches a closed handle.
    if (wake_on_store_.load()) {
        std::lock_guard<std::mutex> g(req_mu_);
        if (accepting_) uv_async_send(&async_);
    }
    return true;
}

bool Node::store_snapshot_failed(uint64_t index) {
    {
        std::lock_guard<std::mutex> g(snap_mu_);
        if (pending_request_ == 0 || index != pending_request_) return false;
        pending_request_ = 0;
    }
    // A snapshot_now() waiting for this asks again (advance_snapshots) rather than at its
    // deadline; the periodic policy asks again after store_snapshot_every more entries.
    if (wake_on_store_.load()) {
        std::lock_guard<std::mutex> g(req_mu_);
        if (accepting_) uv_async_send(&async_);
    }
    return true;
}

int Node::fsm_snapshot(struct raft_buffer* bufs[], unsigned* n_bufs) {
    check_thread();
    // legacyTakeSnapshot records the snapshot at r->commit_index, not at last_applied: the
    // contents must be the state after exactly that entry, or a restore from it re-applies
    // (or skips) the difference. The two differ only if the commit index went back
    // (install_guard.cpp (2)); then we cut the tail at `label`, or refuse when the store
    // snapshot is already past it (libraft retries at its next step).
    const uint64_t label = raft_.commit_index;
    trace_step(trace_snapshot_, "raft_snapshot_take", label);
    if (label != raft_.last_applied) mislabeled_snapshots_++;
    auto* h = new SnapshotHold();
    size_t tail_len = 0, count = 0;
    {
        std::lock_guard<std::mutex> g(snap_mu_);
        if (base_index_ > label || raft_.last_applied < label) {
            delete h;
            return RAFT_BUSY;
        }
        h->store = base_data_.chunk;
        h->base = base_index_;
        for (const auto& e : tail_) {
            if (e.index > label) break;
            tail_len += 24 + e.data.len;
            count++;
        }
        h->header.reset(new char[kHeader]);
        std::memcpy(h->header.get(), kMagic, 8);
        put64(h->header.get() + 8, base_compressed_ ? 2 : 1);
        put64(h->header.get() + 16, base_index_);
        put64(h->header.get() + 24, base_data_.len);
        put64(h->header.get() + 32, count);
        put64(h->header.get() + 40, label);
        h->bufs.push_back({h->header.get(), kHeader});
        if (base_data_.len) h->bufs.push_back({const_cast<char*>(base_data_.data()), base_data_.len});
        if (tail_len) {
            // The tail is bounded by store_snapshot_every (plus the applier's lag), so this
            // copy is small next to the store snapshot, which is handed out zero-copy.
            h->tail.reset(new char[tail_len]);
            char* p = h->tail.get();
            for (const auto& e : tail_) {
                if (e.index > label) break;
                put64(p, e.index);
                put64(p + 8, e.term);
                put64(p + 16, e.data.len);
                if (e.data.len) std::memcpy(p + 24, e.data.data(), e.data.len);
                p += 24 + e.data.len;
            }
            h->bufs.push_back({h->tail.get(), tail_len});
        }
    }
    h->index = label;
    snapshot_taking_index_ = h->index;
    // A snapshot taken for snapshot_now() on the leader also compacts the log down to what the
    // other members still need (libraft reads the trailing count when it writes the snapshot
    // and again once it is written; on_check restores the configured one afterwards).
    h->trailing = opts_.snapshot_trailing;
    if (forced_ && raft_state(&raft_) == RAFT_LEADER) {
        h->trailing = forced_trailing(label);
        if (h->trailing != opts_.snapshot_trailing) {
            compat::set_snapshot_trailing(&raft_, h->trailing);
            trailing_lowered_ = true;
        }
    }
    // libraft hands this array back to snapshot_finalize; we find the hold through it.
    auto* arr = static_cast<struct raft_buffer*>(raft_malloc(sizeof(struct raft_buffer) * h->bufs.size()));
    if (!arr) { delete h; return RAFT_NOMEM; }
    std::memcpy(arr, h->bufs.data(), sizeof(struct raft_buffer) * h->bufs.size());
    holds_.push_back({arr, h});
    *bufs = arr;
    *n_bufs = static_cast<unsigned>(h->bufs.size());
    return 0;
}

int Node::fsm_snapshot_finalize(struct raft_buffer* bufs[], unsigned* n_bufs) {
    check_thread();
    for (size_t i = 0; i < holds_.size(); i++) {
        if (holds_[i].first != *bufs) continue;
        auto* h = static_cast<SnapshotHold*>(holds_[i].second);
        uint64_t index = h->index, base = h->base;
        unsigned trailing = h->trailing;
        trace_step(trace_snapshot_, "raft_snapshot_written", index);
        delete h;
        raft_free(holds_[i].first);
        holds_.erase(holds_.begin() + static_cast<long>(i));
        *bufs = nullptr;
        *n_bufs = 0;
        snapshot_taking_index_ = 0;
        if (!closing_ && index > last_snapshot_index_) {
            last_snapshot_index_ = index;
            last_snapshot_store_ = base;
            last_snapshot_trailing_ = trailing;
        }
        snapshot_taken(index, base);
        return 0;
    }
    return 0;
}

// ---------------------------------------------------------------- snapshot_now
//
// libraft has no "snapshot now" call. A request first gets the applier to serialise the store
// at the commit index (a snapshot_request item, as the periodic ones), then lowers libraft's
// threshold to 1 so that its next step takes a Raft snapshot on top of it: [store snapshot C]
// + the few entries C+1..N committed meanwhile. See DESIGN.md §2.

void Node::snapshot_now(Request& r) {
    const uint64_t commit = raft_.commit_index;
    const uint64_t have = std::max<uint64_t>(last_snapshot_index_, compat::snapshot_index(&raft_));
    // Nothing committed since the last snapshot: libraft could not take another one anyway.
    if (have >= commit && snapshot_taking_index_ == 0) {
        r.fut->resolve(have);
        return;
    }
    const uint64_t now = uv_now(&loop_);
    const uint64_t deadline = r.wait_ms > UINT64_MAX - now ? UINT64_MAX : now + r.wait_ms;
    // One already being written at or past the commit index serves it, like a finished one.
    const bool fresh = snapshot_taking_index_ < commit;
    snap_waiters_.push_back({commit, r.fut, deadline, fresh});
    advance_snapshots(true);
}

// Loop thread; runs on every request, snapshot and loop iteration while someone waits, so it
// must be idempotent. `top_level`: not inside a libraft callback, so raft_barrier may be called.
void Node::advance_snapshots(bool top_level) {
    if (closing_) return;
    if (snap_waiters_.empty()) {
        wake_on_store_ = false;
        if (forced_) compat::set_snapshot_threshold(&raft_, opts_.snapshot_threshold);
        forced_ = false;
        return;
    }
    wake_on_store_ = true;
    const uint64_t now = uv_now(&loop_);
    const bool taking = snapshot_taking_index_ != 0 || compat::snapshot_taking(&raft_);
    const uint64_t have = std::max<uint64_t>(last_snapshot_index_, compat::snapshot_index(&raft_));
    uint64_t base = 0, pending = 0;
    {
        std::lock_guard<std::mutex> g(snap_mu_);
        base = base_index_;
        pending = pending_request_;
    }
    // No new Raft snapshot is possible until something commits past the last one; a leader
    // makes that happen with a barrier (below), a follower can only wait for the leader.
    const bool stuck = !taking && raft_.commit_index <= have && raft_state(&raft_) != RAFT_LEADER;
    bool ready = false;  // the next Raft snapshot serves a waiter
    uint64_t need = 0;   // highest target still waiting for its store snapshot
    std::vector<SnapWaiter> keep;
    for (auto& w : snap_waiters_) {
        const bool late = now >= w.deadline_ms;
        // Past the deadline, any snapshot covering the target will do (the applier is slow or
        // gone); so does the latest one when no newer one can be taken (e.g. a follower that
        // was just installed with a snapshot past the target, and nothing commits).
        if (!taking && have >= w.target && (late || (stuck && base >= w.target))) {
            w.fut->resolve(have);
            continue;
        }
        if (!w.fresh) {
            // served by the snapshot being written (snapshot_taken)
        } else if (late || base >= w.target) {
            ready = true;
        } else {
            need = std::max(need, w.target);
        }
        keep.push_back(std::move(w));
    }
    snap_waiters_.swap(keep);
    // One store snapshot outstanding at a time: a periodic one already asked for is awaited,
    // and the next advance asks again if it ended below the target. The item goes after every
    // entry up to last_applied (fsm_apply queues them synchronously), so the applier serialises
    // exactly the state after it.
    const uint64_t at = raft_.last_applied;
    if (need && pending == 0 && at >= need) {
        bool queue = false;
        {
            std::lock_guard<std::mutex> g(snap_mu_);
            if (pending_request_ == 0 && base_index_ < at) {
                pending_request_ = at;
                since_request_ = 0;
                queue = true;
            }
        }
        if (queue) {
            applyq_.push(Item{ITEM_SNAPSHOT_REQUEST, at, 0, {}});
            fresh_requests_++;
        }
    }
    if (ready != forced_) {
        forced_ = ready;
        compat::set_snapshot_threshold(&raft_, ready ? 1 : opts_.snapshot_threshold);
    }
    // libraft snapshots at its next step once commit_index > its last snapshot. A barrier makes
    // that step come now rather than at the next tick on the leader, and gives it an index
    // to snapshot at when nothing was committed since the last one.
    if (ready && top_level && !barrier_inflight_ && raft_state(&raft_) == RAFT_LEADER &&
        (!taking || raft_.commit_index <= have)) {
        barrier_inflight_ = push_barrier();
    }
}

void Node::snapshot_taken(uint64_t index, uint64_t store_index) {
    const uint64_t now = closing_ ? 0 : uv_now(&loop_);
    std::vector<SnapWaiter> keep;
    for (auto& w : snap_waiters_) {
        if (closing_) w.fut->fail(E_SHUTDOWN, "engine stopped");
        else if (index >= w.target && (!w.fresh || store_index >= w.target || now >= w.deadline_ms))
            w.fut->resolve(index);
        else keep.push_back(std::move(w));
    }
    snap_waiters_.swap(keep);
    // Inside libraft's snapshot callback: no barrier here (on_check advances again). The
    // threshold must be right before libraft's next step, or it snapshots again at once.
    advance_snapshots(false);
}

// Trailing entries to keep behind a forced snapshot at `label`: what the furthest-behind other
// member still needs (from its match index on, plus the entry before it for the consistency
// check), at least 1 (0 would mean "installing" to raft_uv) and at most the configured count.
unsigned Node::forced_trailing(uint64_t label) {
    const unsigned configured = opts_.snapshot_trailing;
    if (configured <= 1) return configured;
    uint64_t keep = 1;
    for (unsigned i = 0; i < raft_.configuration.n; i++) {
        raft_id sid = raft_.configuration.servers[i].id;
        if (sid == id_) continue;
        raft_index m = 0;
        if (raft_match_index(&raft_, sid, &m) != 0) return configured;
        if (m < label) keep = std::max<uint64_t>(keep, label - m + 1);
    }
    return static_cast<unsigned>(std::min<uint64_t>(keep, configured));
}

int Node::fsm_restore(struct raft_buffer* buf) {
    check_thread();
    // The index libraft considers applied once this returns: the loaded snapshot's at start-up
    // (load_hook in install_guard.cpp), the commit index during an InstallSnapshot (legacy.c
    // restores exactly when commit_index == the installed snapshot's index).
    uint64_t label = restore_label_ ? restore_label_ : raft_.commit_index;
    restore_label_ = 0;
    const char* p = static_cast<const char*>(buf->base);
    size_t n = buf->len;
    if (n < kHeader || std::memcmp(p, kMagic, 8) != 0) return RAFT_MALFORMED;
    const uint64_t format = get64(p + 8);
    if (format != 1 && format != 2) return RAFT_MALFORMED;
    uint64_t m = get64(p + 16), store_len = get64(p + 24), count = get64(p + 32);
    if (store_len > n - kHeader) return RAFT_MALFORMED;
    // Format 2: the frame must say how large the image is (the applier sizes its buffer by it;
    // the checksum is verified there, off the loop thread).
    uint64_t image_len = 0;
    if (format == 2 && !image_content_size(p + kHeader, store_len, kMaxImage, &image_len))
        return RAFT_MALFORMED;
    // Validate the whole tail before taking ownership: on error libraft frees the buffer.
    size_t off = kHeader + store_len;
    for (uint64_t i = 0; i < count; i++) {
        if (n - off < 24) return RAFT_MALFORMED;
        uint64_t len = get64(p + off + 16);
        if (len > n - off - 24) return RAFT_MALFORMED;
        off += 24 + len;
    }
    // Success: libraft passes ownership of buf->base to the FSM.
    ChunkPtr c = chunk_adopt(buf->base, n);
    // A snapshot written before the commit-index fix may hold entries past its Raft index
    // (label < N): libraft re-applies label+1.. from the log after this, so such entries are
    // left out here. (If even the store snapshot M is past the label, the state cannot be cut
    // back: the applier then refuses the replayed entries and counts them.)
    uint64_t last = get64(p + 40);
    bool cut = compat::kFollowerCommitCanRegress && label != 0 && last > label && m <= label;
    if (compat::kFollowerCommitCanRegress && label != 0 && last > label) mislabeled_snapshots_++;
    std::deque<Item> entries;
    off = kHeader + store_len;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t len = get64(p + off + 16), index = get64(p + off);
        if (cut && index > label) break;
        entries.push_back(Item{ITEM_ENTRY, index, get64(p + off + 8), Slice{c, off + 24, len}});
        off += 24 + len;
    }
    if (cut) last = label;
    {
        std::lock_guard<std::mutex> g(snap_mu_);
        base_index_ = m;
        base_data_ = Slice{c, kHeader, store_len};
        base_compressed_ = format == 2;
        tail_ = entries;
        pending_request_ = 0;
        since_request_ = static_cast<unsigned>(entries.size());
    }
    // Everything still queued is older than this state and superseded by it.
    applyq_.clear();
    applyq_.push(Item{ITEM_RESTORE, m, 0, Slice{c, kHeader, store_len}, format == 2});
    for (auto& e : entries) applyq_.push(std::move(e));
    if (last > last_snapshot_index_) last_snapshot_index_ = last;
    if (last >= last_snapshot_index_) last_snapshot_store_ = m;
    return 0;
}

}  // namespace bknr
