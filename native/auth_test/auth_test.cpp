// Standalone test of the authenticated Raft transport (native/auth_transport.hpp), on loopback.
//
//   auth_test transport       transport-level cases (same secret, wrong secret, stock peer,
//                             silent peer, malformed preamble, overload, close mid-handshake)
//   auth_test raft <mode>     3 real raft nodes + a rogue raft node 4 that has a higher term and
//                             makes itself leader of a configuration listing 1-3 as standbys, so it
//                             sends AppendEntries to them. Modes:
//                               wrong-secret : cluster authenticated, rogue has another secret
//                               no-secret    : cluster authenticated, rogue uses stock TCP
//                               control      : everything stock TCP (expects the rogue to WIN,
//                                              proving the scenario really is an attack)
// Exit status 0 when every expectation held; each check prints one "ok"/"FAIL" line, and the
// raft mode ends with a line "RESULT {json}" read by tests/security/test_raft_transport.py.
//
// Files: this one (main and the shared helpers of harness.hpp), transport_cases.cpp,
// raft_cases.cpp; build.sh compiles them with the transport sources.
#include "harness.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>

int failures = 0;
uv_loop_t loop;

bool run_until(const std::function<bool()>& pred, unsigned timeout_ms) {
    uv_timer_t tick;
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, [](uv_timer_t*) {}, 5, 5);
    uint64_t deadline = uv_now(&loop) + timeout_ms;
    bool ok = pred();
    while (!ok && uv_now(&loop) < deadline) {
        uv_run(&loop, UV_RUN_ONCE);
        ok = pred();
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
    uv_run(&loop, UV_RUN_NOWAIT);
    return ok;
}

int free_port() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    socklen_t sl = sizeof sa;
    getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &sl);
    close(fd);
    return ntohs(sa.sin_port);
}

std::string addr_of(int port) { return "127.0.0.1:" + std::to_string(port); }

void put_le64(std::vector<unsigned char>& v, uint64_t x) {
    for (int i = 0; i < 8; i++) v.push_back(static_cast<unsigned char>(x >> (8 * i)));
}

int main(int argc, char** argv) {
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    std::string what = argc > 1 ? argv[1] : "transport";
    int rc = 0;
    if (what == "transport") rc = transport_tests();
    else if (what == "raft" && argc > 2) rc = raft_test(argv[2]);
    else { std::fprintf(stderr, "usage: auth_test transport | raft wrong-secret|no-secret|control\n"); return 2; }
    // Everything we opened must be closed: a non-zero uv_loop_close means a leaked handle.
    uv_run(&loop, UV_RUN_DEFAULT);
    int lc = uv_loop_close(&loop);
    if (lc != 0)
        uv_walk(&loop, [](uv_handle_t* h, void*) {
            std::printf("     open handle: %s%s\n", uv_handle_type_name(h->type), uv_is_closing(h) ? " (closing)" : "");
        }, nullptr);
    CHECK(lc == 0, "no libuv handle leaked");
    std::printf("%s: %d failure(s)\n", what.c_str(), failures);
    return (failures || rc) ? 1 : 0;
}
