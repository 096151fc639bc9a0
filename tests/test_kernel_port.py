"""The kernel ports' names, tags and ownership (datapath/kernel/port.py) and
the decisions about their fdb entries (datapath/kernel/fdb.py), without a
kernel."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xend_vnet.ifnames import ifname_problem
from xend_vnet.kernel_shim.datapath.kernel import fdb, port
from xend_vnet.kernel_shim.datapath.kernel.port import LinkInfo
from xend_vnet.vnet_id import VnetId

vids = st.binary(min_size=16, max_size=16).map(VnetId)
macs = st.binary(min_size=6, max_size=6)
V97 = VnetId.parse("97")


# -- names and tags ------------------------------------------------------------------------

def test_names_of_a_short_id_sit_beside_its_tap():
    assert port.port_names(V97) == ("vkp0097", "vkq0097")
    assert V97.default_vnetif == "vnif0097"
    assert port.port_names(VnetId.parse("ab12")) == ("vkpab12", "vkqab12")


@given(vids)
def test_names_are_interface_names(vid):
    p, q = port.port_names(vid)
    assert ifname_problem(p) is None and ifname_problem(q) is None
    assert len(p) <= 15 and p[3:] == q[3:] and p != q
    assert port.port_names(vid) == (p, q)        # the same after a restart


def test_long_ids_with_the_same_last_field_get_other_names():
    a = VnetId.parse("1:0:0:0:0:0:0:97")
    b = VnetId.parse("2:0:0:0:0:0:0:97")
    assert port.port_names(a) != port.port_names(b)
    assert port.port_names(a) != port.port_names(V97)
    assert all(len(n) == 15 for n in port.port_names(a))


@given(vids, st.sampled_from(["P", "Q"]))
def test_alias_round_trip(vid, end):
    alias = port.port_alias(vid, end)
    assert len(alias) < 256
    assert port.parse_alias(alias) == (vid, end)


def test_alias_names_the_vnet():
    assert port.port_alias(V97, "P") == \
        "xend-vnet vnet 0000:0000:0000:0000:0000:0000:0000:0097 kernel-port P"
    with pytest.raises(ValueError):
        port.port_alias(V97, "R")


@pytest.mark.parametrize("alias", [
    None, "", "xend-vnet vnet 0000:0000:0000:0000:0000:0000:0000:0097",   # a VXLAN device's
    "xend-vnet vnet 0000:0000:0000:0000:0000:0000:0000:0097 kernel-port R",
    "xend-vnet vnet 97 kernel-port P",
    "xend-vnet vnet 0000:0000:0000:0000:0000:0000:0000:0097 kernel-port P ",
    "my own veth"])
def test_other_aliases_are_not_ours(alias):
    assert port.parse_alias(alias) is None


@given(st.text(max_size=300))
def test_parse_alias_never_crashes(text):
    found = port.parse_alias(text)
    assert found is None or port.port_alias(*found) == text


def test_ownership():
    ours = port.port_alias(V97, "P")
    assert port.not_ours("vkp0097", "veth", ours, ours) is None
    why = port.not_ours("vkp0097", "veth", None, ours)
    assert "vkp0097" in why and "no alias" in why
    why = port.not_ours("vkp0097", "veth", port.port_alias(V97, "Q"), ours)
    assert "kernel-port Q" in why
    why = port.not_ours("vkp0097", "dummy", ours, ours)   # our tag on something else
    assert "a dummy" in why


# -- finding our ports in a link dump ---------------------------------------------------------

def link(index, name, alias, peer, kind="veth", master=0, mtu=1500):
    return LinkInfo(index, name, kind, alias, master, peer, mtu, True)


def dump(*links):
    return {lk.index: lk for lk in links}


def test_find_a_whole_port():
    found = dump(link(7, "vkp0097", port.port_alias(V97, "P"), 6, master=4),
                 link(6, "vkq0097", port.port_alias(V97, "Q"), 7),
                 link(3, "vnif0097", None, 0, kind="tun", master=4))
    ports, strays = port.find_ports(found)
    assert strays == []
    p = ports[V97]
    assert (p.p_name, p.p_index, p.q_name, p.q_index, p.master) == \
        ("vkp0097", 7, "vkq0097", 6, 4)
    assert p.on_bridge


def test_half_ports_are_strays_and_others_are_left_alone():
    v98 = VnetId.parse("98")
    found = dump(link(7, "vkp0097", port.port_alias(V97, "P"), 0),          # Q gone
                 link(9, "vkp0098", port.port_alias(v98, "P"), 10),         # peer not ours
                 link(10, "x", None, 9),
                 link(11, "vkq0099", port.port_alias(VnetId.parse("99"), "Q"), 0),
                 link(12, "dum", port.port_alias(V97, "P"), 0, kind="dummy"),  # not a veth
                 link(13, "vkp0001", "someone else's", 14))
    ports, strays = port.find_ports(found)
    assert ports == {}
    assert sorted(s.index for s in strays) == [7, 9, 11]


def test_a_second_end_with_the_same_tag_is_a_stray():
    found = dump(link(7, "vkp0097", port.port_alias(V97, "P"), 6),
                 link(6, "vkq0097", port.port_alias(V97, "Q"), 7),
                 link(8, "other", port.port_alias(V97, "P"), 0))
    ports, strays = port.find_ports(found)
    assert ports[V97].p_index == 7 and [s.index for s in strays] == [8]


def test_delete_tagged_refuses_what_is_not_ours():
    with pytest.raises(ValueError):
        port.delete_tagged(None, link(3, "vnif0097", None, 0, kind="tun"))


# -- fdb decisions ------------------------------------------------------------------------------

P, TAP, VIF = 7, 3, 5
MAC = bytes.fromhex("020000000002")


def entry(port_, state=fdb.NUD_NOARP, flags=fdb.NTF_MASTER, mac=MAC, master=4):
    return fdb.FdbEntry(mac, port_, master, state, flags)


REACHABLE = 0x02


@pytest.mark.parametrize("found, action", [
    (None, fdb.ADD),
    (entry(P), fdb.KEEP),
    (entry(P, state=REACHABLE), fdb.MOVE),              # learned there after all: made static
    (entry(TAP), fdb.MOVE),                             # ours, moved by the TAP's learning
    (entry(TAP, state=REACHABLE), fdb.MOVE),            # learned from a frame the engine wrote
    (entry(VIF, state=REACHABLE), fdb.LEAVE),           # a domain here (it migrated)
    (entry(VIF), fdb.LEAVE),                            # ours, moved to its vif: stays there
    (entry(P, state=fdb.NUD_PERMANENT | fdb.NUD_NOARP), fdb.LEAVE),   # an own address
    (entry(TAP, flags=fdb.NTF_MASTER | fdb.NTF_EXT_LEARNED), fdb.LEAVE),
])
def test_placement(found, action):
    assert fdb.placement(found, P, TAP) == action


@pytest.mark.parametrize("found, ours", [
    (None, False),
    (entry(P), True),
    (entry(P, state=REACHABLE), True),
    (entry(TAP), True),                                 # static on the TAP: one of ours moved
    (entry(TAP, state=REACHABLE), False),               # learned there: the bridge's
    (entry(VIF), False),
    (entry(VIF, state=REACHABLE), False),
    (entry(P, state=fdb.NUD_PERMANENT), False),
    (entry(P, flags=fdb.NTF_EXT_LEARNED), False),
])
def test_is_ours(found, ours):
    assert fdb.is_ours(found, P, TAP) is ours


def nla(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def neigh_msg(kind=fdb.RTM_NEWNEIGH, family=fdb.AF_BRIDGE, ifindex=P, state=fdb.NUD_NOARP,
              flags=fdb.NTF_MASTER, mac=MAC, master=4, vlan=None) -> bytes:
    attrs = nla(fdb.NDA_LLADDR, mac)
    if master is not None:
        attrs += nla(fdb.NDA_MASTER, struct.pack("=I", master))
    if vlan is not None:
        attrs += nla(fdb.NDA_VLAN, struct.pack("=H", vlan))
    body = struct.pack("=BxxxiHBB", family, ifindex, state, flags, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_parse_notes():
    data = (neigh_msg() + neigh_msg(kind=fdb.RTM_DELNEIGH, ifindex=TAP)
            + neigh_msg(family=2)                       # an ARP entry
            + neigh_msg(master=None)                    # a device's own address list
            + neigh_msg(vlan=10)                        # a VLAN's entry
            + neigh_msg(mac=b"\1\2\3")                  # not a MAC
            + neigh_msg(kind=16))                       # a link message
    notes = fdb.parse_notes(data)
    assert notes == [fdb.FdbNote(entry(P), False), fdb.FdbNote(entry(TAP), True)]


@given(st.binary(max_size=200))
def test_parse_notes_never_crashes(data):
    for note in fdb.parse_notes(data):
        assert len(note.entry.mac) == 6 and note.entry.master and note.entry.port > 0


@given(st.integers(0, 120))
def test_truncated_notes_never_crash(n):
    data = neigh_msg() + neigh_msg(ifindex=TAP)
    notes = fdb.parse_notes(data[:n])
    assert len(notes) <= 2


def test_latest_is_the_last_word():
    other = bytes.fromhex("020000000003")
    notes = [fdb.FdbNote(entry(P), False), fdb.FdbNote(entry(TAP), False),     # moved
             fdb.FdbNote(entry(P, mac=other), False), fdb.FdbNote(entry(P, mac=other), True),
             fdb.FdbNote(entry(VIF, mac=b"\2" * 6), True)]
    assert fdb.latest(notes) == {(4, MAC): entry(TAP), (4, other): None, (4, b"\2" * 6): None}
    # a deletion on a port the entry left since changes nothing
    assert fdb.latest([fdb.FdbNote(entry(TAP), False), fdb.FdbNote(entry(P), True)]) == \
        {(4, MAC): entry(TAP)}
