#!/usr/bin/env bash
# p2pcopy network-namespace lab: real NAT traversal between namespaces.
#
# Usage (as root, from anywhere; paths are resolved against the repo root):
#   scripts/lab.sh test [SCENARIO...]   run scenarios (default: all), prints
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
# 198.18.0.0/15 is the lab "internet" and 10.N.0.0/24 its LANs, all inside
# p2p-* namespaces, with no link to the root namespace.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
# shellcheck source=scripts/lab/lib.sh
source "$REPO_ROOT/scripts/lab/lib.sh"

# Scenarios are "<sender>-<receiver>" kinds unless noted.  Each gets fresh
# routers and hosts (fresh conntrack); the core and its servers stay up.
#   public/cone/symmetric/full pairs   must transfer (full = cone + a dnat'd port)
#   same-nat            both hosts behind one cone router, one LAN
#   cone-cone-late      second paste 7 s after the first
#   cone-cone-verylate  second paste 50 s after the first (a lone round first)
#   cone-symmetric, symmetric-cone, symmetric-symmetric
#                       must fail: exit 6 on both sides within --timeout 50 +15 s,
#                       error line mentions "symmetric", nothing written
#   clock-skew          cone-cone, sender's wall clock 7 s ahead (faketime)
#   name-clash          a file of that name exists: kept, copy saved as "... (1)"
#   bad-ticket          garbage pasted: exit 3 on both sides
#   interrupt           SIGINT while waiting for the round: exit 130
#   disk-full           receiver's output dir is a 1 MiB tmpfs: exit 9 on both sides
#   link-loss           core throttled, then cut 1 s into the transfer: exit 7
ALL_SCENARIOS=(
    public-public
    public-cone
    cone-public
    symmetric-public
    cone-cone
    full-symmetric
    symmetric-full
    same-nat
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
    link-loss
)
FAIL_TIMEOUT=50

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
    local name=$1 opts=()
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
    link-loss)
        # throttled core, then all forwarding dropped mid-transfer: exit 7
        opts=(--expect lost --size-mb 24 --throttle "2 mbytes" --cut-after 1)
        lab_side p2p-s 1 cone && lab_side p2p-r 2 cone
        ;;
    *)
        echo "unknown scenario $name"
        return 2
        ;;
    esac || { echo "topology setup failed"; return 1; }
    if lab_transfer p2p-s p2p-r "$wd" "${opts[@]}" 2>&1 | sed 's/^/    /'; then
        return 0
    fi
    echo "    ---- sender stdout/stderr (tail)"
    tail -n 40 "$wd/sender.out" "$wd/sender.err" 2>&1 | sed 's/^/    | /'
    echo "    ---- receiver stdout/stderr (tail)"
    tail -n 40 "$wd/receiver.out" "$wd/receiver.err" 2>&1 | sed 's/^/    | /'
    lab_dump_ns_state | sed 's/^/    /'
    echo "    (full logs in $wd)"
    return 1
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
    local scenarios=("$@") name passed=0 failed=0 t0 rc results=()
    ((${#scenarios[@]})) || scenarios=("${ALL_SCENARIOS[@]}")
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
    -h | --help | help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) echo "usage: $0 test [SCENARIO...] | check | up | transfer [FILE] | down | list" >&2; exit 2 ;;
    esac
}

main "$@"
