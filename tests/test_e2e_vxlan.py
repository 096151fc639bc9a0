"""End-to-end: vnets on the kernel VXLAN data path (docs/vxlan.md).

Two LANs joined by a router that routes unicast but not multicast, as in
test_e2e_peering.py: hosts a and b on subnet 1 (192.0.2.0/24), host c on
subnet 2 (198.51.100.0/24).  Every host runs vnetd with vnet 9c on
``(data-path vxlan)`` from its startup file, and vnet 97 on the engine's
own data path beside it; a bridge ``vnet9c`` holds the vnet's VXLAN device
and a domain (MTU 1450: the VXLAN device's, for a 1500-byte underlay).
The tests run in file order and share the world; each says what it relies
on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import xmlrpc.client

import pytest
from e2e_helpers import ping, tcp_transfer
from netns import REPO, Lab, call_in_netns, is_root, wait_for

from xend_vnet import sxp

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not is_root(), reason="needs root and /dev/net/tun")]

PREFIX = "xvx-"
V9C = "0000:0000:0000:0000:0000:0000:0000:009c"
GROUP = "224.10.0.1"
ROUTER = {"lan1": "192.0.2.254", "lan2": "198.51.100.254"}
HOSTS = {  # name: (LAN, address)
    "a": ("lan1", "192.0.2.1"),
    "b": ("lan1", "192.0.2.2"),
    "c": ("lan2", "198.51.100.3"),
}
DOMAINS = {  # name: (host, address)
    "da": ("a", "10.156.0.1"),
    "db": ("b", "10.156.0.2"),
    "dc": ("c", "10.156.0.3"),
}
STARTUP = "(vnet.add (id 9c) (data-path vxlan))\n(vnet.add (id 97))\n"
VXLAN_MTU = 1450


def _device(ifname: str) -> dict | None:
    """What the kernel says about ``ifname`` in the caller's namespace (pyroute2)."""
    import socket

    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            link = ipr.link("get", ifname=ifname)[0]
        except NetlinkError:
            return None
        info = link.get_attr("IFLA_LINKINFO")
        data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
        master = link.get_attr("IFLA_MASTER")
        out = {
            "kind": info.get_attr("IFLA_INFO_KIND") if info is not None else None,
            "mtu": link.get_attr("IFLA_MTU"),
            "master": ipr.link("get", index=master)[0].get_attr("IFLA_IFNAME") if master
            else None,
            "alias": link.get_attr("IFLA_IFALIAS"),
            "up": bool(link["flags"] & 1),          # IFF_UP
            "kinds": sorted({(lk.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND")
                              if lk.get_attr("IFLA_LINKINFO") is not None else "")
                             for lk in ipr.get_links()}),
        }
        if out["kind"] == "vxlan":
            out.update(
                vni=data.get_attr("IFLA_VXLAN_ID"), group=data.get_attr("IFLA_VXLAN_GROUP"),
                port=data.get_attr("IFLA_VXLAN_PORT"), learning=data.get_attr(
                    "IFLA_VXLAN_LEARNING"),
                dev=ipr.link("get", index=data.get_attr("IFLA_VXLAN_LINK"))[0].get_attr(
                    "IFLA_IFNAME"),
                flood=sorted(e.get_attr("NDA_DST")
                             for e in ipr.get_neighbours(family=socket.AF_BRIDGE)
                             if e["ifindex"] == link["index"]
                             and e.get_attr("NDA_LLADDR") == "00:00:00:00:00:00"))
        return out


class World:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.ns: dict[str, str] = {}
        self.vnetd = {}
        self.files: dict[str, str] = {}
        # Unicast only: no multicast routing, so each group stays on its LAN.
        self.ns["r"], hosts = lab.routed_hosts(ROUTER, HOSTS)
        self.ns.update(hosts)
        for name, ns in hosts.items():
            path = self.files[name] = os.path.join(lab.tmp, f"{name}.conf")
            with open(path, "w") as f:
                f.write(STARTUP)
            self.vnetd[name] = self.start(name)
            lab.bridge(ns, "vnet9c", "vnif009c")
        for name, (host, addr) in DOMAINS.items():
            self.ns[name] = lab.domain(name, self.ns[host], "vnet9c", addr, mtu=VXLAN_MTU)

    def start(self, host: str, *extra: str):
        return self.lab.start_vnetd(self.ns[host], "--no-default-vnets", "-f", self.files[host],
                                    *extra)

    def device(self, host: str, ifname: str = "vnif009c") -> dict | None:
        return call_in_netns(self.ns[host], _device, ifname)

    def vn(self, host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = self.lab.ns_sh(self.ns[host], "env", f"PYTHONPATH={REPO}", sys.executable, "-m",
                           "xend_vnet.vn.main", "--control", self.vnetd[host].control,
                           *args, check=False)
        if check:
            assert p.returncode == 0, p.stdout + p.stderr
        return p

    def listed(self, host: str) -> dict:
        """(vnet.list) as {canonical id: {field: value}}."""
        out = {}
        for form in self.vnetd[host].call(["vnet.list"]):
            fields = {c[0]: c[1] for c in form[1:] if isinstance(c, list) and len(c) == 2}
            out[fields["id"]] = fields
        return out

    def error(self, host: str, request: str) -> tuple[int, str]:
        form = sxp.parse_one(self.vnetd[host].request(request))
        assert form[0] == "err", form
        return int(sxp.child_value(form, "errno")), sxp.child_value(form, "message")

    def pings(self, src: str, dst: str, count: int = 4) -> bool:
        code, seqs, out = ping(self.lab, self.ns[src], DOMAINS[dst][1], count=count,
                               interval=0.2)
        return code == 0 and len(seqs) >= count - 1

    def forget_neighbours(self) -> None:
        for name in DOMAINS:
            self.lab.ns_sh(self.ns[name], "ip", "neigh", "flush", "all")

    def unreachable(self, src: str, dst: str) -> bool:
        """No answer from ``dst`` once the domains forgot what they had learnt."""
        self.forget_neighbours()
        code, seqs, _ = ping(self.lab, self.ns[src], DOMAINS[dst][1], count=3, interval=0.3)
        return code != 0 and not seqs


@pytest.fixture(scope="module")
def world():
    lab = Lab(PREFIX)
    try:
        yield World(lab)
    finally:
        lab.close()


def test_the_vnet_is_a_kernel_vxlan_device_on_the_bridge(world):
    dev = world.device("a")
    assert dev["kind"] == "vxlan", dev
    assert (dev["vni"], dev["group"], dev["port"], dev["dev"]) == (0x9c, GROUP, 4789, "eth0")
    assert dev["learning"] == 1
    assert dev["master"] == "vnet9c"
    assert dev["mtu"] == VXLAN_MTU             # min(1500, underlay 1500 - 50)
    assert dev["flood"] == [GROUP]             # no peers yet: only the group's entry
    # vnet 97 has its TAP; vnet 9c has none: no second tun device anywhere.
    assert world.device("a", "vnif0097")["kind"] == "tun"
    assert "tun" in dev["kinds"]
    taps = [ln for ln in world.lab.ns_sh(world.ns["a"], "ip", "-o", "link", "show",
                                         "type", "tun").stdout.splitlines()]
    assert len(taps) == 1 and "vnif0097" in taps[0], taps


def test_listings_say_which_vnets_use_it(world):
    listed = world.listed("a")
    assert listed[V9C]["data-path"] == "vxlan"
    assert (listed[V9C]["vni"], listed[V9C]["vxlan-port"], listed[V9C]["group"],
            listed[V9C]["mtu"]) == ("156", "4789", GROUP, str(VXLAN_MTU))
    assert listed["0000:0000:0000:0000:0000:0000:0000:0097"]["data-path"] == "vnetd"
    vnets = world.vn("a", "vnets").stdout
    assert "(data-path vxlan)" in vnets and "(data-path vnetd)" in vnets
    status = world.vnetd["a"].status()
    assert status["vxlan-port"] == "4789" and status["vnets"] == "2"
    # No frame of it reaches the engine, so the engine has no counters for it.
    errno, message = world.error("a", "(vnet.stats (id 9c))")
    assert errno == 22 and "kernel VXLAN" in message


def test_ping_both_ways_on_one_link(world):
    assert world.pings("da", "db")
    assert world.pings("db", "da")


def test_tcp_transfer_intact(world):
    size = 8 * 1024 * 1024
    tcp_transfer(world.lab, world.ns["da"], world.ns["db"], DOMAINS["db"][1], size)
    # Carried by the kernel: the device counted the transfer.
    assert world.lab.link_stat(world.ns["a"], "vnif009c", "tx_bytes") > size


def test_refusals(world):
    errno, message = world.error("a", "(vnet.add (id 9d) (security conf) "
                                      "(key-file /etc/xen/k) (data-path vxlan))")
    assert errno == 22 and "neither authenticates nor encrypts" in message
    # An id above 24 bits would share VNI 156 with vnet 9c on another host.
    errno, message = world.error("a", "(vnet.add (id 0:0:0:0:0:0:100:9c) (vnetif vx2) "
                                      "(data-path vxlan))")
    assert errno == 22 and "VNI is 24 bits" in message and "share VNI 156" in message
    # Ids and names are unique across both data paths.
    assert world.error("a", "(vnet.add (id 9c))")[0] == 17
    assert world.error("a", "(vnet.add (id 98) (vnetif vnif009c))")[0] == 17
    assert world.error("a", "(vnet.add (id 9d) (vnetif vnif0097) (data-path vxlan))")[0] == 17
    assert world.error("a", "(vnet.add (id 9d) (data-path kernel))")[0] == 22
    # A name held by another device is never taken over.
    errno, message = world.error("a", "(vnet.add (id 9d) (vnetif eth0) (data-path vxlan))")
    assert errno == 17 and "not a VXLAN device" in message
    assert "9d" not in " ".join(world.listed("a"))


def test_an_admins_own_vxlan_device_is_never_taken_over(world):
    """Same name, VNI and port, but not tagged as ours: refused, left as it was."""
    lab, ns = world.lab, world.ns["a"]
    lab.ns_sh(ns, "ip", "link", "add", "vnif009d", "type", "vxlan", "id", "157", "group",
              "239.1.1.1", "dev", "eth0", "dstport", "4789")
    try:
        errno, message = world.error("a", "(vnet.add (id 9d) (data-path vxlan))")
        assert errno == 17 and "VXLAN device that is not ours" in message, message
        dev = world.device("a", "vnif009d")
        assert (dev["group"], dev["flood"]) == ("239.1.1.1", ["239.1.1.1"])
        assert "9d" not in " ".join(world.listed("a"))
    finally:
        lab.ns_sh(ns, "ip", "link", "del", "vnif009d")
    # Ours carry an alias naming the vnet.
    assert world.device("a")["alias"] == f"xend-vnet vnet {V9C}"


def test_other_subnet_unreachable_before_peering(world):
    # Multicast is not routed: c's floods stay on subnet 2.
    assert world.unreachable("dc", "da")


def test_peer_add_on_both_sides_reaches_the_other_subnet(world):
    world.vn("a", "peer-add", "198.51.100.3")
    world.vn("c", "peer-add", "192.0.2.1")
    assert world.device("a")["flood"] == sorted([GROUP, "198.51.100.3"])
    assert world.device("c")["flood"] == sorted(["192.0.2.1", GROUP])
    assert world.device("b")["flood"] == [GROUP]
    assert world.pings("dc", "da")
    assert world.pings("da", "dc")
    # No re-multicast on these vnets: b is not c's peer, so b never hears c's floods.
    assert world.unreachable("dc", "db")


def test_peer_del_stops_it(world):
    world.vn("a", "peer-delete", "198.51.100.3")
    world.vn("c", "peer-delete", "192.0.2.1")
    assert world.device("a")["flood"] == [GROUP]
    assert world.device("c")["flood"] == [GROUP]
    assert world.unreachable("dc", "da")


def test_group_change_applies_to_the_device(world):
    world.vn("a", "peer-add", "198.51.100.3")
    for host in ("a", "b"):
        world.vnetd[host].call(["varp.mcaddr", ["addr", "224.10.0.7"]])
    dev = world.device("a")
    assert dev["group"] == "224.10.0.7"
    # Set down, changed and set up again (every kernel rejoins): still on its
    # bridge, up, with its flood entry for the peer.
    assert (dev["master"], dev["up"]) == ("vnet9c", True)
    assert dev["flood"] == sorted(["224.10.0.7", "198.51.100.3"])
    assert world.listed("a")[V9C]["group"] == "224.10.0.7"
    world.forget_neighbours()
    assert world.pings("da", "db")
    for host in ("a", "b"):
        world.vnetd[host].call(["varp.mcaddr", ["addr", GROUP]])
    assert world.device("b")["group"] == GROUP
    world.vn("a", "peer-delete", "198.51.100.3")
    assert world.device("a")["flood"] == [GROUP]


def test_vnet_del_removes_the_device(world):
    d = world.vnetd["a"]
    d.call(["vnet.add", ["id", "9e"], ["data-path", "vxlan"]])
    assert world.device("a", "vnif009e")["vni"] == 0x9e
    d.call(["vnet.del", ["id", "9e"]])
    assert world.device("a", "vnif009e") is None
    assert world.error("a", "(vnet.del (id 9e))")[0] == 2


def test_restart_from_the_startup_file(world):
    lab = world.lab
    world.vnetd["b"].stop()
    # Like the TAPs, the device stays (on its bridge) while the engine is down.
    assert world.device("b")["master"] == "vnet9c"
    world.vnetd["b"] = world.start("b")
    assert world.listed("b")[V9C]["data-path"] == "vxlan"
    assert world.device("b")["kind"] == "vxlan"
    # Gone while the engine was down: the restart makes it again.
    world.vnetd["b"].stop()
    lab.ns_sh(world.ns["b"], "ip", "link", "del", "vnif009c")
    world.vnetd["b"] = world.start("b")
    dev = world.device("b")
    assert (dev["kind"], dev["vni"], dev["mtu"]) == ("vxlan", 0x9c, VXLAN_MTU)
    lab.enslave(world.ns["b"], "vnif009c", "vnet9c")   # what xend-vnet's reconcile does
    world.forget_neighbours()
    assert wait_for(lambda: world.pings("da", "db", count=2), timeout=20,
                    what="da to reach db after the restart")
    # Deleted behind a running engine's back: made again at its next refresh.
    lab.ns_sh(world.ns["b"], "ip", "link", "del", "vnif009c")
    wait_for(lambda: world.device("b"), timeout=15, what="vnif009c to come back")
    assert "deleted from outside; recreated" in world.vnetd["b"].log()
    lab.enslave(world.ns["b"], "vnif009c", "vnet9c")


def test_restart_with_another_vxlan_port_remakes_our_device(world):
    """Ours (tagged) with another port is deleted and made again, on its bridge."""
    world.vnetd["b"].stop()
    world.vnetd["b"] = world.start("b", "--vxlan-port", "4790")
    dev = world.device("b")
    assert (dev["port"], dev["vni"], dev["master"], dev["alias"]) == (
        4790, 0x9c, "vnet9c", f"xend-vnet vnet {V9C}")
    world.vnetd["b"].stop()
    world.vnetd["b"] = world.start("b")
    dev = world.device("b")
    assert (dev["port"], dev["master"]) == (4789, "vnet9c")
    world.forget_neighbours()
    assert wait_for(lambda: world.pings("da", "db", count=2), timeout=20,
                    what="da to reach db after the port changes")


def test_mcast_ttl_0_refuses_vxlan_vnets(world):
    """TTL 0 keeps group traffic on the host: a VXLAN device cannot do that."""
    world.vnetd["b"].stop()
    world.vnetd["b"] = world.start("b", "--mcast-ttl", "0")
    try:
        assert V9C not in world.listed("b")     # the startup file's vnet.add was refused
        assert "multicast TTL is 0" in world.vnetd["b"].log()
        errno, message = world.error("b", "(vnet.add (id 9e) (data-path vxlan))")
        assert errno == 22 and "multicast TTL is 0" in message
        assert world.device("b", "vnif009e") is None
        # The device the last run left stays (like a TAP), untouched.
        assert world.device("b")["master"] == "vnet9c"
    finally:
        world.vnetd["b"].stop()
        world.vnetd["b"] = world.start("b")
    assert world.listed("b")[V9C]["data-path"] == "vxlan"


def test_xend_vnet_create_refuses_secured_vxlan_and_keeps_unknown_keys(world):
    lab, ns = world.lab, world.ns["a"]
    sock = os.path.join(lab.tmp, "xend.sock")
    state = os.path.join(lab.tmp, "state")
    env = dict(os.environ, PYTHONPATH=REPO, XEND_CONFIG=os.path.join(lab.tmp, "none.sxp"))
    with open(os.path.join(lab.tmp, "xend-vnet.log"), "ab") as log:
        server = lab.spawn(ns, sys.executable, "-m", "xend_vnet.xmlrpc.cli", "start",
                           "--foreground", "--no-engine", "--socket", sock, "--state-dir",
                           state, "--engine-control", world.vnetd["a"].control,
                           env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: os.path.exists(sock), timeout=20, what="xend-vnet to listen")
        config = "(vnet (id 9f) (bridge vnet9f) (data-path vxlan) (note kept))"

        def session():
            from xend_vnet.httpu import server_proxy
            proxy = server_proxy(f"httpu://{sock}")
            out = {}
            try:
                proxy.xend_vnet_create("(vnet (id 9d) (security auth) "
                                       "(key-file /etc/xen/k) (data-path vxlan))")
            except xmlrpc.client.Fault as fault:
                out["fault"] = (fault.faultCode, fault.faultString)
            proxy.xend_vnet_create(config)
            out["config"] = proxy.xend_vnet("9f")
            return out

        def answers():
            from xend_vnet.httpu import server_proxy
            return server_proxy(f"httpu://{sock}").xend_vnets() == []

        wait_for(lambda: call_in_netns(ns, answers), timeout=20, what="xend-vnet to answer")
        out = call_in_netns(ns, session)
        assert out["fault"][0] == 2
        assert "data-path" in out["fault"][1] and "neither authenticates" in out["fault"][1]
        assert out["config"] == sxp.parse_one(config)   # verbatim, with the unknown (note kept)
        dev = world.device("a", "vnif009f")
        assert (dev["kind"], dev["vni"], dev["master"]) == ("vxlan", 0x9f, "vnet9f")
        assert world.listed("a")["0000:0000:0000:0000:0000:0000:0000:009f"][
            "data-path"] == "vxlan"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
