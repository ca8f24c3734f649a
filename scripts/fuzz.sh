#!/usr/bin/env bash
# Coverage-guided fuzzing of the wire-format parsers and the transfer's control machines
# (fuzz/fuzz_targets/*.rs) with cargo fuzz (libFuzzer), each target for a bounded time. Used by
# CI (5 targets at 45 s: under 4 minutes of fuzzing); runs the same on a developer's machine.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET [TARGET...]]
#
# SECONDS_PER_TARGET defaults to 30; TARGETs default to every target `cargo fuzz list` prints,
# so a new target needs only its fuzz_targets/NAME.rs, a [[bin]] in fuzz/Cargo.toml and, if
# it has any, seed inputs in fuzz/seeds/NAME/.
#
# Works on a stable toolchain: cargo fuzz passes nightly-only -Z flags (-Zsanitizer=...), which
# RUSTC_BOOTSTRAP=1 makes stable rustc and cargo accept. Installs cargo-fuzz when missing.
#
# Corpora: the committed seeds in fuzz/seeds/NAME/ are only read; what libFuzzer finds goes to
# fuzz/corpus/NAME/ (git-ignored, kept between local runs so coverage builds up). Crash, timeout
# and out-of-memory inputs go to fuzz/artifacts/NAME/ (git-ignored); the full libFuzzer output
# of each target to fuzz/target/fuzz-logs/NAME.log.
#
# Exits non-zero when any target crashed (panic, failed assertion, sanitizer report, timeout,
# out of memory), after printing each such input's path, bytes and how to reproduce it.
#
# Environment:
#   FUZZ_SANITIZER   address (the default; falls back to none if that build fails) or none
#   CARGO_FUZZ_VERSION  the cargo-fuzz version installed when it is missing (default 0.13.2)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
START=$SECONDS

SECS=${1:-30}
if ! [[ $SECS =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET [TARGET...]]" >&2
    exit 2
fi
shift || true

export RUSTC_BOOTSTRAP=1
CARGO_FUZZ_VERSION=${CARGO_FUZZ_VERSION:-0.13.2}
LOG_DIR=fuzz/target/fuzz-logs

log() { echo "fuzz: $*"; }

# --- tools -----------------------------------------------------------------------------------
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
# libfuzzer-sys compiles libFuzzer itself, which is C++.
if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]]; then
        log "no C++ compiler: installing g++"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++
    else
        echo "fuzz: a C++ compiler (g++) is needed to build libFuzzer" >&2
        exit 1
    fi
fi
log "$(cargo fuzz --version), $(rustc --version)"

# --- build -----------------------------------------------------------------------------------
build_start=$SECONDS
SANITIZER=${FUZZ_SANITIZER:-address}
if ! cargo fuzz build --sanitizer "$SANITIZER"; then
    if [[ -n ${FUZZ_SANITIZER:-} || $SANITIZER == none ]]; then
        exit 1
    fi
    log "the $SANITIZER-sanitizer build failed; building without a sanitizer"
    SANITIZER=none
    cargo fuzz build --sanitizer none
fi
log "built in $((SECONDS - build_start))s (sanitizer: $SANITIZER)"

if (($# > 0)); then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo fuzz list)
fi
if ((${#TARGETS[@]} == 0)); then
    echo "fuzz: no fuzz targets found" >&2
    exit 1
fi

# --- run -------------------------------------------------------------------------------------
mkdir -p "$LOG_DIR"
stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT

failed=()
summary=()
for t in "${TARGETS[@]}"; do
    corpus=fuzz/corpus/$t
    seeds=fuzz/seeds/$t
    logfile=$LOG_DIR/$t.log
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    dirs=("$corpus")
    [[ -d $seeds ]] && dirs+=("$seeds")
    log "running $t for ${SECS}s (corpus ${dirs[*]}; log $logfile)"
    touch "$stamp"
    run_start=$SECONDS
    rc=0
    cargo fuzz run --sanitizer "$SANITIZER" "$t" "${dirs[@]}" -- \
        -max_total_time="$SECS" -timeout=10 -print_final_stats=1 >"$logfile" 2>&1 || rc=$?

    # The last status line: "#N DONE cov: C ft: F corp: U/B ... exec/s: E rss: R".
    status=$(grep -E '^#[0-9]+[[:space:]]+[A-Z]+[[:space:]]+cov:' "$logfile" | tail -n 1 || true)
    eps=$(sed -n 's/^stat::average_exec_per_sec:[[:space:]]*//p' "$logfile" | tail -n 1)
    runs=$(sed -n 's/^stat::number_of_executed_units:[[:space:]]*//p' "$logfile" | tail -n 1)
    cov=$(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' <<<"$status")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\) .*/\1/p' <<<"$status")
    [[ -n $status ]] && echo "  $status"
    mapfile -t crashes < <(find "fuzz/artifacts/$t" -type f -newer "$stamp" | sort)

    if ((rc != 0)) || ((${#crashes[@]} > 0)); then
        failed+=("$t")
        summary+=("$(printf '%-14s FAILED (exit %s) after %ss' "$t" "$rc" "$((SECONDS - run_start))")")
        echo
        echo "fuzz: $t FAILED (exit $rc); from its output ($logfile):"
        # From the panic message or sanitizer report on, else the end of the output.
        first=$(grep -n -m 1 -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)' \
            "$logfile" | cut -d: -f1 || true)
        if [[ -n $first ]]; then
            sed -n "${first},$((first + 29))p" "$logfile" | sed 's/^/  | /'
            grep -E '^SUMMARY: ' "$logfile" | sed 's/^/  | /' || true
        else
            tail -n 40 "$logfile" | sed 's/^/  | /'
        fi
        for c in "${crashes[@]}"; do
            echo
            echo "fuzz: $t crash input: $c ($(wc -c <"$c") bytes)"
            echo "  reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $SANITIZER $t $c"
            echo "  base64:    $(head -c 4096 "$c" | base64 -w 0)"
            od -A d -t x1z -v "$c" | head -n 16 | sed 's/^/  /'
        done
        if ((${#crashes[@]} == 0)); then
            echo "fuzz: $t wrote no crash input (see $logfile)"
        fi
        echo
    else
        summary+=("$(printf '%-14s ok  %ss  runs %s  exec/s %s  cov %s  corpus %s' \
            "$t" "$((SECONDS - run_start))" "${runs:-?}" "${eps:-?}" "${cov:-?}" "${corp:-?}")")
    fi
done

echo
log "summary (${SECS}s per target, sanitizer $SANITIZER; $((SECONDS - START))s in all):"
printf '  %s\n' "${summary[@]}"
if ((${#failed[@]} > 0)); then
    log "FAILED: ${failed[*]} (crash inputs above, under fuzz/artifacts/)"
    exit 1
fi
log "${#TARGETS[@]} targets, no crash"
