# shellcheck shell=bash
# Reusable pieces of the p2pcopy network-namespace lab.
#
# Source this file (bash).  Everything lives in network namespaces named
# p2p-*; nothing is connected to the root namespace.  Addresses:
#   198.19.0.1, .2   STUN (coturn, one process)       in p2p-core
#   198.19.0.3       NTP  (chronyd, local clock, -x)  in p2p-core
#   198.18.N.0/24    link between p2p-core (.1) and router/public host N (.2)
#   10.N.0.0/24      LAN behind router p2p-natN (router .1, hosts .2, .3 ...)
#
# Main entry points:
#   lab_cleanup                      remove every p2p-* namespace and its processes
#   lab_core_up                      core router + STUN + NTP
#   lab_router_up N KIND [FULLPORT]  NAT router p2p-natN, KIND cone|symmetric|full
#   lab_lan_host NAME N IDX          host NAME (p2p-...) at 10.N.0.IDX behind p2p-natN
#   lab_public_host NAME N           host NAME at 198.18.N.2 directly on the core
#   lab_transfer SENDER_NS RECEIVER_NS WORKDIR [opts]   one p2pcopy transfer, checked
#   lab_selfcheck                    verify STUN/NTP/NAT behaviour with probe.py

LAB_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_DIR=${LAB_DIR:-/tmp/p2p-lab}
LAB_PROBE=(python3 "$LAB_LIB_DIR/probe.py")
LAB_STUN1=198.19.0.1:3478
LAB_STUN2=198.19.0.2:3478
LAB_NTP=198.19.0.3:123
LAB_NET_ARGS=(--stun-server "$LAB_STUN1" --stun-server "$LAB_STUN2" --ntp-server "$LAB_NTP")
LAB_SENDER_PORT=${LAB_SENDER_PORT:-4300}
LAB_RECEIVER_PORT=${LAB_RECEIVER_PORT:-21300}

lab_log() { printf '[lab] %s\n' "$*" >&2; }

lab_nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

lab_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep '^p2p-' || true; }

# Kill the processes running inside one of our namespaces (by pid), then delete it.
lab_ns_del() {
    local ns=$1 pids
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
# of our `tail ... $LAB_DIR/...` followers (the file may be stale after a crash).
lab_kill_helpers() {
    local f=$LAB_DIR/helpers.pids p cmd
    [[ -f $f ]] || return 0
    while read -r p; do
        [[ $p =~ ^[0-9]+$ ]] || continue
        cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)
        [[ $cmd == tail\ * && $cmd == *"$LAB_DIR/"* ]] && kill "$p" 2>/dev/null
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

    # STUN 1: coturn, STUN only.  STUN 2: p2pcopy's own server, so the client is tested
    # against both (and the NAT classification needs two servers).
    lab_nsx p2p-core turnserver -n --stun-only --no-cli --no-tls --no-dtls --no-tcp \
        -L 198.19.0.1 -p 3478 \
        --log-file "$d/turnserver.log" --simple-log --no-stdout-log \
        --pidfile "$d/turnserver.pid" --userdb "$d/turndb" \
        </dev/null >"$d/turnserver.stdout" 2>&1 9>&- &

    lab_nsx p2p-core "$P2PCOPY_BIN_ABS" stun-server --listen 198.19.0.2:3478 \
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
    return 0
}

# ---------------------------------------------------------------- routers
# lab_router_up N KIND [FULLPORT]
#   cone       masquerade (endpoint-independent mapping, port preserved,
#              address-and-port-dependent filtering)
#   symmetric  masquerade fully-random (new port per destination)
#   full       cone + inbound UDP to FULLPORT dnat'd to 10.N.0.2:FULLPORT
#              (endpoint-independent filtering for that port)
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
    local n=$1 kind=$2 fullport=${3:-}
    local ns=p2p-nat$n masq fullpre="" fullfwd=""
    lab_ns_new "$ns"
    lab_nsx "$ns" sysctl -qw net.ipv4.ip_forward=1
    lab_wan_link "$n" "$ns" wan || return 1
    ip -n p2p-core addr add "198.18.$n.1/24" dev "wan$n"
    ip -n p2p-core link set "wan$n" up
    ip -n "$ns" addr add "198.18.$n.2/24" dev wan
    ip -n "$ns" link set wan up
    ip -n "$ns" route add default via "198.18.$n.1"
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
    # Note: no input-chain drop on purpose: an unsolicited inbound packet to
    # the router's mapped port must still create (and confirm) its conntrack
    # entry, as on a real router.
    lab_nsx "$ns" nft -f - <<EOF || { lab_log "nft failed in $ns"; return 1; }
table ip p2plab {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        $fullpre
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" $masq
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "br0" oifname "wan" accept
        $fullfwd
    }
}
EOF
    echo "$kind" >"$LAB_DIR/nat$n.kind"
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
# (public | cone | symmetric | full).
lab_side() {
    local name=$1 n=$2 kind=$3 fullport=${4:-}
    if [[ $kind == public ]]; then
        lab_public_host "$name" "$n"
    else
        lab_router_up "$n" "$kind" "$fullport" && lab_lan_host "$name" "$n" 2
    fi
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
        case $ns in p2p-nat*) ;; *) continue ;; esac
        echo "---- $ns: nft ruleset"
        lab_nsx "$ns" nft list ruleset 2>&1 | sed 's/^/    /'
        echo "---- $ns: conntrack (udp)"
        lab_nsx "$ns" cat /proc/net/nf_conntrack 2>/dev/null | grep -w udp | head -n 40 | sed 's/^/    /'
    done
}

# ---------------------------------------------------------------- transfer
# lab_transfer SENDER_NS RECEIVER_NS WORKDIR [options]
#   --expect MODE          ok: both exit 0 and file identical;
#                          fail: both exit 6 within timeout+15 s, stderr
#                          mentions "symmetric", nothing in the output dir;
#                          badticket: a garbage ticket is pasted to both,
#                          both exit 3 within 15 s, nothing in the output dir;
#                          interrupt: SIGINT to both 3 s after the pastes,
#                          both exit 130 within 15 s, nothing in the output dir
#   --clash                put a different file with the same name in the
#                          output dir first: it must stay untouched and the
#                          received copy land under a " (1)"-style name
#   --timeout N            pass --timeout N to both peers
#   --delay S              seconds between the first and the second paste
#   --sender-faketime SPEC / --receiver-faketime SPEC  (e.g. +7s)
#   --file PATH            file to send (default: random 3-8 MB)
#   --size-mb N            size of the random file instead
#   --show                 follow both peers' output on the terminal
#   --out-tmpfs SIZE       receiver's output dir is a SIZE tmpfs (private mount
#                          namespace); with --expect diskfull: both sides exit 9
#   --throttle RATE        core forwards at most RATE (nft limit, e.g. 2 mbytes)
#   --cut-after S          S seconds after both print "Connected", the core
#                          drops all forwarded traffic; with --expect lost:
#                          both exit 7 within 120 s
# Result details are printed on stdout; returns 0 when expectations are met.
lab_transfer() {
    local sns=$1 rns=$2 wd=$3
    shift 3
    local expect=ok ptimeout="" delay=0 sfake="" rfake="" file="" show=0 clash=0
    local tmpfs="" throttle="" cutafter="" sizemb=""
    while (($#)); do
        case $1 in
        --expect) expect=$2; shift 2 ;;
        --timeout) ptimeout=$2; shift 2 ;;
        --delay) delay=$2; shift 2 ;;
        --sender-faketime) sfake=$2; shift 2 ;;
        --receiver-faketime) rfake=$2; shift 2 ;;
        --file) file=$2; shift 2 ;;
        --show) show=1; shift ;;
        --clash) clash=1; shift ;;
        --out-tmpfs) tmpfs=$2; shift 2 ;;
        --size-mb) sizemb=$2; shift 2 ;;
        --throttle) throttle=$2; shift 2 ;;
        --cut-after) cutafter=$2; shift 2 ;;
        *) echo "lab_transfer: unknown option $1"; return 2 ;;
        esac
    done
    local bin=${P2PCOPY_BIN_ABS:?P2PCOPY_BIN_ABS not set}
    rm -rf "$wd"
    mkdir -p "$wd/out" "$wd/in"
    if [[ -z $file ]]; then
        local size=$(((3 + RANDOM % 6) * 1024 * 1024 + RANDOM))
        [[ -n $sizemb ]] && size=$((sizemb * 1024 * 1024 + RANDOM))
        file="$wd/in/testfile-$RANDOM.bin"
        head -c "$size" /dev/urandom >"$file"
    fi
    file=$(realpath "$file")
    local name
    name=$(basename "$file")
    if ((clash)); then
        echo "pre-existing file, not to be overwritten" >"$wd/out/$name"
        cp "$wd/out/$name" "$wd/clash.orig"
    fi

    local common=("${LAB_NET_ARGS[@]}" -v)
    [[ -n $ptimeout ]] && common+=(--timeout "$ptimeout")
    local limit=${LAB_PEER_LIMIT:-150}
    [[ -n $ptimeout ]] && limit=$((ptimeout + 30))
    local spre=() rpre=()
    [[ -n $sfake ]] && spre=(env FAKETIME_DONT_FAKE_MONOTONIC=1 faketime -f "$sfake")
    [[ -n $rfake ]] && rpre=(env FAKETIME_DONT_FAKE_MONOTONIC=1 faketime -f "$rfake")
    [[ -n $tmpfs ]] && rpre=("$LAB_LIB_DIR/with-tmpfs.sh" "$tmpfs" "$wd/out" "$wd/out.listing" "${rpre[@]}")
    lab_nsx p2p-core nft delete table inet p2pcut 2>/dev/null || true
    if [[ -n $throttle ]]; then
        lab_nsx p2p-core nft -f - <<EOF || { echo "throttle rule failed"; return 1; }
table inet p2pcut {
    chain forward {
        type filter hook forward priority -10; policy accept;
        meta l4proto udp limit rate over $throttle/second burst 256 kbytes drop
    }
}
EOF
    fi

    mkfifo "$wd/sender.in" "$wd/receiver.in"
    local sfd rfd
    exec {sfd}<>"$wd/sender.in"
    exec {rfd}<>"$wd/receiver.in"

    local t0=$SECONDS
    timeout -k 5 "$limit" ip netns exec "$rns" "${rpre[@]}" "$bin" receiver \
        --localport "$LAB_RECEIVER_PORT" --output "$wd/out" "${common[@]}" \
        <"$wd/receiver.in" >"$wd/receiver.out" 2>"$wd/receiver.err" &
    local rpid=$!
    timeout -k 5 "$limit" ip netns exec "$sns" "${spre[@]}" "$bin" sender \
        --localport "$LAB_SENDER_PORT" --file "$file" "${common[@]}" \
        <"$wd/sender.in" >"$wd/sender.out" 2>"$wd/sender.err" &
    local spid=$!
    if ((show)); then
        tail -q -n +1 -F "$wd/sender.out" "$wd/sender.err" 2>/dev/null 9>&- > >(sed -u 's/^/  [sender]   /') &
        echo $! >>"$LAB_DIR/helpers.pids"
        tail -q -n +1 -F "$wd/receiver.out" "$wd/receiver.err" 2>/dev/null 9>&- > >(sed -u 's/^/  [receiver] /') &
        echo $! >>"$LAB_DIR/helpers.pids"
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
        sleep "$delay"
        printf '%s\n' "$rt" >&"$sfd"
    fi
    local tpaste=$SECONDS src=0 rrc=0
    if [[ -n $cutafter ]]; then
        local connected=0
        for _ in $(seq 1 500); do
            if grep -q '^Connected' "$wd/sender.err" && grep -q '^Connected' "$wd/receiver.err"; then
                connected=1
                break
            fi
            sleep 0.2
        done
        if ((connected)); then
            sleep "$cutafter"
            lab_nsx p2p-core nft add table inet p2pcut
            lab_nsx p2p-core nft add chain inet p2pcut cut '{ type filter hook forward priority -20; policy drop; }'
            tpaste=$SECONDS
            echo "cut the core's forwarding ${cutafter}s after both connected"
        else
            problems+=("peers never printed 'Connected', could not cut mid-transfer")
        fi
    fi
    if [[ $expect == interrupt ]]; then
        sleep 3
        local p
        for p in $(ip netns pids "$sns") $(ip netns pids "$rns"); do
            kill -INT "$p" 2>/dev/null || true
        done
        tpaste=$SECONDS
        echo "sent SIGINT to both peers"
    fi
    wait "$spid" || src=$?
    local tsend=$SECONDS
    wait "$rpid" || rrc=$?
    local trecv=$SECONDS
    exec {sfd}>&- {rfd}>&-
    ((show)) && { sleep 0.3; lab_kill_helpers; }

    echo "sender exit $src after $((tsend - tpaste))s, receiver exit $rrc after $((trecv - tpaste))s (since last paste; total $((trecv - t0))s)"
    local side
    for side in sender receiver; do
        local nout
        nout=$(grep -c . "$wd/$side.out" || true)
        [[ $nout == 1 ]] || problems+=("$side printed $nout stdout lines, expected exactly 1")
    done
    local errl want_rc want_s=15
    case $expect in
    ok)
        [[ $src == 0 ]] || problems+=("sender exit code $src, expected 0")
        [[ $rrc == 0 ]] || problems+=("receiver exit code $rrc, expected 0")
        local got=$wd/out/$name
        if ((clash)); then
            cmp -s "$wd/clash.orig" "$wd/out/$name" || problems+=("pre-existing $name was modified")
            got=$(find "$wd/out" -mindepth 1 -maxdepth 1 -type f ! -name "$name" -print -quit)
            echo "received as: '$(basename "${got:-<nothing>}")'"
            [[ $(basename "$got") == *"(1)"* ]] || problems+=("received file not saved under a ' (1)' name: '$(basename "$got")'")
        fi
        if [[ -n $got && -f $got ]]; then
            cmp -s "$file" "$got" || problems+=("received file differs from sent file")
        else
            problems+=("no $name in output dir (has: $(find "$wd/out" -mindepth 1 -printf '%f '))")
        fi
        want_rc=""
        ;;
    fail) want_rc=6 want_s=$((${ptimeout:-120} + 15)) ;;
    badticket) want_rc=3 ;;
    diskfull) want_rc=9 ;;
    lost) want_rc=7 want_s=120 ;;
    interrupt) want_rc=130 ;;
    *) problems+=("unknown expectation $expect") want_rc="" ;;
    esac
    if [[ -n $want_rc ]]; then
        # The receiver's full disk is reported to the sender too (exit 9 on both).
        local sides=(sender receiver)
        [[ $src == "$want_rc" ]] || problems+=("sender exit code $src, expected $want_rc")
        (((tsend - tpaste) <= want_s)) || problems+=("sender took $((tsend - tpaste))s > ${want_s}s")
        [[ $rrc == "$want_rc" ]] || problems+=("receiver exit code $rrc, expected $want_rc")
        (((trecv - tpaste) <= want_s)) || problems+=("receiver took $((trecv - tpaste))s > ${want_s}s")
        for side in "${sides[@]}"; do
            # (the prompt may lack a newline, so the error may follow it on its line)
            errl=$(sed "s/^Enter your peer's ticket (or ip:port): //" "$wd/$side.err" | grep '^p2pcopy: ' || true)
            [[ -n $errl || $expect == interrupt ]] || problems+=("$side stderr has no 'p2pcopy: ' line")
            [[ $expect != fail ]] || grep -qi symmetric <<<"$errl" ||
                problems+=("$side error line does not mention 'symmetric'")
            [[ -z $errl ]] || echo "$side: $errl"
        done
        if [[ -n $tmpfs ]]; then
            echo "receiver's tmpfs output dir at exit:"
            sed 's/^/  /' "$wd/out.listing" 2>/dev/null
            if grep -vq '^total' "$wd/out.listing" 2>/dev/null; then
                problems+=("output dir not empty at receiver exit")
            fi
        else
            [[ -z $(find "$wd/out" -mindepth 1 -print -quit) ]] ||
                problems+=("output dir not empty: $(find "$wd/out" -mindepth 1 -printf '%f ')")
        fi
    fi
    lab_nsx p2p-core nft delete table inet p2pcut 2>/dev/null || true
    if ((${#problems[@]})); then
        printf 'problem: %s\n' "${problems[@]}"
        return 1
    fi
    return 0
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
