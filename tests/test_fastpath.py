"""The fast framing between our engines and its use by the core.

(wire/segments.py, wire/offload.py, core/reassembly.py, core/peer_caps.py)
"""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xend_vnet.kernel_shim.wire import offload as wire_offload
from xend_vnet.kernel_shim.wire import segments as wire_segments
from xend_vnet.kernel_shim.core import peer_caps
from xend_vnet.kernel_shim.core.bounds import LIMITS
from xend_vnet.kernel_shim.wire.codec import (
    DATA_PREFIX,
    VARP_REQUEST,
    DecodeError,
    VarpHeader,
    encode_announce,
)
from xend_vnet.kernel_shim.core.engine import (
    CoreOptions,
    DeliverFrame,
    DeliverOffload,
    EngineCore,
    SendFast,
    SendTrain,
    SendUdp,
)
from xend_vnet.kernel_shim.wire.offload import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    checksum,
    plain_frames,
)
from xend_vnet.kernel_shim.wire.segments import SEGMENT_HEADER_LEN, segment_sends
from xend_vnet.kernel_shim.core.reassembly import Reassembler
from xend_vnet.vnet_id import VnetId

from core_helpers import consistent
from security_helpers import V97, Clock, delivered, secured_core, sent

VID = VnetId.parse("99")
MAC_A = bytes.fromhex("aa0000000001")
MAC_B = bytes.fromhex("aa0000000002")
PEER = "192.0.2.2"


# -- helpers: frames as a domain's kernel hands them to a TAP with offloads ------------------

def ref_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def eth(dst: bytes = MAC_B, src: bytes = MAC_A, vlan: int | None = None,
        ethertype: int = 0x0800) -> bytes:
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return dst + src + tag + struct.pack("!H", ethertype)


def ipv4_header(payload_len: int, proto: int, ident: int = 7) -> bytes:
    h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, ident, 0x4000, 64,
                              proto, 0, socket.inet_aton("10.0.0.1"),
                              socket.inet_aton("10.0.0.2")))
    h[10:12] = ref_checksum(bytes(h)).to_bytes(2, "big")
    return bytes(h)


def tcp_super_frame(payload: bytes, mss: int, vlan: int | None = None, v6: bool = False,
                    flags: int = 0x18) -> bytes:
    """virtio_net_hdr + a TCP super-frame with its checksum left partial."""
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 1, 5 << 4, flags, 512, 0, 0))
    if v6:
        src, dst = socket.inet_pton(socket.AF_INET6, "fd00::1"), socket.inet_pton(
            socket.AF_INET6, "fd00::2")
        ip = struct.pack("!IHBB16s16s", 6 << 28, 20 + len(payload), 6, 64, src, dst)
        pseudo = src + dst + struct.pack("!IxxxB", 20 + len(payload), 6)
        l2 = eth(vlan=vlan, ethertype=0x86DD)
    else:
        ip = ipv4_header(20 + len(payload), 6)
        pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, 20 + len(payload))
        l2 = eth(vlan=vlan)
    tcp[16:18] = fold(sum(struct.unpack("!" + "H" * (len(pseudo) // 2), pseudo))).to_bytes(
        2, "big")
    frame = l2 + ip + bytes(tcp) + payload
    start = len(l2) + len(ip)
    gso = (GSO_TCPV6 if v6 else GSO_TCPV4) if len(payload) > mss else 0
    hdr = struct.pack("=BBHHHH", F_NEEDS_CSUM, gso, start + 20, mss if gso else 0, start, 16)
    return hdr + frame


def udp_partial(payload: bytes, vlan: int | None = None) -> bytes:
    ip = ipv4_header(8 + len(payload), 17)
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, 8 + len(payload))
    partial = fold(sum(struct.unpack("!6H", pseudo)))
    udp = struct.pack("!HHHH", 5000, 6000, 8 + len(payload), partial)
    l2 = eth(vlan=vlan)
    start = len(l2) + 20
    return struct.pack("=BBHHHH", F_NEEDS_CSUM, 0, 0, 0, start, 6) + l2 + ip + udp + payload


def check_ipv4_frame(frame: bytes) -> tuple[int, bytes, int]:
    """Verify the IPv4 and L4 checksums of a plain frame; (seq, payload, tcp flags)."""
    off = 12
    while frame[off:off + 2] == b"\x81\x00":
        off += 4
    l3 = off + 2
    ihl = (frame[l3] & 15) * 4
    assert ref_checksum(frame[l3:l3 + ihl]) == 0
    total = int.from_bytes(frame[l3 + 2:l3 + 4], "big")
    assert total == len(frame) - l3
    proto = frame[l3 + 9]
    l4 = frame[l3 + ihl:]
    pseudo = frame[l3 + 12:l3 + 20] + struct.pack("!BBH", 0, proto, len(l4))
    assert ref_checksum(pseudo + l4) == 0
    if proto == 6:
        thl = (l4[12] >> 4) * 4
        return int.from_bytes(l4[4:8], "big"), l4[thl:], l4[13]
    return 0, l4[8:], 0


# -- checksums and software segmentation -----------------------------------------------------

@given(st.binary(max_size=3000))
def test_checksum_matches_rfc1071(data):
    assert checksum(data) == ref_checksum(data)


@pytest.mark.parametrize("vlan", [None, 42])
@pytest.mark.parametrize("size", [1, 1447, 1448, 1449, 30000, 65000])
def test_plain_frames_segments_tcp_like_the_nic(size, vlan):
    payload = bytes((i * 7) & 0xFF for i in range(size))
    frames = plain_frames(tcp_super_frame(payload, 1448, vlan=vlan, flags=0x19))
    assert len(frames) == max(1, -(-size // 1448))
    seqs, data = [], b""
    for i, f in enumerate(frames):
        assert len(f) <= 14 + (4 if vlan else 0) + 20 + 20 + 1448
        seq, body, flags = check_ipv4_frame(f)
        seqs.append(seq)
        data += body
        last = i == len(frames) - 1
        assert bool(flags & 0x01) == last and bool(flags & 0x08) == last   # FIN, PSH
        if vlan is not None:
            assert f[12:16] == struct.pack("!HH", 0x8100, vlan)
    assert data == payload
    assert seqs == [1000 + i * 1448 for i in range(len(frames))]


def test_plain_frames_segments_tcp_over_ipv6():
    payload = bytes(range(256)) * 40
    frames = plain_frames(tcp_super_frame(payload, 1000, v6=True))
    assert len(frames) == 11
    got = b""
    for f in frames:
        l4 = f[14 + 40:]
        assert int.from_bytes(f[14 + 4:14 + 6], "big") == len(l4)
        pseudo = f[22:54] + struct.pack("!IxxxB", len(l4), 6)
        assert ref_checksum(pseudo + l4) == 0
        got += l4[20:]
    assert got == payload


@pytest.mark.parametrize("vlan", [None, 7])
def test_plain_frames_completes_partial_checksums(vlan):
    for packet in (udp_partial(b"hello world", vlan), tcp_super_frame(b"x" * 100, 1448, vlan)):
        [frame] = plain_frames(packet)
        check_ipv4_frame(frame)


def test_plain_frames_passes_complete_frames_and_refuses_unknown_gso():
    frame = eth() + ipv4_header(8, 17) + bytes(8)
    assert plain_frames(wire_offload.ZERO_VNET_HDR + frame) == [frame]
    with pytest.raises(DecodeError) as e:
        plain_frames(struct.pack("=BBHHHH", 0, 3, 0, 100, 0, 0) + frame)   # UFO
    assert e.value.reason == "gso_unsupported"
    with pytest.raises(DecodeError):
        plain_frames(struct.pack("=BBHHHH", F_NEEDS_CSUM, 0, 0, 0, 500, 16) + frame)


@settings(max_examples=300)
@given(st.binary(min_size=10, max_size=600))
def test_plain_frames_never_crashes(packet):
    try:
        plain_frames(packet)
    except DecodeError:
        pass


# -- segments and reassembly -----------------------------------------------------------------

def segments(packet: bytes, chunk: int, frame_id: int = 1) -> list[bytes]:
    out = []
    for iov in segment_sends(VID.raw, frame_id, packet, chunk):
        out += [bytes(iov[i]) + bytes(iov[i + 1]) for i in range(0, len(iov), 2)]
    return out


@pytest.mark.parametrize("size", [24, 1444, 1445, 9000, 65546])
def test_segments_fit_the_underlay_and_reassemble(size):
    packet = bytes(10) + bytes((i * 13) & 0xFF for i in range(size - 10))
    chunk = wire_segments.chunk_size(1500)
    segs = segments(packet, chunk)
    assert all(len(s) + 28 <= 1500 for s in segs)
    sends = list(segment_sends(VID.raw, 1, packet, chunk))
    assert all(sum(len(b) for b in iov) <= wire_segments.BYTES_PER_SEND for iov in sends)
    r = Reassembler()
    results = [r.add(PEER, s, 0.0) for s in reversed(segs)]
    assert results[:-1] == [None] * (len(segs) - 1)
    assert results[-1] == (wire_segments.FAST_SEGMENT, VID.raw, packet)
    assert len(r) == 0


def test_reassembly_refuses_bad_segments():
    packet = bytes(10) + eth() + bytes(3000)
    segs = segments(packet, 1000)
    r = Reassembler()
    r.add(PEER, segs[0], 0.0)
    with pytest.raises(DecodeError) as e:
        r.add(PEER, segs[0], 0.0)
    assert e.value.reason == "fast_duplicate"
    bad_count = segs[1][:24] + b"\x00\x09\x00\x09" + segs[1][28:]
    with pytest.raises(DecodeError) as e:
        r.add(PEER, bad_count, 0.0)
    assert e.value.reason == "fast_bad_segment"
    other = segs[1][:24] + struct.pack("!HH", 1, 7) + segs[1][28:]
    with pytest.raises(DecodeError) as e:
        r.add(PEER, other, 0.0)
    assert e.value.reason == "fast_inconsistent"
    assert len(r) == 1, "the frame being put together survives a stray segment"
    with pytest.raises(DecodeError) as e:
        r.add(PEER, segs[0][:SEGMENT_HEADER_LEN], 0.0)
    assert e.value.reason == "fast_truncated"
    bad_hdr = struct.pack("=BBHHHH", 0, 3, 0, 0, 0, 0) + eth()
    with pytest.raises(DecodeError) as e:
        r.add(PEER, segments(bad_hdr, 1000)[0], 0.0)
    assert e.value.reason == "fast_bad_vnet_hdr"


def test_reassembly_memory_is_bounded():
    r = Reassembler()
    packet = bytes(10) + eth() + bytes(3000)
    for i in range(500):
        r.add(PEER, segments(packet, 1000, frame_id=i)[0], i * 0.001)
        assert len(r) <= LIMITS["reassembly"].per_source     # one sender's share
    r.sweep(10.0)
    assert len(r) == 0 and r.expired == 500


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=120), max_size=20))
def test_reassembler_takes_any_bytes(payloads):
    r = Reassembler()
    for p in payloads:
        try:
            r.add(PEER, b"\x00\x05\x00\x03" + p, 0.0)
        except DecodeError:
            pass


def test_capability_trailer():
    ann = encode_announce(VID.raw, MAC_B, PEER)
    assert wire_segments.has_capability(ann + wire_segments.CAP_TRAILER)
    assert not wire_segments.has_capability(ann)
    assert not wire_segments.has_capability(ann + wire_segments.CAP_TRAILER[:6])
    assert not wire_segments.has_capability(ann + b"XVNF\x00\x01\x00\x00")


def test_capabilities_probe_refresh_and_expiry():
    caps = peer_caps.PeerCapabilities()
    assert caps.probe_due(PEER, 0.0) and not caps.probe_due(PEER, 1.0)
    assert caps.probe_due(PEER, peer_caps.PROBE_INTERVAL + 0.1)
    caps.heard(PEER, 10.0)
    assert caps.fast(PEER, 10.0) and not caps.probe_due(PEER, 20.0)
    assert caps.probe_due(PEER, 10.0 + peer_caps.CAP_REFRESH + 1)
    assert not caps.fast(PEER, 10.0 + peer_caps.CAP_TTL + 1)
    assert caps.addresses(11.0) == [PEER]


# -- the core --------------------------------------------------------------------------------

def core(offload: bool = True) -> EngineCore:
    c = EngineCore(CoreOptions(offload=offload))
    c.self_address = "192.0.2.1"
    c.own_addresses = {"192.0.2.1"}
    c.add_vnet(VID, "vnif0099")
    return c


def datagrams(actions: list) -> list:
    """Every datagram the actions send, a train's one by one."""
    out = []
    for a in actions:
        if isinstance(a, SendTrain):
            out += [SendUdp(a.dst_ip, p) for p in a.payloads]
        else:
            out.append(a)
    return out


def learn_b(c: EngineCore, trailer: bytes = b"") -> None:
    c.receive_udp(encode_announce(VID.raw, MAC_B, PEER) + trailer, PEER, "224.10.0.1", 0.0)


def test_offloaded_frame_goes_plain_and_asks_until_the_peer_shows_the_capability():
    c = core()
    learn_b(c)
    packet = tcp_super_frame(bytes(5000), 1448)
    actions = datagrams(c.receive_tap(VID, packet[10:], 1.0, packet))
    assert not any(a.payload[:2] == b"\x00\x05" for a in actions)   # never id 5 to it
    # Never a VARP request (design.md 8): the probe is a true announce of the
    # sending domain, unicast, whose trailer asks for an answer.
    assert not any(a.payload[:4] == b"\x00\x01\x00\x01" for a in actions)
    probes = [a for a in actions if a.dst_ip == PEER and a.payload[:4] == b"\x00\x01\x00\x02"]
    assert probes == [SendUdp(PEER, encode_announce(VID.raw, MAC_A, "192.0.2.1")
                              + wire_segments.PROBE_TRAILER)]
    data = [a for a in actions if a.payload.startswith(DATA_PREFIX)]
    assert len(data) == 4 and all(a.dst_ip == PEER for a in data)
    for a in data:
        check_ipv4_frame(a.payload[22:])
    again = datagrams(c.receive_tap(VID, packet[10:], 2.0, packet))       # rate-limited
    assert not any(a.payload[:2] == b"\x00\x01" for a in again)
    learn_b(c, wire_segments.CAP_TRAILER)                             # the answer of our engine
    actions = c.receive_tap(VID, packet[10:], 2.0, packet)
    assert actions == [SendFast(PEER, VID.raw, 1, packet)]
    assert c.counters.tx_fast == 1


def test_plain_frames_to_one_address_leave_as_a_train_that_fits_the_underlay():
    """A super-frame toward a host that takes no segments: cut so that every
    datagram fits the underlay MTU unfragmented, all the same size but the
    last (one UDP_SEGMENT send), every frame complete; a secured vnet leaves
    room for its header and ICV; a tiny MTU keeps the domain's segments."""
    payload = bytes(range(256)) * 100
    packet = tcp_super_frame(payload, 1448)
    for mtu, size in ((1500, 1500 - 28), (9000, 22 + 14 + 20 + 20 + 1448), (576, None)):
        c = core(offload=False)
        c.underlay_mtu = mtu
        learn_b(c)
        trains = [a for a in c.receive_tap(VID, packet[10:], 1.0, packet)
                  if isinstance(a, SendTrain)]
        assert len(trains) == 1 and trains[0].dst_ip == PEER
        sizes = [len(p) for p in trains[0].payloads]
        if size is None:
            assert sizes[0] == 22 + 14 + 40 + 1448           # fragments, as legacy would
        else:
            assert sizes[:-1] == [size] * (len(sizes) - 1) and sizes[-1] <= size
        got = b""
        for p in trains[0].payloads:
            _seq, data, _flags = check_ipv4_frame(p[22:])
            got += data
        assert got == payload
        assert c.counters.tx_datagrams == len(sizes) + 1     # and the new domain's announce


def test_a_secured_train_leaves_room_for_the_seal():
    clock = Clock()
    a, b = (secured_core(addr, n, clock) for n, addr in ((1, "192.0.2.1"), (2, PEER)))
    a.underlay_mtu = b.underlay_mtu = 1500
    announce = sent(b.receive_tap(V97, eth(dst=b"\xff" * 6, src=MAC_B) + bytes(50), 0.0))
    a.receive_udp(announce[0].payload, PEER, "224.10.0.1", 0.0)
    payload = bytes(range(256)) * 40
    packet = tcp_super_frame(payload, 1448)
    trains = [x for x in a.receive_tap(V97, packet[10:], 1.0, packet) if isinstance(x, SendTrain)]
    assert len(trains) == 1
    sizes = [len(p) for p in trains[0].payloads]
    assert sizes[:-1] == [1500 - 28] * (len(sizes) - 1) and sizes[-1] <= 1500 - 28
    got = b""
    for p in trains[0].payloads:
        (frame,) = delivered(b.receive_udp(p, "192.0.2.1", PEER, 1.0))
        got += check_ipv4_frame(frame)[1]
    assert got == payload


def test_our_announces_carry_the_trailer_only_with_offload():
    for offload, trailer in ((True, wire_segments.CAP_TRAILER), (False, b"")):
        c = core(offload)
        frame = eth(dst=b"\xff" * 6) + bytes(50)
        actions = c.receive_tap(VID, frame, 0.0)
        assert actions[0].payload == encode_announce(VID.raw, MAC_A, "192.0.2.1") + trailer
        request = VarpHeader(VARP_REQUEST, VID.raw, MAC_A).encode()
        reply = encode_announce(VID.raw, MAC_A, "192.0.2.1")
        # A requester (era B, or a test tool) gets the legacy bytes, whatever follows.
        assert c.receive_udp(request, PEER, "192.0.2.1", 1.0) == [SendUdp(PEER, reply)]
        assert c.receive_udp(request + wire_segments.CAP_TRAILER, PEER, "192.0.2.1", 1.0) == [
            SendUdp(PEER, reply)]
        assert not c.caps.fast(PEER, 1.0)


def test_a_probe_is_answered_once_per_interval_with_a_domain_of_ours():
    c = core()
    c.receive_tap(VID, eth(dst=b"\xff" * 6) + bytes(50), 0.0)    # MAC_A is ours
    probe = encode_announce(VID.raw, MAC_B, PEER) + wire_segments.PROBE_TRAILER
    answer = encode_announce(VID.raw, MAC_A, "192.0.2.1") + wire_segments.CAP_TRAILER
    assert c.receive_udp(probe, PEER, "192.0.2.1", 1.0) == [SendUdp(PEER, answer)]
    assert c.caps.fast(PEER, 1.0)
    assert c.receive_udp(probe, PEER, "192.0.2.1", 2.0) == []     # rate-limited
    assert c.receive_udp(probe, PEER, "192.0.2.1", 7.0) == [SendUdp(PEER, answer)]
    # The answer carries no probe bit, so two engines never ping-pong.
    assert not wire_segments.asks_answer(answer) and wire_segments.asks_answer(probe)
    # An engine without offloads, or with no domain of its own there, says nothing.
    assert core(offload=False).receive_udp(probe, PEER, "192.0.2.1", 1.0) == []
    assert core().receive_udp(probe, PEER, "192.0.2.1", 1.0) == []


def test_clear_claims_never_make_a_secured_vnet_send_segments():
    """Capabilities heard from unauthenticated traffic (clear announces,
    segments anyone can spoof) stay apart from what secured vnets use."""
    c = core()
    learn_b(c, wire_segments.CAP_TRAILER)
    assert c.caps.fast(PEER, 0.0) and not c.sealed_caps.fast(PEER, 0.0)


def test_floods_are_always_plain():
    c = core()
    learn_b(c, wire_segments.CAP_TRAILER)
    c.varp.flush()
    packet = tcp_super_frame(bytes(3000), 1448)   # MAC_B not learned: flooded
    actions = c.receive_tap(VID, packet[10:], 1.0, packet)
    assert all(a.dst_ip == "224.10.0.1" for a in actions)
    data = [a for a in actions if a.payload.startswith(DATA_PREFIX)]
    assert len(data) == 3       # and the gratuitous announce of MAC_A
    for a in data:
        check_ipv4_frame(a.payload[22:])


def test_segments_are_delivered_with_the_header():
    c = core()
    packet = tcp_super_frame(bytes(range(256)) * 20, 1448)
    out = []
    for s in segments(packet, 1444, frame_id=9):
        out += c.receive_udp(s, PEER, "192.0.2.1", 1.0)
    assert out == [DeliverOffload(VID, packet)]
    cnt = c.counters
    assert cnt.rx_fast_frames == 1 and cnt.rx_fast == len(segments(packet, 1444))
    assert c.caps.fast(PEER, 1.0)
    assert consistent(c)
    assert c.varp.resolve(VID.raw, MAC_A, 1.0) == PEER


def test_without_offload_id_5_is_unknown_like_legacy():
    c = core(offload=False)
    segment = segments(bytes(10) + eth() + bytes(50), 1444)[0]
    assert c.receive_udp(segment, PEER, "192.0.2.1", 0.0) == []
    assert c.counters.rx_dropped == {"unknown_msg_id": 1}


def test_secured_vnet_refuses_fast_frames():
    c = EngineCore(CoreOptions(offload=True))
    c.add_vnet(VID, "vnif0099", "conf", bytes(32))
    packet = bytes(10) + eth() + bytes(50)
    for s in segments(packet, 1444):
        c.receive_udp(s, PEER, "192.0.2.1", 0.0)
    assert c.counters.rx_dropped == {"clear_on_secured": 1}


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=200), max_size=10))
def test_core_takes_any_id_5_bytes(payloads):
    c = core()
    for p in payloads:
        actions = c.receive_udp(b"\x00\x05" + p, PEER, "192.0.2.1", 0.0)
        assert all(isinstance(a, (SendUdp, DeliverOffload, DeliverFrame)) for a in actions)
    assert consistent(c)


@pytest.mark.parametrize("level", ["auth", "conf"])
def test_secured_super_frames_are_sealed_once_and_verified(level):
    from security_helpers import KEY1, V97, Clock, context

    clock = Clock()
    a, b = (EngineCore(CoreOptions(offload=True), context(n, clock)) for n in (1, 2))
    for c, addr in ((a, "192.0.2.1"), (b, PEER)):
        c.own_addresses = {addr}
        c.self_address = addr
        c.add_vnet(V97, "vnif0097", level, KEY1)
    # b's domain speaks first: its sealed announce tells a that b takes segments.
    for act in b.receive_tap(V97, eth(dst=b"\xff" * 6, src=MAC_B) + bytes(50), 0.0):
        a.receive_udp(act.payload, PEER, "224.10.0.1", 0.0)
    assert a.sealed_caps.fast(PEER, 0.0)
    packet = tcp_super_frame(bytes(range(256)) * 100, 1448)
    [send] = [x for x in a.receive_tap(V97, packet[10:], 1.0, packet)
              if isinstance(x, SendFast)]
    assert send.opcode == wire_segments.FAST_SEALED
    assert (packet in send.packet) == (level == "auth")      # conf encrypts
    out = []
    for iov in segment_sends(send.vid_raw, send.frame_id, send.packet, 1444, send.opcode):
        for i in range(0, len(iov), 2):
            out += b.receive_udp(bytes(iov[i]) + bytes(iov[i + 1]), "192.0.2.1", PEER, 1.0)
    assert out == [DeliverOffload(V97, packet)]
    # The same as one train (UDP_GRO), under the next sequence number.
    [again] = [x for x in a.receive_tap(V97, packet[10:], 1.5, packet)
               if isinstance(x, SendFast)]
    [iov] = segment_sends(again.vid_raw, again.frame_id, again.packet, 1444, again.opcode)
    data = b"".join(bytes(x) for x in iov)
    assert b.receive_train(data, 1444 + SEGMENT_HEADER_LEN, "192.0.2.1", PEER, 1.5) == [
        DeliverOffload(V97, packet)]
    assert b.varp.resolve(V97.raw, MAC_A, 1.0) == "192.0.2.1"
    # A forged segment train changes nothing: it does not verify.
    forged = bytearray(send.packet)
    forged[-1] ^= 1
    for iov in segment_sends(send.vid_raw, 77, bytes(forged), 1444, send.opcode):
        for i in range(0, len(iov), 2):
            assert b.receive_udp(bytes(iov[i]) + bytes(iov[i + 1]), "192.0.2.1", PEER,
                                 1.0) == []
    assert sum(b.counters.rx_dropped.values()) == 1


# -- trains: the segments of one recvmsg with UDP_GRO ------------------------------------------

def train(packet: bytes, chunk: int, frame_id: int = 5) -> list[tuple[bytes, int]]:
    """The payloads of each sendmsg, as a receiver with UDP_GRO gets them."""
    return [(b"".join(bytes(b) for b in iov), chunk + SEGMENT_HEADER_LEN)
            for iov in segment_sends(VID.raw, frame_id, packet, chunk)]


@pytest.mark.parametrize("size", [100, 20000, 65546])
def test_trains_deliver_like_single_segments(size):
    packet = tcp_super_frame(bytes((i * 3) & 0xFF for i in range(size - 68)), 1448)
    c = core()
    out = []
    for data, gso in train(packet, 1444):
        out += c.receive_train(data, gso, PEER, "192.0.2.1", 1.0)
    assert out == [DeliverOffload(VID, packet)]
    assert c.counters.rx_fast == len(segments(packet, 1444, frame_id=5))
    assert consistent(c) and len(c.reassembler) == 0


def test_mixed_trains_fall_back_to_one_datagram_at_a_time():
    a = tcp_super_frame(bytes(3000), 1448)
    segs = segments(a, 1444, frame_id=1)
    c = core()
    data = segs[0] + segs[2]                           # not consecutive
    assert c.receive_train(data, len(segs[0]), PEER, "192.0.2.1", 1.0) == []
    assert c.receive_udp(segs[1], PEER, "192.0.2.1", 1.0) == [DeliverOffload(VID, a)]
    plain = DATA_PREFIX + VID.raw + eth() + bytes(100)
    out = c.receive_train(plain * 3, len(plain), PEER, "192.0.2.1", 2.0)
    assert [type(x) for x in out] == [DeliverFrame] * 3
    assert consistent(c)


def test_a_bad_train_is_dropped_and_counted_once_per_datagram():
    bad = struct.pack("=BBHHHH", 0, 3, 0, 0, 0, 0) + eth() + bytes(5000)
    c = core()
    [(data, gso)] = train(bad, 1444)
    assert c.receive_train(data, gso, PEER, "192.0.2.1", 0.0) == []
    assert c.counters.rx_dropped == {"fast_bad_vnet_hdr": 4}
    assert consistent(c)


@settings(max_examples=300)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=120))
def test_core_takes_any_train(body, gso):
    c = core()
    c.receive_train(b"\x00\x05\x00\x01" + body, gso, PEER, "192.0.2.1", 0.0)
    assert consistent(c)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from((VID.raw, VnetId.parse("98").raw)),
                          st.sampled_from((MAC_A, MAC_B, b"\xaa\x00\x00\x00\x00\x07")),
                          st.sampled_from((DATA_PREFIX, b"\x00\x02\x00\x00\x00\x50",
                                           b"\x00\x01\x00\x02\x00\x40"))),
                min_size=1, max_size=12),
       st.integers(0, 60), st.integers(0, 60))
def test_a_train_of_datagrams_is_taken_as_each_would_be(parts, body, last_cut):
    """receive_train's shortcut for data of the same vnet and sender as the
    datagram before gives the actions and counters one receive_udp each would."""
    size = 22 + 14 + body
    payloads = [prefix + vid + MAC_B + src + bytes([i]) * (14 + body - 12)
                for i, (vid, src, prefix) in enumerate(parts)]
    payloads = [p[:size] for p in payloads]
    payloads[-1] = payloads[-1][:max(1, size - last_cut)]
    one, each = core(offload=False), core(offload=False)
    got = one.receive_train(b"".join(payloads), size, PEER, "192.0.2.1", 1.0)
    want = []
    for p in payloads:
        want += each.receive_udp(p, PEER, "192.0.2.1", 1.0)
    assert got == want
    assert one.counters.fields() == each.counters.fields()
    assert one.counters.rx_dropped == each.counters.rx_dropped
    assert [v.counters.fields() for v in one.vnets()] == [v.counters.fields()
                                                          for v in each.vnets()]
    assert one.varp.resolve(VID.raw, MAC_A, 1.0) == each.varp.resolve(VID.raw, MAC_A, 1.0)


# -- software segmentation against a plain reference, over every header field ------------

def reference_segments(frame: bytes, l3: int, mss: int) -> list[bytes]:
    """What a NIC's TSO sends, written the slow obvious way (RFC 1071 sums)."""
    v4 = frame[l3] >> 4 == 4
    l4 = l3 + ((frame[l3] & 15) * 4 if v4 else 40)
    body = l4 + (frame[l4 + 12] >> 4) * 4
    payload = frame[body:]
    seq = int.from_bytes(frame[l4 + 4:l4 + 8], "big")
    ident = int.from_bytes(frame[l3 + 4:l3 + 6], "big")
    n = max(1, -(-len(payload) // mss))
    out = []
    for i in range(n):
        data = payload[i * mss:(i + 1) * mss]
        ip = bytearray(frame[l3:l4])
        tcp = bytearray(frame[l4:body])
        tcp[4:8] = ((seq + i * mss) % 2**32).to_bytes(4, "big")
        flags = frame[l4 + 13]
        if i != n - 1:
            flags &= ~0x09                     # FIN, PSH only on the last
        if i:
            flags &= ~0x80                     # CWR only on the first
        tcp[13] = flags
        tcp[16:18] = b"\0\0"
        if v4:
            ip[2:4] = (len(ip) + len(tcp) + len(data)).to_bytes(2, "big")
            ip[4:6] = ((ident + i) % 2**16).to_bytes(2, "big")
            ip[10:12] = b"\0\0"
            ip[10:12] = ref_checksum(bytes(ip)).to_bytes(2, "big")
            pseudo = bytes(ip[12:20]) + struct.pack("!BBH", 0, 6, len(tcp) + len(data))
        else:
            ip[4:6] = (len(tcp) + len(data)).to_bytes(2, "big")
            pseudo = bytes(ip[8:40]) + struct.pack("!IxxxB", len(tcp) + len(data), 6)
        tcp[16:18] = ref_checksum(pseudo + bytes(tcp) + data).to_bytes(2, "big")
        out.append(frame[:l3] + bytes(ip) + bytes(tcp) + data)
    return out


@settings(max_examples=300, deadline=None)
@given(v6=st.booleans(), vlans=st.integers(0, 2), ip_options=st.integers(0, 10),
       tcp_options=st.integers(0, 10), ident=st.sampled_from((0, 7, 0xFFFE, 0xFFFF)),
       seq=st.sampled_from((0, 1000, 2**32 - 1, 2**32 - 3000)),
       flags=st.sampled_from((0x10, 0x18, 0x19, 0x98, 0x99, 0xD8, 0x30)),
       urgent=st.integers(0, 0xFFFF), size=st.integers(0, 20_000),
       mss=st.integers(160, 1500), cap=st.sampled_from((0, 700, 1450, 1500)),
       seed=st.integers(0, 255))
def test_software_segmentation_matches_a_plain_reference(v6, vlans, ip_options, tcp_options,
                                                         ident, seq, flags, urgent, size,
                                                         mss, cap, seed):
    """IPv4 options, TCP options, an urgent pointer, VLAN tags, IP ids and
    sequence numbers that wrap, odd sizes and every flag rule: byte for byte
    what the reference makes, at the segment size the cap asks for."""
    payload = bytes((seed + 31 * i) & 0xFF for i in range(size))
    tags = b"".join(struct.pack("!HH", 0x8100, 5 + k) for k in range(vlans))
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, (5 + tcp_options) << 4, flags,
                      512, 0, urgent) + bytes(range(1, 4 * tcp_options + 1))
    if v6:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp) + size, 6, 64,
                         socket.inet_pton(socket.AF_INET6, "fd00::1"),
                         socket.inet_pton(socket.AF_INET6, "fd00::2"))
        ethertype = b"\x86\xdd"
    else:
        options = bytes([1] * 4 * ip_options)           # NOPs
        ip = struct.pack("!BBHHHBBH4s4s", 0x45 + ip_options, 0, 0, ident, 0x4000, 64, 6, 0,
                         socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")) + options
        ethertype = b"\x08\x00"
    frame = MAC_B + MAC_A + tags + ethertype + ip + tcp + payload
    l3 = 14 + 4 * vlans
    gso = GSO_TCPV6 if v6 else GSO_TCPV4
    packet = struct.pack("=BBHHHH", F_NEEDS_CSUM, gso, 0, mss, l3 + len(ip), 16) + frame
    body = l3 + len(ip) + len(tcp)
    expected_mss = cap - body if cap and 536 <= cap - body < mss else mss
    assert plain_frames(packet, cap) == reference_segments(frame, l3, expected_mss)
