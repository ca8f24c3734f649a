#!/usr/bin/env python3
"""p2pcopy benchmark: the same file over the same emulated paths, p2pcopy and the tools
users would pick instead, several runs each, one markdown table.

Run through scripts/bench.sh (as root: it builds network namespaces).  Topology:

    p2p-bench-a (10.88.0.1) ---- [p2p-bench-m: p2pcopy-lab-netem] ---- p2p-bench-b (10.88.0.2)

On the LAN profile a and b share one veth and the middle namespace is absent; on `routed`
two routers (p2p-bench-m, p2p-bench-n, kernel forwarding, offloads as veths have them) sit
between them, each host on its own link, as on real networks.  On the
others the middle namespace bridges two veths through the user-space delay line (this
kernel has no netem), which adds delay, random loss and a rate limit with a bounded queue.
The sender is always a, the receiver b; files live on a tmpfs so disks are not measured.

Throughput runs until the receiving process exits, from the moment data starts: for scp
the first byte in the receiver's file (polled every 10 ms), for p2pcopy the receiver's
`plan` event (--json), which it sends just before the data starts.  Handshakes, rounds and
punching count toward time-to-connect (second paste to first byte in the file), not
throughput.
"""

import argparse
import filecmp
import hashlib
import json
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

A, M, N, B = "p2p-bench-a", "p2p-bench-m", "p2p-bench-n", "p2p-bench-b"
IP_A, IP_B = "10.88.0.1", "10.88.0.2"
MIB = 1 << 20

# name: (one-way delay ms, rate Mbit/s or None, loss per direction, file MiB, iperf3 seconds)
PROFILES = {
    "lan": (None, None, 0.0, 1024, 10),
    "wan": (25, 100, 0.01, 200, 20),
    "long": (100, 100, 0.02, 200, 30),
    # long's path with a 50 MiB file, where the ramp-up is a larger share: not in the default list.
    "long50": (100, 100, 0.02, 50, 15),
    "bdp": (50, 1000, 0.0, 1024, 15),
    "gig": (0.5, 1000, 0.0, 1024, 10),
    # Two routers between the hosts, no shaping (delay None: no delay line).
    "routed": (None, None, 0.0, 1024, 10),
    # wan's delay and rate, no random loss, and 0-5 ms of extra delay per packet (JITTER_MS).
    "jitter": (25, 100, 0.0, 200, 20),
    # The same with 0-20 ms each way, as busy Wi-Fi and LTE links jitter, and a 50 MiB file:
    # not in the default list.
    "jitter20": (25, 100, 0.0, 50, 15),
    # wan's path with 5 % random loss each way (a poor Wi-Fi or radio link) and a 50 MiB
    # file, where one run's unlucky startup shows: not in the default list.
    "lossy": (25, 100, 0.05, 50, 15),
    # A policer (token bucket that drops, no queue: POLICED) on a short and a longer path.
    "policed": (1, None, 0.0, 200, 20),
    "policed-long": (20, None, 0.0, 200, 20),
    # Many small files (the tree below), LAN, disk to disk (--bigdir): not in the default list.
    "small": (None, None, 0.0, 0, 0),
    # The same tree between hosts two routers apart (routed's topology): not in the default list.
    "small-routed": (None, None, 0.0, 0, 0),
}
# Profiles on routed_topology(); the others share one veth or a delay line.
ROUTED = ("routed", "small-routed")
SMALL = ("small", "small-routed")
SMALL_FILES, SMALL_DIRS = 3000, 150
# Profiles with delay jitter: the delay line's --jitter-ms (each way; no reordering).
JITTER_MS = {"jitter": 5, "jitter20": 20}
# Policed profiles: (Mbit/s, burst) of an nft limit on the receiving host's input, as ISP
# plans and scripts/lab/lib.sh's lab_throttle police: what exceeds the bucket is dropped.
POLICED = {"policed": (100, "256 kbytes"), "policed-long": (100, "256 kbytes")}
DESCRIBE = {
    "lan": "LAN: one veth, no shaping",
    "wan": "internet-like: 50 ms RTT, 100 Mbit/s, 1 % loss each way",
    "long": "long and lossy: 200 ms RTT, 100 Mbit/s, 2 % loss each way",
    "long50": "long and lossy, a 50 MiB file: 200 ms RTT, 100 Mbit/s, 2 % loss each way",
    "bdp": "high BDP: 100 ms RTT, 1 Gbit/s, no loss",
    "gig": "reference for the row above: 1 ms RTT, 1 Gbit/s, no loss",
    "routed": "routed LAN: two routers between the hosts (kernel forwarding), no shaping",
    "lossy": "very lossy, a 50 MiB file: 50 ms RTT, 100 Mbit/s, 5 % loss each way",
    "jitter": f"jittery: 50 ms RTT plus 0-{JITTER_MS['jitter']} ms each way (no reordering), 100 Mbit/s, no loss",
    "jitter20": f"very jittery, a 50 MiB file: 50 ms RTT plus 0-{JITTER_MS['jitter20']} ms each way (no reordering), "
                "100 Mbit/s, no loss",
    "policed": "policed: 2 ms RTT, a 100 Mbit/s token-bucket policer (burst 256 KB) that drops, no queue",
    "policed-long": "policed, longer: 40 ms RTT, a 100 Mbit/s token-bucket policer (burst 256 KB) that drops, no queue",
    "small": f"many small files: {SMALL_FILES} files of 1-16 KiB in {SMALL_DIRS} folders, LAN, disk to disk",
    "small-routed": f"many small files, routed: {SMALL_FILES} files of 1-16 KiB in {SMALL_DIRS} folders, "
                    "two routers between the hosts, disk to disk",
}


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def sh(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, **kw)


def nsx(ns, *cmd):
    return ["ip", "netns", "exec", ns, *cmd]


def cleanup():
    for ns in (A, M, N, B):
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for p in pids:
            try:
                os.kill(int(p), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def ns_new(ns):
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")


def offloads_off(ns, dev):
    # The delay line reads frames as they are: no offloads, so no oversized frames.
    sh(*nsx(ns, "ethtool", "-K", dev, "gso", "off", "tso", "off", "gro", "off", "tx", "off", "rx", "off"),
       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def topology(profile, netem_bin, logdir):
    """Builds the namespaces for one profile; returns the delay line's Popen (or None)."""
    cleanup()
    delay, rate, loss, _, _ = PROFILES[profile]
    ns_new(A)
    ns_new(B)
    if profile in ROUTED:
        routed_topology()
        proc = None
    elif delay is None:
        sh("ip", "-n", A, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", B)
        proc = None
    else:
        ns_new(M)
        sh("ip", "-n", A, "link", "add", "eth0", "type", "veth", "peer", "name", "ma", "netns", M)
        sh("ip", "-n", B, "link", "add", "eth0", "type", "veth", "peer", "name", "mb", "netns", M)
        for ns, dev in ((A, "eth0"), (B, "eth0"), (M, "ma"), (M, "mb")):
            offloads_off(ns, dev)
        sh("ip", "-n", M, "link", "set", "dev", "ma", "up")
        sh("ip", "-n", M, "link", "set", "dev", "mb", "up")
        args = [netem_bin, "ma", "mb", "--delay-ms", str(delay), "--loss", str(loss)]
        if rate:
            args += ["--rate-mbit", str(rate)]
        if profile in JITTER_MS:
            args += ["--jitter-ms", str(JITTER_MS[profile])]
        proc = subprocess.Popen(nsx(M, *args), stdin=subprocess.DEVNULL,
                                stdout=open(logdir / f"netem-{profile}.log", "w"), stderr=subprocess.STDOUT)
    for ns, ip in ((A, IP_A), (B, IP_B)):
        if profile not in ROUTED:
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        # Room for a 1 Gbit/s x 100 ms window in TCP's autotuned buffers.  (UDP buffers are
        # capped by net.core.rmem_max, which is not per namespace: it stays as the machine has it.)
        sh(*nsx(ns, "sysctl", "-qw", "net.ipv4.tcp_rmem=4096 131072 67108864",
                "net.ipv4.tcp_wmem=4096 65536 67108864"))
    if profile in POLICED:
        mbit_s, burst = POLICED[profile]
        rule = (f"table inet p2pbench {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n"
                f"  ip saddr {IP_A} limit rate over {mbit_s * 125} kbytes/second burst {burst} drop\n }}\n}}\n")
        sh(*nsx(B, "nft", "-f", "-"), input=rule, text=True)
    for _ in range(50):
        if subprocess.run(nsx(A, "ping", "-c1", "-W1", IP_B), capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    else:
        raise RuntimeError("no path between the bench hosts")
    return proc


def routed_topology():
    """a -- m -- n -- b: each host on its own link with a router, the routers on a third;
    the hosts keep their addresses (/32, on-link routes) so every tool dials the same IPs."""
    ns_new(M)
    ns_new(N)
    links = ((A, "eth0", M, "ra"), (M, "rn", N, "rm"), (N, "rb", B, "eth0"))
    for x, xdev, y, ydev in links:
        sh("ip", "-n", x, "link", "add", xdev, "type", "veth", "peer", "name", ydev, "netns", y)
    addrs = ((A, "eth0", IP_A), (M, "ra", "10.88.1.1"), (M, "rn", "10.88.3.1"), (N, "rm", "10.88.3.2"),
             (N, "rb", "10.88.2.1"), (B, "eth0", IP_B))
    for ns, dev, ip in addrs:
        sh("ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
    for ns in (M, N):
        sh(*nsx(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
    routes = ((A, "10.88.1.1 dev eth0"), (A, f"{IP_B} via 10.88.1.1 dev eth0"),
              (M, f"{IP_A} dev ra"), (M, "10.88.3.2 dev rn"), (M, f"{IP_B} via 10.88.3.2 dev rn"),
              (N, f"{IP_B} dev rb"), (N, "10.88.3.1 dev rm"), (N, f"{IP_A} via 10.88.3.1 dev rm"),
              (B, "10.88.2.1 dev eth0"), (B, f"{IP_A} via 10.88.2.1 dev eth0"))
    for ns, route in routes:
        sh("ip", "-n", ns, "route", "add", *route.split())


def router_hops():
    """How many routers forward between the hosts: the smallest TTL a ping arrives with, less one."""
    for ttl in range(1, 8):
        if subprocess.run(nsx(A, "ping", "-c1", "-W1", "-t", str(ttl), IP_B), capture_output=True).returncode == 0:
            return ttl - 1
    return None


def ping_rtt(count=5):
    """Mean RTT and its mean deviation (ping's mdev: the jitter), ms."""
    out = subprocess.run(nsx(A, "ping", "-c", str(count), "-i", "0.2", IP_B), capture_output=True, text=True).stdout
    m = re.search(r"= [\d.]+/([\d.]+)/[\d.]+/([\d.]+)", out)
    return (float(m.group(1)), float(m.group(2))) if m else (None, None)


class Proc:
    """A process whose CPU time and peak RSS we read from wait4 (ip netns exec execs)."""

    def __init__(self, cmd, **kw):
        self.p = subprocess.Popen(cmd, **kw)
        self.rusage = None
        self.end = None
        self.code = None

    def poll(self):
        if self.code is not None:
            return self.code
        pid, status, ru = os.wait4(self.p.pid, os.WNOHANG)
        if pid == 0:
            return None
        self.end = time.monotonic()
        self.code = os.waitstatus_to_exitcode(status)
        self.p.returncode = self.code
        self.rusage = ru
        return self.code

    def wait(self, limit):
        t = time.monotonic() + limit
        while self.poll() is None:
            if time.monotonic() > t:
                self.p.kill()
                self.wait(10)
                raise RuntimeError(f"timed out: {self.p.args}")
            time.sleep(0.01)
        return self.code

    def cpu(self):
        return self.rusage.ru_utime + self.rusage.ru_stime

    def rss_mib(self):
        return self.rusage.ru_maxrss / 1024


def first_byte_wait(paths, procs, limit):
    """Polls until one of `paths` holds data; returns the time, or None if a process ended."""
    t = time.monotonic() + limit
    while time.monotonic() < t:
        for p in paths:
            try:
                if p.stat().st_size > 0:
                    return time.monotonic()
            except FileNotFoundError:
                pass
        if any(pr.poll() is not None for pr in procs):
            return None
        time.sleep(0.01)
    return None


def pinned(role, cmd):
    """`cmd` on the CPU BENCH_PIN gives `role` ("sender" or "receiver"), e.g. BENCH_PIN=0,1.

    Both hosts share this machine's cores.  Pinned, each side has one core to itself: scp
    gains ~40 % on the LAN (ssh and sshd stop sharing), p2pcopy's receiver loses its disk
    thread's core, and the LAN's slow runs still happen (bench/RESULTS.md, "Two modes on
    the LAN, with each side pinned to a core").  Neither setup is two machines."""
    pin = os.environ.get("BENCH_PIN")
    if not pin:
        return list(cmd)
    return ["taskset", "-c", pin.split(",")[0 if role == "sender" else 1], *cmd]


def rate_cache(binary, prof):
    """The folder each side of `binary` keeps its rate memory in (XDG_CACHE_HOME) for runs on
    `prof`. BENCH_RATES=cold (the default): a fresh one every run, as for a peer met the first
    time. BENCH_RATES=warm: one per binary and profile for the whole invocation, so each run
    starts from what the run before it measured, as when the same two people copy again."""
    base = Path(os.environ.get("BENCH_DIR", "/tmp/p2p-bench")) / "rates"
    if os.environ.get("BENCH_RATES", "cold") == "warm":
        return base / f"{prof}-{Path(binary).name}-{abs(hash(str(binary))) % 10**8}"
    d = base / f"cold-{time.monotonic_ns()}"
    shutil.rmtree(d, ignore_errors=True)
    return d


def run_p2pcopy(binary, src, outdir, limit, logdir, cache=None):
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    cache = cache or rate_cache(binary, "any")
    remembered = (cache / "sender" / "p2pcopy" / "rates").exists()
    common = ["--no-stun", "--no-ntp", "--json"] + (["-v"] if os.environ.get("BENCH_VERBOSE") else [])
    # BENCH_PERF=DIR profiles both sides (for finding hot spots; the figures are then off).
    perf = os.environ.get("BENCH_PERF")

    def wrap(role):
        if not perf:
            return pinned(role, [binary])
        return pinned(role, ["perf", "record", "-q", "-F", "999", "--call-graph", "dwarf,16384", "-o",
                             f"{perf}/{role}.data", binary])

    r = Proc(nsx(B, *wrap("receiver"), "receiver", "--localport", "21300", "--output", str(outdir), *common),
             env={**os.environ, "XDG_CACHE_HOME": str(cache / "receiver")},
             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(logdir / "receiver.err", "w"), text=True)
    # The sender's QUIC path stats (packets sent and lost) at the end, without -v's other logs.
    env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn,p2pcopy::transfer=info"),
           "XDG_CACHE_HOME": str(cache / "sender")}
    s = Proc(nsx(A, *wrap("sender"), "sender", "--localport", "4300", "--file", str(src), *common), env=env,
             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(logdir / "sender.err", "w"), text=True)

    # Event times as the lines arrive: the receiver's `plan` (sent right before the data
    # starts) is where the throughput clock starts. Its first write to the file would be
    # late: data behind a lost packet waits in QUIC's buffer, so the file can start growing
    # megabytes after the link started carrying them, which overstated the rate.
    events = {"sender": {}, "receiver": {}}
    tickets = {"sender": queue.Queue(), "receiver": queue.Queue()}

    def follow(role, pr):
        for line in pr.p.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            events[role].setdefault(ev.get("event"), time.monotonic())
            if ev.get("event") == "ticket":
                tickets[role].put(ev["ticket"])

    for role, pr in (("sender", s), ("receiver", r)):
        threading.Thread(target=follow, args=(role, pr), daemon=True).start()

    def ticket(role):
        try:
            return tickets[role].get(timeout=20)
        except queue.Empty:
            raise RuntimeError(f"no ticket from the {role}; see {logdir}") from None

    st, rt = ticket("sender"), ticket("receiver")
    r.p.stdin.write(st + "\n")
    r.p.stdin.flush()
    time.sleep(0.3)
    t_paste = time.monotonic()  # the second paste
    s.p.stdin.write(rt + "\n")
    s.p.stdin.flush()
    name = src.name
    t_first = first_byte_wait([outdir / f".{name}.p2pcopy-part", outdir / name], [r, s], limit)
    r.wait(limit)
    s.wait(30)
    if r.code != 0 or s.code != 0:
        raise RuntimeError(f"p2pcopy failed: sender {s.code}, receiver {r.code}; see {logdir}")
    if t_first is None or "plan" not in events["receiver"]:
        raise RuntimeError("p2pcopy: first byte never seen")
    stats = re.findall(r"path stats.*?sent_packets=(\d+) lost_packets=(\d+)",
                       (logdir / "sender.err").read_text())
    return {
        "sent": int(stats[-1][0]) if stats else None, "lost": int(stats[-1][1]) if stats else None,
        # Whether the sender had a rate of this path remembered (BENCH_RATES=warm).
        "remembered": remembered,
        "total": r.end - t_paste,
        "secs": r.end - events["receiver"]["plan"],
        # The receiver's summary: the file is verified and durable, before the closing
        # handshake (a round trip on long paths) that `secs` also counts.
        "to_summary": events["receiver"].get("summary", r.end) - events["receiver"]["plan"],
        "connect": t_first - t_paste,
        "cpu_s": s.cpu(), "cpu_r": r.cpu(),
        "rss_s": s.rss_mib(), "rss_r": r.rss_mib(),
        # Seconds from the receiver's plan to each role's events and exit (for reading logs).
        "timeline": {role: {**{ev: round(t - events["receiver"]["plan"], 3) for ev, t in evs.items()},
                            "exit": round(pr.end - events["receiver"]["plan"], 3)}
                     for (role, evs), pr in ((("sender", events["sender"]), s), (("receiver", events["receiver"]), r))},
    }


def run_scp(src, outdir, key, limit):
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    dst = outdir / src.name
    c = Proc(nsx(A, *pinned("sender", ["scp"]), "-q", "-i", str(key), "-o", "StrictHostKeyChecking=no",
                 "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", str(src), f"root@{IP_B}:{dst}"),
             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    t_first = first_byte_wait([dst], [c], limit)
    c.wait(limit)
    if c.code != 0 or t_first is None:
        raise RuntimeError(f"scp failed: {c.code} {c.p.stderr.read()!r}")
    return {"secs": c.end - t_first, "connect": t_first - t0, "cpu_s": c.cpu(), "rss_s": c.rss_mib()}


def make_tree(root):
    """SMALL_FILES files of 1-16 KiB spread over SMALL_DIRS folders (two levels), made once."""
    done = root / ".complete"
    if done.exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    for i in range(SMALL_FILES):
        d = root / f"d{i % SMALL_DIRS // 10:02}" / f"e{i % SMALL_DIRS:03}"
        d.mkdir(parents=True, exist_ok=True)
        size = 1024 + (hashlib.blake2b(i.to_bytes(4, "little")).digest()[0] * 61) % (15 * 1024 + 1)
        (d / f"f{i:05}.dat").write_bytes(os.urandom(size))
    done.touch()


def tree_bytes(root):
    return sum(p.stat().st_size for p in root.rglob("*.dat"))


def timed(cmd, limit):
    """Runs cmd in namespace A after a sync (so no tool pays for another's dirty pages)."""
    os.sync()
    c = Proc(nsx(A, "sh", "-c", cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    c.wait(limit)
    if c.code != 0:
        raise RuntimeError(f"{cmd!r} failed: {c.code} {c.p.stderr.read()!r}")
    return {"total": c.end - t0, "cpu_s": c.cpu()}


def run_small(tool, src, outdir, key, limit):
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    ssh = f"ssh -i {key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    if tool == "tar":
        return timed(f"tar -C {src.parent} -cf - {src.name} | {ssh} root@{IP_B} 'tar -C {outdir} -xf -'", limit)
    return timed(f"rsync -a -e '{ssh}' {src} root@{IP_B}:{outdir}/", limit)


def small_profile(args, wd, key, logdir):
    """p2pcopy (and the baseline) against tar | ssh and rsync -a, whole runs from the paste/command."""
    src = (args.smalldir or args.bigdir or wd) / "small" / "tree"
    make_tree(src)
    out = src.parent / "out"
    res = {"p2pcopy": [], "baseline": [], "tar": [], "rsync": []}
    tools = [t for t in res if t not in ("baseline",) or args.baseline]
    for i in range(args.runs):
        # Each run starts with another tool: creating files costs more right after many were
        # deleted (ext4 skips recently freed inodes), and every run deletes the last output.
        for tool in tools[i % len(tools):] + tools[:i % len(tools)]:
            if tool in ("tar", "rsync"):
                r = run_small(tool, src, out, key, 900)
                res[tool].append(r)
                log(f"  run {i + 1} {tool}: {r['total']:.2f} s")
                continue
            os.sync()
            r = run_p2pcopy(args.p2pcopy if tool == "p2pcopy" else args.baseline, src, out, 900, logdir)
            if subprocess.run(["diff", "-r", "-q", "-x", ".complete", str(src), str(out / "tree")]).returncode:
                raise RuntimeError(f"{tool}: the copied tree differs")
            res[tool].append(r)
            log(f"  run {i + 1} {tool}: {r['total']:.2f} s (to the plan {r['total'] - r['secs']:.2f}, plan to "
                f"summary {r['to_summary']:.2f}, to exit {r['secs'] - r['to_summary']:.2f}), "
                f"cpu {r['cpu_s']:.1f}/{r['cpu_r']:.1f} s")
    shutil.rmtree(out, ignore_errors=True)
    return res


def run_iperf3(secs, limit, cc="cubic"):
    srv = Proc(nsx(B, *pinned("receiver", ["iperf3"]), "-s", "-1", "-B", IP_B), stdout=subprocess.DEVNULL,
               stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    out = subprocess.run(nsx(A, *pinned("sender", ["iperf3"]), "-c", IP_B, "-t", str(secs), "-C", cc, "-J"), capture_output=True,
                         text=True, timeout=limit)
    srv.wait(20)
    j = json.loads(out.stdout)
    if "error" in j:
        raise RuntimeError(f"iperf3: {j['error']}")
    end = j["end"]
    return {"bps": end["sum_received"]["bits_per_second"],
            "retrans": end["sum_sent"].get("retransmits"),
            "cpu_s_pct": end["cpu_utilization_percent"]["host_total"],
            "cpu_r_pct": end["cpu_utilization_percent"]["remote_total"]}


def run_iperf3_udp(rate_mbit, secs=5, tries=3):
    """Validates the emulated link: offered UDP load vs what arrives. iperf3 carries its
    results over a TCP connection on the lossy path itself, which now and then fails
    (no `end.sum` in its JSON): such a check is run again, and a third failure is fatal."""
    for attempt in range(1, tries + 1):
        srv = Proc(nsx(B, "iperf3", "-s", "-1", "-B", IP_B), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        out = subprocess.run(nsx(A, "iperf3", "-c", IP_B, "-u", "-b", f"{rate_mbit}M", "-l", "1400", "-t",
                                 str(secs), "-J"), capture_output=True, text=True, timeout=secs + 30)
        try:
            srv.wait(20)
        except RuntimeError:
            pass  # killed: the client's JSON says what went wrong
        try:
            j = json.loads(out.stdout)
        except json.JSONDecodeError:
            j = {"error": f"no JSON: {out.stderr.strip()[:200]}"}
        s = j.get("end", {}).get("sum")
        if s is not None:
            return {"bps": s["bits_per_second"] * (1 - s["lost_percent"] / 100), "lost_pct": s["lost_percent"]}
        log(f"  iperf3 UDP check {attempt} of {tries} failed: {j.get('error', 'no result')}")
    raise RuntimeError(f"iperf3 UDP check failed {tries} times")


def sshd_up(workdir):
    key = workdir / "id_bench"
    if not key.exists():
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / "host_key"))
    (workdir / "authorized_keys").write_text((workdir / "id_bench.pub").read_text())
    os.chmod(workdir / "authorized_keys", 0o600)
    Path("/run/sshd").mkdir(exist_ok=True)
    cfg = workdir / "sshd_config"
    cfg.write_text(
        f"ListenAddress {IP_B}\nHostKey {workdir / 'host_key'}\nPermitRootLogin prohibit-password\n"
        f"AuthorizedKeysFile {workdir / 'authorized_keys'}\nPasswordAuthentication no\nUsePAM no\n"
        f"StrictModes no\nSubsystem sftp internal-sftp\nPidFile none\n")
    p = subprocess.Popen(nsx(B, *pinned("receiver", ["/usr/sbin/sshd"]), "-D", "-e", "-f", str(cfg)), stdin=subprocess.DEVNULL,
                         stdout=open(workdir / "sshd.log", "w"), stderr=subprocess.STDOUT)
    time.sleep(0.5)
    return p, key


def make_file(path, mib):
    if path.exists() and path.stat().st_size == mib * MIB:
        return
    with open(path, "wb") as f:
        chunk = os.urandom(MIB)
        for i in range(mib):
            # Distinct but cheap data: compression would help nobody here, and p2pcopy does not compress.
            f.write(hashlib.blake2b(i.to_bytes(8, "little")).digest() + chunk[64:])


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def mbit(bytes_per_s):
    return bytes_per_s * 8 / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--p2pcopy", required=True)
    ap.add_argument("--netem", required=True)
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--profiles", default="lan,wan,long,bdp,gig")
    ap.add_argument("--memory-gib", type=int, default=10, help="file size of the memory run (0: skip)")
    ap.add_argument("--bigdir", type=Path, help="where the memory run's file goes (a disk, not tmpfs)")
    ap.add_argument("--smalldir", type=Path, help="where the small-file profiles write (default: --bigdir)")
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--baseline", help="another p2pcopy binary (e.g. main's) run beside it in every run, for A/B")
    args = ap.parse_args()
    wd = args.workdir
    logdir = wd / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    rows = {}
    checks = {}
    small = {}
    sshd = None
    try:
        for prof in args.profiles.split(","):
            delay, rate, loss, mib, isecs = PROFILES[prof]
            log(f"profile {prof}: {DESCRIBE[prof]}")
            netem = topology(prof, args.netem, logdir)
            sshd, key = sshd_up(wd)
            if prof in SMALL:
                if prof in ROUTED:
                    log(f"  path check: {router_hops()} routers between the hosts")
                small[prof] = small_profile(args, wd, key, logdir)
                sshd.kill()
                sshd.wait()
                sshd = None
                continue
            src = wd / f"file-{mib}MiB.bin"
            make_file(src, mib)
            out = wd / "out"
            rtt, mdev = ping_rtt(20)
            chk = {"rtt_ms": rtt, "mdev_ms": mdev}
            cap = rate or POLICED.get(prof, (None,))[0]
            if cap:
                chk["udp_cap_mbit"] = mbit(run_iperf3_udp(cap * 2)["bps"] / 8)
                chk["udp_loss_pct"] = run_iperf3_udp(cap // 2)["lost_pct"]
            if prof == "routed":
                chk["hops"] = router_hops()
            checks[prof] = chk
            log(f"  path check: {chk}")
            res = {"iperf3": [], "scp": [], "p2pcopy": [], "bbr": [], "baseline": []}
            if os.environ.get("BENCH_RATES") == "warm":
                # One untimed run per binary, so that the first timed one starts warm too.
                for tool in (["p2pcopy", "baseline"] if args.baseline else ["p2pcopy"]):
                    b = args.p2pcopy if tool == "p2pcopy" else args.baseline
                    run_p2pcopy(b, src, out, 600, logdir, rate_cache(b, prof))
                    log(f"  warm-up {tool} done")
            for i in range(args.runs):
                r = run_iperf3(isecs, isecs + 60)
                res["iperf3"].append(r)
                log(f"  run {i + 1} iperf3: {mbit(r['bps'] / 8):.0f} Mbit/s, {r['retrans']} retransmits")
                # With a baseline the two binaries swap places from run to run, so neither is
                # always the one right after iperf3 (bench/RESULTS.md, "Run order in A/B").
                order = ["p2pcopy", "baseline"] if args.baseline else ["p2pcopy"]
                for tool in order if i % 2 == 0 else order[::-1]:
                    b = args.p2pcopy if tool == "p2pcopy" else args.baseline
                    before = netem_counts(logdir, prof) if netem else None
                    r = run_p2pcopy(b, src, out, 600, logdir, rate_cache(b, prof))
                    if before is not None:
                        after = netem_counts(logdir, prof)
                        r["path_drops"] = {k: after[k] - before[k] for k in after}
                    if i == 0 and not filecmp.cmp(src, out / src.name, shallow=False):
                        raise RuntimeError(f"{tool}: the copy differs from the source")
                    res[tool].append(r)
                    log(f"  run {i + 1} {tool}: {mbit(mib * MIB / r['secs']):.0f} Mbit/s, {loss_text(r)}, "
                        f"connect {r['connect']:.2f} s, cpu {r['cpu_s']:.1f}/{r['cpu_r']:.1f} s, "
                        f"rss {r['rss_s']:.0f}/{r['rss_r']:.0f} MiB{', from a remembered rate' if r['remembered'] else ''}")
                if i == 0:
                    r = run_iperf3(isecs, isecs + 60, "bbr")
                    res["bbr"].append(r)
                    log(f"  run {i + 1} iperf3 bbr: {mbit(r['bps'] / 8):.0f} Mbit/s")
                if delay is None or rate or prof in POLICED:
                    r = run_scp(src, out, key, 900)
                    res["scp"].append(r)
                    log(f"  run {i + 1} scp: {mbit(mib * MIB / r['secs']):.0f} Mbit/s")
            rows[prof] = (mib, res)
            sshd.kill()
            sshd.wait()
            sshd = None
            if netem:
                netem.kill()
                netem.wait()
        mem = None
        if args.memory_gib:
            log(f"memory: {args.memory_gib} GiB over the LAN profile")
            topology("lan", args.netem, logdir)
            big = (args.bigdir or wd) / f"big-{args.memory_gib}GiB.bin"
            big.parent.mkdir(parents=True, exist_ok=True)
            make_file(big, args.memory_gib * 1024)
            bout = big.parent / "bigout"
            mem = run_p2pcopy(args.p2pcopy, big, bout, 3600, logdir)
            mem["bytes"] = args.memory_gib * 1024 * MIB
            shutil.rmtree(bout, ignore_errors=True)
            log(f"  rss sender {mem['rss_s']:.1f} MiB, receiver {mem['rss_r']:.1f} MiB")
            log(f"  {mem['secs']:.1f} s from the plan; seconds after it: {mem['timeline']}")
    finally:
        if sshd:
            sshd.kill()
        cleanup()
    write_results(args, rows, checks, mem, small)


KEEP_MARKER = "<!-- Measured outside this script: kept when scripts/bench.sh rewrites the file. -->"


def write_results(args, rows, checks, mem, small):
    lines = []
    w = lines.append
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except StopIteration:
        pass
    ver = subprocess.run([args.p2pcopy, "--version"], capture_output=True, text=True).stdout.strip()
    w("# p2pcopy benchmark results\n")
    w(f"Written by `scripts/bench.sh` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.  "
      f"{ver}, git {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()}.\n")
    w(f"Machine: {os.cpu_count()} cores ({cpu}), {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
      f"Linux {platform.release()}.  Sender and receiver share these cores with each other and, on shaped "
      f"profiles, with the user-space delay line.\n")
    w(f"Medians of {args.runs} runs per tool and profile, all in the same run of the script.  Rates in Mbit/s "
      "of file data (iperf3: its receiver's goodput).  CPU: CPU-seconds of the sender/receiver process per GiB moved.\n")
    if os.environ.get("BENCH_RATES") == "warm":
        w("Rate memory warm (`BENCH_RATES=warm`): every p2pcopy run starts from the rate the run before it "
          "measured on the same path (an untimed run first), as when the same two people copy again.\n")
    else:
        w("Rate memory cold: every p2pcopy run starts from ten packets, as with a peer met the first time "
          "(`BENCH_RATES=warm` measures the repeat).\n")
    for prof, (mib, res) in rows.items():
        chk = checks[prof]
        w(f"\n## {DESCRIBE[prof]}\n")
        desc = f"File {mib} MiB.  Path check: ping RTT {chk['rtt_ms']:.1f} ms (mdev {chk['mdev_ms']:.1f})"
        if "udp_cap_mbit" in chk:
            desc += f", UDP at twice the rate delivers {chk['udp_cap_mbit']:.0f} Mbit/s, UDP at half the rate loses {chk['udp_loss_pct']:.2f} %"
        if "hops" in chk:
            desc += f", {chk['hops']} routers between the hosts (smallest TTL that arrives, less one)"
        w(desc + ".\n")
        ip = mbit(med([r["bps"] for r in res["iperf3"]]) / 8)
        rate = PROFILES[prof][1] or POLICED.get(prof, (None,))[0]
        w("| tool | Mbit/s (median) | runs | vs iperf3 | vs scp | of link | connect s | CPU s/GiB send / recv | peak RSS MiB send / recv |")
        w("|---|---|---|---|---|---|---|---|---|")
        scp = None
        if res["scp"]:
            scp = mbit(med([mib * MIB / r["secs"] for r in res["scp"]]))
        gib = mib / 1024

        def link(x):
            return f"{x / rate * 100:.0f} %" if rate else "—"

        for key, label in (("p2pcopy", "**p2pcopy**"), ("baseline", f"p2pcopy baseline (`{args.baseline}`)")):
            p = res[key]
            if not p:
                continue
            pr = mbit(med([mib * MIB / r["secs"] for r in p]))
            runs = ", ".join(f"{mbit(mib * MIB / r['secs']):.0f}" for r in p)
            cpus = "; ".join(f"{r['cpu_s'] / gib:.2f}/{r['cpu_r'] / gib:.2f}" for r in p)
            w(f"| {label} | **{pr:.0f}** | {runs} | {pr / ip:.2f}× | {f'{pr / scp:.2f}×' if scp else '—'} | {link(pr)} "
              f"| {med([r['connect'] for r in p]):.2f} | {med([r['cpu_s'] for r in p]) / gib:.2f} / {med([r['cpu_r'] for r in p]) / gib:.2f} "
              f"(runs: {cpus}) | {max(r['rss_s'] for r in p):.0f} / {max(r['rss_r'] for r in p):.0f} |")
        runs = ", ".join(f"{mbit(r['bps'] / 8):.0f}" for r in res["iperf3"])
        w(f"| iperf3 TCP cubic | {ip:.0f} | {runs} | 1.00× | — | {link(ip)} | — | — | — |")
        if res["bbr"]:
            b = mbit(res["bbr"][0]["bps"] / 8)
            w(f"| iperf3 TCP bbr (1 run) | {b:.0f} | {b:.0f} | {b / ip:.2f}× | — | {link(b)} | — | — | — |")
        if scp:
            runs = ", ".join(f"{mbit(mib * MIB / r['secs']):.0f}" for r in res["scp"])
            w(f"| scp (OpenSSH {ssh_version()}, TCP {default_cc()}) | {scp:.0f} | {runs} | {scp / ip:.2f}× | 1.00× | {link(scp)} "
              f"| {med([r['connect'] for r in res['scp']]):.2f} | {med([r['cpu_s'] for r in res['scp']]) / gib:.2f} / — "
              f"| {max(r['rss_s'] for r in res['scp']):.0f} / — |")
        # The issue's "from the first byte": the first data arrives a round trip after the
        # plan leaves the receiver, and the file is done at the receiver's summary.
        if chk["rtt_ms"] >= 10:
            for key, label in (("p2pcopy", "p2pcopy"), ("baseline", "baseline")):
                if res[key]:
                    xs = [mib * MIB / (r["to_summary"] - chk["rtt_ms"] / 1e3) for r in res[key]]
                    w(f"\n{label} from its first byte (the plan plus one ping RTT) to the receiver's summary "
                      f"(verified and durable, before the closing handshake): {mbit(med(xs)):.0f} Mbit/s median, "
                      f"{link(mbit(med(xs)))} of the link; runs " + ", ".join(f"{mbit(x):.0f}" for x in xs) + ".")
        for key, label in (("p2pcopy", "p2pcopy"), ("baseline", "baseline")):
            if res[key] and res[key][0].get("sent") is not None:
                drops = " (in brackets, the delay line's drops of the sender's frames during the run: at " \
                    "random, and with its queue full)" if res[key][0].get("path_drops") else ""
                w(f"\n{label}: QUIC packets sent / lost (sender's path stats) per run{drops}: "
                  + "; ".join(loss_text(r) for r in res[key]) + ".")
        w("iperf3 cubic retransmits per run: " + ", ".join(str(r["retrans"]) for r in res["iperf3"]) + ".")
    for prof, res in small.items():
        w(f"\n## {DESCRIBE[prof]}\n")
        w("Whole runs: p2pcopy from the second paste to the receiver's exit (handshake included; every file "
          "fsynced and BLAKE3-verified before its final name), the others from the command to its exit (ssh "
          "handshake included; tar and rsync do not fsync). Each run starts with the next tool in turn. "
          + ("Written to a fresh ext4 of mkfs.ext4's defaults (journal on), loop-mounted from an image on the disk."
             if args.smalldir else
             "Written to the host's disk (on a journal-less ext4, creating files right after the last output was "
             "deleted costs more).") + "\n")
        w("| tool | seconds (median) | runs | files/s | vs tar \\| ssh | CPU s send / recv |")
        w("|---|---|---|---|---|---|")
        tar = med([r["total"] for r in res["tar"]])
        for key, label in (("p2pcopy", "**p2pcopy**"), ("baseline", f"p2pcopy baseline (`{args.baseline}`)"),
                           ("tar", "tar \\| ssh (OpenSSH, tar -x)"), ("rsync", "rsync -a over ssh")):
            rs = res[key]
            if not rs:
                continue
            t = med([r["total"] for r in rs])
            runs = ", ".join(f"{r['total']:.2f}" for r in rs)
            cpu = f"{med([r['cpu_s'] for r in rs]):.2f}" + (f" / {med([r['cpu_r'] for r in rs]):.2f}" if "cpu_r" in rs[0] else " / —")
            w(f"| {label} | {t:.2f} | {runs} | {SMALL_FILES / t:.0f} | {t / tar:.2f}× | {cpu} |")
    if mem:
        gib = mem["bytes"] / 2**30
        w(f"\n## Memory: {gib:.0f} GiB file over the LAN profile (disk to disk)\n")
        w("| side | peak RSS MiB | CPU s/GiB | rate Mbit/s |")
        w("|---|---|---|---|")
        rate = mbit(mem["bytes"] / mem["secs"])
        w(f"| sender | {mem['rss_s']:.1f} | {mem['cpu_s'] / gib:.2f} | {rate:.0f} |")
        w(f"| receiver | {mem['rss_r']:.1f} | {mem['cpu_r'] / gib:.2f} | {rate:.0f} |")
    w("\n## Peers not measured here\n")
    w("- croc: a Go program; Go modules come from proxy.golang.org, which this machine cannot reach, and Debian 12 "
      "does not package croc.")
    w("- magic-wormhole (Debian 12 has 0.12): it needs a mailbox server, which Debian does not package; not set up "
      "in this bench yet.  Its transit is plain TCP, so the TCP rows above bound it.")
    w("- sendme (iroh): builds from crates.io, but dials n0's relays and DNS discovery first; this lab has no "
      "route to either, so a run here would measure its fallback timeouts, not its transfer.")
    # Figures measured by hand (lab scenarios, tests run with --ignored) live below KEEP_MARKER
    # and survive a rewrite.
    tail = ""
    if args.results.exists():
        old = args.results.read_text()
        if KEEP_MARKER in old:
            tail = "\n" + old[old.index(KEEP_MARKER):]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("\n".join(lines) + "\n" + tail)
    log(f"wrote {args.results}")


def netem_counts(logdir, prof):
    """The delay line's cumulative counts for frames from the sender's side (its `a>b`), once
    a second without change has made sure its last line is current.  A transfer's share is
    the difference across it: the sender's QUIC losses split into the path's random drops
    and the queue's tail drops, which the sender's own rate caused."""
    log_file = logdir / f"netem-{prof}.log"
    last = None
    for _ in range(30):
        time.sleep(1.2)
        lines = log_file.read_text().splitlines()
        line = lines[-1] if lines else ""
        if line == last:
            break
        last = line
    m = re.search(r"a>b sent (\d+) random-drop (\d+) tail-drop (\d+)", last or "")
    if not m:
        return {"sent": 0, "random": 0, "tail": 0}
    return {"sent": int(m.group(1)), "random": int(m.group(2)), "tail": int(m.group(3))}


def loss_text(r):
    if r.get("sent") is None:
        return "no path stats"
    text = f"{r['sent']} sent / {r['lost']} lost ({100 * r['lost'] / max(r['sent'], 1):.1f} %)"
    d = r.get("path_drops")
    if d:
        text += f" [path: {d['random']} random, {d['tail']} queue-full]"
    return text


def default_cc():
    return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()


def ssh_version():
    v = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr
    m = re.search(r"OpenSSH_([\w.]+)", v)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    main()
