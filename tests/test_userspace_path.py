"""The user-space data path (datapath/userspace.py, taps.py) without root:
TAPs are pipes, the UDP socket records, the core is the real one."""

from __future__ import annotations

import errno
import logging
import os

import pytest

from xend_vnet.kernel_shim.core.engine import (
    DeliverFrame,
    DeliverOffload,
    EngineCore,
    SendRaw,
    SendUdp,
)
from xend_vnet.kernel_shim.datapath import taps as taps_mod
from xend_vnet.kernel_shim.datapath.interface import DataPath, DataPathError
from xend_vnet.kernel_shim.datapath.loop import EventLoop
from xend_vnet.kernel_shim.datapath.tap import TapDevice, TapError
from xend_vnet.kernel_shim.datapath.trains import TrainSender
from xend_vnet.kernel_shim.datapath.userspace import UserSpacePath
from xend_vnet.kernel_shim.datapath.vxlan.vnets import VxlanVnets
from xend_vnet.vnet_id import VnetId

V10 = VnetId.parse("10")
FRAME = bytes.fromhex("ffffffffffff" "aa0000000001" "0800") + bytes(50)


class RecordingSocket:
    port = 1798

    def __init__(self, error: int | None = None):
        self.error = error
        self.sent: list[tuple[bytes, tuple]] = []

    def send_to(self, payload: bytes, addr: tuple) -> None:
        if self.error:
            raise OSError(self.error, os.strerror(self.error))
        self.sent.append((payload, addr))

    def send_segments(self, iov, dst_ip, size) -> None:
        raise AssertionError("no trains here")


class PipeTaps:
    """open_tap and delete_tap on pipes: the engine reads the read end, a
    frame written to the TAP comes out of the other pipe."""

    def __init__(self):
        self.pipes: dict[str, tuple[int, int]] = {}
        self.deleted: list[str] = []
        self.reattach = False      # open_tap finds the device there (not created)

    def open_tap(self, ifname: str, mtu: int, offload: bool) -> TapDevice:
        r_in, w_in = os.pipe()      # frames the "guest" sends: the engine reads r_in
        os.set_blocking(r_in, False)
        self.pipes[ifname] = (r_in, w_in)
        return TapDevice(ifname, r_in, 1, created=not self.reattach)

    def delete_tap(self, tap: TapDevice) -> None:
        self.deleted.append(tap.ifname)
        tap.close()


@pytest.fixture
def world(monkeypatch):
    fake = PipeTaps()
    monkeypatch.setattr(taps_mod, "open_tap", fake.open_tap)
    monkeypatch.setattr(taps_mod, "delete_tap", fake.delete_tap)
    loop = EventLoop()
    core = EngineCore()
    path = UserSpacePath(core, loop, port=1798, mcast_ttl=1, mtu=1500, tap_offload=False)
    path.udp = RecordingSocket()
    path.trains = TrainSender(path.udp, path.dropped)
    yield path, fake
    for r, w in fake.pipes.values():
        for fd in (r, w):
            try:
                os.close(fd)
            except OSError:
                pass
    loop.close()


def test_both_data_paths_have_the_interface():
    names = [n for n in DataPath.__dict__ if not n.startswith("_")]
    assert {"attach", "detach", "table_changed", "counters", "status", "close"} <= set(names)
    for cls in (UserSpacePath, VxlanVnets):
        assert all(hasattr(cls, n) for n in names), cls
    assert (UserSpacePath.name, VxlanVnets.name) == ("vnetd", "vxlan")


def test_the_io_drops_are_the_engine_counters(world):
    path, _ = world
    path.udp.error = errno.ENOBUFS
    path.perform([SendUdp("192.0.2.2", b"x"), DeliverFrame(V10, FRAME),
                  DeliverFrame(V10, bytes(2000)), SendRaw("192.0.2.2", b"p"),
                  DeliverOffload(V10, b"p")])
    assert path.core.counters.io_dropped == {"udp_send_enobufs": 1, "tap_missing": 2,
                                             "frame_too_big": 1, "raw_unavailable": 1}


def test_a_frame_for_an_attached_vnet_is_written_to_its_tap(world, monkeypatch):
    path, fake = world
    path.attach(V10, "vt10")
    written = []
    monkeypatch.setattr(os, "write", lambda fd, data: written.append((fd, data)))
    path.perform([DeliverFrame(V10, FRAME), DeliverOffload(V10, b"p")])
    assert written == [(path.taps.by_vid[V10].fd, FRAME)]
    assert path.core.counters.io_dropped == {"offload_on_plain_tap": 1}
    assert path.status(V10).path == "vnetd" and "vt10" in path.status(V10).reason


def test_frames_read_from_a_tap_go_to_the_core_and_out(world):
    path, fake = world
    path.core.add_vnet(V10, "vt10")
    path.attach(V10, "vt10")
    os.write(fake.pipes["vt10"][1], FRAME)
    path._on_tap(V10, path.taps.by_vid[V10], 1.0)
    assert path.udp.sent and path.udp.sent[0][1] == ("224.10.0.1", 1798)   # flooded
    assert path.core.vnet(V10).counters.tx_packets == 1


def test_a_failure_in_the_core_is_counted_and_logged_once_a_second(world, monkeypatch,
                                                                   caplog):
    path, fake = world
    path.attach(V10, "vt10")

    def boom(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr(path.core, "receive_tap", boom)
    for _ in range(2):
        os.write(fake.pipes["vt10"][1], FRAME)
        with caplog.at_level(logging.ERROR, "vnetd"):
            path._on_tap(V10, path.taps.by_vid[V10], 1.0)
    assert path.core.counters.io_dropped == {"engine_error": 2}
    assert len([r for r in caplog.records if "engine error" in r.getMessage()]) == 1


class GoneTap(TapDevice):
    def read_batch(self, limit: int) -> list[bytes]:
        raise TapError(errno.EBADFD, f"TAP {self.ifname} failed: gone")


def test_a_tap_deleted_from_outside_is_made_again_at_the_refresh(world, caplog):
    path, fake = world
    path.core.add_vnet(V10, "vt10")
    path.attach(V10, "vt10")
    tap = path.taps.by_vid[V10]
    gone = GoneTap("vt10", tap.fd, 1)
    with caplog.at_level(logging.INFO, "vnetd"):
        path._on_tap(V10, gone, 1.0)
        assert "was deleted from outside" in path.status(V10).reason
        assert path.core.counters.io_dropped == {"tap_lost": 1}
        path.taps.recreate_lost(path.core.has_vnet)
    assert V10 in path.taps.by_vid and not path.taps.lost
    assert "vt10 recreated" in caplog.text


def test_detach_deletes_the_tap_and_forgets_a_lost_one(world):
    path, fake = world
    path.attach(V10, "vt10")
    path.detach(V10)
    assert fake.deleted == ["vt10"] and path.status(V10) is None
    path.taps.lost[V10] = "vt10"
    path.detach(V10)
    assert not path.taps.lost and fake.deleted == ["vt10"]


def test_undo_attach_deletes_only_a_tap_it_made(world):
    path, fake = world
    path.attach(V10, "vt10")
    path.undo_attach(V10)
    assert fake.deleted == ["vt10"] and path.status(V10) is None
    fake.reattach = True
    path.attach(V10, "vt11")
    path.undo_attach(V10)
    assert fake.deleted == ["vt10"] and path.status(V10) is None


def test_a_tap_that_cannot_be_opened_is_a_data_path_error(world, monkeypatch):
    path, _ = world

    def refuse(*args):
        raise TapError(errno.EBUSY, "TAP vt10 is already attached by another vnet or process")

    monkeypatch.setattr(taps_mod, "open_tap", refuse)
    with pytest.raises(DataPathError) as info:
        path.attach(V10, "vt10")
    assert info.value.errno == errno.EBUSY and "vt10" in info.value.message


def test_set_group_refusal_is_a_data_path_error(world):
    path, _ = world

    class Refusing:
        def set_group(self, addr, ttl):
            raise OSError("illegal IP address string passed to inet_aton")

    path.udp = Refusing()
    with pytest.raises(DataPathError) as info:
        path.set_group("224.1.1.1", None)
    assert info.value.errno == errno.EINVAL
    assert info.value.message.startswith("invalid multicast group '224.1.1.1': ")
