/* Baseline for bench/engine_bench.py: one libraft node (raft_uv + raft_uv_tcp, fsync on)
 * driven directly from C, with the same shape as the Python engine bench: 3 nodes on
 * loopback, 64-byte entries, a window of W outstanding raft_apply() calls on the leader,
 * one entry per raft_apply, the FSM copying each committed entry (as the engine's apply
 * queue does), TCP_NODELAY on the raft connections (as the engine sets it).
 *
 * usage: engine_c_bench ID DIR ADDR1,ADDR2,ADDR3 WINDOWS COUNTS SIZE
 *   e.g. engine_c_bench 1 /tmp/d1 127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003 1,64,512 300,5000,20000 64
 * Every node bootstraps the same 3-voter configuration (empty DIR). Whichever node becomes
 * leader runs the windows in order, prints one JSON line per window and exits; followers run
 * until they are killed. Built by bench/engine_bench.py (cc + pkg-config raft libuv).
 */
#include <raft.h>
#include <raft/uv.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#define MAX_WINDOWS 8

static struct raft raft;
static struct raft_io io;
static struct raft_uv_transport transport;
static struct raft_fsm fsm;
static uv_loop_t loop;
static uv_timer_t timer;

static unsigned long long applied;
static int n_windows, cur;
static unsigned windows[MAX_WINDOWS], counts[MAX_WINDOWS];
static size_t entry_size;
static unsigned submitted, completed, inflight, failed;
static uint64_t start_ns, *lat_ns;
static double start_cpu;

static double cpu_seconds(void) { /* user + system time of this process (all threads) */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

struct req {
    struct raft_apply apply;
    uint64_t t0;
};

static int fsm_apply(struct raft_fsm *f, const struct raft_buffer *buf, void **result) {
    (void)f;
    void *copy = malloc(buf->len); /* the engine copies each entry into its apply queue */
    memcpy(copy, buf->base, buf->len);
    free(copy);
    applied++;
    *result = NULL;
    return 0;
}

static int fsm_snapshot(struct raft_fsm *f, struct raft_buffer *bufs[], unsigned *n) {
    (void)f;
    *bufs = raft_malloc(sizeof **bufs);
    (*bufs)[0].len = 8;
    (*bufs)[0].base = raft_malloc(8);
    memcpy((*bufs)[0].base, &applied, 8);
    *n = 1;
    return 0;
}

static int fsm_restore(struct raft_fsm *f, struct raft_buffer *buf) {
    (void)f;
    memcpy(&applied, buf->base, 8);
    raft_free(buf->base);
    return 0;
}

/* TCP_NODELAY on every raft connection, as the engine sets it on libraft's stock TCP
 * transport (native/node.cpp): the listen/connect calls are wrapped the same way. */
static raft_uv_accept_cb orig_accept_cb;
static raft_uv_connect_cb orig_connect_cb;
static int (*orig_listen)(struct raft_uv_transport *, raft_uv_accept_cb);
static int (*orig_connect)(struct raft_uv_transport *, struct raft_uv_connect *, raft_id, const char *,
                           raft_uv_connect_cb);

static void set_nodelay(struct uv_stream_s *s) {
    if (s && s->type == UV_TCP) uv_tcp_nodelay((uv_tcp_t *)s, 1);
}
static void nodelay_accepted(struct raft_uv_transport *t, raft_id id, const char *address, struct uv_stream_s *s) {
    set_nodelay(s);
    orig_accept_cb(t, id, address, s);
}
static int nodelay_listen(struct raft_uv_transport *t, raft_uv_accept_cb cb) {
    orig_accept_cb = cb;
    return orig_listen(t, nodelay_accepted);
}
static void nodelay_connected(struct raft_uv_connect *req, struct uv_stream_s *s, int status) {
    if (status == 0) set_nodelay(s);
    orig_connect_cb(req, s, status);
}
static int nodelay_connect(struct raft_uv_transport *t, struct raft_uv_connect *req, raft_id id,
                           const char *address, raft_uv_connect_cb cb) {
    orig_connect_cb = cb;
    return orig_connect(t, req, id, address, nodelay_connected);
}

static uint64_t now_ns(void) { return uv_hrtime(); }

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void submit_one(void);

static void finish_window(void) {
    double secs = (double)(now_ns() - start_ns) / 1e9;
    double cpu = cpu_seconds() - start_cpu;
    qsort(lat_ns, completed, sizeof *lat_ns, cmp_u64);
    printf("{\"window\": %u, \"n\": %u, \"failed\": %u, \"eps\": %.1f, \"p50_ms\": %.3f, \"p99_ms\": %.3f, "
           "\"cpu_us\": %.2f}\n",
           windows[cur], completed, failed, completed / secs, lat_ns[completed / 2] / 1e6,
           lat_ns[(size_t)(completed * 0.99)] / 1e6, cpu * 1e6 / completed);
    fflush(stdout);
    free(lat_ns);
    cur++;
    if (cur == n_windows) {
        exit(0); /* the parent kills the followers */
    }
    submitted = completed = inflight = failed = 0;
    lat_ns = calloc(counts[cur], sizeof *lat_ns);
    start_ns = now_ns();
    start_cpu = cpu_seconds();
    while (inflight < windows[cur] && submitted < counts[cur]) submit_one();
}

static void apply_cb(struct raft_apply *a, int status, void *result) {
    struct req *r = (struct req *)a;
    (void)result;
    if (status != 0) failed++;
    lat_ns[completed++] = now_ns() - r->t0;
    inflight--;
    free(r);
    if (completed == counts[cur]) {
        finish_window();
        return;
    }
    while (inflight < windows[cur] && submitted < counts[cur]) submit_one();
}

static void submit_one(void) {
    struct req *r = malloc(sizeof *r);
    struct raft_buffer buf;
    buf.len = entry_size;
    buf.base = raft_malloc(entry_size);
    memset(buf.base, 'x', entry_size);
    r->t0 = now_ns();
    submitted++;
    inflight++;
    int rv = raft_apply(&raft, &r->apply, &buf, 1, apply_cb);
    if (rv != 0) {
        fprintf(stderr, "raft_apply: %s\n", raft_strerror(rv));
        exit(2);
    }
}

static void timer_cb(uv_timer_t *t) {
    /* Start once this node leads and both followers have acknowledged the initial log. */
    if (raft_state(&raft) != RAFT_LEADER) return;
    for (unsigned i = 0; i < raft.configuration.n; i++) {
        raft_index m = 0;
        if (raft.configuration.servers[i].id == raft.id) continue;
        if (raft_match_index(&raft, raft.configuration.servers[i].id, &m) != 0 || m < raft_last_index(&raft)) return;
    }
    uv_timer_stop(t);
    cur = 0;
    lat_ns = calloc(counts[0], sizeof *lat_ns);
    start_ns = now_ns();
    start_cpu = cpu_seconds();
    while (inflight < windows[0] && submitted < counts[0]) submit_one();
}

static int parse_list(char *s, unsigned *out) {
    int n = 0;
    for (char *tok = strtok(s, ","); tok && n < MAX_WINDOWS; tok = strtok(NULL, ",")) out[n++] = (unsigned)atoi(tok);
    return n;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s ID DIR ADDR1,ADDR2,ADDR3 WINDOWS COUNTS SIZE\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    raft_id id = strtoull(argv[1], NULL, 10);
    const char *dir = argv[2];
    char *addrs = strdup(argv[3]);
    n_windows = parse_list(argv[4], windows);
    if (parse_list(argv[5], counts) != n_windows) return 2;
    entry_size = (size_t)atoi(argv[6]);
    if (entry_size == 0 || entry_size % 8) {
        fprintf(stderr, "SIZE must be a positive multiple of 8 (raft_uv)\n");
        return 2;
    }

    struct raft_configuration conf;
    raft_configuration_init(&conf);
    const char *self = NULL;
    raft_id i = 1;
    for (char *a = strtok(addrs, ","); a; a = strtok(NULL, ","), i++) {
        raft_configuration_add(&conf, i, a, RAFT_VOTER);
        if (i == id) self = a;
    }
    if (!self) return 2;

    uv_loop_init(&loop);
    transport.version = 1; /* must be set by the user (0.22) */
    raft_uv_tcp_init(&transport, &loop);
    orig_listen = transport.listen;
    orig_connect = transport.connect;
    transport.listen = nodelay_listen;
    transport.connect = nodelay_connect;
    if (raft_uv_init(&io, &loop, dir, &transport) != 0) {
        fprintf(stderr, "raft_uv_init: %s\n", io.errmsg);
        return 1;
    }
    fsm.version = 1;
    fsm.apply = fsm_apply;
    fsm.snapshot = fsm_snapshot;
    fsm.restore = fsm_restore;
    if (raft_init(&raft, &io, &fsm, id, self) != 0) return 1;
    /* Same as the engine (native/raft_compat.hpp): without LIBRAFT_TRACE, detach 0.22's
     * always-formatting stderr tracers so both sides measure libraft, not snprintf. */
    if (getenv("LIBRAFT_TRACE") == NULL) {
        raft.tracer = NULL;
        raft_uv_set_tracer(&io, NULL);
    }
    raft_set_election_timeout(&raft, 1000);
    raft_set_heartbeat_timeout(&raft, 100);
    raft_set_pre_vote(&raft, true);
    raft_set_snapshot_threshold(&raft, 8192);
    raft_set_snapshot_trailing(&raft, 1024);
#if RAFT_VERSION_NUMBER >= 1900
    raft_set_max_inflight_entries(&raft, 8192);
#endif
    int rv = raft_bootstrap(&raft, &conf);
    if (rv != 0 && rv != RAFT_CANTBOOTSTRAP) return 1;
    raft_configuration_close(&conf);
    if (raft_start(&raft) != 0) {
        fprintf(stderr, "raft_start: %s\n", raft_errmsg(&raft));
        return 1;
    }
    uv_timer_init(&loop, &timer);
    uv_timer_start(&timer, timer_cb, 10, 10);
    uv_run(&loop, UV_RUN_DEFAULT);
    return 0;
}
