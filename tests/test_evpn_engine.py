"""The engine under the EVPN control plane (docs/fleet.md), without root: vnetd's
options, the VXLAN devices it makes (against the fake kernel of
test_vxlan_device), the bridge ports and stale entries it keeps in order on
the kernel's notifications, the parser of those notifications, and the
launcher and vn's views of it."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from fake_engine import FakeEngine
from hypothesis import given, settings
from hypothesis import strategies as st
from test_vxlan_device import (  # noqa: F401
    ALIAS,
    V9C,
    FakeIPRoute,
    FakeKernel,
    _dump_links,
    kernel,
    ours,
)

from xend_vnet import engine_launcher as launcher
from xend_vnet import sxp
from xend_vnet.kernel_shim import daemon
from xend_vnet.kernel_shim.datapath.vxlan import device as vxlan_mod
from xend_vnet.kernel_shim.datapath.vxlan import watch
from xend_vnet.kernel_shim.datapath.vxlan.device import DeviceFdb, VxlanSpec, open_vxlan
from xend_vnet.kernel_shim.datapath.vxlan.table import (
    PortFlags,
    VxlanTable,
    VxlanVnet,
    stale_remote_entries,
)
from xend_vnet.kernel_shim.datapath.vxlan.vnets import VxlanVnets
from xend_vnet.kernel_shim.datapath.vxlan.watch import LinkEvent, NeighEvent
from xend_vnet.vn import formatting
from xend_vnet.vnet_id import VnetId

LOCAL = "192.0.2.11"


# -- vnetd's options -------------------------------------------------------------

def test_evpn_options():
    o = daemon.parse_args(["--vxlan-control-plane", "evpn", "--vxlan-local", "192.0.2.011",
                           "--vxlan-neigh-suppress", "--vxlan-max-macs", "99"])
    assert (o.vxlan_control_plane, o.vxlan_local, o.vxlan_neigh_suppress,
            o.vxlan_max_macs) == ("evpn", "192.0.2.11", True, 99)
    o = daemon.parse_args([])
    assert (o.vxlan_control_plane, o.vxlan_local, o.vxlan_neigh_suppress) == (
        "multicast", None, False)


@pytest.mark.parametrize("argv, message", [
    (["--vxlan-control-plane", "evpn"], "needs --vxlan-local ADDR"),
    (["--vxlan-local", "192.0.2.1"], "--vxlan-local needs --vxlan-control-plane evpn"),
    (["--vxlan-neigh-suppress"], "--vxlan-neigh-suppress needs --vxlan-control-plane evpn"),
    (["--vxlan-control-plane", "evpn", "--vxlan-local", "x"], "dotted-quad"),
    (["--vxlan-control-plane", "evpn", "--vxlan-local", "127.0.0.1"], "unicast"),
    (["--vxlan-control-plane", "bgp"], "invalid choice"),
    (["--vxlan-max-macs", "0"], "expected 1 to"),
])
def test_evpn_options_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        daemon.parse_args(argv)
    assert message in capsys.readouterr().err


def test_launcher_passes_the_evpn_parameters():
    assert launcher.parse_params({"vxlan_control_plane": "evpn", "vxlan_local": LOCAL,
                                  "vxlan_neigh_suppress": "yes"}) == [
        "--vxlan-control-plane", "evpn", "--vxlan-local", LOCAL, "--vxlan-neigh-suppress"]


def test_a_running_engine_on_another_control_plane_is_named(tmp_path):
    engine = FakeEngine(str(tmp_path / "c.sock")).start()
    try:
        with pytest.raises(launcher.LauncherError,
                           match="vxlan_control_plane: running multicast, asked evpn"):
            launcher.reconcile_running(engine.path, {"vxlan_control_plane": "evpn"})
        engine.host.vxlan = VxlanTable(4789, "evpn", LOCAL)
        launcher.reconcile_running(engine.path, {"vxlan_control_plane": "evpn",
                                                 "vxlan_local": LOCAL})
        with pytest.raises(launcher.LauncherError, match="vxlan_local: running 192.0.2.11"):
            launcher.reconcile_running(engine.path, {"vxlan_local": "192.0.2.12"})
    finally:
        engine.close()


# -- the bookkeeping ----------------------------------------------------------------

def test_an_evpn_table_needs_its_local_address_and_only_it_has_one():
    with pytest.raises(ValueError):
        VxlanTable(4789, "evpn")
    with pytest.raises(ValueError):
        VxlanTable(4789, "multicast", LOCAL)
    with pytest.raises(ValueError):
        VxlanTable(4789, "bgp")
    assert VxlanTable(4789, "evpn", LOCAL).evpn and not VxlanTable().evpn


def test_stale_entries_are_remote_entries_of_local_macs():
    remote = [("02:00:00:00:00:01", "192.0.2.12"), ("02:00:00:00:00:02", "198.51.100.3")]
    assert stale_remote_entries({"02:00:00:00:00:02", "02:00:00:00:00:09"}, remote) == [
        ("02:00:00:00:00:02", "198.51.100.3")]
    assert stale_remote_entries(set(), remote) == []


@given(st.sets(st.integers(0, 20)), st.lists(st.tuples(st.integers(0, 20), st.integers(0, 3))))
def test_stale_entries_property(local, remote):
    mac = "02:00:00:00:00:{:02x}".format
    found = stale_remote_entries({mac(m) for m in local},
                                 [(mac(m), f"192.0.2.{d}") for m, d in remote])
    assert set(found) == {(mac(m), f"192.0.2.{d}") for m, d in remote if m in local}


def test_port_flags_as_brport_keywords():
    assert PortFlags(learning=False, neigh_suppress=True).brport() == {
        "learning": 0, "neigh_suppress": 1}


# -- the device -------------------------------------------------------------------

def evpn_spec(**changes) -> VxlanSpec:
    base = dict(ifname="vnif009c", vni=0x9c, group=None, port=4789, ttl=0, device="",
                mtu=1450, alias=ALIAS, local=LOCAL, max_macs=4096)
    return VxlanSpec(**{**base, **changes})


def test_an_evpn_device_has_no_group_no_learning_and_a_bound(kernel):  # noqa: F811
    assert open_vxlan(evpn_spec()) is True
    link = kernel.links["vnif009c"]
    assert link["vxlan"] == {"vxlan_id": 0x9c, "vxlan_port": 4789, "vxlan_learning": 0,
                             "vxlan_ttl": 0, "vxlan_local": LOCAL, "vxlan_limit": 4096}
    assert not [e for e in kernel.fdb if e[0] == link["index"]]   # no flood entry of ours
    assert link["alias"] == ALIAS and link["up"]


def test_a_multicast_device_of_ours_is_made_again_for_evpn_on_its_bridge(kernel):  # noqa: F811
    old = ours(kernel)
    assert open_vxlan(evpn_spec()) is True
    new = kernel.links["vnif009c"]
    assert new["index"] != old["index"] and new["master"] == kernel.links["vnet9c"]["index"]
    assert new["vxlan"]["vxlan_learning"] == 0 and "vxlan_group" not in new["vxlan"]


def test_a_new_local_address_is_applied_down_then_up(kernel):  # noqa: F811
    open_vxlan(evpn_spec())
    kernel.calls.clear()
    assert open_vxlan(evpn_spec(local="192.0.2.99")) is False
    assert kernel.calls[0] == ("down", "vnif009c")
    assert ("change", "vnif009c", {"vxlan_local": "192.0.2.99"}, "down") in kernel.calls
    assert kernel.links["vnif009c"]["up"]


# -- the engine's EVPN vnets: ports and stale entries -------------------------------

class EvpnKernel(FakeKernel):
    """The fake kernel, with bridge-port flags and FDB entries that have flags."""

    def __init__(self):
        super().__init__()
        self.brport: dict[int, dict] = {}
        self.entries: list[dict] = []    # get_neighbours: ifindex, mac, dst, flags, state, master
        self.removed: list[tuple[int, str]] = []


class EvpnIPRoute(FakeIPRoute):
    def brport(self, command, index, **flags):
        assert command == "set"
        self.k.calls.append(("brport", index, dict(flags)))
        self.k.brport.setdefault(index, {}).update(flags)

    def fdb(self, command, ifindex, lladdr, dst=None):
        if command != "del" or dst is not None:
            return super().fdb(command, ifindex, lladdr, dst)
        before = len(self.k.entries)
        self.k.entries = [e for e in self.k.entries
                          if not (e["ifindex"] == ifindex and e["mac"] == lladdr and e.get("dst"))]
        if len(self.k.entries) == before:
            from pyroute2.netlink.exceptions import NetlinkError
            raise NetlinkError(errno.ENOENT)
        self.k.removed.append((ifindex, lladdr))


def _dump(k: EvpnKernel) -> list[NeighEvent]:
    k.calls.append(("fdb-dump",))
    return [NeighEvent(True, socket.AF_BRIDGE, e["ifindex"], e.get("state", 2),
                       e.get("flags", 0), e["mac"], e.get("master", 0), e.get("dst"))
            for e in k.entries]


@pytest.fixture
def evk(monkeypatch):
    k = EvpnKernel()
    monkeypatch.setattr(vxlan_mod, "IPRoute", lambda: EvpnIPRoute(k))
    monkeypatch.setattr(vxlan_mod, "dump_neighbours", lambda sock=None: _dump(k))
    monkeypatch.setattr(vxlan_mod, "dump_links",
                        lambda kind=None, sock=None: _dump_links(k, kind))
    return k


def evpn_vnets(neigh_suppress=False) -> VxlanVnets:
    return VxlanVnets(4789, 1500, group=lambda: "224.10.0.1", mcast_ttl=lambda: 1,
                      device=lambda: "eth0", underlay_mtu=lambda: 1500, peers=lambda: [],
                      control_plane="evpn", local=LOCAL, neigh_suppress=neigh_suppress)


def test_attach_makes_an_evpn_device_and_peers_never_touch_it(evk):
    vnets = evpn_vnets()
    vnets.attach(V9C, "vnif009c")
    index = evk.links["vnif009c"]["index"]
    assert vnets.evpn_ports[index].vid == V9C and vnets.evpn_masters[index] == 0
    evk.calls.clear()
    vnets.sync_floods()                 # what peer.add does: nothing under EVPN
    vnets.move_group("224.10.0.7")      # nor a group change
    assert evk.calls == []
    assert "EVPN control plane (local 192.0.2.11)" in vnets.status(V9C).reason


def test_joining_a_bridge_stops_the_port_learning_at_once(evk):
    vnets = evpn_vnets(neigh_suppress=True)
    vnets.attach(V9C, "vnif009c")
    index = evk.links["vnif009c"]["index"]
    bridge = evk.links["vnet9c"]["index"]
    vnets.netlink_events([LinkEvent(True, socket.AF_UNSPEC, index, bridge)])
    assert evk.brport[index] == {"learning": 0, "neigh_suppress": 1}
    evk.calls.clear()
    vnets.netlink_events([LinkEvent(True, 7, index, bridge)])     # the same bridge: nothing
    vnets.netlink_events([LinkEvent(True, 0, 999, bridge)])       # not ours: nothing
    assert evk.calls == []


def test_a_device_already_on_a_bridge_gets_its_flags_at_attach_and_at_refresh(evk):
    link = ours(evk, vxlan_learning=0, vxlan_local=LOCAL, vxlan_limit=4096)
    del link["vxlan"]["vxlan_group"], link["vxlan"]["vxlan_link"]
    evk.fdb.clear()
    vnets = evpn_vnets()
    vnets.attach(V9C, "vnif009c")
    assert evk.brport[link["index"]] == {"learning": 0, "neigh_suppress": 0}
    # released and enslaved again behind the engine's back, notifications lost
    vnets.netlink_events([], overflowed=True)
    vnets.evpn_masters[link["index"]] = 0
    evk.brport.clear()
    vnets.refresh()
    assert evk.brport[link["index"]] == {"learning": 0, "neigh_suppress": 0}
    assert not vnets.evpn_check_pending         # the full check ran (one FDB dump)
    assert ("fdb-dump",) in evk.calls


def test_a_mac_learnt_on_a_local_port_loses_its_stale_remote_entry(evk):
    vnets = evpn_vnets()
    vnets.attach(V9C, "vnif009c")
    index = evk.links["vnif009c"]["index"]
    bridge = evk.links["vnet9c"]["index"]
    vnets.netlink_events([LinkEvent(True, 0, index, bridge)])
    mac = "02:00:00:00:00:03"
    evk.entries = [{"ifindex": index, "mac": mac, "dst": "198.51.100.13", "flags": 0x12}]
    vif = 77
    # FRR installing entries on our device is no reason to act
    vnets.netlink_events([NeighEvent(True, 7, index, 2, 0x12, mac, 0, "198.51.100.13")])
    assert evk.removed == []
    # the bridge learns the MAC on a local port: the device's entry goes
    vnets.netlink_events([NeighEvent(True, 7, vif, 2, 0, mac, bridge, None)])
    assert evk.removed == [(index, mac)] and vnets.stale_removed == 1
    # nothing left to remove: ENOENT is not an error
    vnets.netlink_events([NeighEvent(True, 7, vif, 2, 0, mac, bridge, None)])
    assert vnets.stale_removed == 1
    # another bridge's port, a port's own address, an installed entry: ignored
    evk.entries = [{"ifindex": index, "mac": mac, "dst": "198.51.100.13", "flags": 0x12}]
    vnets.netlink_events([NeighEvent(True, 7, vif, 2, 0, mac, bridge + 50, None),
                          NeighEvent(True, 7, vif, 0x80, 0, mac, bridge, None),
                          NeighEvent(True, 7, vif, 2, 0x10, mac, bridge, None)])
    assert vnets.stale_removed == 1


def test_the_full_check_removes_what_lost_notifications_hid(evk):
    vnets = evpn_vnets()
    vnets.attach(V9C, "vnif009c")
    index = evk.links["vnif009c"]["index"]
    bridge = evk.links["vnet9c"]["index"]
    vnets.netlink_events([LinkEvent(True, 0, index, bridge)])
    local, remote = "02:00:00:00:00:03", "02:00:00:00:00:04"
    evk.entries = [
        {"ifindex": index, "mac": local, "dst": "198.51.100.13", "flags": 0x12},
        {"ifindex": index, "mac": remote, "dst": "198.51.100.13", "flags": 0x12},
        {"ifindex": index, "mac": "00:00:00:00:00:00", "dst": "198.51.100.13", "state": 0xc0},
        {"ifindex": 77, "mac": local, "master": bridge},
    ]
    vnets.check_stale_entries()
    assert evk.removed == [(index, local)]
    fdb = vxlan_mod.read_fdb({index: bridge})[index]
    assert fdb == DeviceFdb(["198.51.100.13"], {remote: "198.51.100.13"}, {remote}, {local})


# -- the notifications' parser ------------------------------------------------------

def _rta(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _nlmsg(kind: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def neigh_msg(new=True, family=7, ifindex=5, state=2, flags=0, mac=b"\x02\0\0\0\0\x03",
              master=None, dst=None) -> bytes:
    body = struct.pack("=BxxxiHBB", family, ifindex, state, flags, 0)
    if mac is not None:
        body += _rta(watch.NDA_LLADDR, mac)
    if dst is not None:
        body += _rta(watch.NDA_DST, dst)
    if master is not None:
        body += _rta(watch.NDA_MASTER, struct.pack("=I", master))
    return _nlmsg(watch.RTM_NEWNEIGH if new else watch.RTM_DELNEIGH, body)


def link_msg(index=5, master=None, new=True) -> bytes:
    body = struct.pack("=BxHiII", 0, 1, index, 0, 0) + _rta(3, b"vnif009c\0")
    if master is not None:
        body += _rta(watch.IFLA_MASTER, struct.pack("=I", master))
    return _nlmsg(watch.RTM_NEWLINK if new else watch.RTM_DELLINK, body)


def test_parse_reads_the_fields_the_engine_needs():
    data = neigh_msg(master=9) + link_msg(master=9) + neigh_msg(
        ifindex=6, flags=0x12, dst=b"\xc0\0\x02\x0d", new=False) + _nlmsg(3, b"\0" * 4)
    assert watch.parse(data) == [
        NeighEvent(True, 7, 5, 2, 0, "02:00:00:00:00:03", 9, None),
        LinkEvent(True, 0, 5, 9, "vnif009c"),
        NeighEvent(False, 7, 6, 2, 0x12, "02:00:00:00:00:03", 0, "192.0.2.13"),
    ]
    assert watch.parse(neigh_msg(master=9))[0].local_on_bridge
    assert not watch.parse(neigh_msg(master=9, state=0x80))[0].local_on_bridge
    assert not watch.parse(neigh_msg(master=9, flags=0x10))[0].local_on_bridge
    assert not watch.parse(neigh_msg())[0].local_on_bridge          # no bridge
    assert watch.parse(neigh_msg(mac=b"\x01\x02"))[0].mac is None    # not six bytes


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_parse_never_raises_on_any_bytes(data):
    for event in watch.parse(data):
        assert isinstance(event, (LinkEvent, NeighEvent))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 10_000), st.integers(0, 0xFFFF),
                          st.integers(0, 255), st.binary(min_size=6, max_size=6),
                          st.one_of(st.none(), st.integers(1, 10_000)))), st.integers(0, 40))
def test_parse_keeps_whole_messages_and_drops_a_cut_one(msgs, cut):
    data = b"".join(neigh_msg(new, 7, i, state, flags, mac, master)
                    for new, i, state, flags, mac, master in msgs)
    events = watch.parse(data)
    assert [(e.new, e.ifindex, e.state, e.flags, e.master or None) for e in events] == [
        (new, i, state, flags, master) for new, i, state, flags, _, master in msgs]
    if msgs and cut:
        assert len(watch.parse(data[:-cut])) == len(msgs) - 1


def test_a_dump_request_and_its_end():
    request = watch.dump_request(7)
    assert struct.unpack_from("=IHHII", request) == (28, 30, 0x301, 7, 0)
    done = _nlmsg(watch.NLMSG_DONE, b"\0" * 4)
    done = done[:8] + struct.pack("=I", 7) + done[12:]
    assert watch._done(done, 7) == 0 and watch._done(done, 8) is None
    error = struct.pack("=IHHII", 20, watch.NLMSG_ERROR, 0, 7, 0) + struct.pack("=i", -1)
    assert watch._done(error, 7) == errno.EPERM


def test_a_link_with_its_kind_group_and_alias():
    info = _rta(watch.IFLA_INFO_KIND, b"vxlan\0") + _rta(
        watch.IFLA_INFO_DATA, _rta(watch.IFLA_VXLAN_GROUP, bytes([224, 10, 0, 1])))
    body = (struct.pack("=BxHiII", 0, 1, 9, 0x1, 0) + _rta(3, b"vnif009c\0")
            + _rta(watch.IFLA_IFALIAS, b"xend-vnet vnet 9c\0")
            + _rta(watch.IFLA_MASTER, struct.pack("=I", 4)) + _rta(watch.IFLA_LINKINFO, info))
    assert watch.parse(_nlmsg(watch.RTM_NEWLINK, body)) == [
        LinkEvent(True, 0, 9, 4, "vnif009c", 1, "xend-vnet vnet 9c", "vxlan", "224.10.0.1")]


def test_a_filtered_link_dump_request():
    request = watch.link_dump_request(5, "vxlan")
    assert struct.unpack_from("=IHHII", request) == (len(request), 18, 0x301, 5, 0)
    assert request[32:] == _rta(watch.IFLA_LINKINFO, _rta(watch.IFLA_INFO_KIND, b"vxlan\0"))
    assert len(watch.link_dump_request(5)) == 32


def test_a_real_link_dump():
    try:
        links = watch.dump_links()
        vxlan = watch.dump_links("vxlan")
    except OSError as e:
        pytest.skip(f"no netlink dump here: {e}")
    assert any(link.name == "lo" for link in links)
    assert all(link.kind == "vxlan" for link in vxlan)


def test_a_real_dump_reads_this_namespaces_entries():
    try:
        entries = watch.dump_neighbours()
    except OSError as e:
        pytest.skip(f"no netlink dump here: {e}")
    assert all(isinstance(e, NeighEvent) and e.family == socket.AF_BRIDGE for e in entries)


def test_the_watch_socket_reads_real_notifications():
    w = watch.NetlinkWatch()
    try:
        w.open()
    except OSError as e:
        pytest.skip(f"no netlink socket here: {e}")
    try:
        assert w.read() == [] and not w.overflowed and w.fileno() >= 0
    finally:
        w.close()
    assert w.fileno() == -1


# -- what vn prints -----------------------------------------------------------------

EVPN_VNET = sxp.parse_one(
    "(vnet (id 0000:0000:0000:0000:0000:0000:0000:0064) (vnetif vnif0064) (security none)"
    " (data-path vxlan) (vni 100) (control-plane evpn) (local 192.0.2.11) (vxlan-port 4789)"
    " (mtu 1450) (header 50))")
MCAST_VNET = sxp.parse_one(
    "(vnet (id 0000:0000:0000:0000:0000:0000:0000:009c) (vnetif vnif009c) (security none)"
    " (data-path vxlan) (vni 156) (control-plane multicast) (group 224.10.0.1)"
    " (vxlan-port 4789) (mtu 1450) (header 50))")


def test_vn_status_lines():
    fdb = DeviceFdb(["198.51.100.13", "192.0.2.12"],
                    {"02:00:00:00:00:03": "198.51.100.13", "02:00:00:00:00:09": "192.0.2.12"},
                    {"02:00:00:00:00:03", "02:00:00:00:00:09"}, {"02:00:00:00:00:09"})
    assert formatting.vxlan_summary(EVPN_VNET, fdb) == (
        "  vnet 64 vnif0064: evpn (local 192.0.2.11), floods to 2 hosts (192.0.2.12 "
        "198.51.100.13), 1 remote MAC from FRR, 1 stale (local now)\n")
    assert formatting.vxlan_summary(EVPN_VNET, None) == (
        "  vnet 64 vnif0064: evpn (local 192.0.2.11), no device\n")
    learnt = DeviceFdb(["224.10.0.1", "198.51.100.3"], {"02:00:00:00:00:05": "198.51.100.3"},
                       set(), set())
    assert formatting.vxlan_summary(MCAST_VNET, learnt) == (
        "  vnet 9c vnif009c: multicast (group 224.10.0.1), floods to 1 peer (198.51.100.3), "
        "1 remote MAC learnt\n")
    assert formatting.vxlan_vnets([EVPN_VNET, MCAST_VNET, sxp.parse_one(
        "(vnet (id 4) (vnetif vnif0004) (data-path vnetd))")]) == [EVPN_VNET, MCAST_VNET]


def test_vn_fdb_form():
    fdb = DeviceFdb(["192.0.2.12"], {"02:00:00:00:00:03": "192.0.2.12"},
                    {"02:00:00:00:00:03"}, set())
    assert sxp.to_string(formatting.fdb_form(EVPN_VNET, fdb)) == (
        "(vxlan.fdb (id 0000:0000:0000:0000:0000:0000:0000:0064) (vnetif vnif0064) "
        "(control-plane evpn) (flood 192.0.2.12) (mac 02:00:00:00:00:03 (dst 192.0.2.12) "
        "(external)))")
    assert formatting.fdb_form(EVPN_VNET, None)[-1] == ["device", "missing"]


def test_engine_status_and_listing_of_an_evpn_engine(tmp_path):
    engine = FakeEngine(str(tmp_path / "c.sock")).start()
    try:
        engine.host.vxlan = VxlanTable(4789, "evpn", LOCAL)
        engine.host.vxlan.add(VxlanVnet(VnetId.parse("64"), "vnif0064", 100, 1450))
        listed = engine.execute("(vnet.list)")
        assert "(control-plane evpn) (local 192.0.2.11)" in listed and "group" not in listed
        status = engine.execute("(engine.status)")
        assert "(vxlan-control-plane evpn) (vxlan-local 192.0.2.11)" in status
    finally:
        engine.close()
