#!/usr/bin/env bash
# xend-vnet in five minutes: two emulated Xen hosts, one vnet, two domains,
# a migration.  Every host is a network namespace with its own vnetd and
# xend-vnet; every domain is a namespace whose "vif" sits on a host bridge,
# exactly where Xen's netback would put it.  Run as root: `make demo`.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# The network script xend runs at its start, (network-script network-vnet).
NETWORK_VNET="$(dirname "$HERE")/xend_vnet/scripts/network-vnet"
# Prefix of every namespace this demo creates, and the directory of the
# per-host sockets, state and logs (the tests run the demo with their own).
P=${XEND_VNET_DEMO_PREFIX:-xvd}
RUN=${XEND_VNET_DEMO_RUN:-/run/xend-vnet-demo}
HOSTS="hostA hostB"

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
say() { printf '%s\n' "$*" | fold -s -w 78; }
# `on HOST CMD...`: run CMD as that host's dom0 would, with the host's own
# engine socket and xend socket (the only per-host settings the tools need).
on() {
    local host=$1; shift
    printf '  [%s]# %s\n' "$host" "$*"
    ip netns exec "$P-$host" env PATH="$PATH" \
        VNETD_SOCKET="$RUN/$host/vnetd.sock" \
        XM_SERVER="httpu://$RUN/$host/xmlrpc.sock" "$@" 2>&1 | sed 's/^/    /'
    return "${PIPESTATUS[0]}"
}
# `dom DOMAIN CMD...`: run CMD inside a domain (a guest's shell).
dom() {
    local d=$1; shift
    printf '  [%s]$ %s\n' "$d" "$*"
    ip netns exec "$P-$d" "$@" 2>&1 | sed 's/^/    /'
    return "${PIPESTATUS[0]}"
}

cleanup() {
    set +e
    bold "Cleaning up"
    for h in $HOSTS; do
        if ip netns list | grep -qw "$P-$h"; then
            ip netns exec "$P-$h" env XM_SERVER="httpu://$RUN/$h/xmlrpc.sock" \
                xend-vnet stop --socket "$RUN/$h/xmlrpc.sock" >/dev/null 2>&1
            ip netns exec "$P-$h" env VNETD_SOCKET="$RUN/$h/vnetd.sock" \
                vn rmmod --purge >/dev/null 2>&1
        fi
    done
    remove_namespaces
    echo "  removed the demo's namespaces and $RUN"
}
remove_namespaces() {
    for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
        # Anything still running in our namespaces was started by this demo.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
        ip netns del "$ns"
    done
    rm -rf "$RUN"
}
[ "$(id -u)" = 0 ] || { echo "run the demo as root (it creates network namespaces)" >&2; exit 1; }
for tool in xm vn vnetd xend-vnet ip ping; do
    command -v "$tool" >/dev/null || { echo "missing $tool: run 'make demo'" >&2; exit 1; }
done
trap cleanup EXIT
trap 'exit 130' INT TERM    # Ctrl-C also ends in cleanup
# Leftovers of a run that could not clean up (killed with SIGKILL, say).
remove_namespaces

bold "1. Two Xen hosts on one Ethernet segment"
say "hostA is 192.0.2.1 and hostB is 192.0.2.2. vnet floods travel to the multicast group 224.10.0.1, so the link carries a multicast route."
for h in $HOSTS; do ip netns add "$P-$h"; mkdir -p "$RUN/$h"; done
ip link add eth0 netns "$P-hostA" type veth peer name eth0 netns "$P-hostB"
i=1
for h in $HOSTS; do
    ip -n "$P-$h" link set lo up
    # No IPv6 chatter from the hosts' own interfaces in the listings below.
    ip netns exec "$P-$h" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip -n "$P-$h" addr add "192.0.2.$i/24" dev eth0
    ip -n "$P-$h" link set eth0 up
    ip -n "$P-$h" route add 224.0.0.0/4 dev eth0
    i=$((i + 1))
done
echo "  done"

bold "2. Start the vnet engine and the xend vnet API on each host"
say "With (network-script network-vnet) in xend-config.sxp, xend runs 'network-vnet start' at its start: it starts vnetd, the user-space engine that replaces vnet_module ('vn insmod'), then runs Xen's network-bridge. These emulated hosts have no Xen, so network-vnet says so and leaves their network alone. xend-vnet then serves the socket xm talks to (here one per host)."
for h in $HOSTS; do
    on "$h" env XEN_SCRIPT_DIR="$RUN/$h" "$NETWORK_VNET" start
    on "$h" xend-vnet start --socket "$RUN/$h/xmlrpc.sock" --state-dir "$RUN/$h/state" \
        --engine-control "$RUN/$h/vnetd.sock" --log-file "$RUN/$h/xend-vnet.log"
done
on hostA vn status
on hostA xend-vnet status --socket "$RUN/hostA/xmlrpc.sock"

bold "3. Create vnet 97 with the unmodified xm commands"
say "The config is Xen's own example:"
sed 's/^/    /' "$HERE/vnet97.sxp"
cd "$HERE"
for h in $HOSTS; do on "$h" xm vnet-create vnet97.sxp; done
on hostA xm vnet-list
on hostA xm vnet-list -l
say "The vnet's bridge exists with the engine's interface on it, and the config is stored so it comes back after a restart:"
on hostA vn bridges
on hostA ls "$RUN/hostA/state/vnet/"

bold "4. Start two domains with vif = ['bridge=vnet97']"
say "Each domain here is a namespace whose eth0 is the other end of its vif (vif1.0 for domain 1), which sits in the host where Xen's netback would create it. Xen's hotplug script (here the stand-in demo/vif-bridge) puts the vif on the bridge named in the domain's config. Nothing vnet-specific happens."
add_domain() {   # add_domain DOMAIN HOST VIF MAC IP
    ip netns list | grep -qw "$P-$1" || ip netns add "$P-$1"
    ip -n "$P-$2" link add "$3" type veth peer name eth0 netns "$P-$1"
    ip -n "$P-$1" link set lo up
    ip -n "$P-$1" link set eth0 address "$4"
    ip -n "$P-$1" addr add "$5/24" dev eth0
    ip -n "$P-$1" link set eth0 up
    on "$2" "$HERE/vif-bridge" online "$3" vnet97
}
add_domain dom1 hostA vif1.0 aa:00:00:00:97:01 10.97.0.1
add_domain dom2 hostB vif2.0 aa:00:00:00:97:02 10.97.0.2

bold "5. The domains talk across hosts"
dom dom1 ping -c 3 -i 0.2 10.97.0.2
say "hostA's engine learned dom1's MAC on its own interface (a local vif) and, from the traffic itself, that dom2's MAC aa:00:00:00:97:02 lives at hostB, 192.0.2.2:"
on hostA vn vifs
on hostA vn varp

bold "6. Migrate the domains: dom2 to hostA, then dom1 to hostB"
say "A migration moves the vif: it leaves the old host's bridge and appears on the new one. The engine sees a new MAC on its interface and announces it to the group, so the other host's cache moves at once."
migrate() {   # migrate DOMAIN FROM TO VIF MAC IP
    on "$2" "$HERE/vif-bridge" offline "$4"
    ip -n "$P-$2" link del "$4"
    add_domain "$1" "$3" "$4" "$5" "$6"
}
migrate dom2 hostB hostA vif2.0 aa:00:00:00:97:02 10.97.0.2
say "dom2's vif left hostB's bridge, and hostB's engine forgot dom2's MAC as a local vif:"
on hostB vn bridges
on hostB vn vifs
dom dom2 ping -c 2 -i 0.2 10.97.0.1
migrate dom1 hostA hostB vif1.0 aa:00:00:00:97:01 10.97.0.1
dom dom1 ping -c 3 -i 0.2 10.97.0.2
say "The domains swapped hosts and still reach each other across the link. hostB now finds dom2 at hostA:"
on hostB vn varp

bold "7. What the engine saw"
on hostA vn vnets
on hostA vn varp
on hostA vn stats

bold "8. Delete the vnet"
say "xm refuses to delete a vnet that domains are still attached to:"
on hostA xm vnet-delete 97 || true
say "--force deletes it anyway: the bridge, the engine's interface and the stored config go."
for h in $HOSTS; do on "$h" xm vnet-delete --force 97; done
on hostA xm vnet-list
on hostA vn bridges
say "Demo complete."
