"""The kernel VXLAN device adapter (datapath/vxlan/device.py), the engine's VXLAN vnets on it
(datapath/vxlan/vnets.py) and the daemon's use of them, against a fake IPRoute that records
every netlink call (no root; docs/vxlan.md)."""

from __future__ import annotations

import errno
import os
import logging
import socket
from types import SimpleNamespace

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from xend_vnet import sxp
from xend_vnet.kernel_shim import daemon
from xend_vnet.kernel_shim.engine import Engine
from xend_vnet.kernel_shim.datapath.vxlan import device as vxlan_mod
from xend_vnet.kernel_shim.datapath.interface import DataPathError
from xend_vnet.kernel_shim.datapath.vxlan.device import (
    ALL_ZEROS,
    VxlanError,
    VxlanSpec,
    delete_vxlan,
    open_vxlan,
    set_group,
    sync_floods,
)
from xend_vnet.kernel_shim.datapath.vxlan.table import device_alias
from xend_vnet.kernel_shim.datapath.vxlan.watch import LinkEvent
from xend_vnet.kernel_shim.datapath.vxlan.vnets import VxlanVnets
from xend_vnet.vnet_id import VnetId

GROUP = "224.10.0.1"
V9C = VnetId.parse("9c")
ALIAS = device_alias(V9C)
VX = {"vxlan_id": "IFLA_VXLAN_ID", "vxlan_port": "IFLA_VXLAN_PORT",
      "vxlan_group": "IFLA_VXLAN_GROUP", "vxlan_ttl": "IFLA_VXLAN_TTL",
      "vxlan_link": "IFLA_VXLAN_LINK", "vxlan_learning": "IFLA_VXLAN_LEARNING",
      "vxlan_local": "IFLA_VXLAN_LOCAL", "vxlan_limit": "IFLA_VXLAN_LIMIT"}


class Msg(dict):
    """A netlink message: fields by key, NLAs through get_attr."""

    def __init__(self, attrs: dict, **fields):
        super().__init__(fields)
        self.attrs = attrs

    def get_attr(self, name):
        return self.attrs.get(name)


class FakeKernel:
    """Links and bridge FDB entries, and the log of what was asked."""

    def __init__(self):
        self.links: dict[str, dict] = {}
        self.fdb: set[tuple[int, str, str]] = set()   # (ifindex, lladdr, dst)
        self.calls: list[tuple] = []
        self.opened = 0
        self.fail_fdb = None
        self._next = 1
        self.add_link("eth0", "veth")
        self.add_link("vnet9c", "bridge")

    def add_link(self, name, kind, **vxlan):
        self.links[name] = {"index": self._next, "kind": kind, "vxlan": dict(vxlan),
                            "alias": None, "master": None, "up": True, "mtu": 1500}
        self._next += 1
        return self.links[name]

    def by_index(self, index):
        return next(v for v in self.links.values() if v["index"] == index)

    def ipr(self):
        self.opened += 1
        return FakeIPRoute(self)

    def ops(self, *names):
        return [c for c in self.calls if c[0] in names]


class FakeIPRoute:
    def __init__(self, kernel: FakeKernel):
        self.k = kernel

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def _msg(self, name):
        link = self.k.links[name]
        data = Msg({VX[k]: v for k, v in link["vxlan"].items()})
        info = Msg({"IFLA_INFO_KIND": link["kind"],
                    "IFLA_INFO_DATA": data if link["kind"] == "vxlan" else None})
        return Msg({"IFLA_IFNAME": name, "IFLA_LINKINFO": info, "IFLA_IFALIAS": link["alias"],
                    "IFLA_MASTER": link["master"], "IFLA_MTU": link["mtu"]},
                   index=link["index"], flags=1 if link["up"] else 0)   # IFF_UP

    def link_lookup(self, ifname):
        return [self.k.links[ifname]["index"]] if ifname in self.k.links else []

    def get_links(self):
        self.k.calls.append(("link-dump",))
        return [self._msg(n) for n in self.k.links]

    def get_neighbours(self, family):
        assert family == socket.AF_BRIDGE
        self.k.calls.append(("fdb-dump",))
        return [Msg({"NDA_LLADDR": mac, "NDA_DST": dst}, ifindex=i)
                for i, mac, dst in sorted(self.k.fdb)]

    def fdb(self, command, ifindex, lladdr, dst):
        self.k.calls.append(("fdb-" + command, ifindex, dst))
        if self.k.fail_fdb:
            raise NetlinkError(self.k.fail_fdb)
        if command == "append":
            self.k.fdb.add((ifindex, lladdr, dst))
        else:
            self.k.fdb.discard((ifindex, lladdr, dst))

    def link(self, command, **kw):
        k = self.k
        if command == "get":
            if kw["ifname"] not in k.links:
                raise NetlinkError(errno.ENODEV)
            return [self._msg(kw["ifname"])]
        if command == "add":
            k.calls.append(("add", kw["ifname"]))
            link = k.add_link(kw.pop("ifname"), kw.pop("kind"),
                              **{x: kw.pop(x) for x in list(kw) if x.startswith("vxlan_")})
            link["mtu"], link["up"] = kw.pop("mtu"), False
            assert not kw, kw
            if "vxlan_group" in link["vxlan"]:       # the kernel's entry for the group
                k.fdb.add((link["index"], ALL_ZEROS, link["vxlan"]["vxlan_group"]))
            return []
        name = next(n for n, v in k.links.items() if v["index"] == kw["index"])
        link = k.links[name]
        if command == "del":
            k.calls.append(("del", name))
            del k.links[name]
            k.fdb = {e for e in k.fdb if e[0] != link["index"]}
            return []
        assert command == "set", command
        kw.pop("index")
        if kw.pop("kind", None) is not None:
            k.calls.append(("change", name, dict(kw), "up" if link["up"] else "down"))
            old_group = link["vxlan"].get("vxlan_group")
            link["vxlan"].update(kw)
            if old_group is not None:
                k.fdb.discard((link["index"], ALL_ZEROS, old_group))
                k.fdb.add((link["index"], ALL_ZEROS, link["vxlan"]["vxlan_group"]))
            return []
        for key, value in kw.items():
            if key == "state":
                k.calls.append((value, name))
                link["up"] = value == "up"
            elif key == "ifalias":
                k.calls.append(("alias", name, value))
                link["alias"] = value
            else:
                link[key] = value
        return []


def _dump_links(k: FakeKernel, kind=None):
    """The kernel's filtered link dump (device.link_states), from the fake links."""
    k.calls.append(("link-dump",))
    return [LinkEvent(True, 0, link["index"], link["master"] or 0, name,
                      1 if link["up"] else 0, link["alias"], link["kind"],
                      link["vxlan"].get("vxlan_group"))
            for name, link in k.links.items() if kind is None or link["kind"] == kind]


@pytest.fixture
def kernel(monkeypatch):
    k = FakeKernel()
    monkeypatch.setattr(vxlan_mod, "IPRoute", k.ipr)
    monkeypatch.setattr(vxlan_mod, "dump_links",
                        lambda kind=None, sock=None: _dump_links(k, kind))
    return k


def spec(**changes) -> VxlanSpec:
    base = dict(ifname="vnif009c", vni=0x9c, group=GROUP, port=4789, ttl=0, device="eth0",
                mtu=1450, alias=ALIAS)
    return VxlanSpec(**{**base, **changes})


def ours(kernel, **vxlan):
    """A device an earlier run of the engine left, on its bridge, with a peer's entry."""
    settings = dict(vxlan_id=0x9c, vxlan_port=4789, vxlan_group=GROUP, vxlan_ttl=0,
                    vxlan_link=kernel.links["eth0"]["index"], vxlan_learning=1)
    link = kernel.add_link("vnif009c", "vxlan", **{**settings, **vxlan})
    link["alias"], link["master"] = ALIAS, kernel.links["vnet9c"]["index"]
    kernel.fdb |= {(link["index"], ALL_ZEROS, link["vxlan"]["vxlan_group"]),
                   (link["index"], ALL_ZEROS, "198.51.100.3")}
    return link


def flood(kernel, name="vnif009c"):
    index = kernel.links[name]["index"]
    return sorted(dst for i, _, dst in kernel.fdb if i == index)


# -- a group change is made while the device is down -----------------------

def test_group_change_is_made_down_then_up_keeping_bridge_and_flood_entries(kernel):
    link = ours(kernel)
    kernel.calls.clear()
    set_group("vnif009c", ALIAS, "224.10.0.7", 0)
    assert kernel.calls == [("down", "vnif009c"),
                            ("change", "vnif009c", {"vxlan_group": "224.10.0.7"}, "down"),
                            ("up", "vnif009c")]
    assert link["up"] and link["master"] == kernel.links["vnet9c"]["index"]
    assert flood(kernel) == ["198.51.100.3", "224.10.0.7"]


def test_ttl_alone_is_changed_live_and_nothing_is_done_when_nothing_changes(kernel):
    ours(kernel)
    kernel.calls.clear()
    set_group("vnif009c", ALIAS, GROUP, 4)
    assert kernel.calls == [("change", "vnif009c", {"vxlan_ttl": 4}, "up")]
    kernel.calls.clear()
    set_group("vnif009c", ALIAS, GROUP, 4)
    assert kernel.calls == []


def test_group_change_brings_the_device_up_again_when_the_change_fails(kernel, monkeypatch):
    link = ours(kernel)
    real = FakeIPRoute.link

    def refuse_change(self, command, **kw):
        if kw.get("kind") == "vxlan":
            raise NetlinkError(errno.EINVAL)
        return real(self, command, **kw)

    monkeypatch.setattr(FakeIPRoute, "link", refuse_change)
    with pytest.raises(VxlanError, match="cannot move VXLAN device vnif009c"):
        set_group("vnif009c", ALIAS, "224.10.0.7", 0)
    assert link["up"]


@pytest.mark.parametrize("change", [{"group": "224.10.0.7"}, {"device": "eth1"}])
def test_take_over_with_another_group_or_device_rejoins(kernel, change):
    """A restart with another --mcaddr or --device takes over the device down, then up."""
    kernel.add_link("eth1", "veth")
    link = ours(kernel)
    kernel.calls.clear()
    assert open_vxlan(spec(**change)) is False
    changed = [c for c in kernel.calls if c[0] == "change"]
    assert len(changed) == 1 and changed[0][3] == "down", kernel.calls
    assert kernel.calls[0] == ("down", "vnif009c")
    assert link["up"] and link["master"] == kernel.links["vnet9c"]["index"]
    assert "198.51.100.3" in flood(kernel) and not kernel.ops("add", "del")


# -- only a device tagged as ours is taken over ----------------------------

def test_created_devices_are_tagged(kernel):
    assert open_vxlan(spec()) is True
    link = kernel.links["vnif009c"]
    assert link["alias"] == "xend-vnet vnet 0000:0000:0000:0000:0000:0000:0000:009c"
    assert link["up"] and link["mtu"] == 1450
    assert link["vxlan"]["vxlan_id"] == 0x9c and link["vxlan"]["vxlan_port"] == 4789


@pytest.mark.parametrize("alias", [None, "my own tunnel",
                                   device_alias(VnetId.parse("9d"))])
def test_a_vxlan_device_that_is_not_ours_is_refused_and_left_alone(kernel, alias):
    link = ours(kernel, vxlan_group="239.9.9.9")
    link["alias"] = alias
    kernel.calls.clear()
    with pytest.raises(VxlanError) as info:
        open_vxlan(spec())
    assert info.value.errno == errno.EEXIST
    assert "is a VXLAN device that is not ours" in info.value.message
    assert not [c for c in kernel.calls if c[0] not in ("link-dump",)]
    assert link["vxlan"]["vxlan_group"] == "239.9.9.9"
    with pytest.raises(VxlanError, match="not ours"):
        set_group("vnif009c", ALIAS, GROUP, 0)
    assert delete_vxlan("vnif009c", ALIAS) is False and "vnif009c" in kernel.links


def test_other_kinds_are_refused(kernel):
    kernel.add_link("vnif009c", "veth")
    with pytest.raises(VxlanError, match="is a veth, not a VXLAN device"):
        open_vxlan(spec())


@pytest.mark.parametrize("change", [{"port": 4790}, {"vni": 0x9d}])
def test_ours_with_another_port_or_vni_is_made_again_on_its_bridge(kernel, change):
    old = ours(kernel)
    assert open_vxlan(spec(**change)) is True
    assert [c[0] for c in kernel.ops("del", "add")] == ["del", "add"]
    new = kernel.links["vnif009c"]
    assert new["index"] != old["index"] and new["alias"] == ALIAS and new["up"]
    assert new["master"] == kernel.links["vnet9c"]["index"]
    assert (new["vxlan"]["vxlan_port"], new["vxlan"]["vxlan_id"]) == (
        change.get("port", 4789), change.get("vni", 0x9c))


def test_delete_removes_only_ours(kernel):
    ours(kernel)
    assert delete_vxlan("vnif009c", device_alias(VnetId.parse("9d"))) is False
    assert delete_vxlan("vnif009c", ALIAS) is True and "vnif009c" not in kernel.links
    assert delete_vxlan("vnif009c", ALIAS) is False


# -- one link dump and one FDB dump for every device -----------------------

def test_sync_floods_dumps_once_for_all_devices(kernel):
    for n in ("a", "b", "c"):
        kernel.add_link(f"vx{n}", "vxlan", vxlan_group=GROUP)["alias"] = f"alias {n}"
    kernel.fdb.add((kernel.links["vxb"]["index"], ALL_ZEROS, "192.0.2.9"))
    changes, failed = sync_floods({f"vx{n}": f"alias {n}" for n in ("a", "b", "c", "gone")},
                                  ["198.51.100.3"])
    assert kernel.opened == 1 and len(kernel.ops("link-dump")) == 1
    assert len(kernel.ops("fdb-dump")) == 1
    assert changes == {"vxa": (["198.51.100.3"], []), "vxb": (["198.51.100.3"], ["192.0.2.9"]),
                       "vxc": (["198.51.100.3"], [])}
    assert [e.errno for e in failed] == [errno.ENODEV]
    assert flood(kernel, "vxb") == ["198.51.100.3"]
    assert sync_floods({}, []) == ({}, []) and kernel.opened == 1


# -- the engine's VXLAN vnets (datapath/vxlan/vnets.py) and the engine -------

class Host:
    """What VxlanVnets reads of the engine (as the engine fixture has it), for a
    test to change: group, multicast TTL and peers."""

    def __init__(self):
        self.group = GROUP
        self.mcast_ttl = 1
        self.peers: list[str] = []
        self.vnets = VxlanVnets(4789, 1500, group=lambda: self.group,
                                mcast_ttl=lambda: self.mcast_ttl, device=lambda: "eth0",
                                underlay_mtu=lambda: 1500, peers=lambda: list(self.peers))


@pytest.fixture
def host(kernel):
    return Host()


def create(vnets, kernel, *ids):
    for n in ids:
        vid = VnetId.parse(n)
        vnets.attach(vid, vid.default_vnetif)
    kernel.calls.clear()
    kernel.opened = 0


@pytest.fixture
def engine(kernel, tmp_path):
    opts = daemon.parse_args(["--epoch-file", str(tmp_path / "epoch"), "--no-default-vnets",
                              "-f", str(tmp_path / "vnetd.conf")])
    d = Engine(opts)
    d.userspace.udp = SimpleNamespace(mcast_ttl=1)
    d.addresses.device = "eth0"
    return d


def request(d, text):
    return d.handle_request(text)


def add_vnets(d, kernel, *ids):
    for n in ids:
        assert request(d, f"(vnet.add (id {n}) (data-path vxlan))") == ""
    kernel.calls.clear()
    kernel.opened = 0


def test_a_flood_sync_failure_keeps_the_peer_and_is_retried(engine, kernel, caplog):
    add_vnets(engine, kernel, "9c")
    kernel.fail_fdb = errno.ENOBUFS
    with caplog.at_level(logging.WARNING, "vnetd"):
        assert request(engine, "(peer.add (addr 198.51.100.3))") == ""
    assert engine.core.peers.get("198.51.100.3") is not None
    vnets = engine.vxlan_vnets
    assert vnets.flood_sync_pending
    assert "retried at each refresh" in caplog.text and "No buffer space" in caplog.text
    vnets.refresh()                                  # the refresh: still failing
    assert vnets.flood_sync_pending and flood(kernel) == [GROUP]
    kernel.fail_fdb = None
    vnets.refresh()
    assert not vnets.flood_sync_pending and flood(kernel) == sorted([GROUP, "198.51.100.3"])
    kernel.fail_fdb = errno.ENOBUFS
    assert request(engine, "(peer.del (addr 198.51.100.3))") == ""
    assert engine.core.peers.get("198.51.100.3") is None and vnets.flood_sync_pending
    kernel.fail_fdb = None
    vnets.refresh()
    assert flood(kernel) == [GROUP] and not vnets.flood_sync_pending


def test_a_file_peer_is_tracked_even_when_the_flood_sync_fails(engine, kernel):
    with open(engine.opts.file, "w") as f:
        f.write("(vnet.add (id 9c) (data-path vxlan))\n(peer.add (addr 198.51.100.3))\n")
    kernel.fail_fdb = errno.ENOBUFS
    engine.load_file(initial=True)
    assert engine.host.vxlan.get(V9C) is not None
    assert engine.startup_file.peers == {"198.51.100.3"} and engine.vxlan_vnets.flood_sync_pending
    kernel.fail_fdb = None
    with open(engine.opts.file, "w") as f:
        f.write("(vnet.add (id 9c) (data-path vxlan))\n")
    engine.load_file(initial=False)
    assert engine.startup_file.peers == set() and engine.core.peers.get("198.51.100.3") is None


def test_refresh_costs_one_netlink_socket_and_one_link_dump(host, kernel):
    vnets = host.vnets
    create(vnets, kernel, "9c", "9d", "9e")
    vnets.refresh()
    assert kernel.opened == 1 and kernel.ops("link-dump", "fdb-dump") == [("link-dump",)]
    # A device deleted from outside: made again, then one FDB dump for the flood entries.
    host.peers.append("198.51.100.3")
    vnets.sync_floods()                              # what peer.add does
    del kernel.links["vnif009d"]
    kernel.calls.clear()
    kernel.opened = 0
    vnets.refresh()
    assert kernel.opened == 1
    assert len(kernel.ops("link-dump")) == 1 and len(kernel.ops("fdb-dump")) == 1
    assert flood(kernel, "vnif009d") == sorted([GROUP, "198.51.100.3"])
    assert kernel.links["vnif009d"]["alias"] == device_alias(VnetId.parse("9d"))
    assert not vnets.flood_sync_pending


def test_mcast_ttl_0_refuses_vxlan_vnets(engine, kernel):
    engine.userspace.udp.mcast_ttl = 0
    form = sxp.parse_one(request(engine, "(vnet.add (id 9c) (data-path vxlan))"))
    assert form[0] == "err" and sxp.child_value(form, "errno") == str(errno.EINVAL)
    message = sxp.child_value(form, "message")
    assert "multicast TTL is 0" in message and "--mcast-ttl 1" in message
    assert "vnif009c" not in kernel.links and not len(engine.host.vxlan)


def test_vnet_del_keeps_a_device_that_is_not_ours(engine, kernel):
    add_vnets(engine, kernel, "9c")
    kernel.links["vnif009c"]["alias"] = "my own tunnel"    # replaced behind our back
    assert request(engine, "(vnet.del (id 9c))") == ""
    assert "vnif009c" in kernel.links and engine.host.vxlan.get(V9C) is None


# -- devices changed under the engine ---------------------------------------------

def foreign(kernel, kind="vxlan", alias="admin tunnel"):
    """Someone else's device under our name, with its own flood entries."""
    link = kernel.add_link("vnif009c", kind, **({"vxlan_id": 5, "vxlan_group": "239.9.9.9"}
                                               if kind == "vxlan" else {}))
    link["alias"] = alias
    kernel.fdb |= {(link["index"], ALL_ZEROS, "239.9.9.9"),
                   (link["index"], ALL_ZEROS, "192.0.2.77")}
    return link


@pytest.mark.parametrize("kind", ["vxlan", "veth"])
def test_sync_floods_changes_nothing_on_a_device_that_is_not_ours(kernel, kind):
    """Finding 1: a device of our name that is not ours keeps its flood entries."""
    foreign(kernel, kind)
    before = set(kernel.fdb)
    changes, failed = sync_floods({"vnif009c": ALIAS}, ["198.51.100.3"])
    assert changes == {} and [e.errno for e in failed] == [errno.EEXIST]
    assert "not ours" in failed[0].message
    assert kernel.fdb == before and not kernel.ops("fdb-append", "fdb-del")


def test_peer_add_and_refresh_leave_a_foreign_device_of_our_name_alone(engine, kernel, caplog):
    """Ours deleted, someone makes theirs."""
    add_vnets(engine, kernel, "9c")
    del kernel.links["vnif009c"]
    kernel.fdb = set()
    foreign(kernel)
    before = set(kernel.fdb)
    with caplog.at_level(logging.WARNING, "vnetd"):
        assert request(engine, "(peer.add (addr 198.51.100.3))") == ""
        assert kernel.fdb == before and not kernel.ops("fdb-append", "fdb-del")
        assert engine.vxlan_vnets.flood_sync_pending
        caplog.clear()
        for _ in range(3):
            engine.vxlan_vnets.refresh()
    assert kernel.fdb == before and not kernel.ops("fdb-append", "fdb-del", "add", "del")
    held = [r for r in caplog.records if "held by a device that is not ours" in r.getMessage()]
    assert len(held) == 1 and "vnif009c" in held[0].getMessage()
    # Once the name is free again, the device is made again and synced.
    del kernel.links["vnif009c"]
    engine.vxlan_vnets.refresh()
    assert kernel.links["vnif009c"]["alias"] == ALIAS
    assert flood(kernel) == sorted([GROUP, "198.51.100.3"])
    assert not engine.vxlan_vnets.flood_sync_pending


def test_sync_floods_spares_the_devices_own_group_entry(kernel):
    """Finding 2: the entry of the group the device is on is the kernel's, whatever
    the engine's group is."""
    ours(kernel, vxlan_group="224.10.0.7")
    changes, failed = sync_floods({"vnif009c": ALIAS}, ["198.51.100.3"])
    assert failed == [] and changes == {"vnif009c": ([], [])}
    assert flood(kernel) == ["198.51.100.3", "224.10.0.7"]


def refuse_group_changes(monkeypatch, code=errno.EBUSY, up_code=None):
    real = FakeIPRoute.link

    def refuse(self, command, **kw):
        if kw.get("kind") == "vxlan":
            raise NetlinkError(code)
        if up_code and kw.get("state") == "up":
            raise NetlinkError(up_code)
        return real(self, command, **kw)

    monkeypatch.setattr(FakeIPRoute, "link", refuse)


def test_a_failed_group_move_is_retried_at_refresh(engine, kernel, monkeypatch):
    """The core moved, the device did not."""
    engine.userspace.udp = SimpleNamespace(mcast_ttl=1, joined=True, join_error=None,
                                 set_group=lambda addr, ttl: True)
    add_vnets(engine, kernel, "9c")
    with monkeypatch.context() as m:
        refuse_group_changes(m)
        form = sxp.parse_one(request(engine, "(varp.mcaddr (addr 224.10.0.7))"))
    assert form[0] == "err" and "retried at each refresh" in sxp.child_value(form, "message")
    link = kernel.links["vnif009c"]
    assert link["vxlan"]["vxlan_group"] == GROUP and link["up"]
    assert request(engine, "(peer.add (addr 198.51.100.3))") == ""
    assert flood(kernel) == sorted([GROUP, "198.51.100.3"])     # still floods to its group
    engine.vxlan_vnets.refresh()
    assert link["vxlan"]["vxlan_group"] == "224.10.0.7"
    assert flood(kernel) == ["198.51.100.3", "224.10.0.7"]
    assert not engine.vxlan_vnets.group_move_pending
    kernel.calls.clear()
    engine.vxlan_vnets.refresh()
    assert not kernel.ops("change", "down", "up")


def test_group_moves_left_pending_are_retried_for_the_remaining_vnets(host, kernel,
                                                                        monkeypatch):
    """The same, on VxlanVnets alone: every device the kernel refused stays pending
    (a deleted vnet's is forgotten), and the refresh moves it to the current group."""
    vnets = host.vnets
    create(vnets, kernel, "9c", "9d")
    host.group = "224.10.0.7"                        # the engine moved
    with monkeypatch.context() as m:
        refuse_group_changes(m)
        with pytest.raises(DataPathError) as info:
            vnets.move_group("224.10.0.7")
    assert info.value.errno == errno.EIO
    assert info.value.message.startswith("the engine moved to 224.10.0.7, but ")
    assert vnets.group_move_pending == {V9C, VnetId.parse("9d")}
    vnets.detach(VnetId.parse("9d"))
    vnets.refresh()
    assert kernel.links["vnif009c"]["vxlan"]["vxlan_group"] == "224.10.0.7"
    assert not vnets.group_move_pending and "vnif009d" not in kernel.links


def test_refresh_sets_a_device_of_ours_up_again(host, kernel, caplog):
    vnets = host.vnets
    create(vnets, kernel, "9c")
    kernel.links["vnif009c"]["up"] = False
    with caplog.at_level(logging.WARNING, "vnetd"):
        vnets.refresh()
    assert kernel.links["vnif009c"]["up"] and "vnif009c" in caplog.text and "down" in caplog.text
    foreign_down = kernel.links["vnif009c"]
    foreign_down["alias"], foreign_down["up"] = "admin tunnel", False
    vnets.refresh()
    assert not foreign_down["up"]                    # not ours: left as it is


def test_a_failure_to_bring_the_device_up_again_keeps_the_original_error(kernel, monkeypatch,
                                                                         caplog):
    ours(kernel)
    refuse_group_changes(monkeypatch, errno.EBUSY, up_code=errno.ENETDOWN)
    with caplog.at_level(logging.WARNING, "vnetd"), pytest.raises(VxlanError) as info:
        set_group("vnif009c", ALIAS, "224.10.0.7", 0)
    assert os.strerror(errno.EBUSY) in info.value.message
    assert "up again" in caplog.text and os.strerror(errno.ENETDOWN) in caplog.text


def test_an_ipv6_flood_entry_is_left_alone(kernel):
    """Finding 3: the kernel accepts an IPv6 NDA_DST; it is not one of ours."""
    link = ours(kernel)
    kernel.fdb.add((link["index"], ALL_ZEROS, "2001:db8::7"))
    changes, failed = sync_floods({"vnif009c": ALIAS}, ["192.0.2.9"])
    assert failed == [] and changes == {"vnif009c": (["192.0.2.9"], ["198.51.100.3"])}
    assert flood(kernel) == ["192.0.2.9", "2001:db8::7", GROUP]


def test_an_unexpected_failure_never_stops_the_refresh(engine, kernel, monkeypatch, caplog):
    """Finding 3: OSError (EMFILE) from IPRoute() is logged, rate-limited."""
    add_vnets(engine, kernel, "9c")
    engine.userspace.udp = SimpleNamespace(mcast_ttl=1, joined=True, mcaddr=GROUP,
                                 check_membership=lambda: True)
    monkeypatch.setattr(engine, "_refresh_addresses", lambda: None)

    def emfile():
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(vxlan_mod, "IPRoute", emfile)
    with caplog.at_level(logging.WARNING, "vnetd"):
        engine._refresh(100.0)
        engine._refresh(101.0)
    assert engine._next_refresh > 100.0
    failures = [r for r in caplog.records if "refresh" in r.getMessage()]
    assert len(failures) == 1 and "VXLAN" in failures[0].getMessage()


def test_a_failed_remake_says_the_old_device_is_gone(kernel, monkeypatch, caplog):
    """Finding 4: ours with another port is deleted before the new one is made."""
    ours(kernel)
    real = FakeIPRoute.link

    def refuse_add(self, command, **kw):
        if command == "add":
            raise NetlinkError(errno.EBUSY)
        return real(self, command, **kw)

    monkeypatch.setattr(FakeIPRoute, "link", refuse_add)
    with caplog.at_level(logging.WARNING, "vnetd"), pytest.raises(VxlanError) as info:
        open_vxlan(spec(port=4790))
    message = info.value.message
    assert "vnet is refused" in message and "was removed" in message and "bridge" in message
    assert "vnif009c" not in kernel.links and "was removed" in caplog.text


def test_an_untagged_device_names_the_manual_step(kernel):
    """Finding 5: a device left by an engine stopped before it set the alias."""
    ours(kernel)["alias"] = None
    with pytest.raises(VxlanError, match=r"ip link delete vnif009c"):
        open_vxlan(spec())
