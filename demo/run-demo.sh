#!/usr/bin/env bash
# xend-vnet in five minutes: two emulated Xen hosts, one vnet, two domains,
# a migration.  Every host is a network namespace with its own vnetd and
# xend-vnet; every domain is a namespace whose "vif" sits on a host bridge,
# exactly where Xen's netback would put it.  Run as root: `make demo`.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
P=xvd                      # prefix of every namespace this demo creates
RUN=/run/xend-vnet-demo    # per-host sockets, state and logs
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
    for ns in $(ip netns list | awk '{print $1}' | grep "^$P-"); do
        # Anything still running in our namespaces was started by this demo.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
        ip netns del "$ns"
    done
    rm -rf "$RUN"
    echo "  removed the demo's namespaces and $RUN"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "run the demo as root (it creates network namespaces)" >&2; exit 1; }
for tool in xm vn vnetd xend-vnet ip ping; do
    command -v "$tool" >/dev/null || { echo "missing $tool: run 'make demo'" >&2; exit 1; }
done
# Leftovers from an interrupted run.
for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do ip netns del "$ns"; done
rm -rf "$RUN"

bold "1. Two Xen hosts on one Ethernet segment"
say "hostA is 192.0.2.1 and hostB is 192.0.2.2. vnet floods travel to the multicast group 224.10.0.1, so the link carries a multicast route."
for h in $HOSTS; do ip netns add "$P-$h"; mkdir -p "$RUN/$h"; done
ip link add eth0 netns "$P-hostA" type veth peer name eth0 netns "$P-hostB"
i=1
for h in $HOSTS; do
    ip -n "$P-$h" link set lo up
    ip -n "$P-$h" addr add "192.0.2.$i/24" dev eth0
    ip -n "$P-$h" link set eth0 up
    ip -n "$P-$h" route add 224.0.0.0/4 dev eth0
    i=$((i + 1))
done
echo "  done"

bold "2. Start the vnet engine and the xend vnet API on each host"
say "'vn insmod' is what (network-script network-vnet) runs at xend start: it starts vnetd, the user-space engine that replaces vnet_module. xend-vnet then serves the socket xm talks to."
for h in $HOSTS; do
    on "$h" vn insmod
    on "$h" xend-vnet start --socket "$RUN/$h/xmlrpc.sock" --state-dir "$RUN/$h/state" \
        --engine-control "$RUN/$h/vnetd.sock" --log-file "$RUN/$h/xend-vnet.log"
done
on hostA vn status

bold "3. Create vnet 97 with the unmodified xm commands"
say "The config is Xen's own example:"
sed 's/^/    /' "$HERE/vnet97.sxp"
cd "$HERE"
for h in $HOSTS; do on "$h" xm vnet-create vnet97.sxp; done
on hostA xm vnet-list
on hostA xm vnet-list -l
say "The vnet's bridge exists with the engine's interface on it, and the config is stored so it comes back after a restart:"
on hostA vn bridges
ls "$RUN/hostA/state/vnet/" | sed 's/^/    /'

bold "4. Start two domains with vif = ['bridge=vnet97']"
say "Xen's hotplug script (here the stand-in demo/vif-bridge) puts each domain's vif on the bridge named in its config. Nothing vnet-specific happens."
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
say "hostA learned where dom2's MAC lives from the traffic itself:"
on hostA vn varp

bold "6. Migrate dom2 to hostA, then dom1 to hostB"
say "A migration moves the vif: it leaves the old host's bridge and appears on the new one. The engine sees a new MAC on its interface and announces it to the group, so the other host's cache moves at once."
migrate() {   # migrate DOMAIN FROM TO VIF MAC IP
    on "$2" "$HERE/vif-bridge" offline "$4"
    ip -n "$P-$2" link del "$4"
    add_domain "$1" "$3" "$4" "$5" "$6"
}
migrate dom2 hostB hostA vif2.0 aa:00:00:00:97:02 10.97.0.2
dom dom2 ping -c 2 -i 0.2 10.97.0.1
migrate dom1 hostA hostB vif1.0 aa:00:00:00:97:01 10.97.0.1
dom dom1 ping -c 3 -i 0.2 10.97.0.2
say "The domains swapped hosts and still reach each other across the link."

bold "7. What the engine saw"
on hostA vn vnets
on hostA vn varp
on hostA vn stats

bold "8. Delete the vnet"
for h in $HOSTS; do on "$h" xm vnet-delete --force 97; done
on hostA xm vnet-list
say "Demo complete."
