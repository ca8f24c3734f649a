"""Lab check: a datagram from p2p-s to p2p-r's IPv6 address, which p2p-r never sent to,
must not arrive (stateful firewall). Prints "nothing" or what arrived."""
import subprocess
import time

LISTEN = """
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("2001:db8:2::2", 7777))
s.settimeout(2)
try:
    print("received", s.recvfrom(100)[0])
except socket.timeout:
    print("nothing")
"""
SEND = """
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for _ in range(3):
    s.sendto(b"unsolicited", ("2001:db8:2::2", 7777))
"""
recv = subprocess.Popen(["ip", "netns", "exec", "p2p-r", "python3", "-c", LISTEN],
                        stdout=subprocess.PIPE, text=True)
time.sleep(0.5)
subprocess.run(["ip", "netns", "exec", "p2p-s", "python3", "-c", SEND], check=True)
print(recv.communicate(timeout=5)[0].strip())
