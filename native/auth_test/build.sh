#!/usr/bin/env bash
# Builds the standalone transport test: build.sh OUT [extra compiler flags...]
# (tests/security/test_raft_transport.py calls it with -fsanitize=address,undefined).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$HERE/../.."
OUT="${1:?usage: build.sh OUT [flags...]}"; shift
export PKG_CONFIG_PATH="$ROOT/.deps/raft/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
RAFT_LIBDIR="$(pkg-config --variable=libdir raft)"
exec g++ -std=c++17 -O1 -g -Wall -Wextra "$@" \
  "$HERE/auth_test.cpp" "$HERE/transport_cases.cpp" "$HERE/raft_cases.cpp" \
  "$HERE/../auth_transport.cpp" "$HERE/../auth_conn.cpp" "$HERE/../auth_handshake.cpp" \
  "$HERE/../tls_transport.cpp" "$HERE/../tls_conn.cpp" -o "$OUT" \
  $(pkg-config --cflags raft libuv libssl libcrypto) \
  $(pkg-config --libs raft libuv libssl libcrypto) -Wl,-rpath,"$RAFT_LIBDIR"
