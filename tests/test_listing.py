"""Listing texts: exact era-C layouts with full ids (protocol.md 7, 8.5)."""

from core_helpers import make_core

from xend_vnet import sxp
from xend_vnet.kernel_shim.wire import codec
from xend_vnet.kernel_shim.control import listing
from xend_vnet.kernel_shim.core.engine import EngineCore
from xend_vnet.kernel_shim.datapath.vxlan.table import VxlanTable, VxlanVnet, vni_of
from xend_vnet.vnet_id import VnetId

ID4 = "0000:0000:0000:0000:0000:0000:0000:0004"
ID97 = "0000:0000:0000:0000:0000:0000:0000:0097"
MAC_L = bytes.fromhex("aa0000000001")
MAC_R = bytes.fromhex("aa0000000002")


def two_vnets() -> EngineCore:
    """A core with vnet 97 on vnif97 and vnet 4 on vnif0004."""
    core = make_core("192.0.2.1", ifname="vnif97")
    core.add_vnet(VnetId.parse("4"), "vnif0004")
    return core


def test_vnet_list():
    assert listing.vnet_list(two_vnets()) == (
        f"(vnet (id {ID4}) (vnetif vnif0004) (security none) (data-path vnetd) (header 64))\n"
        f"(vnet (id {ID97}) (vnetif vnif97) (security none) (data-path vnetd) (header 64))\n")


def test_vnet_list_with_vxlan_vnets_in_id_order():
    vxlan = VxlanTable(4790)
    v9c = VnetId.parse("9c")
    vxlan.add(VxlanVnet(v9c, "vnif009c", vni_of(v9c), 1450))
    lines = listing.vnet_list(two_vnets(), vxlan).splitlines()
    assert [sxp.child_value(sxp.parse_one(line), "data-path") for line in lines] == [
        "vnetd", "vnetd", "vxlan"]
    assert lines[2] == (
        "(vnet (id 0000:0000:0000:0000:0000:0000:0000:009c) (vnetif vnif009c) (security none)"
        " (data-path vxlan) (vni 156) (control-plane multicast) (group 224.10.0.1)"
        " (vxlan-port 4790) (mtu 1450) (header 50))")
    v5 = VnetId.parse("5")
    vxlan.add(VxlanVnet(v5, "vx5", 5, 1400))
    ids = [sxp.child_value(sxp.parse_one(line), "id")[-4:]
           for line in listing.vnet_list(two_vnets(), vxlan).splitlines()]
    assert ids == ["0004", "0005", "0097", "009c"]


def test_evpn_vnets_list_their_control_plane_and_local_address_and_no_group():
    vxlan = VxlanTable(4789, "evpn", "192.0.2.11")
    v9c = VnetId.parse("9c")
    vxlan.add(VxlanVnet(v9c, "vnif009c", vni_of(v9c), 1450))
    (line,) = listing.vnet_list(make_core("192.0.2.11"), vxlan).splitlines()[-1:]
    assert line == (
        "(vnet (id 0000:0000:0000:0000:0000:0000:0000:009c) (vnetif vnif009c) (security none)"
        " (data-path vxlan) (vni 156) (control-plane evpn) (local 192.0.2.11)"
        " (vxlan-port 4789) (mtu 1450) (header 50))")


def test_vif_list():
    core = two_vnets()
    core.vif_add(VnetId.parse("97"), MAC_L, 10.0)
    assert listing.vif_list(core, 12.5) == (
        "(viftable\n (table_ttl 60000)\n (entry_ttl 60000)\n (sweeps 0)\n)\n"
        f"(vif\n (vnet {ID97})\n (vmac aa:00:00:00:00:01)\n (age 2500)\n)\n")


def test_varp_list_with_entries():
    core = two_vnets()
    v97 = VnetId.parse("97")
    core.receive_udp(codec.DATA_PREFIX + v97.raw + MAC_L + MAC_R + b"\x08\x00",
                     "192.0.2.2", "192.0.2.1", 100.0)
    core.receive_tap(v97, MAC_R + MAC_L + b"\x08\x00", 100.0)     # sets the vif too
    core.receive_tap(v97, bytes.fromhex("aa0000000003") + MAC_L + b"\x08\x00", 101.0)
    text = listing.varp_list(core, 103.0, "eth0")
    assert text == (
        "(varp \n (device eth0)\n (mcast_addr 224.10.0.1)\n (ucast_addr 192.0.2.1)\n"
        " (port 1798)\n (encapsulation etherip_in_udp)\n (entry_ttl 60000)\n)\n"
        "(ventry \n (ref 1)\n (state reachable)\n (flags -)\n (addr 192.0.2.2)\n"
        f" (queue 0)\n (age 3000)\n (vmac aa:00:00:00:00:02)\n (vnet {ID97})\n)\n"
        "(ventry \n (ref 1)\n (state incomplete)\n (flags -)\n (addr 0.0.0.0)\n"
        f" (queue 0)\n (age 2000)\n (vmac aa:00:00:00:00:03)\n (vnet {ID97})\n)\n")
    forms = sxp.parse_all(text)
    assert [f[0] for f in forms] == ["varp", "ventry", "ventry"]


def test_peer_list_prints_rx_and_port_right():
    core = two_vnets()
    core.peer_add("198.51.100.7", 1798)
    core.peer_add("192.0.2.9", 4000)
    core.peers.get("198.51.100.7").tx_packets = 3
    core.peers.get("198.51.100.7").rx_packets = 5
    assert listing.peer_list(core) == (
        "(vnet_peer\n  (addr 192.0.2.9)\n  (port 4000)\n  (tx_packets 0)\n  (rx_packets 0)\n)\n"
        "(vnet_peer\n  (addr 198.51.100.7)\n  (port 1798)\n  (tx_packets 3)\n"
        "  (rx_packets 5)\n)\n")


def test_varp_print_is_the_three_listings():
    core = two_vnets()
    assert listing.varp_print(core, 0.0, "xen-br0") == (
        listing.vnet_list(core) + listing.vif_list(core, 0.0)
        + listing.varp_list(core, 0.0, "xen-br0"))


def test_vnet_stats_forms():
    core = two_vnets()
    v4 = VnetId.parse("4")
    core.receive_tap(v4, b"tiny", 0.0)
    core.receive_udp(b"\x00", "192.0.2.2", "192.0.2.1", 0.0)
    text = listing.vnet_stats(core)
    forms = sxp.parse_all(text)
    assert [f[0] for f in forms] == ["engine_stats", "vnet_stats", "vnet_stats"]
    assert sxp.child(forms[0], "rx_dropped") == ["rx_dropped", ["short_header", "1"]]
    assert sxp.child_value(forms[0], "rx_datagrams") == "1"
    assert sxp.child_value(forms[1], "vnet") == ID4
    assert sxp.child(forms[1], "dropped") == ["dropped", ["short_frame", "1"]]
    only = listing.vnet_stats(core, [core.vnet(VnetId.parse("97"))])
    assert only.startswith("(vnet_stats\n (vnet " + ID97 + ")\n (vnetif vnif97)\n (rx_packets 0)")
    assert only.endswith(" (announced 0)\n (dropped)\n (refused)\n)\n")
