"""The kernel VXLAN data path's bookkeeping, without a kernel (docs/vxlan.md)."""

import pytest

from xend_vnet.kernel_shim.datapath.vxlan.table import (
    VxlanTable,
    VxlanVnet,
    device_alias,
    flood_changes,
    kernel_ttl,
    ttl_problem,
    vni_of,
    vxlan_mtu,
)
from xend_vnet.vnet_id import VnetId

GROUP = "224.10.0.1"


def vnet(text, ifname=None, mtu=1450):
    vid = VnetId.parse(text)
    return VxlanVnet(vid, ifname or vid.default_vnetif, vni_of(vid), mtu)


def test_device_alias_names_the_vnet():
    assert device_alias(VnetId.parse("9c")) == (
        "xend-vnet vnet 0000:0000:0000:0000:0000:0000:0000:009c")
    assert len(device_alias(VnetId.parse("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))) < 128


def test_mtu_fits_the_underlay():
    assert vxlan_mtu(1500, 1500) == 1450
    assert vxlan_mtu(1400, 1500) == 1400
    assert vxlan_mtu(9000, 9000) == 8950


def test_ttl_1_stays_automatic_so_peers_behind_routers_are_reached():
    assert kernel_ttl(1) == 0 and kernel_ttl(0) == 0
    assert kernel_ttl(4) == 4


def test_ttl_0_cannot_be_honoured_by_the_kernel():
    """TTL 0 keeps group traffic on the host; the device's ttl 0 is automatic (1)."""
    assert "multicast TTL is 0" in ttl_problem(0)
    assert ttl_problem(1) is None and ttl_problem(255) is None


def test_flood_changes():
    assert flood_changes([GROUP], ["198.51.100.3", "192.0.2.9"], GROUP) == (
        ["192.0.2.9", "198.51.100.3"], [])
    assert flood_changes([GROUP, "192.0.2.9", "10.0.0.2"], ["192.0.2.9"], GROUP) == (
        [], ["10.0.0.2"])
    # The group's own entry is the kernel's: never added, never removed.
    assert flood_changes([], [], GROUP) == ([], [])
    assert flood_changes(["192.0.2.9"], [GROUP], GROUP) == ([], ["192.0.2.9"])


def test_table_refuses_clashes_and_lists_by_id():
    table = VxlanTable(4790)
    table.add(vnet("9c"))
    table.add(vnet("5", "vx5"))
    assert [v.vni for v in table] == [5, 0x9c] and len(table) == 2 and table.port == 4790
    with pytest.raises(KeyError):
        table.add(vnet("9c", "other"))
    with pytest.raises(ValueError, match="VNI 156 is already used"):
        table.add(vnet("0:0:0:0:0:0:100:9c", "vx2"))
    with pytest.raises(ValueError, match="interface vx5"):
        table.add(vnet("9d", "vx5"))
    assert table.vni_owner(0x9c).ifname == "vnif009c" and table.vni_owner(7) is None
    assert table.remove(VnetId.parse("9c")).vni == 0x9c
    assert table.get(VnetId.parse("9c")) is None
    with pytest.raises(KeyError):
        table.remove(VnetId.parse("9c"))


def test_flood_changes_tolerate_ipv6_destinations():
    """An IPv6 entry must not make the sort raise."""
    assert flood_changes([GROUP, "2001:db8::7", "192.0.2.9"], ["10.0.0.2"], GROUP) == (
        ["10.0.0.2"], ["192.0.2.9", "2001:db8::7"])
