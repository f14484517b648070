#!/usr/bin/env bash
# Installs the system dependencies of bknr_cluster and makes libraft >= 0.18.1 available.
#
#  * Debian 13+: libraft-dev from apt (0.22.x).
#  * Debian 12 : apt ships 0.15.0 (Jepsen-found safety bugs), so we build Debian's own raft
#    source package from the trixie suite into a project-local prefix (.deps/raft). The mirror
#    is read from this machine's apt sources; no host name is written into the repository.
#
# Idempotent: a second run only checks and exits quickly.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="$ROOT/.deps/raft"
RAFT_MIN=0.18.1
RAFT_SRC_VERSION=0.22.1
STAMP="$ROOT/.deps/.apt-done"

log() { echo "[install-deps] $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

APT_PKGS=(libuv1-dev liblz4-dev libzstd-dev libssl-dev autoconf automake libtool pkg-config g++ make cmake
          dpkg-dev python3-venv python3-dev openssh-server openssh-client nginx-light iproute2 nftables
          haproxy chromium)

apt_install() {
  local missing=()
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt: installing ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

have_raft() {  # prints the pkg-config dir that provides raft >= RAFT_MIN, if any
  for d in "$PREFIX/lib/pkgconfig" ""; do
    [ -z "$d" ] || [ -d "$d" ] || continue
    if PKG_CONFIG_PATH="$d" pkg-config --atleast-version="$RAFT_MIN" raft 2>/dev/null; then
      echo "${d:-system}"; return 0
    fi
  done
  return 1
}

# The first Debian mirror URI configured on this machine (deb822 or one-line format).
debian_mirror() {
  local uri=""
  if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
    uri=$(awk '/^URIs:/ {for (i=2;i<=NF;i++) print $i}' /etc/apt/sources.list.d/*.sources \
          | grep -v -- '-security' | grep -i debian | head -n1 || true)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' \
          /etc/apt/sources.list | grep -v -- '-security' | head -n1 || true)
  fi
  [ -n "$uri" ] || { log "no Debian mirror found in /etc/apt sources"; return 1; }
  echo "$uri"
}

build_raft_from_source() {
  local work="$ROOT/.deps/build" state="$ROOT/.deps/apt-state" mirror
  mirror=$(debian_mirror)
  log "building raft $RAFT_SRC_VERSION from the trixie source package (mirror from apt sources)"
  rm -rf "$work" && mkdir -p "$work" "$state/lists/partial" "$state/cache/archives/partial" "$state/etc"
  printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie main\n' \
    "$mirror" > "$state/etc/sources.list"
  local opts=(-o "Dir::State=$state" -o "Dir::State::Lists=$state/lists"
              -o "Dir::Cache=$state/cache" -o "Dir::Etc::SourceList=$state/etc/sources.list"
              -o "Dir::Etc::SourceParts=$state/etc/none" -o "APT::Sandbox::User=root")
  apt-get "${opts[@]}" -qq update
  (cd "$work" && apt-get "${opts[@]}" -qq source "raft=$RAFT_SRC_VERSION-*" >/dev/null 2>&1 \
     || apt-get "${opts[@]}" -qq source raft >/dev/null)
  local src; src=$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'raft-*' | head -n1)
  [ -n "$src" ] || { log "apt-get source raft produced no source tree"; return 1; }
  (
    cd "$src"
    autoreconf -i >/dev/null 2>&1
    ./configure --prefix="$PREFIX" --enable-uv --disable-example --disable-benchmark >/dev/null
    make -j"$(nproc)" >/dev/null 2>&1
    make install >/dev/null
  )
  rm -rf "$work"
}

main() {
  apt_install
  local where
  if where=$(have_raft); then
    log "libraft $(PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" pkg-config --modversion raft) ok ($where)"
    return 0
  fi
  # Debian 13+ ships a safe libraft; take it from apt when the candidate is new enough.
  local cand
  cand=$(apt-cache policy libraft-dev 2>/dev/null | awk '/Candidate:/ {print $2}')
  if [ -n "$cand" ] && [ "$cand" != "(none)" ] && dpkg --compare-versions "$cand" ge "$RAFT_MIN"; then
    log "apt: installing libraft-dev $cand"
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq libraft-dev >/dev/null
  else
    build_raft_from_source
  fi
  where=$(have_raft) || { log "libraft >= $RAFT_MIN is still not available"; exit 1; }
  log "libraft $(PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" pkg-config --modversion raft) ok ($where)"
}

main "$@"
