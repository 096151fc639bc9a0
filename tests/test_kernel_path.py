"""The engine as the kernel path's control plane (datapath/kernel/path.py,
design.md 1.1), without root: the shim is tests/fake_shim.py, TAPs are
pipes, the UDP socket records, the core, the user-space path, the host
and the command layer are the real ones."""

from __future__ import annotations

import errno
import os
from types import SimpleNamespace

import pytest
from core_helpers import data, frame
from fake_shim import FakeKernel, LocalSeen, RemoteSeen, ShimConfig
from security_helpers import write_key

from xend_vnet import sxp
from xend_vnet.kernel_shim.control import commands
from xend_vnet.kernel_shim.control.host import DataPathHost
from xend_vnet.kernel_shim.core.engine import CoreOptions, EngineCore
from xend_vnet.kernel_shim.datapath import taps as taps_mod
from xend_vnet.kernel_shim.datapath.kernel.path import KernelPath
from xend_vnet.kernel_shim.datapath.loop import EventLoop
from xend_vnet.kernel_shim.datapath.tap import TapDevice, TapError
from xend_vnet.kernel_shim.datapath.trains import TrainSender
from xend_vnet.kernel_shim.datapath.userspace import UserSpacePath
from xend_vnet.kernel_shim.datapath.vxlan.vnets import VxlanVnets
from xend_vnet.kernel_shim.wire import segments
from xend_vnet.kernel_shim.wire.codec import encode_announce
from xend_vnet.vnet_id import VnetId

ME = "192.0.2.1"
HOST_B = "192.0.2.2"
HOST_C = "192.0.2.3"
GROUP = "224.10.0.1"
V2, V5, V97 = (VnetId.parse(n) for n in ("2", "5", "97"))
MAC_A = bytes.fromhex("aa0000000001")      # a domain of ours
MAC_B = bytes.fromhex("aa0000000002")      # on HOST_B
MAC_C = bytes.fromhex("aa0000000003")
BCAST = b"\xff" * 6
CONFIG = ShimConfig(underlay="eth0", local_addr=ME, port=1798, mtu=1500)
KERNEL_TRAILER = segments.trailer(segments.CAP_KERNEL)


class RecordingSocket:
    """The engine's UDP socket as the status reads it; sends recorded."""

    joined, mcaddr, port, mcast_ttl, rcvbuf, sndbuf = True, GROUP, 1798, 1, 1, 1

    def __init__(self):
        self.sent: list[tuple[bytes, tuple]] = []

    def send_to(self, payload: bytes, addr: tuple) -> None:
        self.sent.append((payload, addr))


class PipeTaps:
    """open_tap and delete_tap on pipes, each TAP with its own ifindex, kept
    while the device lives (a persistent TAP)."""

    def __init__(self):
        self.pipes: dict[str, tuple[int, int]] = {}
        self.index: dict[str, int] = {}
        self.next_index = 10

    def open_tap(self, ifname: str, mtu: int, offload: bool) -> TapDevice:
        r, w = os.pipe()
        os.set_blocking(r, False)
        self.pipes[ifname] = (r, w)
        if ifname not in self.index:
            self.next_index += 1
            self.index[ifname] = self.next_index
        return TapDevice(ifname, r, self.index[ifname], created=True)

    def delete_tap(self, tap: TapDevice) -> None:
        """Gone for good: made again, it is another device."""
        self.index.pop(tap.ifname, None)
        tap.close()

    def close(self) -> None:
        for r, w in self.pipes.values():
            for fd in (r, w):
                try:
                    os.close(fd)
                except OSError:
                    pass


class World:
    """One engine's host over a fake kernel, driven like the event loop does."""

    def __init__(self, kernel: FakeKernel, *, off_reason: str | None = None, varp_ttl=60.0,
                 vnets=(V2,)):
        self.kernel = kernel
        self.loop = EventLoop()
        self.core = core = EngineCore(CoreOptions(varp_ttl=varp_ttl, vif_ttl=varp_ttl))
        core.own_addresses = {ME}
        core.self_address = ME
        self.userspace = path = UserSpacePath(core, self.loop, port=1798, mcast_ttl=1,
                                              mtu=1500, tap_offload=False)
        path.udp = self.socket = RecordingSocket()
        path.trains = TrainSender(path.udp, path.dropped)
        self.path = KernelPath(core, self.loop, path, kernel.opener, off_reason=off_reason,
                               clock=lambda: self.now)
        self.loop.add_timer(core.next_timer,
                            lambda now: path.perform(core.handle_timer(now)))
        self.loop.add_timer(self.path.pending, self.path.sync)
        vxlan = VxlanVnets(4789, 1500, group=lambda: GROUP, mcast_ttl=lambda: 1,
                           device=lambda: "eth0", underlay_mtu=lambda: 1500,
                           peers=lambda: [])
        self.host = DataPathHost(core, path, vxlan, self.path,
                                 SimpleNamespace(device="eth0"), version="test", control="/c",
                                 mtu=1500, varp_ttl=varp_ttl)
        self.now = 1.0
        self.path.configure(CONFIG, self.now)
        for vid in vnets:
            self.command(f"(vnet.add (id {vid.last_field:x}))")

    def command(self, text: str) -> str:
        reply = commands.execute(self.host, text)
        assert not reply.startswith("(err"), reply
        self.turn()
        return reply

    def turn(self, dt: float = 0.0) -> None:
        """One wakeup of the event loop: ready sources, then due timers."""
        self.now += dt
        for key, mask in self.loop.selector.select(0):
            key.data(mask, self.now)
        for deadline, fire in self.loop._timers:
            at = deadline()
            if at is not None and at <= self.now:
                fire(self.now)

    def udp(self, payload: bytes, src: str = HOST_B, dst: str = ME) -> None:
        self.userspace.perform(self.core.receive_udp(payload, src, dst, self.now))
        self.turn()

    def tap(self, vid: VnetId, fr: bytes) -> None:
        self.userspace.perform(self.core.receive_tap(vid, fr, self.now))
        self.turn()

    def events(self, *events) -> None:
        self.kernel.push(*events)
        self.turn()

    def sent(self) -> list[tuple[bytes, str]]:
        out = [(p, a[0]) for p, a in self.socket.sent]
        self.socket.sent.clear()
        return out

    def status(self) -> dict:
        form = sxp.parse_one(self.command("(engine.status)"))
        out = {"vnet-path": {}}
        for c in form[1:]:
            if c[0] == "vnet-path":
                out["vnet-path"][sxp.child_value(c, "vnetif")] = sxp.child_value(c, "path")
            elif len(c) == 2:
                out[c[0]] = c[1]
        return out

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def taps(monkeypatch):
    fake = PipeTaps()
    monkeypatch.setattr(taps_mod, "open_tap", fake.open_tap)
    monkeypatch.setattr(taps_mod, "delete_tap", fake.delete_tap)
    yield fake
    fake.close()


@pytest.fixture
def kernel():
    k = FakeKernel()
    yield k
    k.close()


@pytest.fixture
def world(taps, kernel):
    w = World(kernel)
    kernel.calls.clear()
    yield w
    w.close()


def b_data(mac: bytes = MAC_B) -> bytes:
    return data(V2, frame(MAC_A, mac))


# -- vnets on the kernel path ----------------------------------------------------------------

def test_a_clear_vnet_goes_on_the_kernel_path_a_secured_one_never(taps, kernel, tmp_path):
    key = write_key(str(tmp_path / "k"))
    w = World(kernel, vnets=())
    w.command("(vnet.add (id 2))")
    w.command(f"(vnet.add (id 97) (security auth) (key-file {key}))")
    tap2 = w.userspace.taps.by_vid[V2]
    assert kernel.attached == {V2: tap2.index}
    assert ("attach", V97, w.userspace.taps.by_vid[V97].index) not in kernel.calls
    assert w.core.vnet(V2).kernel and not w.core.vnet(V97).kernel
    st = w.status()
    assert st["kernel-path"] == "loaded"
    assert st["vnet-path"] == {"vnif0002": "kernel", "vnif0097": "user space: secured vnet"}
    # Events for the secured vnet (a forged or stale report) teach nothing.
    w.events(RemoteSeen(V97, MAC_B, HOST_B), LocalSeen(V97, MAC_A))
    assert w.core.counters.kernel_ignored == {"secured": 2}
    assert len(w.core.varp) == len(w.core.vifs) == 0
    w.command("(vnet.del (id 2))")
    assert kernel.attached == {} and ("detach", V2) in kernel.calls
    w.close()


def test_learned_remotes_and_local_domains_reach_the_maps(world, kernel):
    world.udp(b_data())
    assert kernel.remotes == {(V2, MAC_B): (HOST_B, False)}
    world.tap(V2, frame(BCAST, MAC_A))
    assert kernel.locals == {(V2, MAC_A)}
    # B's engine announces its kernel path: the entry says so.
    world.udp(encode_announce(V2.raw, MAC_C, HOST_B) + KERNEL_TRAILER, dst=GROUP)
    assert kernel.remotes == {(V2, MAC_B): (HOST_B, True), (V2, MAC_C): (HOST_B, True)}
    # It moves to C, a legacy host: moved and not a kernel peer there.
    world.udp(b_data(), src=HOST_C)
    assert kernel.remotes[(V2, MAC_B)] == (HOST_C, False)
    # B announces again without the bit (its kernel path is off now).
    world.udp(encode_announce(V2.raw, MAC_C, HOST_B), dst=GROUP)
    assert kernel.remotes[(V2, MAC_C)] == (HOST_B, False)
    world.command("(varp.flush)")
    assert kernel.remotes == {}
    world.command(f"(vif.del (vnet 2) (vmac {':'.join(f'{b:02x}' for b in MAC_A)}))")
    assert kernel.locals == set()


def test_what_the_kernel_sees_is_learned_and_announced(world, kernel):
    """A domain that arrives and sends only known unicast (carried by the
    kernel) is still noticed: the engine announces it (design.md 8)."""
    world.events(LocalSeen(V2, MAC_A))
    announces = [(p, a) for p, a in world.sent() if p[:4] == b"\x00\x01\x00\x02"]
    assert announces == [(encode_announce(V2.raw, MAC_A, ME) + KERNEL_TRAILER, GROUP)]
    assert kernel.locals == {(V2, MAC_A)}
    world.events(RemoteSeen(V2, MAC_B, HOST_B))
    assert kernel.remotes == {(V2, MAC_B): (HOST_B, False)}
    # B's kernel path is not known: it is asked, once.
    probe = encode_announce(V2.raw, MAC_A, ME) + segments.trailer(
        segments.CAP_KERNEL | segments.CAP_PROBE)
    assert world.sent() == [(probe, HOST_B)]
    world.events(RemoteSeen(V2, MAC_C, HOST_B))
    assert world.sent() == []
    assert world.core.counters.kernel_seen == 3


def test_kernel_reports_stay_within_the_bounds_of_learning(world, kernel):
    world.core.set_limit(V2, "varp", 2)
    world.core.set_limit(V2, "vif", 1)
    world.events(*(RemoteSeen(V2, bytes([2, 0, 0, 0, 0, i]), HOST_B) for i in range(5)),
                 *(LocalSeen(V2, bytes([2, 0, 0, 0, 1, i])) for i in range(3)))
    assert len(kernel.remotes) == 2 and len(kernel.locals) == 1
    assert world.core.vnet(V2).counters.refused == {"varp_vnet_full": 3, "vif_vnet_full": 2}


def refresh_every(w: World, seconds: float, times: int, use=()) -> None:
    """``times`` refreshes ``seconds`` apart; before each, a frame from each
    (kind, vid, mac) of ``use`` (the programs stamp its entry)."""
    for _ in range(times):
        for kind, vid, mac in use:
            w.kernel.use(kind, vid, mac)
        w.turn(seconds)
        w.path.refresh(w.now)


def test_entries_the_kernel_uses_never_age_and_stay_in_the_maps(taps, kernel):
    """Ageing (path.py): the programs stamp the entries whose MAC sends; the
    refresh reads the stamps of those the core has not seen refreshed for
    half a TTL and refreshes the ones that moved.  Nothing is taken out of
    the maps meanwhile (so no fdb entry goes, docs/kernel-path.md 4); an
    entry whose MAC sends nothing ages as in user space and leaves them."""
    w = World(kernel, varp_ttl=60.0)
    w.events(LocalSeen(V2, MAC_A), RemoteSeen(V2, MAC_B, HOST_B),
             RemoteSeen(V2, MAC_C, HOST_B))
    w.sent()
    assert kernel.locals == {(V2, MAC_A)} and len(kernel.remotes) == 2
    kernel.calls.clear()
    refresh_every(w, 5.0, 5)                          # 25 s: nothing half a TTL old yet
    assert not kernel.ops("remotes_used", "locals_used")
    assert len(kernel.ops("refresh")) == 5            # the kernel ports follow the bridges
    in_use = [("local", V2, MAC_A), ("remote", V2, MAC_B)]
    refresh_every(w, 5.0, 40, use=in_use)             # 200 s more, sweeps included
    assert (V2.raw, MAC_A) in w.core.vifs and w.core.varp.get(V2.raw, MAC_B) is not None
    assert w.core.varp.get(V2.raw, MAC_C) is None     # never used: aged out
    assert kernel.locals == {(V2, MAC_A)} and kernel.remotes == {(V2, MAC_B): (HOST_B, False)}
    assert kernel.ops("del_remote", "del_local") == [("del_remote", V2, MAC_C)]
    assert not kernel.ops("set_remote", "set_local")  # never withdrawn, never written again
    assert w.core.vnet(V2).counters.announced == 1
    assert w.core.counters.kernel_used >= 2 * 200 // 60
    # an entry is read at most every quarter TTL: 2 entries for 200 s, C for 30 s
    reads = sum(len(c[1]) for c in kernel.ops("remotes_used", "locals_used"))
    assert reads <= 2 * (200 // 15 + 1) + 3, reads
    # they stop sending: they age as in user space (TTL to TTL + a sweep
    # interval), counted from the refresh that noticed their last use (half
    # a TTL and a refresh interval after it, at most)
    refresh_every(w, 5.0, 31)
    assert w.core.varp.get(V2.raw, MAC_B) is None and (V2.raw, MAC_A) not in w.core.vifs
    assert kernel.remotes == {} and kernel.locals == set()


def test_a_use_between_two_readings_counts_once(taps, kernel):
    w = World(kernel, varp_ttl=60.0)
    w.events(RemoteSeen(V2, MAC_B, HOST_B))
    learned = w.core.varp.get(V2.raw, MAC_B).stamp
    refresh_every(w, 5.0, 6)                          # read at 31 s: not used since written
    assert w.core.varp.get(V2.raw, MAC_B).stamp == learned
    kernel.use("remote", V2, MAC_B)
    refresh_every(w, 5.0, 3)                          # read again 15 s later: moved
    assert w.core.varp.get(V2.raw, MAC_B).stamp == learned + 45.0
    assert w.core.counters.kernel_used == 1


def test_the_stamps_read_per_refresh_are_bounded(taps, kernel, monkeypatch):
    """At most USE_READS a refresh, oldest first, each entry at most every
    quarter TTL: many idle entries do not keep a used one from being read."""
    from xend_vnet.kernel_shim.datapath.kernel import path as path_mod
    monkeypatch.setattr(path_mod, "USE_READS", 2)
    w = World(kernel, varp_ttl=60.0)
    idle = [bytes([2, 0, 0, 0, 0, i]) for i in range(4)]
    w.events(*(RemoteSeen(V2, mac, HOST_B) for mac in idle))
    w.turn(1.0)
    w.events(RemoteSeen(V2, MAC_B, HOST_B))           # the newest: read last
    kernel.calls.clear()
    refresh_every(w, 5.0, 9, use=[("remote", V2, MAC_B)])
    assert all(len(c[1]) <= 2 for c in kernel.ops("remotes_used"))
    assert w.core.varp.get(V2.raw, MAC_B) is not None
    assert w.core.counters.kernel_used == 1
    refresh_every(w, 5.0, 12, use=[("remote", V2, MAC_B)])
    assert w.core.varp.get(V2.raw, MAC_B) is not None
    assert all(w.core.varp.get(V2.raw, mac) is None for mac in idle)


def test_the_kernel_ports_follow_the_bridges_at_each_refresh_and_after_an_attach(taps, kernel):
    w = World(kernel, vnets=())
    kernel.calls.clear()
    w.command("(vnet.add (id 2))")
    assert [c[0] for c in kernel.ops("attach", "refresh")] == ["attach", "refresh"]
    w.path.refresh(w.now)
    assert len(kernel.ops("refresh")) == 2
    w.close()


def test_a_failing_follow_of_the_bridges_is_counted_and_never_stops_the_engine(
        world, kernel, monkeypatch):
    kernel.refuse["refresh"] = "refresh: RTNETLINK answers: No buffer space available"
    world.path.refresh(world.now)
    assert world.core.counters.io_dropped["kernel_map_failed"] == 1
    del kernel.refuse["refresh"]

    def broken():
        raise RuntimeError("a bug")
    monkeypatch.setattr(kernel.shim, "refresh", broken)
    world.path.refresh(world.now)
    assert world.core.counters.io_dropped["kernel_path_error"] == 1
    world.udp(b_data())                              # the engine goes on
    assert kernel.remotes == {(V2, MAC_B): (HOST_B, False)}


def test_a_stopping_engine_closes_the_kernel_path_after_its_last_tap_write(engine_for, kernel,
                                                                            monkeypatch):
    """The shim's close puts back on the kernel ports the entries the frames
    written into the TAPs moved (docs/kernel-path.md 4): after the TAPs close."""
    e = engine_for()
    assert e._configure_kernel(1.0)
    order = []
    monkeypatch.setattr(e.userspace, "close", lambda: order.append("taps"))
    kernel.shim.close = lambda: order.append("shim")
    e.shutdown()
    assert order == ["taps", "shim"]


def test_a_failed_map_update_is_counted_and_made_right_at_the_refresh(world, kernel):
    kernel.refuse["set_remote"] = "set_remote: ENOMEM"
    world.udp(b_data())
    assert kernel.remotes == {}
    assert world.core.counters.io_dropped["kernel_map_failed"] == 1
    del kernel.refuse["set_remote"]
    world.path.refresh(world.now)
    assert kernel.remotes == {(V2, MAC_B): (HOST_B, False)}


def test_vnet_stats_show_the_kernel_counters_and_why_frames_went_up(world, kernel):
    kernel.counters[V2].update(encapsulated=900, decapsulated=800, to_user_flood=7,
                               to_user_no_route=0, to_user_no_fit=3)
    forms = sxp.parse_all(world.command("(vnet.stats)"))
    (v2,) = [f for f in forms if sxp.child_value(f, "vnetif") == "vnif0002"]
    assert sxp.child_value(v2, "kernel_encapsulated") == "900"
    assert sxp.child_value(v2, "kernel_decapsulated") == "800"
    assert sxp.child(v2, "kernel_to_user") == ["kernel_to_user", ["flood", "7"],
                                               ["no_fit", "3"]]
    only = sxp.parse_all(world.command("(vnet.stats (id 2))"))
    assert sxp.child_value(only[0], "kernel_encapsulated") == "900"
    assert world.path.counters() == {"kernel-encapsulated": 900, "kernel-decapsulated": 800}
    st = world.status()
    assert (st["kernel-encapsulated"], st["kernel-decapsulated"]) == ("900", "800")


def test_the_event_fd_is_watched_by_the_event_loop(world, kernel):
    assert kernel.shim.event_fd() in world.loop.selector.get_map()
    kernel.push(RemoteSeen(V2, MAC_B, HOST_B))
    world.turn()
    assert (V2, MAC_B) in kernel.remotes


# -- when it cannot be used ------------------------------------------------------------------

@pytest.mark.parametrize("reason", [
    "no compiled object: /nowhere/vnet_shim.bpf.o (build the package with clang installed)",
    "libbpf.so.1 not found",
    "clsact refused: Operation not supported",
    "load refused: EPERM (needs CAP_BPF and CAP_NET_ADMIN)",
    "verifier said: R1 invalid mem access"])
def test_a_path_that_cannot_load_leaves_every_vnet_in_user_space(taps, kernel, reason):
    kernel.refuse["open"] = reason
    w = World(kernel)
    st = w.status()
    assert st["kernel-path"] == "unavailable: " + reason
    assert st["vnet-path"] == {"vnif0002": "user space: " + reason}
    w.udp(b_data())
    assert w.core.table_changes is None         # nothing mirrored, nothing recorded
    assert w.core.varp.get(V2.raw, MAC_B) is not None
    w.close()


def test_no_kernel_path_never_opens_the_shim(taps, kernel):
    w = World(kernel, off_reason="--no-kernel-path")
    assert kernel.calls == []
    assert w.status()["vnet-path"] == {"vnif0002": "user space: --no-kernel-path"}
    w.close()


def test_a_vxlan_vnet_is_named_for_its_own_kernel_path(world, monkeypatch):
    def attach(vid, ifname):
        from xend_vnet.kernel_shim.datapath.vxlan.table import VxlanVnet, vni_of
        world.host.vxlan_vnets.table.add(VxlanVnet(vid, ifname, vni_of(vid), 1450))
    monkeypatch.setattr(world.host.vxlan_vnets, "attach", attach)
    world.command("(vnet.add (id 5) (data-path vxlan))")
    assert world.status()["vnet-path"]["vnif0005"] == "kernel VXLAN device (data-path vxlan)"
    assert V5 not in world.kernel.attached


def test_attach_refused_for_one_vnet_keeps_the_others(taps, kernel):
    w = World(kernel, vnets=())
    kernel.refuse["attach"] = "attach 0000:...:0005: clsact refused: File exists"
    w.command("(vnet.add (id 5))")
    del kernel.refuse["attach"]
    w.command("(vnet.add (id 2))")
    assert w.status()["vnet-path"] == {
        "vnif0002": "kernel",
        "vnif0005": "user space: attach 0000:...:0005: clsact refused: File exists"}
    w.close()


# -- restarts ------------------------------------------------------------------------------

def test_a_restarted_engine_adopts_what_the_last_one_left(taps, kernel):
    """The kernel held vnets 2 and 5; the new engine adds 2 again: its entries
    become learned ones (and its domain is announced again, as at any
    restart), entries past the new bounds go; 5, never added, is detached
    after a VARP TTL."""
    first = World(kernel, vnets=(V2, V5))
    first.udp(encode_announce(V2.raw, MAC_B, HOST_B) + KERNEL_TRAILER, dst=GROUP)
    first.udp(b_data(MAC_C), src=HOST_C)
    first.tap(V2, frame(BCAST, MAC_A))
    first.path.close()
    first.close()
    assert kernel.attached.keys() == {V2, V5} and len(kernel.remotes) == 2
    kept = dict(kernel.remotes)
    kernel.calls.clear()

    second = World(kernel, vnets=())
    second.core.set_limit(V2, "varp", 1)
    assert second.path.adopted
    second.command("(vnet.add (id 2))")
    assert kernel.attached.keys() == {V2, V5}
    assert len(kernel.remotes) == 1 and kernel.locals == {(V2, MAC_A)}
    ((key, value),) = kernel.remotes.items()
    assert kept[key] == value and second.core.varp.get(V2.raw, key[1]).addr == value[0]
    assert second.core.kernel_peer(V2, HOST_B, second.now) == (value[0] == HOST_B)
    assert [p for p, a in second.sent() if a == GROUP] == [
        encode_announce(V2.raw, MAC_A, ME) + KERNEL_TRAILER]
    assert not [c for c in kernel.ops("set_remote", "set_local")]   # nothing rewritten
    assert second.status()["kernel-path"] == "loaded, adopted from the previous engine"
    second.turn(59.0)
    second.path.refresh(second.now)
    assert V5 in kernel.attached
    second.turn(2.0)
    second.path.refresh(second.now)
    assert kernel.attached.keys() == {V2} and ("detach", V5) in kernel.calls
    second.close()


def test_an_adopted_vnet_added_again_as_secured_leaves_the_kernel(taps, kernel, tmp_path):
    first = World(kernel, vnets=(V97,))
    first.udp(data(V97, frame(MAC_A, MAC_B)))
    first.path.close()
    first.close()
    key = write_key(str(tmp_path / "k"))
    second = World(kernel, vnets=())
    second.command(f"(vnet.add (id 97) (security conf) (key-file {key}))")
    assert kernel.attached == {} and kernel.remotes == {}
    second.close()


def test_purge_removes_the_kernel_path_and_the_engine_runs_on(world, kernel):
    world.udp(b_data())
    world.command("(engine.purge)")
    assert not kernel.loaded and kernel.attached == {}
    assert world.status()["vnet-path"] == {"vnif0002": "user space: purged (vn rmmod --purge)"}
    world.udp(b_data(MAC_C))                  # user space carries on
    assert world.core.varp.get(V2.raw, MAC_C) is not None


def test_a_new_underlay_loads_the_path_again(world, kernel):
    world.udp(b_data())
    world.path.configure(ShimConfig("eth1", ME, 1798, 1500), world.now)
    assert ("purge",) in kernel.calls and kernel.configs[-1].underlay == "eth1"
    assert kernel.attached == {V2: world.userspace.taps.by_vid[V2].index}
    assert kernel.remotes == {(V2, MAC_B): (HOST_B, False)}
    world.path.configure(ShimConfig("eth1", "192.0.2.9", 1798, 1500), world.now)
    assert kernel.ops("close") and kernel.attached.keys() == {V2}


def test_a_recreated_tap_is_attached_anew(world, kernel, taps):
    tap = world.userspace.taps.by_vid[V2]
    world.udp(b_data())
    world.userspace.taps.lose(V2, tap, TapError(errno.EBADFD, "TAP vnif0002 failed"))
    del taps.index["vnif0002"]                # deleted from outside: a new device
    world.userspace.taps.recreate_lost(world.core.has_vnet)
    world.path.refresh(world.now)
    new = world.userspace.taps.by_vid[V2].index
    assert new != tap.index and kernel.attached == {V2: new}
    assert kernel.remotes == {(V2, MAC_B): (HOST_B, False)}


def test_vfwd_learned_remotes_are_mirrored_floods_stay_in_user_space(world, kernel):
    """A MAC learned through a peer's VFWD is reached directly at its
    original sender, in user space as in the kernel (protocol.md 7)."""
    from xend_vnet.kernel_shim.wire import codec
    world.core.peer_add("198.51.100.7")
    inner = codec.inner_udp_packet(data(V2, frame(BCAST, MAC_B)), GROUP, 1798,
                                   "203.0.113.5")
    world.udp(codec.encode_vfwd(inner), src="198.51.100.7")
    assert kernel.remotes == {(V2, MAC_B): ("203.0.113.5", False)}


# -- the engine: loading, the environment switch ---------------------------------------------

@pytest.fixture
def engine_for(tmp_path, monkeypatch, kernel):
    """An Engine (not started) whose kernel path opens the fake kernel."""
    from xend_vnet.kernel_shim import daemon
    from xend_vnet.kernel_shim import engine as engine_mod

    def make(*argv, require: bool = False):
        if require:
            monkeypatch.setenv(engine_mod.REQUIRE_KERNEL_PATH, "1")
        else:
            monkeypatch.delenv(engine_mod.REQUIRE_KERNEL_PATH, raising=False)
        opts = daemon.parse_args(["--epoch-file", str(tmp_path / "epoch"),
                                  "--no-default-vnets", *argv])
        e = engine_mod.Engine(opts)
        e.kernel.opener = kernel.opener
        e.addresses.device = "eth0"
        e.addresses.local_address = ME
        return e
    return make


def test_the_engine_loads_its_kernel_path_for_the_underlay_and_address(engine_for, kernel):
    e = engine_for("--port", "1800", "--mtu", "1400")
    assert e._configure_kernel(1.0)
    assert kernel.configs == [ShimConfig("eth0", ME, 1800, 1400)]
    e.addresses.local_address = None        # no address yet: nothing to load, no failure
    assert e._configure_kernel(2.0) and len(kernel.configs) == 1


def test_a_required_kernel_path_that_cannot_load_is_fatal(engine_for, kernel):
    kernel.refuse["open"] = "no compiled object: /x.o (build the package with clang installed)"
    assert engine_for()._configure_kernel(1.0)          # a fallback, the status says why
    e = engine_for(require=True)
    assert not e._configure_kernel(1.0)
    assert e._kernel_fatal().startswith("the kernel path cannot load: no compiled object: /x.o")
    assert "XEND_VNET_REQUIRE_KERNEL_PATH=1" in e._kernel_fatal()
    # --no-kernel-path is what the operator asked for: never fatal, never opened.
    kernel.calls.clear()
    assert engine_for("--no-kernel-path", require=True)._configure_kernel(1.0)
    assert kernel.calls == []


# -- failures never stop the engine ------------------------------------------------------------

def test_events_that_cannot_be_read_leave_the_loop_until_the_refresh(world, kernel):
    kernel.refuse["events"] = "events: EIO"
    kernel.push(RemoteSeen(V2, MAC_B, HOST_B))
    world.turn()
    assert kernel.shim.event_fd() not in world.loop.selector.get_map()   # no busy loop
    assert world.core.counters.io_dropped["kernel_map_failed"] == 1
    del kernel.refuse["events"]
    world.path.refresh(world.now)
    world.turn()
    assert (V2, MAC_B) in kernel.remotes


def test_a_bug_applying_changes_is_counted_and_the_maps_made_whole(world, kernel, monkeypatch):
    def broken(changes):
        raise RuntimeError("a bug")
    monkeypatch.setattr(world.path, "table_changed", broken)
    world.udp(b_data())
    assert world.core.counters.io_dropped["kernel_path_error"] == 1
    assert kernel.remotes == {}
    monkeypatch.undo()
    world.path.refresh(world.now)
    assert kernel.remotes == {(V2, MAC_B): (HOST_B, False)}


def test_an_attach_that_fails_unexpectedly_leaves_the_vnet_up_in_user_space(taps, kernel,
                                                                          monkeypatch):
    w = World(kernel, vnets=())

    def broken(vid, ifindex):
        raise RuntimeError("a bug")
    monkeypatch.setattr(kernel.shim, "attach", broken)
    assert w.command("(vnet.add (id 2))") == ""
    assert w.core.has_vnet(V2)
    assert w.status()["vnet-path"] == {
        "vnif0002": "user space: attach failed: RuntimeError('a bug')"}
    w.close()


def test_losing_the_kernel_path_while_running_is_announced_at_once(world, kernel):
    """Others must stop sending what only a kernel path takes: each local
    domain is announced again without the bit (and with it when it is back)."""
    world.tap(V2, frame(BCAST, MAC_A))
    world.sent()
    plain = encode_announce(V2.raw, MAC_A, ME)
    kernel.refuse["open"] = "load refused: EPERM (needs CAP_BPF and CAP_NET_ADMIN)"
    assert not world.path.configure(ShimConfig("eth0", "192.0.2.9", 1798, 1500), world.now)
    assert (plain, GROUP) in world.sent()
    assert world.status()["vnet-path"] == {
        "vnif0002": "user space: load refused: EPERM (needs CAP_BPF and CAP_NET_ADMIN)"}
    assert not world.core.vnet(V2).kernel
    del kernel.refuse["open"]
    assert world.path.configure(CONFIG, world.now)
    assert (plain + KERNEL_TRAILER, GROUP) in world.sent()
    assert world.status()["vnet-path"] == {"vnif0002": "kernel"}
    world.command("(engine.purge)")
    assert (plain, GROUP) in world.sent()
