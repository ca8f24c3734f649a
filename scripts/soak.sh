#!/usr/bin/env bash
# Soak of a link that stays (issue 15): two `p2pcopy link` daemons on loopback, a file sent
# every SOAK_EVERY seconds, the direction alternating, with SOAK_IDLE_MINUTES of silence in
# the middle; every file is compared byte for byte on arrival, and both daemons' memory
# (VmRSS), peak (VmHWM) and open descriptors are sampled every minute. Not part of CI: its
# figures go into bench/RESULTS.md.
#
#   P2PCOPY_BIN=target/release/p2pcopy SOAK_MINUTES=60 bash scripts/soak.sh
#
# Loopback only (127.0.0.1): no namespaces, no root, no NAT. The lab's `link` scenarios
# cover NATs; this is about a link living long and staying the same size.
set -euo pipefail

BIN=$(realpath "${P2PCOPY_BIN:-target/release/p2pcopy}")
MINUTES=${SOAK_MINUTES:-60}
IDLE=${SOAK_IDLE_MINUTES:-10}
EVERY=${SOAK_EVERY:-3}
WD=$(mktemp -d /tmp/p2pcopy-soak.XXXXXX)
trap 'kill $APID $BPID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WD"' EXIT

mkdir -p "$WD"/{run-a,run-b,out-a,out-b,src}
chmod 700 "$WD"/run-a "$WD"/run-b
mkfifo "$WD/a.in" "$WD/b.in"
exec {AFD}<>"$WD/a.in" {BFD}<>"$WD/b.in"
common=(--bind 127.0.0.1 --no-stun --no-ntp --no-portmap)
XDG_RUNTIME_DIR=$WD/run-a "$BIN" link --name to-b --output "$WD/out-a" "${common[@]}" \
    <"$WD/a.in" >"$WD/a.out" 2>"$WD/a.err" &
APID=$!
XDG_RUNTIME_DIR=$WD/run-b "$BIN" link --name to-a --output "$WD/out-b" "${common[@]}" \
    <"$WD/b.in" >"$WD/b.out" 2>"$WD/b.err" &
BPID=$!
for _ in $(seq 1 100); do
    at=$(sed -n 's/^Tell this to your peer: //p' "$WD/a.out" | head -n 1)
    bt=$(sed -n 's/^Tell this to your peer: //p' "$WD/b.out" | head -n 1)
    [[ -n $at && -n $bt ]] && break
    sleep 0.1
done
printf '%s\n' "$bt" >&"$AFD"
printf '%s\n' "$at" >&"$BFD"
until grep -q '^Link to-b is up' "$WD/a.err" && grep -q '^Link to-a is up' "$WD/b.err"; do
    sleep 0.2
done

mem() { # PID: "RSS / peak MiB, fds"
    local fds
    fds=$(find "/proc/$1/fd" -mindepth 1 | wc -l)
    awk -v fds="$fds" '/^VmRSS/ {r = $2} /^VmHWM/ {h = $2}
        END {printf "%.1f / %.1f, %d", r / 1024, h / 1024, fds}' "/proc/$1/status"
}

sizes=(1024 65536 1048576 8388608)
sent=0 bytes=0 failed=0
start=$SECONDS next_sample=0
idle_from=$(((MINUTES - IDLE) * 30)) idle_to=$(((MINUTES + IDLE) * 30))
printf '| minute | files sent | MiB sent | a: RSS / peak MiB, fds | b: RSS / peak MiB, fds |\n|---|---|---|---|---|\n'
while ((SECONDS - start < MINUTES * 60)); do
    now=$((SECONDS - start))
    if ((now >= next_sample)); then
        printf '| %d | %d | %d | %s | %s |\n' $((now / 60)) "$sent" $((bytes >> 20)) \
            "$(mem "$APID")" "$(mem "$BPID")"
        next_sample=$((next_sample + 60))
    fi
    if ((now >= idle_from && now < idle_to)); then
        sleep 1
        continue
    fi
    size=${sizes[$((sent % 4))]}
    name=soak-$sent.bin
    head -c "$size" /dev/urandom >"$WD/src/$name"
    if ((sent % 2)); then from=b to=to-a dst=out-a; else from=a to=to-b dst=out-b; fi
    if XDG_RUNTIME_DIR=$WD/run-$from "$BIN" send -q --to "$to" "$WD/src/$name" &&
        cmp -s "$WD/src/$name" "$WD/$dst/$name"; then
        bytes=$((bytes + size))
    else
        failed=$((failed + 1))
        echo "file $name did not arrive intact" >&2
    fi
    rm -f "$WD/src/$name" "$WD/$dst/$name"
    sent=$((sent + 1))
    sleep "$EVERY"
done
printf '| %d (end) | %d | %d | %s | %s |\n' "$MINUTES" "$sent" $((bytes >> 20)) \
    "$(mem "$APID")" "$(mem "$BPID")"
echo "$sent files, $failed not intact; connections lost: $(cat "$WD/a.err" "$WD/b.err" | grep -c '^Connection lost' || true)"
((failed == 0))
