// FSM side of the node: the apply queue and the snapshot-at-index protocol (DESIGN.md §2).
//
// libraft calls fsm->apply/snapshot/restore synchronously on the loop thread, so none of
// these may wait for Python: apply copies the entry into the apply queue, snapshot returns
// bytes Python already produced (store snapshot at M) plus the raw entries M+1..N.
#include <chrono>
#include <cstring>

#include "node.hpp"

namespace bknr {

// ---------------------------------------------------------------- byte blocks

Chunk::~Chunk() {
    if (!base) return;
    if (raft_owned) raft_free(base);
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
// [magic "BKNRSNP1"][u64 format=1][u64 M][u64 store_len][u64 n_entries][u64 N]
// [store snapshot bytes]
// n_entries x [u64 index][u64 term][u64 len][bytes]
// All integers little-endian.

static const char kMagic[8] = {'B', 'K', 'N', 'R', 'S', 'N', 'P', '1'};
static constexpr size_t kHeader = 48;

static void put64(char* p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
static uint64_t get64(const char* p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
    return v;
}

namespace {
// Keeps the buffers of one snapshot alive until libraft calls snapshot_finalize.
struct SnapshotHold {
    std::vector<struct raft_buffer> bufs;
    std::unique_ptr<char[]> header, tail;
    ChunkPtr store;
    uint64_t index;
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

bool Node::store_snapshot_done(uint64_t index, ChunkPtr data) {
    std::lock_guard<std::mutex> g(snap_mu_);
    // A restore (or an older request) may have superseded this one: then ignore it.
    if (pending_request_ == 0 || index != pending_request_) return false;
    pending_request_ = 0;
    base_index_ = index;
    base_data_ = Slice{data, 0, data ? data->len : 0};
    while (!tail_.empty() && tail_.front().index <= index) tail_.pop_front();
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
        for (const auto& e : tail_) {
            if (e.index > label) break;
            tail_len += 24 + e.data.len;
            count++;
        }
        h->header.reset(new char[kHeader]);
        std::memcpy(h->header.get(), kMagic, 8);
        put64(h->header.get() + 8, 1);
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
        uint64_t index = h->index;
        delete h;
        raft_free(holds_[i].first);
        holds_.erase(holds_.begin() + static_cast<long>(i));
        *bufs = nullptr;
        *n_bufs = 0;
        snapshot_taking_index_ = 0;
        if (!closing_ && index > last_snapshot_index_) last_snapshot_index_ = index;
        snapshot_taken(index);
        return 0;
    }
    return 0;
}

void Node::snapshot_taken(uint64_t index) {
    std::vector<std::pair<uint64_t, FuturePtr>> keep;
    for (auto& w : snap_waiters_) {
        if (closing_) w.second->fail(E_SHUTDOWN, "engine stopped");
        else if (w.first <= index) w.second->resolve(index);
        else keep.push_back(w);
    }
    snap_waiters_.swap(keep);
    if (snap_waiters_.empty() && !closing_) compat::set_snapshot_threshold(&raft_, opts_.snapshot_threshold);
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
    if (n < kHeader || std::memcmp(p, kMagic, 8) != 0 || get64(p + 8) != 1) return RAFT_MALFORMED;
    uint64_t m = get64(p + 16), store_len = get64(p + 24), count = get64(p + 32);
    if (store_len > n - kHeader) return RAFT_MALFORMED;
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
        tail_ = entries;
        pending_request_ = 0;
        since_request_ = static_cast<unsigned>(entries.size());
    }
    // Everything still queued is older than this state and superseded by it.
    applyq_.clear();
    applyq_.push(Item{ITEM_RESTORE, m, 0, Slice{c, kHeader, store_len}});
    for (auto& e : entries) applyq_.push(std::move(e));
    if (last > last_snapshot_index_) last_snapshot_index_ = last;
    return 0;
}

}  // namespace bknr
