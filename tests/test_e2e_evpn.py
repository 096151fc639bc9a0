"""End-to-end: vxlan vnets served by BGP EVPN (docs/fleet.md), with real FRR.

Two subnets (192.0.2.0/24, 198.51.100.0/24) joined by a router that does
not route multicast, no peers configured anywhere.  Two route reflectors
(rr1 on the first subnet, rr2 on the second; they also peer with each
other) and three hosts (h1, h2 on the first subnet, h3 on the second),
every BGP session authenticated with a password and TTL security.  Each
node's FRR configuration is written by ``xend-vnet evpn-config`` from its
xend-config.sxp; each host runs xend-vnet, which launches vnetd with the
EVPN options of that file, and vnets are made with ``xm vnet-create``.
Domains are namespaces whose veth sits on a host's bridge.

The tests share one bed and run in file order; the disruptive ones (a
migration, a reflector lost, a host's FRR restarted) come last and leave
the bed as they found it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
from e2e_helpers import ping, send_gratuitous_arp, tcp_transfer
from frr_lab import (
    EvpnLab,
    bridge,
    frr_available,
    host_xend_config,
    reflector_xend_config,
    vnif,
)
from netns import call_in_netns, is_root, wait_for

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(is_root() and not frr_available(),
                                 reason="FRR is not installed (make setup installs it)")]

V = 0x64            # the vnet on every host
V_SOME = 0x65       # a vnet on h1 and h3 only
PASSWORD = "ev-Pa55.word"
TTL_HOPS = "(xend-vnet-evpn-ttl-security 2)\n"     # hosts are at most one router away
DOMAIN_MTU = 1450


def domain_mac(vnet: int, n: int) -> str:
    return f"02:00:00:{vnet & 0xff:02x}:00:{n:02x}"


def domain_ip(vnet: int, n: int) -> str:
    return f"10.{vnet & 0xff}.0.{n}"


@dataclass(frozen=True)
class Domain:
    ns: str
    host: str
    vnet: int
    n: int

    @property
    def mac(self) -> str:
        return domain_mac(self.vnet, self.n)

    @property
    def ip(self) -> str:
        return domain_ip(self.vnet, self.n)


class Bed:
    def __init__(self):
        self.evpn = EvpnLab("evt", 2)
        self.lab = self.evpn.lab
        try:
            self._build()
        except BaseException:
            self.evpn.close()      # every FRR daemon by its pid file, then the namespaces
            raise

    def _build(self) -> None:
        a, b = self.evpn.subnets
        self.rr = [self.evpn.reflector("rr1", a, 1), self.evpn.reflector("rr2", b, 1)]
        reflectors = [r.address for r in self.rr]
        pw = self.evpn.password_file(PASSWORD)
        for r in self.rr:
            r.write_config(reflector_xend_config(r.address, self.evpn.listen_ranges(),
                                                 reflectors, pw, TTL_HOPS))
        self.h = {name: self.evpn.host(name, subnet, last)
                  for name, subnet, last in (("h1", a, 11), ("h2", a, 12), ("h3", b, 13))}
        for h in self.h.values():
            h.write_config(host_xend_config(h.address, reflectors, pw, TTL_HOPS))
        for node in [*self.rr, *self.h.values()]:
            node.start_frr()
        for h in self.h.values():
            h.start_server()
            h.create_vnet(V)
        self.domains: dict[str, Domain] = {}
        for n, host in ((1, "h1"), (2, "h2"), (3, "h3")):
            self.domain(f"d{n}", host, V, n)

    def domain(self, name: str, host: str, vnet: int, n: int) -> str:
        ns = self.lab.domain(name, self.h[host].ns, bridge(vnet), domain_ip(vnet, n),
                             mac=domain_mac(vnet, n), mtu=DOMAIN_MTU)
        self.domains[name] = Domain(ns, host, vnet, n)
        return ns

    def ns(self, domain: str) -> str:
        return self.domains[domain].ns

    def moved(self, domain: str, to: str) -> None:
        d = self.domains[domain]
        self.domains[domain] = Domain(d.ns, to, d.vnet, d.n)

    def close(self):
        self.evpn.close()


@pytest.fixture(scope="module")
def bed():
    b = Bed()
    try:
        yield b
    finally:
        b.close()


def announce_all(bed: Bed, vnet: int = V) -> None:
    """Every domain of ``vnet`` sends one gratuitous ARP, so its host's bridge
    learns its MAC (a booted guest does as much)."""
    for d in bed.domains.values():
        if d.vnet == vnet:
            call_in_netns(d.ns, send_gratuitous_arp, "eth0", d.mac, d.ip)


def learned(host, vnet: int, other_hosts, macs: dict[str, str]) -> bool:
    """``host``'s device floods to exactly ``other_hosts`` and has each MAC of
    ``macs`` (MAC: its host's address), installed by FRR."""
    fdb = host.fdb(vnet)
    if fdb is None or sorted(fdb.flood) != sorted(h.address for h in other_hosts):
        return False
    return all(fdb.remote.get(mac) == dst and mac in fdb.external for mac, dst in macs.items())


def converged(bed: Bed, vnet: int = V) -> bool:
    """Every host of ``vnet`` floods to the others and has every other host's
    domain MACs."""
    hosts = [h for h in bed.h.values() if h.fdb(vnet) is not None]
    for h in hosts:
        macs = {d.mac: bed.h[d.host].address for d in bed.domains.values()
                if d.vnet == vnet and bed.h[d.host] is not h}
        if not learned(h, vnet, [o for o in hosts if o is not h], macs):
            return False
    return True


# -- the configuration each node got ----------------------------------------------

def test_sessions_are_up_with_password_and_ttl_security(bed):
    for h in bed.h.values():
        wait_for(lambda h=h: h.established() == 2, timeout=30, what=f"{h.name}'s sessions")
    for r in bed.rr:
        # three hosts and the other reflector
        wait_for(lambda r=r: r.established() == 4, timeout=30, what=f"{r.name}'s sessions")
    host_conf = open(bed.h["h1"].frr_conf).read()
    rr_conf = open(bed.rr[0].frr_conf).read()
    for line in ("advertise-all-vni", "neighbor REFLECTORS timers connect 1",
                 f"neighbor REFLECTORS password {PASSWORD}", "ip nht resolve-via-default",
                 "neighbor REFLECTORS ttl-security hops 2", "neighbor 192.0.2.1 peer-group",
                 "neighbor 198.51.100.1 peer-group"):
        assert line in host_conf, line
    for line in ("bgp listen range 192.0.2.0/24 peer-group HOSTS",
                 "bgp listen range 198.51.100.0/24 peer-group HOSTS",
                 "neighbor HOSTS route-reflector-client", "neighbor 198.51.100.1 peer-group"):
        assert line in rr_conf, line
    assert "advertise-all-vni" not in rr_conf
    assert "neighbor 192.0.2.1 peer-group" not in rr_conf      # not itself
    assert oct(os.stat(bed.h["h1"].frr_conf).st_mode & 0o777) == "0o640"


def test_the_device_is_made_for_evpn(bed):
    h = bed.h["h1"]
    out = bed.lab.ns_sh(h.ns, "ip", "-d", "link", "show", vnif(V)).stdout
    vxlan = next(line.split() for line in out.splitlines() if "vxlan id" in line)
    assert vxlan[vxlan.index("local") + 1] == h.address
    assert "nolearning" in vxlan and vxlan[vxlan.index("maxaddr") + 1] == "4096"
    assert "group" not in vxlan and "remote" not in vxlan and "dev" not in vxlan
    assert f"master {bridge(V)}" in out

    def port_does_not_learn():
        port = bed.lab.ns_sh(h.ns, "bridge", "-d", "link", "show", "dev", vnif(V)).stdout
        return "learning off" in port and "neigh_suppress off" in port
    wait_for(port_does_not_learn, timeout=10, what="the bridge port not to learn")
    listed = h.vn("vnets").stdout
    assert "(control-plane evpn)" in listed and f"(local {h.address})" in listed


# -- what FRR learned, and traffic across subnets -------------------------------

def test_every_host_learns_every_remote_mac_and_its_flood_list(bed):
    announce_all(bed)
    wait_for(lambda: converged(bed), timeout=20, what="every host to learn the others")
    # FRR's own view, through vtysh's JSON (no screen-scraping)
    macs = bed.h["h1"].vtysh_json(f"show evpn mac vni {V} json")["macs"]
    assert macs[domain_mac(V, 1)]["type"] == "local"
    assert macs[domain_mac(V, 3)] == macs[domain_mac(V, 3)] | {
        "type": "remote", "remoteVtep": bed.h["h3"].address}
    vni = bed.h["h1"].vtysh_json("show evpn vni json")[str(V)]
    assert sorted(vni["remoteVteps"]) == sorted([bed.h["h2"].address, bed.h["h3"].address])


def test_ping_across_subnets(bed):
    for src, dst in (("d1", 3), ("d2", 3), ("d3", 1)):
        code, seqs, out = ping(bed.lab, bed.ns(src), domain_ip(V, dst), count=5, interval=0.1)
        assert code == 0 and seqs == [1, 2, 3, 4, 5], out


def test_tcp_across_subnets(bed):
    tcp_transfer(bed.lab, bed.ns("d3"), bed.ns("d1"), domain_ip(V, 1), 4 << 20)


def test_vn_status_shows_the_control_plane_and_what_frr_installed(bed):
    h = bed.h["h1"]
    status = h.vn("status")
    assert status.returncode == 0, status.stderr
    line = next(x for x in status.stdout.splitlines() if x.startswith(f"  vnet {V:x} "))
    assert line == (f"  vnet {V:x} {vnif(V)}: evpn (local {h.address}), floods to 2 hosts "
                    f"({bed.h['h2'].address} {bed.h['h3'].address}), 2 remote MACs from FRR")
    assert "vxlan-control-plane evpn" in status.stdout
    fdb = h.vn("fdb", f"{V:x}").stdout
    assert f"(mac {domain_mac(V, 3)} (dst {bed.h['h3'].address}) (external))" in \
        " ".join(fdb.split())


# -- a vnet on some hosts floods only to them ---------------------------------------

def test_a_new_vnet_floods_only_to_the_hosts_that_have_it(bed):
    h1, h2, h3 = bed.h["h1"], bed.h["h2"], bed.h["h3"]
    started = time.monotonic()
    for h in (h1, h3):
        h.create_vnet(V_SOME)
    wait_for(lambda: h1.fdb(V_SOME) is not None and h1.fdb(V_SOME).flood == [h3.address]
             and h3.fdb(V_SOME).flood == [h1.address], timeout=15,
             what="the new vnet's flood lists")
    took = time.monotonic() - started
    assert h2.fdb(V_SOME) is None                       # no device, so no entries
    assert h2.vtysh_json("show evpn vni json").get(str(V_SOME)) is None
    assert sorted(h2.fdb(V).flood) == sorted([h1.address, h3.address])  # unchanged
    bed.domain("x1", "h1", V_SOME, 1)
    bed.domain("x3", "h3", V_SOME, 3)
    code, seqs, out = ping(bed.lab, bed.ns("x1"), domain_ip(V_SOME, 3), count=3, interval=0.1)
    assert code == 0, out
    # h2 never sees the new vnet's floods: it has no entry toward it, nor a device.
    assert h2.fdb(V_SOME) is None and took < 15


# -- migration, and the stale entry FRR may leave -----------------------------------

def _max_gap(output: str) -> float:
    """The longest time between two replies of ``ping -D`` (seconds)."""
    times = [float(t) for t in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", output, re.M)]
    assert len(times) > 10, output[-2000:]
    return max(b - a for a, b in zip(times, times[1:]))


def migrate_under_ping(bed: Bed, domain: str, to: str, from_: str) -> float:
    """Move ``domain``'s vif to host ``to`` while d1 pings it 100 times a second;
    the longest time without a reply."""
    n = int(domain[1:])
    pinger = bed.lab.spawn(bed.ns("d1"), "ping", "-n", "-D", "-i", "0.01", "-w", "5",
                           domain_ip(V, n), stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)
    bed.lab.move_vif(domain, bed.h[from_].ns, bed.h[to].ns, bridge(V))
    # A migrated guest announces itself once it runs on its new host.
    call_in_netns(bed.ns(domain), send_gratuitous_arp, "eth0", domain_mac(V, n),
                  domain_ip(V, n))
    out, _ = pinger.communicate(timeout=30)
    bed.moved(domain, to)
    return _max_gap(out)


def test_a_migrated_domain_is_reachable_again_within_a_second(bed):
    gap = migrate_under_ping(bed, "d3", to="h2", from_="h3")      # across subnets
    assert gap < 1.0, f"{gap:.2f} s without replies"
    h1, h2 = bed.h["h1"], bed.h["h2"]
    wait_for(lambda: h1.fdb(V).remote.get(domain_mac(V, 3)) == h2.address, timeout=5,
             what="h1 to learn d3's new host")
    mac = h2.vtysh_json(f"show evpn mac vni {V} json")["macs"][domain_mac(V, 3)]
    assert mac["type"] == "local" and mac["localSequence"] >= 1     # MAC mobility


def test_no_stale_entry_is_left_for_a_mac_that_became_local(bed):
    """h2 had d3's MAC as remote (toward h3) before d3 arrived: whatever FRR
    leaves on h2's device for it, the engine removes."""
    h2 = bed.h["h2"]
    wait_for(lambda: domain_mac(V, 3) not in h2.fdb(V).remote, timeout=5,
             what="h2's device to hold no remote entry for its local d3")
    # and back: the same on h3
    gap = migrate_under_ping(bed, "d3", to="h3", from_="h2")
    assert gap < 1.0, f"{gap:.2f} s without replies"
    h3 = bed.h["h3"]
    wait_for(lambda: domain_mac(V, 3) not in h3.fdb(V).remote, timeout=5,
             what="h3's device to hold no remote entry for its local d3")
    wait_for(lambda: converged(bed), timeout=10, what="every host to learn d3 on h3")
    # FRR 8.4 leaves them (docs/fleet.md): the engines removed them
    removed = sum(stale_removed(bed.h[name]) for name in ("h2", "h3"))
    assert removed >= 1, "no stale entry was removed: did FRR leave none?"


def stale_removed(host) -> int:
    status = host.vn("status").stdout
    return int(re.search(r"vxlan-stale-removed (\d+)", status).group(1))


# -- failures: a reflector, a host's FRR ------------------------------------------

def test_losing_a_reflector_loses_nothing(bed):
    rr1 = bed.rr[0]
    rr1.stop_frr(kill=True)                      # as a crash: no goodbye to the hosts
    time.sleep(12)                               # past the 9-s hold time
    assert converged(bed), "entries lost with one reflector down"
    for h in bed.h.values():
        assert h.established() == 1
    code, _, out = ping(bed.lab, bed.ns("d1"), domain_ip(V, 3), count=3, interval=0.1)
    assert code == 0, out
    # a change made while one reflector is down still reaches everyone
    bed.lab.move_vif("d2", bed.h["h2"].ns, bed.h["h1"].ns, bridge(V))
    bed.moved("d2", "h1")
    call_in_netns(bed.ns("d2"), send_gratuitous_arp, "eth0", domain_mac(V, 2),
                  domain_ip(V, 2))
    wait_for(lambda: bed.h["h3"].fdb(V).remote.get(domain_mac(V, 2)) == bed.h["h1"].address,
             timeout=5, what="h3 to learn d2's move through rr2")
    rr1.start_frr()
    for h in bed.h.values():
        wait_for(lambda h=h: h.established() == 2, timeout=30,
                 what=f"{h.name} back with both reflectors")
    assert converged(bed)


def test_a_hosts_frr_restart_recovers_its_entries_within_seconds(bed):
    h3 = bed.h["h3"]
    h3.stop_frr()
    # FRR down: the host's EVPN entries go, the others forget it (docs/fleet.md)
    wait_for(lambda: not h3.fdb(V).flood and not h3.fdb(V).remote, timeout=10,
             what="h3's entries to go with its FRR")
    wait_for(lambda: h3.address not in bed.h["h1"].fdb(V).flood
             and domain_mac(V, 3) not in bed.h["h1"].fdb(V).remote, timeout=15,
             what="h1 to forget h3")
    code, _, _ = ping(bed.lab, bed.ns("d1"), domain_ip(V, 3), count=2, interval=0.2)
    assert code != 0, "traffic crossed while h3's FRR was down"
    started = h3.start_frr()
    announce_all(bed)
    wait_for(lambda: converged(bed), timeout=15, interval=0.05,
             what="every entry back after h3's FRR restart")
    took = time.monotonic() - started
    assert took < 10, f"{took:.1f} s to recover"
    code, _, out = ping(bed.lab, bed.ns("d1"), domain_ip(V, 3), count=3, interval=0.1)
    assert code == 0, out
    print(f"h3's FRR restart: entries back {took:.2f} s after its daemons started",
          file=sys.stderr)


def test_a_host_with_the_wrong_password_is_refused(bed):
    a = bed.evpn.subnets[0]
    h4 = bed.evpn.host("h4", a, 14)
    wrong = os.path.join(h4.dir, "wrong.password")
    with open(wrong, "w") as f:
        f.write("not-the-password\n")
    os.chmod(wrong, 0o600)
    h4.write_config(host_xend_config(h4.address, [r.address for r in bed.rr], wrong,
                                     TTL_HOPS))
    h4.start_frr()
    time.sleep(6)
    assert h4.established() == 0
    for r in bed.rr:
        assert r.established() == 4
