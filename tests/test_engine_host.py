"""The EngineHost of the commands (control/host.py) over fake data paths:
data-path refusals become command errors, a failed vnet.add leaves nothing,
the status keeps its children; and the drop log (control/drop_log.py)."""

from __future__ import annotations

import errno
import logging
from types import SimpleNamespace

import pytest

from xend_vnet import sxp
from xend_vnet.kernel_shim.control import commands
from xend_vnet.kernel_shim.control.commands import CommandError
from xend_vnet.kernel_shim.control.drop_log import DropLog, drop_counts
from xend_vnet.kernel_shim.control.host import DataPathHost
from xend_vnet.kernel_shim.core.engine import EngineCore
from xend_vnet.kernel_shim.datapath.interface import DataPathError, PathStatus
from xend_vnet.kernel_shim.datapath.kernel.path import KernelPath
from xend_vnet.kernel_shim.datapath.loop import EventLoop
from xend_vnet.kernel_shim.datapath.vxlan.table import VxlanTable
from xend_vnet.vnet_id import VnetId

from fake_shim import FakeKernel

V10 = VnetId.parse("10")


class FakePath:
    """Records calls; refuses the ones in ``refuse`` with a DataPathError."""

    def __init__(self, name: str):
        self.name = name
        self.calls: list[tuple] = []
        self.refuse: dict[str, DataPathError] = {}
        self.attached: set[VnetId] = set()
        self.table = VxlanTable(4789)
        self.udp = SimpleNamespace(joined=True, mcaddr="224.10.0.1", port=1798,
                                   mcast_ttl=1, rcvbuf=1, sndbuf=2)
        self.raw = self.etherip = None
        self.tap_offload = True

    def _call(self, what: str, *args) -> None:
        self.calls.append((what, *args))
        if what in self.refuse:
            raise self.refuse[what]

    def attach(self, vid, ifname):
        self._call("attach", vid, ifname)
        self.attached.add(vid)

    def undo_attach(self, vid):
        self._call("undo_attach", vid)
        self.attached.discard(vid)

    def detach(self, vid):
        self._call("detach", vid)
        self.attached.discard(vid)

    def status(self, vid):
        return PathStatus(self.name, "fake") if vid in self.attached else None

    def set_group(self, addr, ttl):
        self._call("set_group", addr, ttl)

    def move_group(self, addr):
        self._call("move_group", addr)

    def sync_floods(self):
        self._call("sync_floods")

    def counters(self):
        return {"coalesced": 3}


@pytest.fixture
def host():
    core = EngineCore()
    addresses = SimpleNamespace(device="eth0")
    userspace = FakePath("vnetd")
    loop = EventLoop()
    kernel = KernelPath(core, loop, userspace, FakeKernel().opener,
                        off_reason="--no-kernel-path")
    yield DataPathHost(core, userspace, FakePath("vxlan"), kernel, addresses,
                       version="vnetd test", control="/c", mtu=1500, varp_ttl=60.0)
    loop.close()


def test_a_tap_refused_is_the_commands_error_as_it_is(host):
    host.userspace.refuse["attach"] = DataPathError(errno.EBUSY, "TAP x is already attached")
    reply = commands.execute(host, "(vnet.add (id 10))")
    assert sxp.parse_one(reply) == ["err", ["errno", "16"],
                                    ["message", "TAP x is already attached"]]
    assert not host.core.has_vnet(V10)


def test_a_vnet_the_core_refuses_leaves_no_tap(host, monkeypatch):
    def refuse(*args):
        raise ValueError("the SPI is in use")

    monkeypatch.setattr(host.core, "add_vnet", refuse)
    with pytest.raises(CommandError) as info:
        host.create_vnet(V10, "vnif0010", "none", None)
    assert info.value.errno == errno.EINVAL and info.value.message == "vnet.add: the SPI is in use"
    assert [c[0] for c in host.userspace.calls] == ["attach", "undo_attach"]


def test_vxlan_refusals_are_named_after_the_command(host):
    vx = host.vxlan_vnets
    vx.refuse["attach"] = DataPathError(errno.EINVAL, "the underlay MTU 100 leaves no room")
    with pytest.raises(CommandError) as info:
        host.create_vxlan_vnet(V10, "vnif0010")
    assert info.value.message == "vnet.add: the underlay MTU 100 leaves no room"
    del vx.refuse["attach"]
    host.create_vxlan_vnet(V10, "vnif0010")
    vx.refuse["detach"] = DataPathError(errno.EPERM, "cannot delete vnif0010")
    with pytest.raises(CommandError) as info:
        host.delete_vnet(V10)
    assert (info.value.errno, info.value.message) == (errno.EPERM,
                                                       "vnet.del: cannot delete vnif0010")


def test_delete_goes_to_the_path_that_carries_the_vnet(host):
    host.create_vnet(V10, "vnif0010", "none", None)
    host.delete_vnet(V10)
    assert not host.core.has_vnet(V10)
    assert host.userspace.calls[-1] == ("detach", V10) and host.vxlan_vnets.calls == []


def test_set_mcaddr_moves_the_socket_the_core_and_the_vxlan_devices(host):
    host.vxlan_vnets.refuse["move_group"] = DataPathError(errno.EIO, "the engine moved to "
                                                          "224.10.0.7, but x")
    reply = commands.execute(host, "(varp.mcaddr (addr 224.10.0.7))")
    assert sxp.child_value(sxp.parse_one(reply), "message") == \
        "varp.mcaddr: the engine moved to 224.10.0.7, but x"
    assert host.core.mcaddr == "224.10.0.7"
    host.userspace.refuse["set_group"] = DataPathError(errno.EINVAL, "invalid group")
    with pytest.raises(CommandError):
        host.set_mcaddr("224.10.0.8", None)
    assert host.core.mcaddr == "224.10.0.7"


def test_status_children_in_order(host):
    host.core.counters.io_dropped.update(tap_lost=1, frame_too_big=2)
    status = host.status()
    assert [c[0] for c in status] == [
        "pid", "version", "started", "uptime", "group-joined", "mcaddr", "port", "address",
        "vnets", "vxlan-vnets", "vxlan-port", "vxlan-control-plane", "peers", "remulticast",
        "etherip-receive",
        "offload", "tap-offload", "coalesced", "fast-peers", "control", "mtu", "mcast-ttl",
        "varp-ttl", "rcvbuf", "sndbuf", "io-dropped", "kernel-path", "kernel-encapsulated",
        "kernel-decapsulated"]
    by = {c[0]: c[1:] for c in status}
    assert by["coalesced"] == ["3"] and by["varp-ttl"] == ["60"]
    assert by["io-dropped"] == [["frame_too_big", "2"], ["tap_lost", "1"]]


def test_evaluate_raises_what_execute_answers(host, monkeypatch):
    with pytest.raises(CommandError) as info:
        commands.evaluate(host, ["vnet.del", ["id", "77"]])
    assert info.value.errno == errno.ENOENT

    def broken(vid):
        raise OSError(errno.EMFILE, "Too many open files")

    host.create_vnet(V10, "vnif0010", "none", None)
    monkeypatch.setattr(host, "delete_vnet", broken)
    with pytest.raises(CommandError) as info:
        commands.evaluate(host, ["vnet.del", ["id", "10"]])
    assert (info.value.errno, info.value.message) == (errno.EMFILE,
                                                       "vnet.del: Too many open files")


def test_the_drop_log_says_what_grew(caplog):
    core = EngineCore()
    core.add_vnet(V10, "vnif0010")
    core.counters.rx_dropped["short"] = 2
    core.counters.io_dropped["tap_lost"] = 1
    core.vnet(V10).counters.dropped["no_tap"] = 1
    assert drop_counts(core) == {"rx short": 2, "io tap_lost": 1,
                                 f"vnet {V10.canonical} no_tap": 1}
    drops = DropLog()
    with caplog.at_level(logging.DEBUG, "vnetd"):
        drops.log_growth(core)
        caplog.clear()
        core.counters.io_dropped["tap_lost"] = 3
        drops.log_growth(core)
    assert [r.getMessage() for r in caplog.records] == [
        "dropped where=io reason=tap_lost count=2"]
