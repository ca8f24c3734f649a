#!/usr/bin/env bash
# One 1 GiB transfer on loopback per line, alternating net.core.rmem_max/wmem_max between
# 4 MiB (what p2pcopy asks for) and Linux's usual default 208 KiB: the sender's rate and its
# path stats (packets sent and lost, congestion events). Root only (the sysctls are global
# to the machine: run it when nothing else measures); restores the old values at the end.
#
#   scripts/bench/udp-buffers.sh [RUNS]     (P2PCOPY_BIN, default target/release/p2pcopy)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BIN=$(realpath "${P2PCOPY_BIN:-target/release/p2pcopy}")
RUNS=${1:-3}
old_r=$(sysctl -n net.core.rmem_max)
old_w=$(sysctl -n net.core.wmem_max)
work=$(mktemp -d /dev/shm/p2pcopy-rmem-XXXXXX)
trap 'sysctl -qw net.core.rmem_max=$old_r net.core.wmem_max=$old_w; kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
head -c $((1024 << 20)) /dev/urandom >"$work/big.bin"

one() {
    local w
    w=$(mktemp -d "$work/run.XXXX")
    mkdir "$w/out"
    mkfifo "$w/a.in" "$w/b.in"
    exec 7<>"$w/a.in" 8<>"$w/b.in"
    local common=(--bind 127.0.0.1 --no-stun --no-ntp --timeout 30 --json)
    (cd "$work" && RUST_LOG=p2pcopy=info "$BIN" sender --localport 0 --file big.bin "${common[@]}" <"$w/a.in" >"$w/a.out" 2>"$w/a.err") &
    (RUST_LOG=p2pcopy=info "$BIN" receiver --localport 0 --output "$w/out" "${common[@]}" <"$w/b.in" >"$w/b.out" 2>"$w/b.err") &
    ticket() { for _ in $(seq 100); do t=$(grep -o '"ticket":"[^"]*"' "$1" | head -n1 | cut -d'"' -f4); [[ -n $t ]] && { echo "$t"; return; }; sleep 0.05; done; }
    local at bt
    at=$(ticket "$w/a.out")
    bt=$(ticket "$w/b.out")
    echo "$bt" >&7
    echo "$at" >&8
    wait
    exec 7>&- 8>&-
    python3 -c 'import json,sys; d=[json.loads(l) for l in open(sys.argv[1]) if "\"summary\"" in l][0]; print("%5.0f Mbit/s" % (d["bytes_per_s"] * 8 / 1e6), end="  ")' "$w/a.out"
    grep -h "path stats" "$w/a.err" | grep -o "sent_packets=[0-9]*\|lost_packets=[0-9]*\|congestion_events=[0-9]*" | tr '\n' ' '
    echo
    rm -rf "$w"
}

for i in $(seq "$RUNS"); do
    for m in 4194304 212992; do
        sysctl -qw net.core.rmem_max=$m net.core.wmem_max=$m
        echo "run $i rmem_max=$m: $(one)"
    done
done
