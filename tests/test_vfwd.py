"""Peer forwarding (protocol.md 7): golden VFWD vectors and their re-multicast, the
duplicate window, loops in a simulated mesh, bad VFWD input, etherip (proto 97)
receive."""

from __future__ import annotations

import json
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xend_vnet.kernel_shim.wire import codec
from xend_vnet.kernel_shim.core.engine import DeliverFrame, EngineCore, SendRaw, SendUdp
from xend_vnet.kernel_shim.core.vfwd import DuplicateWindow, ipv4_checksum, remulticast_packet
from xend_vnet.vnet_id import VnetId

VECTORS = os.path.join(os.path.dirname(__file__), "vectors", "legacy-vnetd-capture.json")
GROUP = "224.10.0.1"
V97 = VnetId.parse("97")
V98 = VnetId.parse("98")
BCAST = b"\xff" * 6
MAC_A = bytes.fromhex("aa0000000001")
MAC_B = bytes.fromhex("aa0000000002")

# The re-multicast built from vector vfwd-relayed-multicast (received by
# 192.0.2.130 from its peer 192.0.2.129): version/IHL 0x45, total length 92,
# id 0, DF clear, TTL 1, UDP, checksum 0x1785, source 192.0.2.1 kept (the
# original sender), group 224.10.0.1, UDP 1798 -> 1798, length 72, checksum 0.
RELAYED_REMULTICAST = (
    "4500005c0000000001111785c0000201e00a0001070607060048000000020000004000"
    "000000000000000000000000000097ffffffffffff8e3a52c8081c0806000108000604"
    "00018e3a52c8081c0a0000640000000000000a000066")
# From vfwd-own-multicast (received by 192.0.2.129 from 192.0.2.130): the
# inner source 0.0.0.0 becomes the peer's address; checksum 0x1704.
OWN_REMULTICAST = (
    "4500005c0000000001111704c0000282e00a0001070607060048000000020000004000"
    "000000000000000000000000000097ffffffffffff167760437abc0806000108000604"
    "0001167760437abc0a0000660000000000000a000064")


def vector(name: str) -> dict:
    with open(VECTORS) as f:
        return next(v for v in json.load(f)["vectors"] if v["name"] == name)


def frame(dst: bytes, src: bytes, body: bytes = b"\x08\x00" + b"x" * 46) -> bytes:
    return dst + src + body


def data(vid: VnetId, fr: bytes) -> bytes:
    return codec.DATA_PREFIX + vid.raw + fr


def vfwd(inner_payload: bytes, src: str = "0.0.0.0") -> bytes:
    return codec.encode_vfwd(codec.inner_udp_packet(inner_payload, GROUP, src=src))


def make_core(me: str, *peers: str, vnet: VnetId | None = V97) -> EngineCore:
    core = EngineCore()
    core.own_addresses = {me}
    core.self_address = me
    if vnet is not None:
        core.add_vnet(vnet, "vnif0097")
    for p in peers:
        core.peer_add(p)
    return core


def of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def consistent(core: EngineCore) -> bool:
    c = core.counters
    return c.rx_datagrams == c.rx_data + c.rx_varp + sum(c.rx_dropped.values())


# -- golden vectors ------------------------------------------------------------------

@pytest.mark.parametrize("name,me,expected,learned_at", [
    ("vfwd-relayed-multicast", "192.0.2.130", RELAYED_REMULTICAST, "192.0.2.1"),
    ("vfwd-own-multicast", "192.0.2.129", OWN_REMULTICAST, "192.0.2.130"),
])
def test_vfwd_vector_processed_and_remulticast(name, me, expected, learned_at):
    vec = vector(name)
    assert vec["outer_dst"] == me
    payload = bytes.fromhex(vec["udp_payload_hex"])
    core = make_core(me, vec["outer_src"])
    actions = core.receive_udp(payload, vec["outer_src"], me, 0.0)
    inner = payload[4 + 28:]
    assert actions == [SendRaw(GROUP, bytes.fromhex(expected)), DeliverFrame(V97, inner[22:])]
    # Processed as if multicast: the original sender is learned.
    assert core.varp.resolve(V97.raw, inner[28:34], 0.0) == learned_at
    c = core.counters
    assert (c.vfwd_rx, c.vfwd_resent, c.rx_data, core.peers.get(vec["outer_src"]).rx_packets) \
        == (1, 1, 1, 1)
    assert consistent(core)


def test_remulticast_header_is_valid():
    packet = bytes.fromhex(RELAYED_REMULTICAST)
    ver_ihl, _tos, total, ident, frag, ttl, proto, _csum = struct.unpack_from("!BBHHHBBH", packet)
    assert (ver_ihl, total, ident, frag, ttl, proto) == (0x45, len(packet), 0, 0, 1, 17)
    assert ipv4_checksum(packet[:20]) == 0                 # a valid header sums to zero
    assert packet[12:16] == bytes([192, 0, 2, 1])         # the original source kept
    assert struct.unpack_from("!HHHH", packet, 20) == (1798, 1798, len(packet) - 20, 0)
    assert remulticast_packet("192.0.2.1", GROUP, 1798, 1798, packet[28:]) == packet


def test_remulticast_goes_to_our_group():
    core = make_core("192.0.2.130", "192.0.2.129")
    core.set_mcaddr("224.10.0.2")
    inner = data(V97, frame(BCAST, MAC_B))
    (raw,) = of(core.receive_udp(vfwd(inner, "192.0.2.1"), "192.0.2.129", "192.0.2.130", 0),
                SendRaw)
    assert raw.dst_ip == "224.10.0.2" and raw.packet[16:20] == bytes([224, 10, 0, 2])


def test_secured_packet_forwarded_unchanged():
    core = make_core("192.0.2.130", "192.0.2.129", "203.0.113.9")
    secured = b"\x00\x04\x00\x00" + bytes(range(60))
    out = core.receive_udp(vfwd(secured, "192.0.2.1"), "192.0.2.129", "192.0.2.130", 0)
    (raw,) = of(out, SendRaw)
    assert raw.packet[28:] == secured
    # Relayed group traffic of id 4 goes to the peers unchanged too.
    out = core.receive_udp(secured + b"!", "192.0.2.7", GROUP, 0)
    assert [a.dst_ip for a in of(out, SendUdp)] == ["192.0.2.129", "203.0.113.9"]
    assert codec.decode_vfwd(out[0].payload).udp_payload == secured + b"!"


def test_unicast_inner_destination_not_resent():
    core = make_core("192.0.2.130", "192.0.2.129")
    inner = codec.inner_udp_packet(data(V97, frame(BCAST, MAC_B)), "192.0.2.130",
                                   src="192.0.2.1")
    out = core.receive_udp(codec.encode_vfwd(inner), "192.0.2.129", "192.0.2.130", 0)
    assert of(out, SendRaw) == [] and len(of(out, DeliverFrame)) == 1


# -- bad input ----------------------------------------------------------------------

def _inner(proto: int = 17, payload: bytes | None = None) -> bytearray:
    p = bytearray(codec.inner_udp_packet(
        data(V97, frame(BCAST, MAC_B)) if payload is None else payload, GROUP, src="192.0.2.1"))
    p[9] = proto
    return p


@pytest.mark.parametrize("src,payload,reason", [
    ("203.0.113.5", codec.encode_vfwd(bytes(_inner())), "vfwd_not_peer"),
    ("192.0.2.129", codec.encode_vfwd(bytes(_inner())[:27]), "vfwd_truncated"),
    ("192.0.2.129", codec.encode_vfwd(b""), "vfwd_truncated"),
    ("192.0.2.129", codec.encode_vfwd(bytes(_inner(proto=1))), "vfwd_not_udp"),
    ("192.0.2.129", codec.encode_vfwd(bytes(_inner(proto=97))), "vfwd_not_udp"),
    ("192.0.2.129", codec.encode_vfwd(bytes(_inner(payload=vfwd(b"\x00\x02\x00\x00")))),
     "vfwd_nested"),
    ("192.0.2.129", codec.encode_vfwd(bytes(_inner(payload=b"\x00\x02"))), "short_header"),
    ("192.0.2.129", vfwd(data(V97, frame(BCAST, MAC_B)), src="224.10.0.1"),
     "vfwd_bad_source"),
    ("192.0.2.129", vfwd(data(V97, frame(BCAST, MAC_B)), src="127.0.0.1"),
     "vfwd_bad_source"),
])
def test_bad_vfwd_dropped_counted_not_resent(src, payload, reason):
    core = make_core("192.0.2.130", "192.0.2.129")
    assert core.receive_udp(payload, src, "192.0.2.130", 0) == []
    assert core.counters.rx_dropped == {reason: 1}
    assert core.counters.vfwd_resent == 0 and consistent(core)


# -- the duplicate window --------------------------------------------------------------

def test_window_drops_copies_within_and_expires():
    w = DuplicateWindow(window=0.5)
    assert not w.seen("192.0.2.1", b"abc", 10.0)
    assert w.seen("192.0.2.1", b"abc", 10.2)
    assert not w.seen("192.0.2.2", b"abc", 10.2)       # another sender
    assert not w.seen("192.0.2.1", b"abd", 10.2)       # another payload
    assert w.seen("192.0.2.1", b"abc", 10.49)          # copies do not extend the window
    assert not w.seen("192.0.2.1", b"abc", 10.5)       # a deliberate repeat passes
    assert not w.seen("192.0.2.1", b"abc", 11.5)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["192.0.2.1", "192.0.2.2"]), st.binary(max_size=4),
                          st.floats(0, 0.3)), max_size=300))
def test_window_memory_bounded(events):
    w = DuplicateWindow(window=0.5, limit=16)
    now = 0.0
    for sender, payload, step in events:
        now += step
        w.seen(sender, payload, now)
        assert len(w) <= 16


def test_group_copy_seen_again_by_forwarder_is_dropped():
    core = make_core("192.0.2.11", "198.51.100.13")
    p = data(V97, frame(BCAST, MAC_B))
    first = core.receive_udp(p, "192.0.2.2", GROUP, 0.0)
    assert len(of(first, DeliverFrame)) == 1 and len(of(first, SendUdp)) == 1
    # The same multicast back through a peer (a loop): dropped, not relayed.
    assert core.receive_udp(vfwd(p, "192.0.2.2"), "198.51.100.13", "192.0.2.11", 0.2) == []
    assert core.receive_udp(p, "192.0.2.2", GROUP, 0.3) == []
    assert core.counters.vfwd_duplicates == 2
    assert core.counters.rx_dropped == {"duplicate": 2} and consistent(core)
    # After the window the same frame is new again (an ARP retry a second later).
    assert len(of(core.receive_udp(p, "192.0.2.2", GROUP, 1.0), DeliverFrame)) == 1


def test_host_without_peers_keeps_every_group_packet():
    core = make_core("192.0.2.2")
    p = data(V97, frame(BCAST, MAC_A))
    for t in (0.0, 0.1, 0.2):
        assert len(of(core.receive_udp(p, "192.0.2.11", GROUP, t), DeliverFrame)) == 1
    assert core.counters.vfwd_duplicates == 0


# -- loops in a simulated mesh ----------------------------------------------------------

class Net:
    """Subnets of cores; sends are delivered in order until quiet or ``limit``."""

    def __init__(self, window: float | None = None):
        self.cores: dict[str, EngineCore] = {}
        self.subnet: dict[str, str] = {}
        self.window = window
        self.deliveries: dict[str, int] = {}

    def host(self, addr: str, subnet: str, *peers: str) -> EngineCore:
        core = make_core(addr, *peers)
        if self.window is not None:
            core.duplicates.window = self.window
        self.cores[addr] = core
        self.subnet[addr] = subnet
        self.deliveries[addr] = 0
        return core

    def run(self, first: list[tuple[str, list]], limit: int = 2000) -> int:
        queue = list(first)
        steps = 0
        while queue and steps < limit:
            sender, actions = queue.pop(0)
            for a in actions:
                steps += 1
                if isinstance(a, DeliverFrame):
                    self.deliveries[sender] += 1
                elif isinstance(a, SendUdp) and a.dst_ip == GROUP:
                    for addr in self.neighbours(sender):
                        queue.append((addr, self.cores[addr].receive_udp(
                            a.payload, sender, GROUP, 0.0)))
                elif isinstance(a, SendUdp):
                    queue.append((a.dst_ip, self.cores[a.dst_ip].receive_udp(
                        a.payload, sender, a.dst_ip, 0.0)))
                elif isinstance(a, SendRaw):
                    src = ".".join(str(b) for b in a.packet[12:16])
                    for addr in self.neighbours(sender):
                        queue.append((addr, self.cores[addr].receive_udp(
                            a.packet[28:], src, GROUP, 0.0)))
        return steps

    def neighbours(self, addr: str) -> list[str]:
        return [a for a in self.cores if a != addr and self.subnet[a] == self.subnet[addr]]


def storm_net(window: float | None = None) -> Net:
    """Two forwarders on subnet 1 (a1 peers with c, a2 with e), c and e peered too."""
    net = Net(window)
    net.host("192.0.2.11", "one", "198.51.100.13")
    net.host("192.0.2.12", "one", "198.51.100.14")
    net.host("198.51.100.13", "two", "192.0.2.11", "198.51.100.14")
    net.host("198.51.100.14", "two", "192.0.2.12", "198.51.100.13")
    return net


def test_mesh_broadcast_delivered_once_everywhere():
    net = storm_net()
    a1 = net.cores["192.0.2.11"]
    steps = net.run([("192.0.2.11", a1.receive_tap(V97, frame(BCAST, MAC_A), 0.0))])
    assert steps < 100
    # The broadcast itself and its gratuitous announce: once on each other host.
    assert net.deliveries == {"192.0.2.11": 0, "192.0.2.12": 1, "198.51.100.13": 1,
                              "198.51.100.14": 1}
    assert sum(c.counters.vfwd_duplicates for c in net.cores.values()) > 0


def test_mesh_storms_without_the_window():
    """The same mesh with the window shut: the legacy behaviour never ends."""
    net = storm_net(window=0.0)
    a1 = net.cores["192.0.2.11"]
    assert net.run([("192.0.2.11", a1.receive_tap(V97, frame(BCAST, MAC_A), 0.0))]) >= 2000


# -- etherip without UDP (IP protocol 97) ---------------------------------------------------

def etherip(vid: VnetId, fr: bytes, first: bytes = b"\xab\x4c") -> bytes:
    return first + vid.raw + fr     # reserved bits are legacy garbage (protocol.md 4.1)


def test_etherip_delivered_and_learned():
    core = make_core("192.0.2.1")
    fr = frame(MAC_A, MAC_B)
    assert core.receive_etherip(etherip(V97, fr), "192.0.2.9", "192.0.2.1", 3.0) \
        == [DeliverFrame(V97, fr)]
    assert core.varp.resolve(V97.raw, MAC_B, 3.0) == "192.0.2.9"
    assert core.receive_etherip(etherip(V97, fr), "192.0.2.9", GROUP, 3.0) \
        == [DeliverFrame(V97, fr)]
    c = core.counters
    assert (c.rx_etherip, c.rx_data, core.vnet(V97).counters.rx_packets) == (2, 2, 2)
    assert consistent(core)


def test_etherip_never_relayed_to_peers():
    core = make_core("192.0.2.1", "198.51.100.7")
    out = core.receive_etherip(etherip(V97, frame(BCAST, MAC_B)), "192.0.2.9", GROUP, 0)
    assert out == [DeliverFrame(V97, frame(BCAST, MAC_B))]


@pytest.mark.parametrize("packet,src,dst,reason", [
    (b"\x00\x40" + V97.raw[:10], "192.0.2.9", GROUP, "etherip_truncated"),
    (etherip(V97, frame(BCAST, MAC_B), b"\x00\x30"), "192.0.2.9", GROUP, "bad_etherip_version"),
    (etherip(V97, b"\xff" * 13), "192.0.2.9", GROUP, "short_frame"),
    (etherip(V98, frame(BCAST, MAC_B)), "192.0.2.9", GROUP, "unknown_vnet"),
    (etherip(V97, frame(BCAST, MAC_B)), "192.0.2.1", GROUP, "own_packet"),
    (etherip(V97, frame(BCAST, MAC_B)), "192.0.2.9", "224.10.0.9", "other_group"),
])
def test_bad_etherip_dropped(packet, src, dst, reason):
    core = make_core("192.0.2.1")
    assert core.receive_etherip(packet, src, dst, 0) == []
    assert core.counters.rx_dropped == {reason: 1} and consistent(core)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=120), st.sampled_from(["192.0.2.9", "192.0.2.1"]),
       st.sampled_from([GROUP, "192.0.2.1", "224.10.0.2", "255.255.255.255"]))
def test_etherip_never_raises(packet, src, dst):
    core = make_core("192.0.2.1")
    core.receive_etherip(b"\x00\x40" + packet, src, dst, 0)
    core.receive_etherip(packet, src, dst, 0)
    assert consistent(core)


def test_a_full_window_keeps_what_it_has_and_counts_the_rest():
    """A flood of distinct packets must not flush live entries (else a storm
    of them would let a looping copy through)."""
    w = DuplicateWindow(window=0.5, limit=4)
    assert not w.seen("192.0.2.1", b"looping", 0.0)
    for i in range(10):
        assert not w.seen("192.0.2.9", b"flood %d" % i, 0.01)
    assert w.overflows == 7
    assert w.seen("192.0.2.1", b"looping", 0.02), "the live entry survived the flood"
    # After the window the entries expire and new ones are remembered again.
    assert not w.seen("192.0.2.9", b"later", 0.6)
    assert w.seen("192.0.2.9", b"later", 0.61)
