#!/usr/bin/env bash
# `p2pcopy stun-server` against STUN clients we did not write, on loopback only:
#   - coturn's RFC 5780 client `turnutils_stunclient` (Debian package coturn): three
#     requests, the second with RESPONSE-PORT and CHANGE-REQUEST, the third with PADDING;
#     it blocks for ever on an answer that does not come, so each run is under `timeout`.
#   - the classic RFC 3489 client `stun` (Debian package stun-client): no magic cookie,
#     CHANGE-REQUEST, expects MAPPED-ADDRESS and CHANGED-ADDRESS.
# (stuntman's client is not packaged in Debian 12, so it is not tried.)
#
#   scripts/stun-interop.sh
#
# The server listens on 127.0.0.1 with 127.0.0.2 as its alternate address (both are loopback
# on Linux without any set-up); nothing leaves the machine.
#
# Environment:
#   P2PCOPY_BIN            binary to test (default target/debug/p2pcopy)
#   STUN_INTEROP_REQUIRE   1: missing clients are a failure, not a skip (CI sets it)
#   STUN_INTEROP_TIMEOUT   seconds each client run may take (default 10)
#
# Prints one line per check and "stun interop: N passed, N failed"; exits 1 if any failed,
# 0 when all passed or the clients are missing (skipped).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${P2PCOPY_BIN:-target/debug/p2pcopy}
LIMIT=${STUN_INTEROP_TIMEOUT:-10}

missing=()
command -v turnutils_stunclient >/dev/null || missing+=("turnutils_stunclient (apt-get install coturn)")
command -v stun >/dev/null || missing+=("stun (apt-get install stun-client)")
if ((${#missing[@]})); then
    echo "stun interop: missing ${missing[*]}"
    if [[ ${STUN_INTEROP_REQUIRE:-0} == 1 ]]; then
        exit 1
    fi
    echo "stun interop: skipped"
    exit 0
fi
if [[ ! -x $BIN ]]; then
    echo "stun interop: no binary at $BIN (cargo build, or set P2PCOPY_BIN)" >&2
    exit 1
fi

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

passed=0
failed=0
check() { # check NAME COMMAND...: runs COMMAND, counts and prints the result
    local name=$1
    shift
    if "$@"; then
        echo "ok   $name"
        passed=$((passed + 1))
    else
        echo "FAIL $name"
        failed=$((failed + 1))
    fi
}
has() { grep -qE -- "$2" "$1"; }
count_is() { [[ $(grep -cE -- "$2" "$1" || true) == "$3" ]]; }
# coturn's client sometimes prints a line twice (its log goes to stdout twice), hence "at least".
at_least() { (($(grep -cE -- "$2" "$1" || true) >= $3)); }

# start_server NAME ARGS...: starts the server, sets PORT to its primary port.
start_server() {
    local name=$1
    shift
    "$BIN" stun-server "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    SERVER_PID=$!
    PORT=
    for _ in $(seq 50); do
        PORT=$(sed -n 's/^STUN server listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$WORK/$name.out" | head -1)
        [[ -n $PORT ]] && break
        sleep 0.1
    done
    if [[ -z $PORT ]]; then
        echo "stun interop: the server did not start:" >&2
        cat "$WORK/$name.err" >&2
        exit 1
    fi
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# run_client NAME COMMAND...: runs a client under the timeout, output in $WORK/NAME.log,
# exit status in $WORK/NAME.rc (124: timed out).
run_client() {
    local name=$1
    shift
    local rc=0
    timeout "$LIMIT" "$@" >"$WORK/$name.log" 2>&1 || rc=$?
    echo "$rc" >"$WORK/$name.rc"
    echo "---- $* (exit $rc)"
    sed 's/^/     /' "$WORK/$name.log" | tail -20
}
not_timed_out() { [[ $(cat "$WORK/$1.rc") != 124 ]]; }

echo "== RFC 5780 server: 127.0.0.1 with alternate 127.0.0.2 ($BIN)"
start_server rfc5780 --listen 127.0.0.1:0 --alternate-ip 127.0.0.2
ALT_PORT=$((PORT + 1))

run_client coturn turnutils_stunclient -p "$PORT" 127.0.0.1
check "coturn client finishes (no wait for an answer that never comes)" not_timed_out coturn
check "coturn client gets all three RFC 5780 answers" count_is "$WORK/coturn.log" '^RFC 5780 response [123]$' 3
# Test 2 asks for the other IP and port and its answer at RESPONSE-PORT; test 3 too, padded.
check "answers 2 and 3 come from the alternate address and port" \
    at_least "$WORK/coturn.log" "Response origin: : 127\.0\.0\.2:$ALT_PORT\$" 2
check "OTHER-ADDRESS names the alternate address and port" \
    at_least "$WORK/coturn.log" "Other addr: : 127\.0\.0\.2:$ALT_PORT\$" 3
check "every answer has the client's loopback address" \
    at_least "$WORK/coturn.log" 'UDP reflexive addr: 127\.0\.0\.1:[0-9]+$' 3

run_client classic stun "127.0.0.1:$PORT" -v
check "classic client finishes" not_timed_out classic
for t in 'I' 'II' 'III' 'I\(2\)'; do
    check "classic client's test $t answered" has "$WORK/classic.log" "^test $t = 1\$"
done
# Loopback has no NAT: "Open" is the right verdict.
check "classic client finds no NAT" has "$WORK/classic.log" '^Primary: Open'
stop_server

echo "== plain RFC 5389 server: 127.0.0.1 only"
start_server plain --listen 127.0.0.1:0
run_client coturn-plain turnutils_stunclient -p "$PORT" 127.0.0.1
check "coturn client gets its address" has "$WORK/coturn-plain.log" 'UDP reflexive addr: 127\.0\.0\.1:[0-9]+$'
check "and no RFC 5780 answer (no alternate address to offer)" \
    count_is "$WORK/coturn-plain.log" '^RFC 5780 response' 0
stop_server

echo "stun interop: $passed passed, $failed failed"
((failed == 0))
