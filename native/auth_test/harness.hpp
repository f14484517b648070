// Shared pieces of the auth_test harness (see auth_test.cpp): checks, the one libuv loop, and
// loopback helpers. transport_cases.cpp and raft_cases.cpp hold the two test programs.
#pragma once

#include "../auth_transport.hpp"

#define static_assert(...) static_assert(true, "raft.h ABI check (checked in C)")
extern "C" {
#include <raft.h>
#include <raft/uv.h>
}
#undef static_assert

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

extern int failures;
#define CHECK(cond, what)                                                   \
    do {                                                                    \
        if (cond) std::printf("ok   %s\n", what);                           \
        else { std::printf("FAIL %s  (%s:%d)\n", what, __FILE__, __LINE__); failures++; } \
        std::fflush(stdout);                                                \
    } while (0)

// The one loop every transport and node of a run lives on (main checks it ends with no handle).
extern uv_loop_t loop;

// Run the loop until pred() holds or timeout_ms passes; a repeating timer keeps it waking.
bool run_until(const std::function<bool()>& pred, unsigned timeout_ms);

int free_port();
std::string addr_of(int port);
void put_le64(std::vector<unsigned char>& v, uint64_t x);

inline const unsigned char kSecret[] = "correct horse battery staple 0123456789";
inline const unsigned char kWrong[] = "wrong horse battery staple 0123456789!";

// The two programs; each returns its failure count.
int transport_tests();                     // transport_cases.cpp
int raft_test(const std::string& mode);    // raft_cases.cpp
