# shellcheck shell=bash
# Reusable pieces of the p2pcopy network-namespace lab.
#
# Source this file (bash).  Everything lives in network namespaces named
# p2p-*; nothing is connected to the root namespace.  Addresses:
#   198.19.0.1, .2   STUN (coturn, one process)       in p2p-core
#   198.19.0.3       NTP  (chronyd, local clock, -x)  in p2p-core
#   198.19.0.4       second address of p2pcopy's STUN server (RFC 5780)
#   198.19.0.5       TURN relay (coturn): long-term credentials, UDP/TCP 3478, TLS 443
#                    with a certificate from a test CA made at lab start
#   198.19.0.6       TURN relay (coturn): TURN REST credentials (static-auth-secret)
#   198.19.0.7       no relay (nothing listens): a relay that is down
#   198.18.N.0/24    link between p2p-core (.1) and router/public host N (.2)
#   10.N.0.0/24      LAN behind router p2p-natN (router .1, hosts .2, .3 ...)
#   100.64.N.0/24    with a carrier-grade NAT p2p-cgnatN (.1) on 198.18.N.2:
#                    the line to home router p2p-natN (.2)
#
# Main entry points:
#   lab_cleanup                      remove every p2p-* namespace and its processes
#   lab_core_up                      core router + STUN + NTP
#   lab_router_up N KIND [FULLPORT [UPLINK]]  NAT router p2p-natN, KIND cone|symmetric|full,
#                                    cone+portmap|symmetric+portmap (runs miniupnpd),
#                                    cone+upnp|symmetric+upnp (miniupnpd, UPnP only),
#                                    on the core or (UPLINK cgnat) behind p2p-cgnatN
#   lab_cgnat_up N                   carrier-grade NAT p2p-cgnatN (cone) on the core
#   lab_lan_host NAME N IDX          host NAME (p2p-...) at 10.N.0.IDX behind p2p-natN
#   lab_public_host NAME N           host NAME at 198.18.N.2 directly on the core
#   lab_transfer SENDER_NS RECEIVER_NS WORKDIR [opts]   one p2pcopy transfer, checked
#   lab_selfcheck                    verify STUN/NTP/NAT behaviour with probe.py
#   lab_trust_lab_ca NS              inside NS only, the OS trust store holds the lab's CA

LAB_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_DIR=${LAB_DIR:-/tmp/p2p-lab}
LAB_PROBE=(python3 "$LAB_LIB_DIR/probe.py")
LAB_STUN1=198.19.0.1:3478
LAB_STUN2=198.19.0.2:3478
LAB_NTP=198.19.0.3:123
LAB_NET_ARGS=(--stun-server "$LAB_STUN1" --stun-server "$LAB_STUN2" --ntp-server "$LAB_NTP")
LAB_TURN=198.19.0.5
LAB_TURN_REST=198.19.0.6
LAB_TURN_DOWN=198.19.0.7
# Distinctive values, so logs can be grepped for them (they must never appear there).
LAB_TURN_USER=lab-alice
LAB_TURN_PASSWORD=pw-4f1c9e-lab
LAB_TURN_SECRET=secret-9b27d3-lab
LAB_SENDER_PORT=${LAB_SENDER_PORT:-4300}
LAB_RECEIVER_PORT=${LAB_RECEIVER_PORT:-21300}

lab_log() { printf '[lab] %s\n' "$*" >&2; }

lab_nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

lab_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep '^p2p-' || true; }

# Kill the processes running inside one of our namespaces (by pid), then delete it.
lab_ns_del() {
    local ns=$1 pids
    # The namespace's own trust store (lab_trust_lab_ca), only if the lab made it.
    if [[ -e /etc/netns/$ns/ssl/.p2p-lab ]]; then
        rm -rf "/etc/netns/${ns:?}"
        rmdir /etc/netns 2>/dev/null || true
    fi
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [[ -n $pids ]]; then
        # shellcheck disable=SC2086
        kill $pids 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            pids=$(ip netns pids "$ns" 2>/dev/null || true)
            [[ -z $pids ]] && break
            sleep 0.2
        done
        # shellcheck disable=SC2086
        if [[ -n $pids ]]; then kill -9 $pids 2>/dev/null || true; fi
    fi
    ip netns del "$ns" 2>/dev/null || true
}

# Remove every p2p-* namespace and the processes in it.  Hosts and routers go
# first, the core (with its daemons) last.
lab_cleanup() {
    local ns
    for ns in $(lab_namespaces); do
        [[ $ns == p2p-core ]] || lab_ns_del "$ns"
    done
    lab_namespaces | grep -qx p2p-core && lab_ns_del p2p-core
    lab_kill_helpers
    return 0
}

# Remove everything but the core (fresh routers/hosts => fresh conntrack).
# The core's ends of the veths are deleted explicitly first: namespace
# teardown is asynchronous and a stale wanN would clash with the next build.
lab_reset_edges() {
    local ns l
    if lab_namespaces | grep -qx p2p-core; then
        for l in $(ip -n p2p-core -o link show type veth 2>/dev/null | awk -F'[:@ ]+' '{print $2}'); do
            ip -n p2p-core link del "$l" 2>/dev/null || true
        done
    fi
    for ns in $(lab_namespaces); do
        [[ $ns == p2p-core ]] || lab_ns_del "$ns"
    done
    for _ in $(seq 1 50); do
        [[ -z $(ip -n p2p-core -o link show type veth 2>/dev/null) ]] && break
        sleep 0.1
    done
    return 0
}

# Helper processes started in the root namespace (log followers) are tracked
# by pid in $LAB_DIR/helpers.pids.  A pid is only killed if it still is one
# of our `tail ... $LAB_DIR/...` or `python3 .../stamp.py $LAB_DIR/...` followers
# (the file may be stale after a crash).
lab_kill_helpers() {
    local f=$LAB_DIR/helpers.pids p cmd
    [[ -f $f ]] || return 0
    while read -r p; do
        [[ $p =~ ^[0-9]+$ ]] || continue
        cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" || true)
        [[ ($cmd == tail\ * || $cmd == python3\ *stamp.py\ *) && $cmd == *"$LAB_DIR/"* ]] &&
            kill "$p" 2>/dev/null
    done <"$f"
    rm -f "$f"
    return 0
}

lab_ns_new() {
    local ns=$1
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    lab_nsx "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
}

lab_wait_tcp_listen() { # NS IP PORT  (bounded: 5 s)
    local ns=$1 ip=$2 port=$3
    for _ in $(seq 1 50); do
        lab_nsx "$ns" ss -Hlnt "src $ip:$port" 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    return 1
}

# lab_make_ca DIR: a test CA (ca.crt) and a certificate for the TURN relay signed by it
# (turn.crt, turn.key), valid for turn.lab and $LAB_TURN, for two days.
lab_make_ca() {
    local d=$1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=p2pcopy lab CA" -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null || return 1
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=turn.lab" \
        -keyout "$d/turn.key" -out "$d/turn.csr" 2>/dev/null || return 1
    printf 'subjectAltName=DNS:turn.lab,IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' \
        "$LAB_TURN" >"$d/turn.ext"
    openssl x509 -req -in "$d/turn.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/turn.ext" -out "$d/turn.crt" 2>/dev/null || return 1
    # coturn drops its privileges to its own user on some builds; let it read the key.
    chmod 644 "$d/turn.key"
}

# lab_trust_lab_ca NS: `ip netns exec NS` bind-mounts /etc/netns/NS/* over /etc/*, so
# inside NS alone /etc/ssl holds only the lab CA, where rustls-native-certs (through
# openssl-probe) finds the OS trust store, and /etc/hosts names the relay turn.lab. The
# machine's own files are left alone.
lab_trust_lab_ca() {
    local d=/etc/netns/$1/ssl
    mkdir -p "$d/certs"
    : >"$d/.p2p-lab"
    cp "$LAB_DIR/core/ca.crt" "$d/certs/ca-certificates.crt"
    printf '127.0.0.1 localhost\n%s turn.lab\n' "$LAB_TURN" >"/etc/netns/$1/hosts"
}

# lab_turn_up: the two TURN relays in p2p-core (see the address list at the top).
lab_turn_up() {
    local d=$LAB_DIR/core
    lab_make_ca "$d" || { lab_log "cannot make the lab CA (openssl)"; return 1; }
    lab_nsx p2p-core turnserver -n --no-cli --no-dtls --realm lab \
        -L "$LAB_TURN" -E "$LAB_TURN" -p 3478 --tls-listening-port 443 \
        --cert "$d/turn.crt" --pkey "$d/turn.key" \
        --lt-cred-mech --user "$LAB_TURN_USER:$LAB_TURN_PASSWORD" \
        --log-file "$d/turn-lt.log" --simple-log --no-stdout-log \
        --pidfile "$d/turn-lt.pid" --userdb "$d/turndb-lt" \
        </dev/null >"$d/turn-lt.stdout" 2>&1 9>&- &
    lab_nsx p2p-core turnserver -n --no-cli --no-dtls --no-tls --realm lab \
        -L "$LAB_TURN_REST" -E "$LAB_TURN_REST" -p 3478 \
        --use-auth-secret --static-auth-secret "$LAB_TURN_SECRET" \
        --log-file "$d/turn-rest.log" --simple-log --no-stdout-log \
        --pidfile "$d/turn-rest.pid" --userdb "$d/turndb-rest" \
        </dev/null >"$d/turn-rest.stdout" 2>&1 9>&- &
    lab_wait_udp_listen p2p-core "$LAB_TURN" 3478 && lab_wait_tcp_listen p2p-core "$LAB_TURN" 443 ||
        { lab_log "TURN relay (long-term) did not start"; cat "$d"/turn-lt.* >&2; return 1; }
    lab_wait_udp_listen p2p-core "$LAB_TURN_REST" 3478 ||
        { lab_log "TURN relay (REST) did not start"; cat "$d"/turn-rest.* >&2; return 1; }
}

lab_wait_udp_listen() { # NS IP PORT  (bounded: 5 s)
    local ns=$1 ip=$2 port=$3
    for _ in $(seq 1 50); do
        lab_nsx "$ns" ss -Hlnu "src $ip:$port" 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------- core
lab_core_up() {
    local d=$LAB_DIR/core
    rm -rf "$d"
    mkdir -p "$d"
    lab_ns_new p2p-core
    lab_nsx p2p-core sysctl -qw net.ipv4.ip_forward=1
    # Server addresses live on the core's loopback (no dummy module here).
    ip -n p2p-core addr add 198.19.0.1/32 dev lo
    ip -n p2p-core addr add 198.19.0.2/32 dev lo
    ip -n p2p-core addr add 198.19.0.3/32 dev lo
    # The second address of p2pcopy's RFC 5780 server (doctor's filtering test).
    ip -n p2p-core addr add 198.19.0.4/32 dev lo
    # TURN relays, and an address where none listens.
    ip -n p2p-core addr add "$LAB_TURN/32" dev lo
    ip -n p2p-core addr add "$LAB_TURN_REST/32" dev lo
    ip -n p2p-core addr add "$LAB_TURN_DOWN/32" dev lo

    # STUN 1: coturn, STUN only.  STUN 2: p2pcopy's own server, so the client is tested
    # against both (and the NAT classification needs two servers).
    lab_nsx p2p-core turnserver -n --stun-only --no-cli --no-tls --no-dtls --no-tcp \
        -L 198.19.0.1 -p 3478 \
        --log-file "$d/turnserver.log" --simple-log --no-stdout-log \
        --pidfile "$d/turnserver.pid" --userdb "$d/turndb" \
        </dev/null >"$d/turnserver.stdout" 2>&1 9>&- &

    lab_nsx p2p-core "$P2PCOPY_BIN_ABS" stun-server --listen 198.19.0.2:3478 --alternate-ip 198.19.0.4 \
        </dev/null >"$d/p2pcopy-stun.log" 2>&1 9>&- &

    # NTP: chronyd serving its own (= the machine's) clock, never setting it.
    cat >"$d/chrony.conf" <<EOF
local stratum 8
allow
bindaddress 198.19.0.3
port 123
cmdport 0
pidfile $d/chronyd.pid
driftfile $d/chrony.drift
EOF
    lab_nsx p2p-core chronyd -x -d -u root -f "$d/chrony.conf" \
        </dev/null >"$d/chronyd.log" 2>&1 9>&- &

    lab_wait_udp_listen p2p-core 198.19.0.1 3478 || { lab_log "coturn did not start"; cat "$d"/turnserver.* >&2; return 1; }
    lab_wait_udp_listen p2p-core 198.19.0.2 3478 || { lab_log "p2pcopy stun-server did not start"; cat "$d/p2pcopy-stun.log" >&2; return 1; }
    lab_wait_udp_listen p2p-core 198.19.0.3 123 || { lab_log "chronyd did not start"; cat "$d/chronyd.log" >&2; return 1; }
    lab_turn_up || return 1
    return 0
}

# ---------------------------------------------------------------- routers
# lab_router_up N KIND [FULLPORT [UPLINK]]
#   cone       masquerade (endpoint-independent mapping, port preserved,
#              address-and-port-dependent filtering)
#   symmetric  masquerade fully-random (new port per destination)
#   full       cone + inbound UDP to FULLPORT dnat'd to 10.N.0.2:FULLPORT
#              (endpoint-independent filtering for that port)
#   KIND+portmap  cone or symmetric, plus miniupnpd answering UPnP-IGD, NAT-PMP and
#              PCP on br0 (see lab_miniupnpd_up): hosts ask it to forward ports
#   KIND+upnp  the same with UPnP-IGD only (NAT-PMP and PCP off)
#   UPLINK     core (default): wan is 198.18.N.2 on the core;
#              cgnat: wan is 100.64.N.2 behind p2p-cgnatN (see lab_cgnat_up)
# lab_wan_link N NS IF: connects NS (a NAT router or public host) to the core as
# interface IF, facing core interface wanN.  With LAB_DELAY_MS set (and non-zero), the
# link runs through p2p-dlyN, where p2pcopy-lab-netem holds every frame for that many
# milliseconds each way (a layer-2 bridge: TTLs and addresses are untouched).  Two home
# NATs then sit 2 x LAB_DELAY_MS apart, as on the internet; the kernel has no netem.
lab_wan_link() {
    local n=$1 ns=$2 ifname=$3
    if [[ -z ${LAB_DELAY_MS:-} || ${LAB_DELAY_MS} == 0 ]]; then
        ip -n p2p-core link add "wan$n" type veth peer name "$ifname" netns "$ns"
        return
    fi
    local dns=p2p-dly$n x
    lab_ns_new "$dns"
    ip -n p2p-core link add "wan$n" type veth peer name dlyc netns "$dns"
    ip -n "$ns" link add "$ifname" type veth peer name dlyp netns "$dns"
    # The bridge reads frames as they are: no offloads, so no oversized frames and no
    # checksums left for hardware that is not there.
    for x in "p2p-core wan$n" "$ns $ifname" "$dns dlyc" "$dns dlyp"; do
        # shellcheck disable=SC2086
        set -- $x
        lab_nsx "$1" ethtool -K "$2" gso off tso off gro off tx off rx off >/dev/null 2>&1 ||
            { lab_log "ethtool failed on $2 in $1"; return 1; }
    done
    ip -n "$dns" link set dev dlyc up
    ip -n "$dns" link set dev dlyp up
    lab_nsx "$dns" "$LAB_NETEM_BIN" dlyc dlyp --delay-ms "$LAB_DELAY_MS" \
        </dev/null >"$LAB_DIR/netem$n.log" 2>&1 9>&- &
}

lab_router_up() {
    local n=$1 kind=$2 fullport=${3:-} uplink=${4:-core}
    local ns=p2p-nat$n masq fullpre="" fullfwd="" masqfrom="" portmap="" gw
    if [[ $kind == *+portmap || $kind == *+upnp ]]; then
        portmap=${kind#*+}
        kind=${kind%+*}
        # Only the LAN is masqueraded: miniupnpd's own STUN check (below) must see the
        # router's address unchanged, or fully-random would make it refuse to forward.
        masqfrom="ip saddr 10.$n.0.0/24"
        # Inbound packets that miniupnpd's rules dnat'd to a host may pass.
        fullfwd="iifname \"wan\" ct status dnat accept"
    fi
    lab_ns_new "$ns"
    lab_nsx "$ns" sysctl -qw net.ipv4.ip_forward=1
    case $uplink in
    core)
        lab_wan_link "$n" "$ns" wan || return 1
        ip -n p2p-core addr add "198.18.$n.1/24" dev "wan$n"
        ip -n p2p-core link set "wan$n" up
        ip -n "$ns" addr add "198.18.$n.2/24" dev wan
        gw=198.18.$n.1
        ;;
    cgnat)
        # the carrier's side of the subscriber line (lab_cgnat_up N first)
        local cns=p2p-cgnat$n
        ip -n "$cns" link add home type veth peer name wan netns "$ns"
        ip -n "$cns" addr add "100.64.$n.1/24" dev home
        ip -n "$cns" link set home up
        ip -n "$ns" addr add "100.64.$n.2/24" dev wan
        gw=100.64.$n.1
        ;;
    *) lab_log "unknown uplink $uplink"; return 1 ;;
    esac
    ip -n "$ns" link set wan up
    ip -n "$ns" route add default via "$gw"
    ip -n "$ns" link add br0 type bridge
    ip -n "$ns" addr add "10.$n.0.1/24" dev br0
    ip -n "$ns" link set br0 up
    # LAN<->LAN stays pure L2 (don't run bridged frames through nftables).
    lab_nsx "$ns" sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true

    case $kind in
    cone) masq="masquerade" ;;
    symmetric) masq="masquerade fully-random" ;;
    full)
        [[ -n $fullport ]] || { lab_log "full NAT needs a port"; return 1; }
        masq="masquerade"
        fullpre="iifname \"wan\" udp dport $fullport dnat ip to 10.$n.0.2:$fullport"
        fullfwd="iifname \"wan\" ct status dnat accept"
        ;;
    *) lab_log "unknown NAT kind $kind"; return 1 ;;
    esac
    lab_nat_rules "$ns" br0 "$masqfrom $masq" "$fullpre" "$fullfwd" || return 1
    echo "$kind" >"$LAB_DIR/nat$n.kind"
    if [[ -n $portmap ]]; then
        lab_miniupnpd_up "$n" "$portmap" || return 1
    fi
}

# lab_nat_rules NS INSIDE_IF MASQ [PRE [FWD]]: the NAT ruleset of router NS: MASQ
# (masquerade ...) out of "wan", forwarding only INSIDE_IF -> wan and what conntrack
# knows (plus the optional prerouting rule PRE and forward rule FWD).
# Note: no input-chain drop on purpose: an unsolicited inbound packet to
# the router's mapped port must still create (and confirm) its conntrack
# entry, as on a real router.
lab_nat_rules() {
    local ns=$1 inside=$2 masq=$3 pre=${4:-} fwd=${5:-}
    lab_nsx "$ns" nft -f - <<EOF || { lab_log "nft failed in $ns"; return 1; }
table ip p2plab {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        $pre
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" $masq
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "$inside" oifname "wan" accept
        $fwd
    }
}
EOF
}

# lab_miniupnpd_up N [upnp]: miniupnpd (nftables backend) in router p2p-natN, answering
# UPnP-IGD, NAT-PMP and PCP (only UPnP-IGD with "upnp") on br0 (10.N.0.1), mapping ports
# on wan.  Its config and log live in $LAB_DIR/natN/.
#  - The nftables backend only adds rules to chains it expects to exist (the Debian
#    package's nft_init.sh makes them; that script needs the daemon package's helpers):
#    table inet filter with chains miniupnpd (forward filter), prerouting_miniupnpd and
#    postrouting_miniupnpd, each jumped to from a base chain.  Mappings show up as dnat
#    rules in prerouting_miniupnpd.
#  - miniupnpd refuses to forward when its WAN address is private or reserved, and the
#    lab's 198.18.0.0/15 is reserved (benchmarking).  ext_ip= may not be reserved either;
#    ext_perform_stun=yes instead asks the lab's own RFC 5780 STUN server (p2pcopy
#    stun-server, 198.19.0.2) and uses the address it reports when all four of its
#    change-request tests get through unchanged (no NAT above the router).
#  - -d keeps it in the foreground, logging to stderr; -P gives it its own pid file.
lab_miniupnpd_up() {
    local n=$1 ns=p2p-nat$1 d=$LAB_DIR/nat$1 natpmp=yes
    [[ ${2:-} == upnp ]] && natpmp=no
    command -v miniupnpd >/dev/null || { lab_log "miniupnpd is not installed (apt-get install miniupnpd-nftables)"; return 1; }
    mkdir -p "$d"
    lab_nsx "$ns" nft -f - <<EOF || { lab_log "nft (miniupnpd tables) failed in $ns"; return 1; }
table inet filter {
    chain forward {
        type filter hook forward priority filter; policy accept;
        jump miniupnpd
    }
    chain miniupnpd {
    }
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        jump prerouting_miniupnpd
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        jump postrouting_miniupnpd
    }
    chain prerouting_miniupnpd {
    }
    chain postrouting_miniupnpd {
    }
}
EOF
    cat >"$d/miniupnpd.conf" <<EOF
ext_ifname=wan
listening_ip=br0
ipv6_disable=yes
enable_upnp=yes
enable_natpmp=$natpmp
ext_perform_stun=yes
ext_stun_host=${LAB_STUN2%:*}
ext_stun_port=${LAB_STUN2#*:}
secure_mode=yes
system_uptime=no
min_lifetime=120
max_lifetime=86400
uuid=$(cat /proc/sys/kernel/random/uuid)
allow 1024-65535 10.$n.0.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
EOF
    lab_nsx "$ns" miniupnpd -f "$d/miniupnpd.conf" -d -P "$d/miniupnpd.pid" \
        </dev/null >"$d/miniupnpd.log" 2>&1 9>&- &
    # Ready once its HTTP server (UPnP) listens; it runs its STUN check before that.
    local up=0
    for _ in $(seq 1 100); do
        grep -q 'HTTP listening on port' "$d/miniupnpd.log" && { up=1; break; }
        sleep 0.1
    done
    if ((!up)) || { [[ $natpmp == yes ]] && ! lab_wait_udp_listen "$ns" "10.$n.0.1" 5351; }; then
        lab_log "miniupnpd did not start in $ns"
        cat "$d/miniupnpd.log" >&2
        return 1
    fi
    if ! grep -q 'Port forwarding is now enabled' "$d/miniupnpd.log"; then
        lab_log "miniupnpd in $ns will not forward ports:"
        cat "$d/miniupnpd.log" >&2
        return 1
    fi
}

# lab_portmap_rules N: the port forwards miniupnpd holds on router p2p-natN, one per line
# (its dnat rules; empty when none).
lab_portmap_rules() {
    lab_nsx "p2p-nat$1" nft list chain inet filter prerouting_miniupnpd 2>/dev/null | grep -w dnat || true
}

# lab_cgnat_up N: carrier-grade NAT p2p-cgnatN (cone: plain masquerade) at
# 198.18.N.2 on the core (through lab_wan_link, so LAB_DELAY_MS applies to it),
# with 100.64.N.1/24 (RFC 6598 shared space) towards its subscriber's home
# router; then `lab_router_up N KIND "" cgnat` puts p2p-natN at 100.64.N.2.
lab_cgnat_up() {
    local n=$1 ns=p2p-cgnat$1
    lab_ns_new "$ns"
    lab_nsx "$ns" sysctl -qw net.ipv4.ip_forward=1
    lab_wan_link "$n" "$ns" wan || return 1
    ip -n p2p-core addr add "198.18.$n.1/24" dev "wan$n"
    ip -n p2p-core link set "wan$n" up
    ip -n "$ns" addr add "198.18.$n.2/24" dev wan
    ip -n "$ns" link set wan up
    ip -n "$ns" route add default via "198.18.$n.1"
    lab_nat_rules "$ns" home masquerade
}

# lab_lan_host NAME N IDX   -> NAME at 10.N.0.IDX behind p2p-natN
lab_lan_host() {
    local name=$1 n=$2 idx=$3 rns=p2p-nat$2
    lab_ns_new "$name"
    ip -n "$rns" link add "lan$idx" type veth peer name eth0 netns "$name"
    ip -n "$rns" link set "lan$idx" master br0
    ip -n "$rns" link set "lan$idx" up
    ip -n "$name" addr add "10.$n.0.$idx/24" dev eth0
    ip -n "$name" link set eth0 up
    ip -n "$name" route add default via "10.$n.0.1"
}

# lab_public_host NAME N    -> NAME at 198.18.N.2, directly on the core
lab_public_host() {
    local name=$1 n=$2
    lab_ns_new "$name"
    lab_wan_link "$n" "$name" eth0 || return 1
    ip -n p2p-core addr add "198.18.$n.1/24" dev "wan$n"
    ip -n p2p-core link set "wan$n" up
    ip -n "$name" addr add "198.18.$n.2/24" dev eth0
    ip -n "$name" link set eth0 up
    ip -n "$name" route add default via "198.18.$n.1"
}

# lab_side NAME N KIND [FULLPORT]: host NAME on "site" N of the given kind
# (public | cone | symmetric | full | cone+portmap | symmetric+portmap | cone+upnp |
# symmetric+upnp | double: a cone home NAT behind a cone CGNAT).
lab_side() {
    local name=$1 n=$2 kind=$3 fullport=${4:-}
    case $kind in
    public) lab_public_host "$name" "$n" ;;
    double) lab_cgnat_up "$n" && lab_router_up "$n" cone "" cgnat && lab_lan_host "$name" "$n" 2 ;;
    *) lab_router_up "$n" "$kind" "$fullport" && lab_lan_host "$name" "$n" 2 ;;
    esac
}

# lab_v6_site N HOST: IPv6 for site N (after lab_side N ... with a NAT router): the
# router gets 2001:db8:ff:N::2 towards the core and routes 2001:db8:N::/64 to HOST
# (2001:db8:N::2) with a stateful firewall and no NAT: inbound only for flows the LAN
# started, so punching is still needed.  2001:db8::/32 is the documentation prefix and
# exists only inside these namespaces.
lab_v6_site() {
    local n=$1 host=$2 r=p2p-nat$1
    lab_nsx p2p-core sysctl -qw net.ipv6.conf.all.forwarding=1
    lab_nsx "$r" sysctl -qw net.ipv6.conf.all.forwarding=1
    ip -n p2p-core -6 addr add "2001:db8:ff:$n::1/64" dev "wan$n" nodad
    ip -n p2p-core -6 route add "2001:db8:$n::/64" via "2001:db8:ff:$n::2"
    ip -n "$r" -6 addr add "2001:db8:ff:$n::2/64" dev wan nodad
    ip -n "$r" -6 route add default via "2001:db8:ff:$n::1"
    ip -n "$r" -6 addr add "2001:db8:$n::1/64" dev br0 nodad
    ip -n "$host" -6 addr add "2001:db8:$n::2/64" dev eth0 nodad
    ip -n "$host" -6 route add default via "2001:db8:$n::1"
    lab_nsx "$r" nft -f - <<EOF || { lab_log "nft (ip6) failed in $r"; return 1; }
table ip6 p2plab6 {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "br0" oifname "wan" accept
    }
}
EOF
}

# Cone-cone demo topology: p2p-alice behind p2p-nat1, p2p-bob behind p2p-nat2.
lab_up_demo() {
    lab_cleanup
    mkdir -p "$LAB_DIR"
    lab_core_up || return 1
    lab_side p2p-alice 1 cone && lab_side p2p-bob 2 cone || return 1
    echo "up: p2p-alice (10.1.0.2 behind p2p-nat1 198.18.1.2, cone)"
    echo "up: p2p-bob   (10.2.0.2 behind p2p-nat2 198.18.2.2, cone)"
    echo "STUN $LAB_STUN1 $LAB_STUN2, NTP $LAB_NTP (in p2p-core)"
}

# ---------------------------------------------------------------- diagnostics
lab_dump_ns_state() {
    local ns
    for ns in $(lab_namespaces); do
        case $ns in p2p-nat* | p2p-cgnat*) ;; *) continue ;; esac
        echo "---- $ns: nft ruleset"
        lab_nsx "$ns" nft list ruleset 2>&1 | sed 's/^/    /'
        echo "---- $ns: conntrack (udp)"
        lab_nsx "$ns" cat /proc/net/nf_conntrack 2>/dev/null | grep -w udp | head -n 40 | sed 's/^/    /'
    done
}

# ---------------------------------------------------------------- transfer
# The p2pcopy processes (not their timeout/ip wrappers) inside namespace NS.
lab_ns_p2pcopy_pids() {
    local p exe
    for p in $(ip netns pids "$1" 2>/dev/null); do
        exe=$(readlink "/proc/$p/exe" 2>/dev/null) || continue
        [[ ${exe% (deleted)} == "$P2PCOPY_BIN_ABS" ]] && echo "$p"
    done
    return 0
}

# lab_event FILE WORDS: a timestamped "lab:" line in an events file (see stamp.py).
lab_event() { local f=$1; shift; printf '%s lab: %s\n' "$(date +%s.%N)" "$*" >>"$f"; }

# lab_wait_connected WORKDIR: wait (max 100 s) until both peers' stderr has a
# line starting with "Connected".
lab_wait_connected() {
    local wd=$1
    for _ in $(seq 1 500); do
        if grep -q '^Connected' "$wd/sender.err" && grep -q '^Connected' "$wd/receiver.err"; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# lab_fill_tmpfs NS DIR PART: from inside the mount namespace of the p2pcopy
# process in NS (a receiver run under with-tmpfs.sh), fill the file system of
# DIR with DIR/$LAB_FILLER so that only LAB_FILL_LEAVE_KB KiB (default 1024)
# stay free.  Refuses anything but a tmpfs of at most 1 GiB.  Prints what it
# did, or why it did not, on stdout.
LAB_FILLER=lab-filler
lab_fill_tmpfs() {
    local ns=$1 dir=$2 part=$3 p st type avail total bs fill after psize mnt
    local leave=$((${LAB_FILL_LEAVE_KB:-1024} * 1024))
    p=$(lab_ns_p2pcopy_pids "$ns" | head -n 1)
    [[ -n $p ]] || { echo "no p2pcopy process in $ns"; return 1; }
    mnt=(nsenter -t "$p" -m --)
    st=$("${mnt[@]}" stat -f -c '%T %a %b %S' "$dir") || { echo "stat -f $dir in pid $p's mount namespace failed"; return 1; }
    read -r type avail total bs <<<"$st"
    avail=$((avail * bs)) total=$((total * bs))
    [[ $type == tmpfs ]] || { echo "$dir is $type, not a tmpfs, in pid $p's mount namespace"; return 1; }
    ((total <= 1024 * 1024 * 1024)) || { echo "the tmpfs on $dir is $total bytes, more than 1 GiB"; return 1; }
    ((avail > leave)) || { echo "only $avail bytes free already"; return 1; }
    psize=$("${mnt[@]}" stat -c %s "$part" 2>/dev/null) || psize="(no part file)"
    fill=$((avail - leave))
    "${mnt[@]}" fallocate -l "$fill" "$dir/$LAB_FILLER" 2>&1 || { echo "fallocate -l $fill failed"; return 1; }
    st=$("${mnt[@]}" stat -f -c '%a %S' "$dir")
    after=$((${st% *} * ${st#* }))
    echo "filled the receiver's tmpfs from inside pid $p's mount namespace: $LAB_FILLER of $fill bytes ($avail were free of $total, now $after; part file was at $psize bytes)"
}

# lab_throttle RATE: the core forwards at most RATE of UDP (nft limit, e.g. "12 mbytes"),
# in table inet p2pcut (lab_transfer deletes it at its start).
lab_throttle() {
    lab_nsx p2p-core nft -f - <<EOT
table inet p2pcut {
    chain forward {
        type filter hook forward priority -10; policy accept;
        meta l4proto udp limit rate over $1/second burst 256 kbytes drop
    }
}
EOT
}

# lab_cut: the core forwards nothing until lab_restore.
lab_cut() {
    lab_nsx p2p-core nft add table inet p2pcut
    lab_nsx p2p-core nft add chain inet p2pcut cut '{ type filter hook forward priority -20; policy drop; }'
}

# lab_restore: undoes lab_cut (a throttle stays).
lab_restore() {
    lab_nsx p2p-core nft delete chain inet p2pcut cut
}

# lab_transfer SENDER_NS RECEIVER_NS WORKDIR [options]
#   --expect MODE          ok: both exit 0, content identical, no part file left;
#                          fail: both exit 6 within timeout+15 s, stderr
#                          mentions "symmetric", nothing in the output dir;
#                          badticket: a garbage ticket is pasted to both,
#                          both exit 3 within 15 s, nothing in the output dir;
#                          interrupt: SIGINT to both 1 s after the pastes,
#                          both exit 130 within 15 s, nothing in the output dir;
#                          diskfull: both exit 9, output dir empty (--out-tmpfs);
#                          diskfills: with --fill-after; both exit 9 within 15 s
#                          of the fill, the receiver's error line says "disk
#                          full while writing into", the sender's "the receiver
#                          could not store the file"; the tmpfs listing at exit
#                          holds only the filler and .NAME.p2pcopy-part with
#                          0 < size < file size (size written to
#                          WORKDIR/part.size), nothing under the final name;
#                          lost: both exit 7 within timeout+25 s (idle timeout
#                          10 s + reconnect time), no file under the final name,
#                          only its .NAME.p2pcopy-part kept;
#                          killed: with --kill-at; sender exits 137, receiver
#                          130 within 15 s, the part file is kept (its size is
#                          written to WORKDIR/part.size), no final name
#   --clash                put a different file with the same name in the
#                          output dir first: it must stay untouched and the
#                          received copy land under a " (1)"-style name
#   --timeout N            pass --timeout N to both peers
#   --delay S              seconds between the first and the second paste
#   --sender-faketime SPEC / --receiver-faketime SPEC  (e.g. +7s)
#   --sender-no-ntp        the sender's NTP server is one that never answers (the
#                          STUN server's address, port 9): it warns and widens
#                          its rounds
#   --file PATH            file or folder to send (repeatable; default: random
#                          3-8 MB file).  With a folder or several: they must be
#                          everything in one folder, compared with the output
#                          dir by `tree.py listing` (types, modes, sizes, times,
#                          content, link targets)
#   --tree                 send a generated folder (tree.py make) and a lone file
#   --size-mb N            size of the random file instead
#   --out DIR              receiver's output dir (default WORKDIR/out; kept as it
#                          is, for a second run that resumes)
#   --show                 follow both peers' output on the terminal
#   --out-tmpfs SIZE       receiver's output dir is a SIZE tmpfs (private mount
#                          namespace); with --expect diskfull: both sides exit 9
#   --fill-after S         (with --out-tmpfs) S seconds after both print
#                          "Connected", fill the receiver's tmpfs from inside its
#                          mount namespace (fallocate FILLER_NAME) so that only
#                          LAB_FILL_LEAVE_KB (default 1024) KiB stay free
#   --throttle RATE        core forwards at most RATE (nft limit, e.g. 2 mbytes)
#   --cut-after S          S seconds after both print "Connected", the core
#                          drops all forwarded traffic (until the end, or:)
#   --cut-for S            restore forwarding S seconds after the cut; with
#                          --expect ok both must also report "Connection lost"
#                          and "reconnected"; loss and recovery times are printed
#   --kill-at PCT          when the receiver's part file reaches PCT % of the
#                          file, SIGKILL the sender's p2pcopy, then SIGINT the
#                          receiver's (use with --expect killed)
#   --count-bytes          count the UDP bytes the core forwards from each of
#                          its links; written to WORKDIR/bytes.wanN
#   --path WORDS           (with --expect ok) both peers' "Connected directly to
#                          ADDR (WORDS)" line must name that kind of path, e.g.
#                          "local network"; each side's line and rounds are printed
#   --sender-mapped IP / --receiver-mapped IP
#                          every STUN answer in that side's -v log must map it to
#                          IP (any port), and it must call its NAT a cone
# With --cut-after, --fill-after or --kill-at, every stderr line of both peers is copied with
# its arrival time into WORKDIR/events.log (stamp.py), with the lab's own actions.
# Result details are printed on stdout; returns 0 when expectations are met.
lab_transfer() {
    local sns=$1 rns=$2 wd=$3
    shift 3
    local expect=ok ptimeout="" delay=0 sfake="" rfake="" files=() show=0 clash=0
    local tmpfs="" throttle="" cutafter="" cutfor="" sizemb="" out="" tree=0 killat="" countbytes=0
    local fillafter="" wantpath="" smapped="" rmapped="" stamp=0 snontp=0 sextra=() rextra=()
    while (($#)); do
        case $1 in
        --expect) expect=$2; shift 2 ;;
        --timeout) ptimeout=$2; shift 2 ;;
        --delay) delay=$2; shift 2 ;;
        --sender-faketime) sfake=$2; shift 2 ;;
        --receiver-faketime) rfake=$2; shift 2 ;;
        --sender-no-ntp) snontp=1; shift ;;
        --file) files+=("$2"); shift 2 ;;
        --tree) tree=1; shift ;;
        --out) out=$2; shift 2 ;;
        --show) show=1; shift ;;
        --clash) clash=1; shift ;;
        --out-tmpfs) tmpfs=$2; shift 2 ;;
        --size-mb) sizemb=$2; shift 2 ;;
        --throttle) throttle=$2; shift 2 ;;
        --cut-after) cutafter=$2; shift 2 ;;
        --cut-for) cutfor=$2; shift 2 ;;
        --fill-after) fillafter=$2; shift 2 ;;
        --kill-at) killat=$2; shift 2 ;;
        --count-bytes) countbytes=1; shift ;;
        --path) wantpath=$2; shift 2 ;;
        --sender-mapped) smapped=$2; shift 2 ;;
        --receiver-mapped) rmapped=$2; shift 2 ;;
        --stamp) stamp=1; shift ;;
        --sender-extra) read -r -a sextra <<<"$2"; shift 2 ;;
        --receiver-extra) read -r -a rextra <<<"$2"; shift 2 ;;
        *) echo "lab_transfer: unknown option $1"; return 2 ;;
        esac
    done
    local bin=${P2PCOPY_BIN_ABS:?P2PCOPY_BIN_ABS not set}
    rm -rf "$wd"
    mkdir -p "$wd/in"
    [[ -n $out ]] || out=$wd/out
    mkdir -p "$out"
    out=$(realpath "$out")
    if ((tree)); then
        python3 "$LAB_LIB_DIR/tree.py" make "$wd/in/tree" || { echo "tree.py make failed"; return 1; }
        local lone="$wd/in/lone file.bin"
        head -c $((1024 * 1024 + RANDOM)) /dev/urandom >"$lone"
        chmod 0640 "$lone"
        touch -d '2019-02-03 04:05:06.123456789' "$lone"
        files=("$wd/in/tree" "$lone")
    elif ((${#files[@]} == 0)); then
        local size=$(((3 + RANDOM % 6) * 1024 * 1024 + RANDOM))
        [[ -n $sizemb ]] && size=$((sizemb * 1024 * 1024 + RANDOM))
        files=("$wd/in/testfile-$RANDOM.bin")
        head -c "$size" /dev/urandom >"${files[0]}"
    fi
    local f sendargs=()
    for f in "${files[@]}"; do
        sendargs+=(--file "$(realpath "$f")")
    done
    # One plain file: compared with cmp under its name.  Otherwise trees.
    local file="" name="" single=0
    if ((${#files[@]} == 1)) && [[ -f ${files[0]} ]]; then
        single=1
        file=$(realpath "${files[0]}")
        name=$(basename "$file")
    fi
    if ((clash)); then
        ((single)) || { echo "lab_transfer: --clash needs one plain file"; return 2; }
        echo "pre-existing file, not to be overwritten" >"$out/$name"
        cp "$out/$name" "$wd/clash.orig"
    fi
    if [[ -n $killat || $expect == lost || $expect == killed || $expect == diskfills ]] && ((!single)); then
        echo "lab_transfer: --kill-at and --expect lost/killed/diskfills need one plain file"
        return 2
    fi
    if [[ -n $fillafter && -z $tmpfs ]]; then
        echo "lab_transfer: --fill-after needs --out-tmpfs"
        return 2
    fi
    local part=""
    ((single)) && part="$out/.$name.p2pcopy-part"

    local common=("${LAB_NET_ARGS[@]}" -v)
    [[ -n $ptimeout ]] && common+=(--timeout "$ptimeout")
    local limit=${LAB_PEER_LIMIT:-150}
    [[ -n $ptimeout ]] && limit=$((ptimeout + 30))
    # The sender's arguments: the same, or with an NTP server that never answers.
    local scommon=("${common[@]/#$LAB_NTP/${LAB_STUN1%:*}:9}")
    ((snontp)) || scommon=("${common[@]}")
    local spre=() rpre=()
    [[ -n $sfake ]] && spre=(env FAKETIME_DONT_FAKE_MONOTONIC=1 faketime -f "$sfake")
    [[ -n $rfake ]] && rpre=(env FAKETIME_DONT_FAKE_MONOTONIC=1 faketime -f "$rfake")
    [[ -n $tmpfs ]] && rpre=("$LAB_LIB_DIR/with-tmpfs.sh" "$tmpfs" "$out" "$wd/out.listing" "${rpre[@]}")
    lab_nsx p2p-core nft delete table inet p2pcut 2>/dev/null || true
    lab_nsx p2p-core nft delete table inet p2pcount 2>/dev/null || true
    if [[ -n $throttle ]]; then
        lab_throttle "$throttle" || { echo "throttle rule failed"; return 1; }
    fi
    local wans=()
    if ((countbytes)); then
        mapfile -t wans < <(ip -n p2p-core -o link show type veth | awk -F'[:@ ]+' '$2 ~ /^wan/ {print $2}')
        {
            echo "table inet p2pcount {"
            echo "  chain forward {"
            echo "    type filter hook forward priority -30; policy accept;"
            for f in "${wans[@]}"; do echo "    iifname \"$f\" meta l4proto udp counter comment \"$f\""; done
            echo "  }"
            echo "}"
        } | lab_nsx p2p-core nft -f - || { echo "counter rules failed"; return 1; }
    fi

    mkfifo "$wd/sender.in" "$wd/receiver.in"
    local sfd rfd
    exec {sfd}<>"$wd/sender.in"
    exec {rfd}<>"$wd/receiver.in"

    local t0=$SECONDS
    timeout -k 5 "$limit" ip netns exec "$rns" "${rpre[@]}" "$bin" receiver \
        --localport "$LAB_RECEIVER_PORT" --output "$out" "${common[@]}" "${rextra[@]}" \
        <"$wd/receiver.in" >"$wd/receiver.out" 2>"$wd/receiver.err" &
    local rpid=$!
    timeout -k 5 "$limit" ip netns exec "$sns" "${spre[@]}" "$bin" sender \
        --localport "$LAB_SENDER_PORT" "${sendargs[@]}" "${scommon[@]}" "${sextra[@]}" \
        <"$wd/sender.in" >"$wd/sender.out" 2>"$wd/sender.err" &
    local spid=$!
    if ((show)); then
        tail -q -n +1 -F "$wd/sender.out" "$wd/sender.err" 2>/dev/null 9>&- > >(sed -u 's/^/  [sender]   /') &
        echo $! >>"$LAB_DIR/helpers.pids"
        tail -q -n +1 -F "$wd/receiver.out" "$wd/receiver.err" 2>/dev/null 9>&- > >(sed -u 's/^/  [receiver] /') &
        echo $! >>"$LAB_DIR/helpers.pids"
    fi
    local events=$wd/events.log stamppid=""
    if [[ -n $cutafter || -n $killat || -n $fillafter ]] || ((stamp)); then
        python3 "$LAB_LIB_DIR/stamp.py" "$events" "$wd/stamp.stop" $((limit + 20)) \
            sender="$wd/sender.err" receiver="$wd/receiver.err" </dev/null 9>&- &
        stamppid=$!
        echo "$stamppid" >>"$LAB_DIR/helpers.pids"
    fi

    # Wait (bounded) for both ticket lines.
    local st="" rt=""
    for _ in $(seq 1 150); do
        st=$(sed -n 's/^Tell this to your peer: //p' "$wd/sender.out" | head -n 1)
        rt=$(sed -n 's/^Tell this to your peer: //p' "$wd/receiver.out" | head -n 1)
        [[ -n $st && -n $rt ]] && break
        sleep 0.2
    done
    local problems=()
    if [[ -z $st || -z $rt ]]; then
        problems+=("ticket line missing after 30 s (sender:'${st}' receiver:'${rt}')")
        kill "$spid" "$rpid" 2>/dev/null
    else
        echo "sender ticket:   $st"
        echo "receiver ticket: $rt"
        if [[ $expect == badticket ]]; then
            st=p2pcGarbageTicket-${RANDOM}xyz rt=not-a-ticket
            echo "pasting garbage instead: '$st' / '$rt'"
        fi
        # "The users paste": each ticket into the other's stdin.
        printf '%s\n' "$st" >&"$rfd"
        lab_event "$events" "paste 1"
        sleep "$delay"
        printf '%s\n' "$rt" >&"$sfd"
        lab_event "$events" "paste 2"
    fi
    local tpaste=$SECONDS src=0 rrc=0
    if [[ -n $cutafter ]]; then
        if lab_wait_connected "$wd"; then
            lab_event "$events" "both connected"
            sleep "$cutafter"
            lab_cut
            lab_event "$events" "cut"
            tpaste=$SECONDS
            echo "cut the core's forwarding ${cutafter}s after both connected"
            if [[ -n $cutfor ]]; then
                sleep "$cutfor"
                lab_restore
                lab_event "$events" "restored"
                echo "restored the core's forwarding after ${cutfor}s"
            fi
        else
            problems+=("peers never printed 'Connected', could not cut mid-transfer")
        fi
    fi
    if [[ -n $fillafter ]]; then
        if lab_wait_connected "$wd"; then
            lab_event "$events" "both connected"
            sleep "$fillafter"
            local fillmsg
            if fillmsg=$(lab_fill_tmpfs "$rns" "$out" "$part"); then
                lab_event "$events" "filled"
                echo "${fillafter}s after both connected: $fillmsg"
            else
                problems+=("could not fill the receiver's tmpfs: $fillmsg")
            fi
            tpaste=$SECONDS
        else
            problems+=("peers never printed 'Connected', could not fill the disk mid-transfer")
        fi
    fi
    if [[ -n $killat ]]; then
        local fsize psize=0 reached=0 p
        fsize=$(stat -c %s "$file")
        for _ in $(seq 1 $((limit * 10))); do
            psize=$(stat -c %s "$part" 2>/dev/null || echo 0)
            if ((psize * 100 >= killat * fsize)); then
                reached=1
                break
            fi
            kill -0 "$spid" 2>/dev/null || break
            sleep 0.1
        done
        ((reached)) || problems+=("part file never reached ${killat}% (at $psize of $fsize bytes)")
        p=$(lab_ns_p2pcopy_pids "$sns")
        [[ -n $p ]] || problems+=("no p2pcopy process in $sns to kill")
        # (stderr off: no "Killed" job notice from bash)
        # shellcheck disable=SC2086
        {
            [[ -z $p ]] || kill -KILL $p
            lab_event "$events" "SIGKILL sender"
            echo "part file at $psize of $fsize bytes ($((psize * 100 / fsize))%): SIGKILL to the sender's p2pcopy (pid $p)"
            sleep 0.3
        } 2>/dev/null
        p=$(lab_ns_p2pcopy_pids "$rns")
        [[ -n $p ]] || problems+=("no p2pcopy process in $rns to interrupt")
        # shellcheck disable=SC2086
        [[ -z $p ]] || kill -INT $p
        lab_event "$events" "SIGINT receiver"
        echo "SIGINT to the receiver's p2pcopy (pid $p)"
        tpaste=$SECONDS
    fi
    if [[ $expect == interrupt ]]; then
        # Before the first round can connect anyone: it starts 0.25-10.25 s after the
        # paste and its first 2 s are openers.
        sleep 1
        local p
        for p in $(ip netns pids "$sns") $(ip netns pids "$rns"); do
            kill -INT "$p" 2>/dev/null || true
        done
        tpaste=$SECONDS
        echo "sent SIGINT to both peers"
    fi
    # Each side's own exit time (bash reaps its children as they end, so kill -0
    # fails once one has exited; wait still returns its status).  stderr off: no
    # "Killed" job notice for --kill-at.
    local tsend="" trecv=""
    {
        while [[ -z $tsend || -z $trecv ]]; do
            [[ -z $tsend ]] && ! kill -0 "$spid" && tsend=$SECONDS
            [[ -z $trecv ]] && ! kill -0 "$rpid" && trecv=$SECONDS
            sleep 0.2
        done
        wait "$spid" || src=$?
        wait "$rpid" || rrc=$?
    } 2>/dev/null
    exec {sfd}>&- {rfd}>&-
    ((show)) && { sleep 0.3; lab_kill_helpers; }
    if [[ -n $stamppid ]]; then
        touch "$wd/stamp.stop"
        wait "$stamppid" 2>/dev/null || true
    fi
    if ((countbytes)); then
        local line
        for f in "${wans[@]}"; do
            line=$(lab_nsx p2p-core nft list chain inet p2pcount forward | grep "comment \"$f\"")
            sed -n 's/.* bytes \([0-9]*\).*/\1/p' <<<"$line" >"$wd/bytes.$f"
            echo "core forwarded $(cat "$wd/bytes.$f") UDP bytes from $f"
        done
        lab_nsx p2p-core nft delete table inet p2pcount 2>/dev/null || true
    fi

    echo "sender exit $src after $((tsend - tpaste))s, receiver exit $rrc after $((trecv - tpaste))s (since last paste; total $((trecv - t0))s)"
    local side
    for side in sender receiver; do
        local nout
        nout=$(grep -c . "$wd/$side.out" || true)
        [[ $nout == 1 ]] || problems+=("$side printed $nout stdout lines, expected exactly 1")
    done
    local leftover
    leftover=$(find "$out" -name '*.p2pcopy-part' -printf '%P ' 2>/dev/null)
    local errl want_rc want_s=15
    case $expect in
    ok)
        [[ $src == 0 ]] || problems+=("sender exit code $src, expected 0")
        [[ $rrc == 0 ]] || problems+=("receiver exit code $rrc, expected 0")
        [[ -z $leftover ]] || problems+=("part files left in the output dir: $leftover")
        if ((single)); then
            local got=$out/$name
            if ((clash)); then
                cmp -s "$wd/clash.orig" "$out/$name" || problems+=("pre-existing $name was modified")
                got=$(find "$out" -mindepth 1 -maxdepth 1 -type f ! -name "$name" -print -quit)
                echo "received as: '$(basename "${got:-<nothing>}")'"
                [[ $(basename "$got") == *"(1)"* ]] || problems+=("received file not saved under a ' (1)' name: '$(basename "$got")'")
            fi
            if [[ -n $got && -f $got ]]; then
                cmp -s "$file" "$got" || problems+=("received file differs from sent file")
            else
                problems+=("no $name in output dir (has: $(find "$out" -mindepth 1 -printf '%f '))")
            fi
        else
            local src_dir
            src_dir=$(dirname "$(realpath "${files[0]}")")
            python3 "$LAB_LIB_DIR/tree.py" listing "$src_dir" >"$wd/listing.sent"
            python3 "$LAB_LIB_DIR/tree.py" listing "$out" >"$wd/listing.received"
            echo "sent: $(awk -F'\t' '{n[$2]++} END {for (t in n) printf "%d %s ", n[t], t}' "$wd/listing.sent")"
            if ! diff -u "$wd/listing.sent" "$wd/listing.received" >"$wd/listing.diff"; then
                problems+=("received tree differs from the sent one ($(grep -c '^[-+][^-+]' "$wd/listing.diff") lines in listing.diff):")
                problems+=("$(head -n 20 "$wd/listing.diff")")
            else
                echo "received tree identical ($(wc -l <"$wd/listing.sent") entries: paths, types, modes, sizes, mtimes, SHA-256, link targets)"
            fi
        fi
        if [[ -n $cutfor ]]; then
            for side in sender receiver; do
                grep -q 'Connection lost' "$wd/$side.err" || problems+=("$side stderr has no 'Connection lost'")
                grep -q 'reconnected' "$wd/$side.err" || problems+=("$side stderr has no 'reconnected'")
                # The NATs kept their mappings: STUN, asked again at the reconnect, must agree.
                if grep -q 'your NAT now maps' "$wd/$side.err"; then
                    problems+=("$side warned of a new NAT mapping, but its NAT kept the old one")
                fi
            done
            lab_outage_report "$events"
        fi
        if [[ -n $wantpath || -n $smapped || -n $rmapped ]]; then
            lab_check_path "$wd" sender "$wantpath" "$smapped" || problems+=("sender: $LAB_PATH_PROBLEM")
            lab_check_path "$wd" receiver "$wantpath" "$rmapped" || problems+=("receiver: $LAB_PATH_PROBLEM")
        fi
        want_rc=""
        ;;
    fail) want_rc=6 want_s=$((${ptimeout:-120} + 15)) ;;
    fastfail) want_rc=6 want_s=5 ;;
    badticket) want_rc=3 ;;
    diskfull) want_rc=9 ;;
    diskfills) want_rc=9 ;;
    lost) want_rc=7 want_s=$((${ptimeout:-120} + 25)) ;;
    killed) want_rc=killed ;;
    interrupt) want_rc=130 ;;
    *) problems+=("unknown expectation $expect") want_rc="" ;;
    esac
    if [[ -n $want_rc ]]; then
        local want_src=$want_rc want_rrc=$want_rc
        [[ $want_rc == killed ]] && want_src=137 want_rrc=130
        [[ $src == "$want_src" ]] || problems+=("sender exit code $src, expected $want_src")
        (((tsend - tpaste) <= want_s)) || problems+=("sender took $((tsend - tpaste))s > ${want_s}s")
        [[ $rrc == "$want_rrc" ]] || problems+=("receiver exit code $rrc, expected $want_rrc")
        (((trecv - tpaste) <= want_s)) || problems+=("receiver took $((trecv - tpaste))s > ${want_s}s")
        for side in sender receiver; do
            # (the prompt may lack a newline, so the error may follow it on its line)
            errl=$(sed "s/^Enter your peer's ticket (or ip:port): //" "$wd/$side.err" | grep '^p2pcopy: ' || true)
            [[ -n $errl || $expect == interrupt || $expect == killed ]] || problems+=("$side stderr has no 'p2pcopy: ' line")
            [[ $expect != fail && $expect != fastfail ]] || grep -qi symmetric <<<"$errl" ||
                problems+=("$side error line does not mention 'symmetric'")
            if [[ $expect == diskfills ]]; then
                local want_err="the receiver could not store the file"
                [[ $side == receiver ]] && want_err="disk full while writing into"
                grep -qF "$want_err" <<<"$errl" || problems+=("$side error line does not say '$want_err'")
            fi
            [[ -z $errl ]] || echo "$side: ${errl//$'\n'/$'\n'$side: }"
        done
        if [[ -n $tmpfs ]]; then
            echo "receiver's tmpfs output dir at exit:"
            sed 's/^/  /' "$wd/out.listing" 2>/dev/null
            if [[ $expect == diskfills ]]; then
                # Resume data kept next to the filler, nothing under the final name
                # (ls -lA: size is field 5, the name the last; no blanks in these names)
                local pname psize fsize others
                pname=$(basename "$part")
                fsize=$(stat -c %s "$file")
                if [[ ! -s $wd/out.listing ]]; then
                    problems+=("no listing of the receiver's tmpfs")
                else
                    psize=$(awk -v n="$pname" '$1 != "total" && $NF == n { print $5 }' "$wd/out.listing")
                    if [[ -z $psize ]]; then
                        problems+=("no part file $pname kept")
                    else
                        echo "kept $pname: $psize bytes ($((psize * 100 / fsize))% of the file)"
                        echo "$psize" >"$wd/part.size"
                        ((psize > 0)) || problems+=("part file $pname is empty")
                        ((psize < fsize)) || problems+=("part file $pname holds $psize of $fsize bytes: the disk never filled")
                    fi
                    awk -v n="$LAB_FILLER" '$NF == n { f = 1 } END { exit !f }' "$wd/out.listing" ||
                        problems+=("no $LAB_FILLER in the listing")
                    awk -v n="$name" '$NF == n { f = 1 } END { exit !f }' "$wd/out.listing" &&
                        problems+=("a file exists under the final name $name")
                    others=$(awk -v a="$pname" -v b="$LAB_FILLER" \
                        '$1 != "total" && $NF != a && $NF != b { printf "%s ", $NF }' "$wd/out.listing")
                    [[ -z $others ]] || problems+=("output dir has more than the part file and the filler: $others")
                fi
            elif grep -vq '^total' "$wd/out.listing" 2>/dev/null; then
                problems+=("output dir not empty at receiver exit")
            fi
        elif [[ $expect == lost || $expect == killed ]]; then
            # Resume data: the part file stays, nothing under the final name.
            local psize
            if [[ -f $part ]]; then
                psize=$(stat -c %s "$part")
                echo "kept $(basename "$part"): $psize bytes ($((psize * 100 / $(stat -c %s "$file")))% of the file)"
                echo "$psize" >"$wd/part.size"
            else
                problems+=("no part file $(basename "$part") kept")
            fi
            [[ ! -e $out/$name ]] || problems+=("a file exists under the final name $name")
            local others
            others=$(find "$out" -mindepth 1 ! -path "$part" -printf '%P ')
            [[ -z $others ]] || problems+=("output dir has more than the part file: $others")
        else
            [[ -z $(find "$out" -mindepth 1 -print -quit) ]] ||
                problems+=("output dir not empty: $(find "$out" -mindepth 1 -printf '%f ')")
        fi
    fi
    lab_nsx p2p-core nft delete table inet p2pcut 2>/dev/null || true
    if ((${#problems[@]})); then
        printf 'problem: %s\n' "${problems[@]}"
        return 1
    fi
    return 0
}

# lab_check_path WD SIDE WORDS MAPPED_IP: from SIDE's output in WD (stdout and
# stderr), print what STUN saw, how it connected and after how many rounds;
# fails (reason in LAB_PATH_PROBLEM) if WORDS is set and the first "Connected
# directly to ADDR (KIND)" line has another KIND, or if MAPPED_IP is set and a
# STUN answer mapped it elsewhere, or its NAT is not called a cone.
LAB_PATH_PROBLEM=""
lab_check_path() {
    local wd=$1 side=$2 words=$3 mip=$4 conn kind rounds maps bad
    LAB_PATH_PROBLEM=""
    conn=$(cat "$wd/$side.err" "$wd/$side.out" 2>/dev/null | grep -o 'Connected directly to .*' | head -n 1)
    rounds=$(grep -c '^Round [0-9]*: probing' "$wd/$side.err" || true)
    maps=$(sed -n 's/.*STUN answer .*mapped=\([0-9.:]*\).*/\1/p' "$wd/$side.err" | sort -u | paste -sd ' ')
    echo "$side: STUN mapped ${maps:-nothing}; ${conn:-never connected}; rounds fired: $rounds"
    if [[ -n $words ]]; then
        kind=$(sed -n 's/^Connected directly to [^ ]* (\(.*\)), round trip.*/\1/p' <<<"$conn")
        [[ $kind == "$words" ]] || { LAB_PATH_PROBLEM="connected over '${kind:-nothing}', expected '$words'"; return 1; }
    fi
    if [[ -n $mip ]]; then
        [[ -n $maps ]] || { LAB_PATH_PROBLEM="no STUN answer in its log"; return 1; }
        bad=$(tr ' ' '\n' <<<"$maps" | grep . | grep -v "^$mip:" || true)
        [[ -z $bad ]] || { LAB_PATH_PROBLEM="STUN mapped it to $bad, expected $mip"; return 1; }
        grep -q '^Your NAT: .*(cone)' "$wd/$side.err" ||
            { LAB_PATH_PROBLEM="its 'Your NAT:' line does not say cone"; return 1; }
    fi
    return 0
}

# lab_outage_report EVENTS: from a --cut-for run's events.log, when each peer
# noticed the loss and how long after the restore it was connected again.
lab_outage_report() {
    awk '
        / lab: cut$/ { cut = $1 }
        / lab: restored$/ { restored = $1 }
        / lab: both connected$/ { both = $1 }
        $2 ~ /^(sender|receiver):$/ {
            side = substr($2, 1, length($2) - 1)
            if ($3 == "Connected") {
                n[side]++
                if (n[side] == 2 && !(side in back)) back[side] = $1
            }
            if ($3 == "Connection" && $4 == "lost" && !(side in lost)) lost[side] = $1
            if ($0 ~ /reconnected/) done[side] = $1
        }
        END {
            if (!cut || !restored) { print "outage: no cut/restore in the events"; exit }
            printf "outage: cut %.1f s after both connected, restored %.1f s later\n", cut - both, restored - cut
            for (i = 1; i <= 2; i++) {
                s = (i == 1) ? "sender" : "receiver"
                printf "  %-8s: loss noticed %s s after the cut; connected again %s s after the restore; done %s s after the restore\n", s,
                    (s in lost) ? sprintf("%.1f", lost[s] - cut) : "never",
                    (s in back) ? sprintf("%.1f", back[s] - restored) : "never",
                    (s in done) ? sprintf("%.1f", done[s] - restored) : "?"
            }
        }' "$1"
}

# ---------------------------------------------------------------- self-check
# Builds a mixed topology and verifies STUN, NTP, the core router and the
# NAT behaviours with probe.py.  Leaves the core up, removes the rest.
lab_selfcheck() {
    local fails=0 out a1 a2 p1 p2
    local -A map
    lab_reset_edges
    lab_side p2p-ck-cone 1 cone && lab_side p2p-ck-sym 2 symmetric &&
        lab_side p2p-ck-full 3 full 21300 && lab_side p2p-ck-pub 4 public &&
        lab_lan_host p2p-ck-lan 1 3 || return 1
    _ck() { if "$@"; then echo "  ok   $CK"; else echo "  FAIL $CK"; fails=$((fails + 1)); fi; }

    # STUN through each kind, one socket to both servers.
    local ns
    for ns in p2p-ck-cone p2p-ck-sym p2p-ck-full p2p-ck-pub; do
        out=$(lab_nsx "$ns" "${LAB_PROBE[@]}" stun --bind 0.0.0.0:4300 "$LAB_STUN1" "$LAB_STUN2" 2>&1) || true
        echo "  $ns (local port 4300): $(echo "$out" | tr '\n' ';')"
        map[$ns]=$out
    done
    a1=$(echo "${map[p2p-ck-cone]}" | awk 'NR==1{print $3}'); a2=$(echo "${map[p2p-ck-cone]}" | awk 'NR==2{print $3}')
    CK="cone: same mapping for both STUN servers, port preserved ($a1 / $a2)"
    _ck test "$a1" = 198.18.1.2:4300 -a "$a2" = 198.18.1.2:4300
    a1=$(echo "${map[p2p-ck-full]}" | awk 'NR==1{print $3}'); a2=$(echo "${map[p2p-ck-full]}" | awk 'NR==2{print $3}')
    CK="full: same mapping for both STUN servers ($a1 / $a2)"
    _ck test "$a1" = 198.18.3.2:4300 -a "$a2" = 198.18.3.2:4300
    a1=$(echo "${map[p2p-ck-pub]}" | awk 'NR==1{print $3}')
    CK="public: mapped address is its own ($a1)"
    _ck test "$a1" = 198.18.4.2:4300
    a1=$(echo "${map[p2p-ck-sym]}" | awk 'NR==1{print $3}'); a2=$(echo "${map[p2p-ck-sym]}" | awk 'NR==2{print $3}')
    p1=${a1##*:} p2=${a2##*:}
    CK="symmetric: different mapped port per STUN server ($a1 / $a2)"
    _ck test -n "$p1" -a -n "$p2" -a "$p1" != "$p2" -a "${a1%%:*}" = 198.18.2.2

    # NTP.
    out=$(lab_nsx p2p-ck-cone "${LAB_PROBE[@]}" ntp "$LAB_NTP" 2>&1) || true
    CK="NTP from behind a NAT: $out"
    _ck grep -q ' mode 4 ' <<<"$out"

    # Core is a router: TTL=2 from behind NAT 1 dies at the core (198.18.1.1).
    out=$(lab_nsx p2p-ck-cone "${LAB_PROBE[@]}" ttl --bind 0.0.0.0:4301 --ttl 2 198.18.3.2:21300 2>&1) || true
    CK="TTL=2 opener dies at the core: $out"
    _ck grep -q 'icmp type 11 .* from 198.18.1.1' <<<"$out"

    # Full cone: unsolicited inbound from the symmetric side reaches the host.
    lab_nsx p2p-ck-full "${LAB_PROBE[@]}" recv --bind 0.0.0.0:21300 --wait 3 >"$LAB_DIR/ck-full.out" 2>&1 &
    local rp=$!
    lab_wait_udp_listen p2p-ck-full 0.0.0.0 21300
    lab_nsx p2p-ck-sym "${LAB_PROBE[@]}" send --bind 0.0.0.0:4302 198.18.3.2:21300 >/dev/null
    wait "$rp" || true
    CK="full: unsolicited inbound reaches host ($(head -n 1 "$LAB_DIR/ck-full.out"))"
    _ck grep -q '^from 198.18.2.2:' "$LAB_DIR/ck-full.out"

    # Cone: unsolicited inbound is filtered.
    lab_nsx p2p-ck-cone "${LAB_PROBE[@]}" recv --bind 0.0.0.0:4303 --wait 2 >"$LAB_DIR/ck-cone.out" 2>&1 &
    rp=$!
    lab_wait_udp_listen p2p-ck-cone 0.0.0.0 4303
    lab_nsx p2p-ck-pub "${LAB_PROBE[@]}" send --bind 0.0.0.0:7000 198.18.1.2:4303 >/dev/null
    wait "$rp" || true
    CK="cone: unsolicited inbound is dropped ($(head -n 1 "$LAB_DIR/ck-cone.out"))"
    _ck grep -q 'nothing received' "$LAB_DIR/ck-cone.out"

    # Domain fact: that unsolicited packet left an unreplied conntrack entry,
    # so the host's own packet to that peer now gets a different port.
    lab_nsx p2p-ck-pub "${LAB_PROBE[@]}" recv --bind 0.0.0.0:7000 --wait 2 >"$LAB_DIR/ck-pub.out" 2>&1 &
    rp=$!
    lab_wait_udp_listen p2p-ck-pub 0.0.0.0 7000
    lab_nsx p2p-ck-cone "${LAB_PROBE[@]}" send --bind 0.0.0.0:4303 --count 1 198.18.4.2:7000 >/dev/null
    wait "$rp" || true
    out=$(head -n 1 "$LAB_DIR/ck-pub.out")
    CK="cone: after unsolicited inbound, outbound to that peer is re-mapped ($out)"
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash
    _ck bash -c '[[ $1 == "from 198.18.1.2:"* && $1 != "from 198.18.1.2:4303 "* ]]' _ "$out"

    # Cone hole punch: the host sends first, the contacted peer's answer passes.
    lab_nsx p2p-ck-cone "${LAB_PROBE[@]}" recv --bind 0.0.0.0:4305 --wait 3 --hello 198.18.4.2:7002 \
        >"$LAB_DIR/ck-hp.out" 2>&1 &
    rp=$!
    sleep 0.5
    lab_nsx p2p-ck-pub "${LAB_PROBE[@]}" send --bind 0.0.0.0:7002 --count 1 198.18.1.2:4305 >/dev/null
    wait "$rp" || true
    CK="cone: reply from the contacted peer passes ($(head -n 1 "$LAB_DIR/ck-hp.out"))"
    _ck grep -q '^from 198.18.4.2:7002' "$LAB_DIR/ck-hp.out"

    # Two hosts on one LAN reach each other directly (L2, no NAT).
    lab_nsx p2p-ck-lan "${LAB_PROBE[@]}" recv --bind 0.0.0.0:21300 --wait 2 >"$LAB_DIR/ck-lan.out" 2>&1 &
    rp=$!
    lab_wait_udp_listen p2p-ck-lan 0.0.0.0 21300
    lab_nsx p2p-ck-cone "${LAB_PROBE[@]}" send --bind 0.0.0.0:4306 --count 1 10.1.0.3:21300 >/dev/null
    wait "$rp" || true
    CK="same LAN: direct delivery ($(head -n 1 "$LAB_DIR/ck-lan.out"))"
    _ck grep -q '^from 10.1.0.2:4306' "$LAB_DIR/ck-lan.out"

    lab_reset_edges
    unset -f _ck
    ((fails == 0))
}
