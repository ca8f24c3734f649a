#!/usr/bin/env bash
# p2pcopy benchmark: p2pcopy, scp and iperf3 over the same emulated paths, several runs
# each, written as a markdown table to bench/RESULTS.md.  Needs root (network namespaces)
# and about 10 GiB of free disk for the memory run.
#
#   bash scripts/bench.sh                    # everything, 3 runs each (~20 min)
#   BENCH_RUNS=1 BENCH_PROFILES=lan BENCH_MEMORY_GIB=0 bash scripts/bench.sh   # quick look
#   BENCH_BASELINE=/tmp/p2pcopy-main bash scripts/bench.sh   # also that binary in every run (A/B)
#   BENCH_P2PCOPY=/tmp/p2pcopy-x ...         # measure that binary instead of this tree's build
#
# Profiles (scripts/bench/bench.py): lan (one veth), wan (50 ms, 100 Mbit/s, 1 % loss),
# long (200 ms, 100 Mbit/s, 2 % loss), bdp (100 ms, 1 Gbit/s), gig (1 ms, 1 Gbit/s), routed
# (two routers between the hosts, no shaping), jitter (wan's delay and rate plus 0-5 ms each
# way, no loss), small (3,000 files of 1-16 KiB, LAN, disk to disk, against tar | ssh and
# rsync -a), and, not in the default list, policed and policed-long (2 and 40 ms RTT, an nft
# policer of ~100 Mbit/s that drops; the results add p2pcopy's QUIC packets sent and lost),
# long50 (long's path with a 50 MiB file, where the ramp-up weighs more), jitter20 (jitter's
# path with 0-20 ms each way and a 50 MiB file) and small-routed
# (small's tree between hosts two routers apart, as routed).
# Shaping is done by lab/netem (user space; this kernel has no netem qdisc).
#
# The small-file profiles write into a fresh ext4 made with mkfs.ext4's defaults (journal
# on, as most Linux installs have) in an image on $big, loop-mounted, so every machine
# measures the same file system whatever its own disk has; BENCH_SMALL_FS=host writes on
# $big's own file system instead.  (A journal-less ext4 scans recently freed inodes on
# every creation, which makes each run slower than the last: bench/RESULTS.md, "Many small
# files on a journaled ext4".)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[[ $(id -u) == 0 ]] || { echo "bench.sh: needs root (network namespaces)" >&2; exit 2; }

need=()
for c in mkfs.ext4:e2fsprogs iperf3:iperf3 rsync:rsync sshd:openssh-server scp:openssh-client ping:iputils-ping ethtool:ethtool ip:iproute2; do
    command -v "${c%%:*}" >/dev/null || [[ -x /usr/sbin/${c%%:*} ]] || need+=("${c#*:}")
done
if ((${#need[@]})); then
    # Keep the packages' postinst from starting system daemons (sshd) outside the bench.
    made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
    ((made_policy)) && rm -f /usr/sbin/policy-rc.d
fi

cargo build --release --workspace

# One lab at a time: the bench and scripts/lab.sh share the machine's two cores.
exec 9>"${LAB_LOCK:-/tmp/p2p-lab.lock}"
flock -w 1800 9 || { echo "bench.sh: another lab run holds the lock" >&2; exit 2; }

work=${BENCH_DIR:-/tmp/p2p-bench}
big=${BENCH_BIG_DIR:-/var/tmp/p2p-bench-big}
mkdir -p "$work" "$big"
# Files on tmpfs: the network is measured, not the disk.  (The memory run uses $big, a disk.)
mountpoint -q "$work" || mount -t tmpfs -o size=6g tmpfs "$work"
small_fs=
cleanup() {
    if [[ -n $small_fs ]]; then umount "$small_fs" 2>/dev/null || true; fi
    rm -rf "$big"
    umount "$work" 2>/dev/null || true
}
trap cleanup EXIT
if [[ ${BENCH_SMALL_FS:-ext4} == ext4 && ${BENCH_PROFILES:-small} == *small* ]]; then
    small_fs=$big/small-fs
    mkdir -p "$small_fs"
    truncate -s 4G "$big/small-fs.img"
    # Inode tables written now, not by ext4lazyinit in the background during the first runs.
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$big/small-fs.img"
    mount -o loop "$big/small-fs.img" "$small_fs"
fi

python3 scripts/bench/bench.py \
    --p2pcopy "${BENCH_P2PCOPY:-$PWD/target/release/p2pcopy}" \
    --netem "$PWD/target/release/p2pcopy-lab-netem" \
    --workdir "$work" --bigdir "$big" ${small_fs:+--smalldir "$small_fs"} \
    --runs "${BENCH_RUNS:-3}" \
    --profiles "${BENCH_PROFILES:-lan,routed,wan,jitter,long,bdp,gig,small}" \
    --memory-gib "${BENCH_MEMORY_GIB:-10}" \
    --results "${BENCH_RESULTS:-bench/RESULTS.md}" \
    ${BENCH_BASELINE:+--baseline "$BENCH_BASELINE"}
