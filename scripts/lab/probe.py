#!/usr/bin/env python3
"""Small stdlib-only probes used by the p2pcopy network-namespace lab.

Only ever talks to the addresses given on the command line (the lab's own
namespace hosts).  Every mode is bounded in packets and time.

Modes:
  stun  [--bind IP:PORT] SERVER:PORT...   one socket, Binding request to each
                                          server; prints "SERVER mapped IP:PORT"
  ntp   SERVER[:PORT]                     SNTP query; prints stratum and offset
  send  [--bind IP:PORT] [--ttl N] DEST:PORT [--count N]
                                          send small datagrams
  recv  --bind IP:PORT [--wait SECS] [--hello IP:PORT]
                                          (optionally send one datagram first, then)
                                          print "from IP:PORT" for each datagram
  ttl   [--bind IP:PORT] DEST:PORT        send one TTL=2 datagram and report the
                                          ICMP error (offender address, type)
"""
import argparse
import os
import socket
import struct
import sys
import time

MAGIC = 0x2112A442


def hostport(s, default_port=None):
    if ":" in s:
        h, p = s.rsplit(":", 1)
        return h, int(p)
    if default_port is None:
        raise SystemExit(f"need IP:PORT, got {s!r}")
    return s, default_port


def make_sock(bind):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if bind:
        s.bind(hostport(bind, 0))
    return s


def stun_request(sock, server, tries=3, wait=1.0):
    txid = os.urandom(12)
    req = struct.pack("!HHI", 0x0001, 0, MAGIC) + txid
    for _ in range(tries):
        sock.sendto(req, server)
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data, src = sock.recvfrom(2048)
            except socket.timeout:
                break
            if len(data) < 20 or data[8:20] != txid:
                continue
            return parse_stun(data)
    return None


def parse_stun(data):
    mtype, mlen, cookie = struct.unpack("!HHI", data[:8])
    if mtype != 0x0101:
        return None
    pos, end = 20, 20 + mlen
    mapped = None
    while pos + 4 <= end and pos + 4 <= len(data):
        atype, alen = struct.unpack("!HH", data[pos:pos + 4])
        val = data[pos + 4:pos + 4 + alen]
        if atype in (0x0020, 0x8020) and len(val) >= 8 and val[1] == 1:
            port = struct.unpack("!H", val[2:4])[0] ^ (MAGIC >> 16)
            ip = struct.unpack("!I", val[4:8])[0] ^ MAGIC
            return socket.inet_ntoa(struct.pack("!I", ip)), port
        if atype == 0x0001 and len(val) >= 8 and val[1] == 1 and mapped is None:
            mapped = socket.inet_ntoa(val[4:8]), struct.unpack("!H", val[2:4])[0]
        pos += 4 + alen + ((4 - alen % 4) % 4)
    return mapped


def cmd_stun(a):
    s = make_sock(a.bind)
    ok = True
    for srv in a.servers:
        server = hostport(srv, 3478)
        m = stun_request(s, server)
        if m is None:
            print(f"{srv} NO-ANSWER")
            ok = False
        else:
            print(f"{srv} mapped {m[0]}:{m[1]}")
    return 0 if ok else 1


NTP_EPOCH = 2208988800


def cmd_ntp(a):
    server = hostport(a.server, 123)
    s = make_sock(a.bind)
    s.settimeout(1.0)
    for _ in range(3):
        pkt = bytearray(48)
        pkt[0] = 0x23  # LI 0, VN 4, mode 3 (client)
        t1 = time.time()
        sec = int(t1) + NTP_EPOCH
        frac = int((t1 % 1) * 2**32)
        pkt[40:48] = struct.pack("!II", sec, frac)
        s.sendto(bytes(pkt), server)
        try:
            data, _ = s.recvfrom(512)
        except socket.timeout:
            continue
        t4 = time.time()
        if len(data) < 48:
            continue
        stratum = data[1]
        mode = data[0] & 7

        def ts(off):
            se, fr = struct.unpack("!II", data[off:off + 8])
            return se - NTP_EPOCH + fr / 2**32

        t2, t3 = ts(32), ts(40)
        offset = ((t2 - t1) + (t3 - t4)) / 2
        print(f"{a.server} stratum {stratum} mode {mode} offset {offset:+.4f}s "
              f"delay {(t4 - t1) - (t3 - t2):.4f}s")
        return 0 if stratum not in (0, 16) and mode == 4 else 1
    print(f"{a.server} NO-ANSWER")
    return 1


def cmd_send(a):
    s = make_sock(a.bind)
    if a.ttl:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, a.ttl)
    dest = hostport(a.dest)
    for i in range(max(1, min(a.count, 100))):
        s.sendto(f"p2p-lab probe {i}".encode(), dest)
        time.sleep(0.05)
    print(f"sent {a.count} from {s.getsockname()[0]}:{s.getsockname()[1]} to {a.dest}")
    return 0


def cmd_recv(a):
    s = make_sock(a.bind)
    if a.hello:
        s.sendto(b"p2p-lab hello", hostport(a.hello))
    deadline = time.monotonic() + min(a.wait, 60)
    n = 0
    while n < 100:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data, src = s.recvfrom(2048)
        except socket.timeout:
            break
        n += 1
        print(f"from {src[0]}:{src[1]} {data[:40]!r}", flush=True)
    if n == 0:
        print("nothing received")
    return 0 if n else 1


IP_RECVERR = 11


def cmd_ttl(a):
    s = make_sock(a.bind)
    s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, a.ttl)
    s.connect(hostport(a.dest))
    s.send(b"p2p-lab ttl probe")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            _, anc, _, _ = s.recvmsg(512, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except BlockingIOError:
            time.sleep(0.05)
            continue
        for level, typ, data in anc:
            if level == socket.IPPROTO_IP and typ == IP_RECVERR:
                # struct sock_extended_err: u32 errno; u8 origin,type,code,pad; u32 info,data
                errno_, origin, itype, icode = struct.unpack("=IBBB", data[:7])
                off = socket.inet_ntoa(data[16 + 4:16 + 8]) if len(data) >= 24 else "?"
                print(f"icmp type {itype} code {icode} from {off} (errno {errno_})")
                return 0 if itype == 11 else 1
    print("no ICMP error received")
    return 1


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    q = sub.add_parser("stun")
    q.add_argument("--bind")
    q.add_argument("servers", nargs="+")
    q = sub.add_parser("ntp")
    q.add_argument("--bind")
    q.add_argument("server")
    q = sub.add_parser("send")
    q.add_argument("--bind")
    q.add_argument("--ttl", type=int, default=0)
    q.add_argument("--count", type=int, default=3)
    q.add_argument("dest")
    q = sub.add_parser("recv")
    q.add_argument("--bind", required=True)
    q.add_argument("--wait", type=float, default=3)
    q.add_argument("--hello", help="send one datagram to this IP:PORT first")
    q = sub.add_parser("ttl")
    q.add_argument("--bind")
    q.add_argument("--ttl", type=int, default=2)
    q.add_argument("dest")
    a = p.parse_args()
    return {"stun": cmd_stun, "ntp": cmd_ntp, "send": cmd_send,
            "recv": cmd_recv, "ttl": cmd_ttl}[a.mode](a)


if __name__ == "__main__":
    sys.exit(main())
