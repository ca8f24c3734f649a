#!/usr/bin/env bash
# p2pcopy network-namespace lab: real NAT traversal between namespaces.
#
# Usage (as root, from anywhere; paths are resolved against the repo root):
#   scripts/lab.sh test [SCENARIO...]   run scenarios (default: all; double-nat and
#                                       double-cone only with LAB_DELAY_MS), prints
#                                       "N passed, N failed", non-zero on failure
#   scripts/lab.sh check                build a mixed topology and verify STUN,
#                                       NTP, the core router and NAT behaviour
#   scripts/lab.sh up                   build a cone-cone topology and leave it
#                                       running (p2p-alice, p2p-bob)
#   scripts/lab.sh transfer [FILE]      on an "up" topology: alice sends FILE
#                                       (default: random) to bob, output shown
#   scripts/lab.sh down                 remove every p2p-* namespace
#   scripts/lab.sh list                 list scenarios
#
# Environment:
#   P2PCOPY_BIN   binary to test; if unset, `cargo build --release` is run and
#                 target/release/p2pcopy is used
#   LAB_DIR       scratch/log directory (default /tmp/p2p-lab)
#   LAB_DELAY_MS  one-way delay of every link to the core (default 0); home NATs are
#                 then 2 x LAB_DELAY_MS apart, through p2pcopy-lab-netem (needs ethtool)
#   LAB_NETEM_BIN the delay line; built from lab/netem if unset
#
# Nothing here touches an address outside the namespaces it creates:
# 198.18.0.0/15 is the lab "internet", 10.N.0.0/24 its LANs and 100.64.N.0/24
# the lines behind its carrier-grade NATs, all inside p2p-* namespaces, with no link to the root namespace.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
# shellcheck source=scripts/lab/lib.sh
source "$REPO_ROOT/scripts/lab/lib.sh"

# Scenarios are "<sender>-<receiver>" kinds unless noted.  Each gets fresh
# routers and hosts (fresh conntrack); the core and its servers stay up.
#   public/cone/symmetric/full pairs   must transfer (full = cone + a dnat'd port)
#   same-nat            both hosts behind one cone router, one LAN
#   no-hairpin          same-nat, proven: a datagram from one host to the public
#                       address:port the other's socket is mapped to never arrives
#                       (the router does not hairpin; the LAN address works), then
#                       both must report "Connected directly to ... (local network)"
#   double-nat          both hosts behind a cone home NAT (10.N.0.2 -> 100.64.N.2)
#                       behind a cone carrier-grade NAT (-> 198.18.N.2); STUN must
#                       see the CGNAT's address; must transfer
#   double-cone         sender double NAT as above, receiver behind a plain cone
#                       double-nat and double-cone run only with LAB_DELAY_MS > 0
#                       (or when named): p2pcopy's TTL-2 openers pass the home NAT
#                       and expire AT the CGNAT (checked: ICMP time exceeded from
#                       100.64.1.1), so nothing opens a CGNAT before the first full
#                       probes.  With zero delay between the CGNATs the peer's probe
#                       often reaches a CGNAT before its own host's probe has left
#                       it: that unsolicited entry holds the port, the CGNAT maps its
#                       subscriber to a new port, and the peer's NAT filters that
#                       one.  double-nat needs both probes to leave their CGNATs
#                       before the other one arrives (microseconds).  Measured with no delay: double-nat 0 of 5 runs
#                       (3 rounds each, one CGNAT always remapped), double-cone 2 of 5;
#                       with LAB_DELAY_MS=10: 5 of 5 each, all in the first round.  On
#                       the internet CGNATs are milliseconds apart, as in that lab.
#   cone-cone-late      second paste 7 s after the first
#   cone-cone-verylate  second paste 50 s after the first (a lone round first)
#   cone-symmetric, symmetric-cone, symmetric-symmetric
#                       must fail: exit 6 on both sides within --timeout 50 +15 s,
#                       error line mentions "symmetric", nothing written
#   clock-skew          cone-cone, sender's wall clock 7 s ahead (faketime)
#   name-clash          a file of that name exists: kept, copy saved as "... (1)"
#   bad-ticket          garbage pasted: exit 3 on both sides
#   interrupt           SIGINT while waiting for the round: exit 130
#   disk-full           receiver's output dir is a 1 MiB tmpfs: refused up front,
#                       exit 9 on both sides, nothing written
#   disk-fills          public-public, core throttled, ~12 MiB into a 16 MiB tmpfs;
#                       1 s after both connect the receiver's tmpfs is filled
#                       up to 1 MiB (fallocate, from inside its mount namespace):
#                       exit 9 on both sides ("disk full while writing into" /
#                       "the receiver could not store the file"), the part file
#                       (size > 0) kept next to the filler, no final name
#   link-loss           public-cone, core throttled, then cut for good 1 s into
#                       the transfer, --timeout 30: exit 7 on both sides after the
#                       10 s idle timeout + 30 s of reconnecting; only the part
#                       file is left
#   folder              public-cone: a generated tree (tree.py make: ~300 files,
#                       empty ones, 1-5 MB ones, nested and empty folders, modes,
#                       ns mtimes, symlinks) plus a lone file; listings must match
#   resume              public-cone, 200 MB throttled: sender SIGKILLed at 50 %,
#                       receiver SIGINTed (part file kept), then both run again:
#                       only the missing part may cross (< 5 % of the file extra)
#   path-cut            cone-cone, 200 MB throttled, core forwarding dropped for
#                       20 s 3 s into the transfer: both reconnect, exit 0
#   doctor              `p2pcopy doctor` behind public, cone, symmetric and full
#                       (forwarded port): verdicts "no NAT", "cone NAT",
#                       "symmetric NAT", "full-cone NAT" (RFC 5780 filtering test
#                       against the lab's own stun-server with --alternate-ip)
ALL_SCENARIOS=(
    public-public
    public-cone
    cone-public
    symmetric-public
    cone-cone
    full-symmetric
    symmetric-full
    same-nat
    no-hairpin
    double-nat
    double-cone
    cone-cone-late
    cone-cone-verylate
    cone-symmetric
    symmetric-cone
    symmetric-symmetric
    clock-skew
    name-clash
    bad-ticket
    interrupt
    disk-full
    disk-fills
    link-loss
    folder
    resume
    path-cut
    doctor
)
# Skipped by a plain `test` without LAB_DELAY_MS (see double-nat above).
NEEDS_DELAY=(double-nat double-cone)
FAIL_TIMEOUT=50
# Core throttle for the 200 MB scenarios (resume, path-cut): ~15 s for the file.
BULK_RATE=${LAB_BULK_RATE:-"12 mbytes"}

need_root() {
    if [[ $(id -u) != 0 ]]; then
        echo "lab.sh: must run as root (network namespaces)" >&2
        exit 2
    fi
    local t
    for t in ip nft turnserver chronyd faketime python3 timeout; do
        command -v "$t" >/dev/null || { echo "lab.sh: missing tool: $t" >&2; exit 2; }
    done
}

resolve_bin() {
    if [[ -n ${LAB_DELAY_MS:-} && ${LAB_DELAY_MS} != 0 ]]; then
        if [[ -z ${LAB_NETEM_BIN:-} ]]; then
            cargo build --release -p p2pcopy-lab-netem
            LAB_NETEM_BIN=$REPO_ROOT/target/release/p2pcopy-lab-netem
        fi
        LAB_NETEM_BIN=$(realpath "$LAB_NETEM_BIN")
        export LAB_NETEM_BIN
        command -v ethtool >/dev/null || { echo "lab.sh: LAB_DELAY_MS needs ethtool" >&2; exit 2; }
    fi
    if [[ -n ${P2PCOPY_BIN:-} ]]; then
        P2PCOPY_BIN_ABS=$(realpath "$P2PCOPY_BIN")
    else
        echo "== cargo build --release"
        cargo build --release
        P2PCOPY_BIN_ABS=$REPO_ROOT/target/release/p2pcopy
    fi
    [[ -x $P2PCOPY_BIN_ABS ]] || { echo "lab.sh: no binary at $P2PCOPY_BIN_ABS" >&2; exit 2; }
    export P2PCOPY_BIN_ABS
}

on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    lab_cleanup
    exit "$rc"
}

# scenario_run NAME: fresh routers/hosts (the core stays), one transfer.
# Sender always p2p-s, receiver p2p-r.  NAME is "<sender kind>-<receiver kind>".
scenario_run() {
    local name=$1 opts=() custom=""
    local wd=$LAB_DIR/scenarios/$name
    lab_reset_edges
    case $name in
    public-public) lab_side p2p-s 1 public && lab_side p2p-r 2 public ;;
    public-cone) lab_side p2p-s 1 public && lab_side p2p-r 2 cone ;;
    cone-public) lab_side p2p-s 1 cone && lab_side p2p-r 2 public ;;
    cone-cone) lab_side p2p-s 1 cone && lab_side p2p-r 2 cone ;;
    full-symmetric) lab_side p2p-s 1 full "$LAB_SENDER_PORT" && lab_side p2p-r 2 symmetric ;;
    symmetric-full) lab_side p2p-s 1 symmetric && lab_side p2p-r 2 full "$LAB_RECEIVER_PORT" ;;
    same-nat) lab_router_up 1 cone && lab_lan_host p2p-s 1 2 && lab_lan_host p2p-r 1 3 ;;
    no-hairpin)
        custom=scenario_no_hairpin
        lab_router_up 1 cone && lab_lan_host p2p-s 1 2 && lab_lan_host p2p-r 1 3
        ;;
    double-nat)
        custom=scenario_double_nat
        lab_side p2p-s 1 double && lab_side p2p-r 2 double
        ;;
    double-cone)
        custom=scenario_double_nat
        lab_side p2p-s 1 double && lab_side p2p-r 2 cone
        ;;
    symmetric-public) lab_side p2p-s 1 symmetric && lab_side p2p-r 2 public ;;
    cone-cone-verylate)
        # second paste after a whole round: the first peer's probes hit the
        # second NAT before it ever sent anything
        opts=(--delay 50)
        lab_side p2p-s 1 cone && lab_side p2p-r 2 cone
        ;;
    cone-cone-late)
        opts=(--delay 7)
        lab_side p2p-s 1 cone && lab_side p2p-r 2 cone
        ;;
    cone-symmetric)
        opts=(--expect fail --timeout "$FAIL_TIMEOUT")
        lab_side p2p-s 1 cone && lab_side p2p-r 2 symmetric
        ;;
    symmetric-cone)
        opts=(--expect fail --timeout "$FAIL_TIMEOUT")
        lab_side p2p-s 1 symmetric && lab_side p2p-r 2 cone
        ;;
    symmetric-symmetric)
        opts=(--expect fail --timeout "$FAIL_TIMEOUT")
        lab_side p2p-s 1 symmetric && lab_side p2p-r 2 symmetric
        ;;
    clock-skew)
        opts=(--sender-faketime +7s)
        lab_side p2p-s 1 cone && lab_side p2p-r 2 cone
        ;;
    name-clash)
        opts=(--clash)
        lab_side p2p-s 1 public && lab_side p2p-r 2 public
        ;;
    bad-ticket)
        opts=(--expect badticket)
        lab_side p2p-s 1 cone && lab_side p2p-r 2 cone
        ;;
    interrupt)
        opts=(--expect interrupt)
        lab_side p2p-s 1 cone && lab_side p2p-r 2 cone
        ;;
    disk-full)
        # receiver's output dir is a 1 MiB tmpfs: both sides must exit 9
        opts=(--expect diskfull --out-tmpfs 1m)
        lab_side p2p-s 1 public && lab_side p2p-r 2 public
        ;;
    disk-fills)
        # the disk fills up under a running transfer (after the up-front check)
        opts=(--expect diskfills --out-tmpfs 16m --size-mb 12 --throttle "2 mbytes" --fill-after 1)
        lab_side p2p-s 1 public && lab_side p2p-r 2 public
        ;;
    link-loss)
        # throttled core, then all forwarding dropped mid-transfer for good: exit 7
        # after the idle timeout (10 s) and --timeout of reconnecting
        opts=(--expect lost --timeout 30 --size-mb 24 --throttle "2 mbytes" --cut-after 1)
        lab_side p2p-s 1 public && lab_side p2p-r 2 cone
        ;;
    folder)
        opts=(--tree)
        lab_side p2p-s 1 public && lab_side p2p-r 2 cone
        ;;
    resume)
        custom=scenario_resume
        lab_side p2p-s 1 public && lab_side p2p-r 2 cone
        ;;
    doctor)
        custom=scenario_doctor
        lab_side p2p-d1 1 public && lab_side p2p-d2 2 cone &&
            lab_side p2p-d3 3 symmetric && lab_side p2p-d4 4 full 4300
        ;;
    path-cut)
        opts=(--size-mb 200 --throttle "$BULK_RATE" --cut-after 3 --cut-for 20)
        lab_side p2p-s 1 cone && lab_side p2p-r 2 cone
        ;;
    *)
        echo "unknown scenario $name"
        return 2
        ;;
    esac || { echo "topology setup failed"; return 1; }
    if [[ -n $custom ]]; then
        "$custom" "$wd" 2>&1 | sed 's/^/    /'
    else
        lab_transfer p2p-s p2p-r "$wd" "${opts[@]}" 2>&1 | sed 's/^/    /'
    fi
    ((PIPESTATUS[0] == 0)) && return 0
    local d
    for d in "$wd" "$wd"/run*; do
        [[ -f $d/sender.err ]] || continue
        echo "    ---- $d: sender stdout/stderr (tail)"
        tail -n 40 "$d/sender.out" "$d/sender.err" 2>&1 | sed 's/^/    | /'
        echo "    ---- $d: receiver stdout/stderr (tail)"
        tail -n 40 "$d/receiver.out" "$d/receiver.err" 2>&1 | sed 's/^/    | /'
    done
    lab_dump_ns_state | sed 's/^/    /'
    echo "    (full logs in $wd)"
    return 1
}

# human_bytes_to_int "95.37 MiB": bytes (indicatif's HumanBytes, binary units).
human_bytes_to_int() {
    awk '{ m = 1; u = $2
           if (u == "KiB") m = 1024; else if (u == "MiB") m = 1024^2
           else if (u == "GiB") m = 1024^3; else if (u == "TiB") m = 1024^4
           printf "%d\n", $1 * m }' <<<"$1"
}

# scenario_doctor WD: doctor's one-line verdict behind each kind of NAT the lab has.
scenario_doctor() {
    local wd=$1 rc=0 n kind want out
    mkdir -p "$wd"
    for spec in "1:public:Verdict: no NAT" "2:cone:Verdict: cone NAT" \
        "3:symmetric:Verdict: symmetric NAT" "4:full:Verdict: full-cone NAT"; do
        IFS=: read -r n kind want <<<"$spec"
        out=$wd/doctor-$kind.txt
        timeout 60 ip netns exec "p2p-d$n" "$P2PCOPY_BIN_ABS" doctor --localport 4300 \
            "${LAB_NET_ARGS[@]}" >"$out" 2>&1 || true
        if grep -q "^$want" "$out"; then
            echo "behind $kind: $(grep '^Verdict' "$out" | cut -c1-70)..."
        else
            echo "FAIL behind $kind: expected a line starting '$want'"
            sed 's/^/  | /' "$out"
            rc=1
        fi
    done
    return $rc
}

# scenario_no_hairpin WD: both hosts behind p2p-nat1 (cone, which does not hairpin).
# First proves that: from p2p-s, datagrams to the public address:port that a socket
# of p2p-r is mapped to never reach it (the router takes them for itself: its
# conntrack entry has no translation), while the same datagram to p2p-r's LAN
# address does.  Then the transfer, which both sides must report as connected
# over the local network.  The check uses other ports than the transfer's.
scenario_no_hairpin() {
    local wd=$1 h=$1/hairpin out mapped rp ct sport=4310 rport=21310 rc=0
    rm -rf "$wd"
    mkdir -p "$h"
    out=$(lab_nsx p2p-r "${LAB_PROBE[@]}" stun --bind "0.0.0.0:$rport" "$LAB_STUN1" 2>&1) || true
    mapped=$(awk 'NR == 1 && $2 == "mapped" { print $3 }' <<<"$out")
    if [[ $mapped != 198.18.1.2:* ]]; then
        echo "problem: STUN from p2p-r's port $rport: '$out'"
        return 1
    fi
    echo "hairpin check: p2p-r's 10.1.0.3:$rport is mapped to $mapped"
    # 1. via the router's public address: must not arrive
    lab_nsx p2p-r "${LAB_PROBE[@]}" recv --bind "0.0.0.0:$rport" --wait 2 >"$h/via-public.out" 2>&1 &
    rp=$!
    lab_wait_udp_listen p2p-r 0.0.0.0 "$rport" || { echo "problem: probe listener did not start"; wait "$rp"; return 1; }
    lab_nsx p2p-s "${LAB_PROBE[@]}" send --bind "0.0.0.0:$sport" --count 3 "$mapped" >"$h/send-public.out" 2>&1 || true
    wait "$rp" || true
    echo "  p2p-s 10.1.0.2:$sport -> $mapped (3 datagrams): p2p-r got: $(head -n 1 "$h/via-public.out")"
    grep -qx 'nothing received' "$h/via-public.out" || { echo "problem: the router hairpins"; rc=1; }
    ct=$(lab_nsx p2p-nat1 cat /proc/net/nf_conntrack 2>/dev/null |
        grep -w udp | grep -F "src=10.1.0.2 dst=198.18.1.2 sport=$sport dport=${mapped#*:} " |
        sed 's/^.* udp *17 *[0-9]* //' | head -n 1)
    echo "  p2p-nat1 conntrack: ${ct:-(no entry)}"
    if [[ -z $ct ]]; then
        echo "problem: no conntrack entry for that flow on p2p-nat1"
        rc=1
    elif [[ $ct == *"src=10.1.0.3 "* ]]; then
        echo "problem: the router translated it to p2p-r (hairpin)"
        rc=1
    fi
    # 2. control: the same datagram to the LAN address arrives
    lab_nsx p2p-r "${LAB_PROBE[@]}" recv --bind "0.0.0.0:$rport" --wait 2 >"$h/via-lan.out" 2>&1 &
    rp=$!
    lab_wait_udp_listen p2p-r 0.0.0.0 "$rport" || { echo "problem: probe listener did not start"; wait "$rp"; return 1; }
    lab_nsx p2p-s "${LAB_PROBE[@]}" send --bind "0.0.0.0:$sport" --count 1 "10.1.0.3:$rport" >"$h/send-lan.out" 2>&1 || true
    wait "$rp" || true
    echo "  p2p-s 10.1.0.2:$sport -> 10.1.0.3:$rport (control): p2p-r got: $(head -n 1 "$h/via-lan.out")"
    grep -q "^from 10.1.0.2:$sport " "$h/via-lan.out" || { echo "problem: the LAN control datagram did not arrive"; rc=1; }
    ((rc == 0)) || return 1
    echo "transfer: must connect over the local network on both sides"
    lab_transfer p2p-s p2p-r "$wd/run" --path "local network" \
        --sender-mapped 198.18.1.2 --receiver-mapped 198.18.1.2
}

# scenario_double_nat WD: one transfer where the sender (double-cone) or both
# (double-nat) sit behind a home NAT behind a CGNAT.  STUN must see the CGNAT's
# address (198.18.N.2).  First a TTL-2 datagram (what p2pcopy's openers are) from
# the sender must die at its CGNAT (ICMP time exceeded from 100.64.1.1), on other
# ports than the transfer's.  Afterwards the UDP conntrack entries of every router
# with the peer's public address go to WD/conntrack.txt, and for each CGNAT one
# line says whether its subscriber's mapping towards the peer kept its port or
# was moved because the peer's probe got there first (the opener cannot open a
# CGNAT: TTL 2 expires there).
scenario_double_nat() {
    local wd=$1 rc=0 ns n peer ttl
    ttl=$(lab_nsx p2p-s "${LAB_PROBE[@]}" ttl --bind 0.0.0.0:4311 --ttl 2 198.18.2.2:21311 2>&1) || true
    lab_transfer p2p-s p2p-r "$wd" --sender-mapped 198.18.1.2 --receiver-mapped 198.18.2.2 || rc=1
    echo "TTL-2 datagram from p2p-s: $ttl"
    if ! grep -q 'icmp type 11 .* from 100\.64\.1\.1 ' <<<"$ttl"; then
        echo "problem: a TTL-2 datagram from behind the double NAT did not expire at the CGNAT"
        rc=1
    fi
    for ns in p2p-nat1 p2p-cgnat1 p2p-nat2 p2p-cgnat2; do
        lab_namespaces | grep -qx "$ns" || continue
        echo "$ns:"
        lab_nsx "$ns" cat /proc/net/nf_conntrack 2>/dev/null | grep -w udp |
            grep -E "(src|dst)=198\.18\.[12]\.2 .*(src|dst)=198\.18\.[12]\.2 " |
            sed 's/^.* udp *17 */  /'
    done >"$wd/conntrack.txt"
    for n in 1 2; do
        lab_namespaces | grep -qx "p2p-cgnat$n" || continue
        peer=198.18.$((3 - n)).2
        # "src= dst= sport= dport= [UNREPLIED] src= dst= sport= dport=": fields by name
        lab_nsx "p2p-cgnat$n" cat /proc/net/nf_conntrack 2>/dev/null | grep -w udp |
            awk -v me="198.18.$n.2" -v home="100.64.$n.2" -v peer="$peer" -v ns="p2p-cgnat$n" '
            {
                k = 0; unrep = 0
                for (i = 1; i <= NF; i++) {
                    if ($i == "[UNREPLIED]") unrep = 1
                    if (split($i, kv, "=") == 2 && kv[1] ~ /^(src|dst|sport|dport)$/) {
                        if (kv[1] == "src") k++
                        v[k, kv[1]] = kv[2]
                    }
                }
                if (v[1, "src"] == home && v[1, "dst"] == peer)
                    printf "%s: %s:%s -> %s:%s leaves as %s:%s (%s)%s\n", ns, home, v[1, "sport"],
                        peer, v[1, "dport"], me, v[2, "dport"],
                        v[1, "sport"] == v[2, "dport"] ? "port kept" : "REMAPPED: the peer probe came first",
                        unrep ? ", no answer" : ", answered"
                else if (v[1, "src"] == peer && v[1, "dst"] == me && unrep)
                    printf "%s: unsolicited %s:%s -> %s:%s (dropped; holds port %s)\n", ns,
                        peer, v[1, "sport"], me, v[1, "dport"], v[1, "dport"]
            }'
    done
    echo "(conntrack of all routers: $wd/conntrack.txt)"
    return $rc
}

# scenario_resume WD: 200 MB, sender killed halfway, then both run again.
scenario_resume() {
    local wd=$1 size=$((200 * 1024 * 1024 + RANDOM))
    rm -rf "$wd"
    mkdir -p "$wd/out"
    head -c "$size" /dev/urandom >"$wd/big.bin"
    echo "run 1: core throttled to $BULK_RATE/s; sender killed when half the file arrived"
    lab_transfer p2p-s p2p-r "$wd/run1" --file "$wd/big.bin" --out "$wd/out" \
        --throttle "$BULK_RATE" --kill-at 50 --expect killed || return 1
    local part
    part=$(cat "$wd/run1/part.size")
    echo "run 2: both commands again (new tickets), no throttle"
    lab_transfer p2p-s p2p-r "$wd/run2" --file "$wd/big.bin" --out "$wd/out" --count-bytes || return 1
    local note resumed_h resumed wire
    note=$(grep -o '[0-9.]* [KMGT]*i*B resumed from an earlier run' "$wd/run2/sender.err" | head -n 1)
    if ! grep -q 'resumed from an earlier run' "$wd/run2/receiver.err"; then
        echo "problem: receiver's summary does not mention what was resumed"
        return 1
    fi
    if [[ -z $note ]]; then
        echo "problem: sender's summary does not mention what was resumed"
        return 1
    fi
    resumed_h=${note% resumed*}
    resumed=$(human_bytes_to_int "$resumed_h")
    wire=$(cat "$wd/run2/bytes.wan1")
    # resent: what had arrived but crossed again; excess: all bytes on the wire in
    # run 2 beyond what was missing (QUIC/UDP/IP overhead included).
    awk -v size="$size" -v part="$part" -v resumed="$resumed" -v wire="$wire" -v rh="$resumed_h" 'BEGIN {
        missing = size - part
        printf "file %d bytes; part file after run 1 P = %d (%.1f%%)\n", size, part, 100 * part / size
        printf "run 2: resumed %s (= %d bytes, to the rounding of the summary)\n", rh, resumed
        printf "re-sent = P - resumed = %d bytes (%.3f%% of the file)\n", part - resumed, 100 * (part - resumed) / size
        printf "run 2 on the wire (sender -> core, UDP, headers included): %d bytes; size - resumed = %d, size - P = %d missing: %+.2f%% of the file over what was missing\n",
            wire, size - resumed, missing, 100 * (wire - missing) / size
        bad = 0
        # 2 decimals of a MiB in the summary: allow 0.01 MiB of rounding
        if (part - resumed > 0.05 * size) { print "problem: more than 5 % of the file was sent again"; bad = 1 }
        if (resumed - part > 10486) { print "problem: resumed more than the part file held"; bad = 1 }
        if (wire - missing > 0.05 * size) { print "problem: run 2 moved more than 5 % of the file over what was missing"; bad = 1 }
        if (wire < missing) { print "problem: run 2 moved less than what was missing"; bad = 1 }
        exit bad
    }'
}

# start_core: fresh lab with only the core (servers) up; torn down on exit.
start_core() {
    need_root
    resolve_bin
    trap on_exit EXIT
    trap 'exit 130' INT TERM
    lab_cleanup
    mkdir -p "$LAB_DIR"
    echo "== lab: core (STUN $LAB_STUN1 $LAB_STUN2, NTP $LAB_NTP)"
    lab_core_up
}

cmd_test() {
    local scenarios=("$@") name passed=0 failed=0 t0 rc results=() skipped=()
    if ((${#scenarios[@]} == 0)); then
        for name in "${ALL_SCENARIOS[@]}"; do
            if [[ ${LAB_DELAY_MS:-0} == 0 && " ${NEEDS_DELAY[*]} " == *" $name "* ]]; then
                skipped+=("$name")
            else
                scenarios+=("$name")
            fi
        done
    fi
    start_core
    echo "== lab: self-check"
    if ! lab_selfcheck; then
        echo "lab self-check failed; not running scenarios"
        echo "0 passed, ${#scenarios[@]} failed"
        return 1
    fi
    local tall=$SECONDS
    for name in "${scenarios[@]}"; do
        echo "== scenario $name"
        t0=$SECONDS
        set +e
        scenario_run "$name"
        rc=$?
        set -e
        if ((rc == 0)); then
            passed=$((passed + 1))
            results+=("PASS  $name ($((SECONDS - t0))s)")
        else
            failed=$((failed + 1))
            results+=("FAIL  $name ($((SECONDS - t0))s)")
        fi
        echo "${results[-1]}"
    done
    echo "== summary ($((SECONDS - tall))s)"
    printf '%s\n' "${results[@]}"
    ((${#skipped[@]} == 0)) || echo "not run without LAB_DELAY_MS (zero delay between two CGNATs): ${skipped[*]}"
    echo "$passed passed, $failed failed"
    ((failed == 0))
}

cmd_check() {
    start_core
    if lab_selfcheck; then
        echo "self-check OK"
    else
        echo "self-check FAILED"
        return 1
    fi
}

cmd_up() {
    need_root
    trap on_exit EXIT
    lab_up_demo
    trap - EXIT
    echo "lab is up; run p2pcopy with: ip netns exec p2p-alice ... / ip netns exec p2p-bob ..."
    echo "network flags: ${LAB_NET_ARGS[*]}"
}

cmd_transfer() {
    need_root
    lab_namespaces | grep -qx p2p-alice || { echo "lab is not up (scripts/lab.sh up)" >&2; exit 2; }
    resolve_bin
    local opts=(--show)
    [[ -n ${1:-} ]] && opts+=(--file "$1")
    if lab_transfer p2p-alice p2p-bob "$LAB_DIR/demo" "${opts[@]}"; then
        echo "transfer OK: $(ls "$LAB_DIR/demo/out")"
    else
        echo "transfer FAILED (logs in $LAB_DIR/demo)"
        return 1
    fi
}

# Namespace names are machine-global: serialise lab runs (bounded wait).
take_lock() {
    command -v flock >/dev/null || return 0
    exec 9>"${LAB_LOCK:-/tmp/p2p-lab.lock}"
    if ! flock -n 9; then
        echo "lab.sh: another lab run holds ${LAB_LOCK:-/tmp/p2p-lab.lock}; waiting (max 20 min)" >&2
        flock -w 1200 9 || { echo "lab.sh: lock wait timed out" >&2; exit 2; }
    fi
}

main() {
    local cmd=${1:-test}
    (($#)) && shift
    case $cmd in test | check | up | down | transfer) take_lock ;; esac
    case $cmd in
    test) cmd_test "$@" ;;
    check) cmd_check ;;
    up) cmd_up ;;
    down) need_root; lab_cleanup ;;
    transfer) cmd_transfer "$@" ;;
    list) printf '%s\n' "${ALL_SCENARIOS[@]}" ;;
    -h | --help | help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) echo "usage: $0 test [SCENARIO...] | check | up | transfer [FILE] | down | list" >&2; exit 2 ;;
    esac
}

main "$@"
