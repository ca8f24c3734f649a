#!/usr/bin/env bash
# One command that shows what p2pcopy does.
#
# As root: builds the namespace lab (two homes, each behind its own NAT router, a STUN and an
# NTP server on a simulated internet) and copies a file from one home to the other, showing
# both users' screens. Without root (or with DEMO_LOOPBACK=1): the same two commands on loopback.
set -euo pipefail
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

# The NAT lab's tools (Debian packages; `.ci/run` installs them).
LAB_TOOLS=(ip nft turnserver chronyd faketime openssl python3 timeout)
LAB_PACKAGES="iproute2 nftables coturn chrony faketime openssl"
lab_tools_missing() {
    local t
    for t in "${LAB_TOOLS[@]}"; do command -v "$t" >/dev/null || { echo "$t"; return 0; }; done
    return 1
}

if [[ $(id -u) == 0 && -z ${DEMO_LOOPBACK:-} ]] && missing=$(lab_tools_missing); then
    echo "== the NAT lab needs $missing (apt-get install $LAB_PACKAGES); showing the loopback demo instead"
    DEMO_LOOPBACK=1
fi

if [[ $(id -u) == 0 && -z ${DEMO_LOOPBACK:-} ]]; then
    trap 'bash scripts/lab.sh down >/dev/null 2>&1 || true' EXIT
    bash scripts/lab.sh up
    bash scripts/lab.sh transfer "$@"
    exit 0
fi

echo "== loopback demo (run as root for the NAT lab)"
cargo build --release --quiet
BIN=$REPO_ROOT/target/release/p2pcopy
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/alice" "$WORK/bob"
head -c $((64 << 20)) /dev/urandom >"$WORK/alice/holiday.mp4"
mkfifo "$WORK/alice.in" "$WORK/bob.in"
exec 7<>"$WORK/alice.in" 8<>"$WORK/bob.in"
common=(--bind 127.0.0.1 --no-stun --no-ntp --timeout 30)
(cd "$WORK/alice" && "$BIN" sender --localport 4300 --file holiday.mp4 "${common[@]}" <"$WORK/alice.in" >"$WORK/alice.out" 2>&1) &
(cd "$WORK/bob" && "$BIN" receiver --localport 21300 "${common[@]}" <"$WORK/bob.in" >"$WORK/bob.out" 2>&1) &
ticket() { for _ in $(seq 100); do t=$(sed -n 's/^Tell this to your peer: //p' "$1"); [[ -n $t ]] && { echo "$t"; return; }; sleep 0.1; done; echo "no ticket in $1" >&2; exit 1; }
alice_ticket=$(ticket "$WORK/alice.out")
bob_ticket=$(ticket "$WORK/bob.out")
echo "$bob_ticket" >&7
echo "$alice_ticket" >&8
wait
echo; echo "---- Alice's screen: p2pcopy sender --localport 4300 --file holiday.mp4"; cat "$WORK/alice.out"
echo; echo "---- Bob's screen: p2pcopy receiver --localport 21300"; cat "$WORK/bob.out"
cmp "$WORK/alice/holiday.mp4" "$WORK/bob/holiday.mp4" && echo && echo "== identical copy arrived"
