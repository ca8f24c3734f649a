#!/usr/bin/env bash
# The Windows build, checked from Linux:
#   1. `cargo clippy --target x86_64-pc-windows-gnu --all-targets -D warnings`: the whole
#      crate, tests included, builds for Windows with no warning;
#   2. the Windows binary under wine: `--version`, and its control-socket client (the
#      loopback port and token file Windows uses) against a Linux `p2pcopy link` that
#      listens in that form inside wine's %LOCALAPPDATA%: `status` answers, a wrong token
#      gets "permission denied" (exit 11), a missing link "no link named" (exit 11).
# A Windows daemon cannot be run here: wine 8's sockets refuse an option quinn-udp sets
# (WSAEOPNOTSUPP), so a link's data path is not checked on Windows by this script.
#
#   scripts/windows-check.sh
#
# Needs (CI installs them): the rustup target x86_64-pc-windows-gnu, Debian's
# gcc-mingw-w64-x86-64 (ring's build script, and a small DLL below) and wine64. Traffic:
# loopback only (the two links bind 127.0.0.1 with --no-stun --no-ntp).
#
# Environment:
#   WINDOWS_CHECK_REQUIRE  1: a missing mingw or wine is a failure, not a skip (CI sets it;
#                          a rustup target that cannot be fetched is always a loud skip)
#
# Prints one line per check and "windows check: N passed, N failed"; exits 1 if any failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
TARGET=x86_64-pc-windows-gnu
WINE=/usr/lib/wine/wine64

skip() {
    if [[ ${WINDOWS_CHECK_REQUIRE:-0} == 1 ]]; then
        echo "windows check: FAILED: $*" >&2
        exit 1
    fi
    echo "windows check: SKIPPED: $*"
    exit 0
}

if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET" &&
    ! rustup target add "$TARGET"; then
    echo "windows check: SKIPPED: the rustup target $TARGET cannot be added"
    exit 0
fi
command -v x86_64-w64-mingw32-gcc >/dev/null || skip "no x86_64-w64-mingw32-gcc (apt-get install gcc-mingw-w64-x86-64)"
[[ -x $WINE ]] || skip "no $WINE (apt-get install wine64)"

pass=0
fail=0
check() {
    local name=$1
    shift
    if "$@"; then
        echo "PASS  $name"
        pass=$((pass + 1))
    else
        echo "FAIL  $name"
        fail=$((fail + 1))
    fi
}

check "clippy for $TARGET, all targets, no warnings" \
    cargo clippy --target "$TARGET" --all-targets -- -D warnings
cargo build --target "$TARGET" --bin p2pcopy
cargo build --bin p2pcopy

work=$(mktemp -d /tmp/p2pcopy-windows-XXXXXX)
trap 'rm -rf "$work"' EXIT
export WINEPREFIX=$work/prefix WINEDEBUG=-all
mkdir -p "$WINEPREFIX"
# Rust's std (1.78 and later) takes its random numbers from bcryptprimitives.dll's
# ProcessPrng, which wine 8 lacks; this stand-in gives them from RtlGenRandom instead.
cat >"$work/prng.c" <<'EOF'
#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG len);
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, n)) return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
EOF
printf 'LIBRARY bcryptprimitives\nEXPORTS\n    ProcessPrng\n' >"$work/prng.def"
x86_64-w64-mingw32-gcc -O2 -shared -o "$work/bcryptprimitives.dll" "$work/prng.c" "$work/prng.def" -ladvapi32
"$WINE" wineboot --init >/dev/null 2>&1 || true
cp "$work/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/"
EXE=target/$TARGET/debug/p2pcopy.exe

version() { "$WINE" "$EXE" --version | grep -q '^p2pcopy '; }
check "the Windows binary runs (--version)" version

local_app=$(find "$WINEPREFIX/drive_c/users" -maxdepth 3 -type d -path '*/AppData/Local' | head -n1)
[[ -n $local_app ]] || { echo "FAIL  wine made no AppData/Local"; exit 1; }

client() {
    P2PCOPY_BIN=target/debug/p2pcopy WIN_EXE=$EXE WIN_LOCAL_APP=$local_app WORK=$work WINE=$WINE \
        python3 - <<'EOF'
import os, queue, subprocess, sys, threading, time

linux, exe, wine = os.environ["P2PCOPY_BIN"], os.environ["WIN_EXE"], os.environ["WINE"]
local_app, work = os.environ["WIN_LOCAL_APP"], os.environ["WORK"]

def start(name, env):
    out = os.path.join(work, "out-" + name)
    os.makedirs(out, exist_ok=True)
    p = subprocess.Popen(
        [linux, "link", "--name", name, "--bind", "127.0.0.1", "--no-stun", "--no-ntp",
         "--timeout", "30", "--output", out],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, **env))
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l.rstrip()) for l in p.stdout], daemon=True).start()
    return p, lines

def wait_for(lines, what):
    end = time.time() + 30
    while time.time() < end:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if what in line:
            return line
    sys.exit(f"no line with {what!r}")

def windows(*args):
    r = subprocess.run([wine, exe, *args], capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr

xdg = os.path.join(work, "xdg")
os.makedirs(xdg, mode=0o700)
a, a_lines = start("win", {"P2PCOPY_CONTROL": "tcp", "XDG_RUNTIME_DIR": local_app})
b, b_lines = start("peer", {"XDG_RUNTIME_DIR": xdg})
ta = wait_for(a_lines, "Tell this to your peer: ").split(": ", 1)[1]
tb = wait_for(b_lines, "Tell this to your peer: ").split(": ", 1)[1]
a.stdin.write(tb + "\n"); a.stdin.flush()
b.stdin.write(ta + "\n"); b.stdin.flush()
wait_for(a_lines, "Link win is up")
failed = []
code, out = windows("--json", "status", "--name", "win")
if code != 0 or '"name":"win"' not in out or '"up":true' not in out:
    failed.append(f"status: {code} {out!r}")
port_file = os.path.join(local_app, "p2pcopy", "win.tcp")
addr = open(port_file).read().split()[0]
with open(port_file, "w") as f:
    f.write(f"{addr} {'0' * 64}\n")
code, out = windows("status", "--name", "win")
if code != 11 or "permission denied" not in out:
    failed.append(f"wrong token: {code} {out!r}")
code, out = windows("send", "--to", "nowhere", "C:\\x")
if code != 11 or "no link named nowhere" not in out:
    failed.append(f"no such link: {code} {out!r}")
a.send_signal(2)
b.send_signal(2)
for p in (a, b):
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
for f in failed:
    print("   ", f)
sys.exit(1 if failed else 0)
EOF
}
check "the Windows client reaches a link's loopback port with its token (status; wrong token refused; no such link)" client
/usr/lib/wine/wineserver -k 2>/dev/null || true

echo "windows check: $pass passed, $fail failed"
((fail == 0))
