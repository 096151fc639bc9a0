"""Resource limits (core/bounds.py, docs/security.md "Resource limits"): every
table packets or domains fill stays within its bounds per vnet and per
source, costs flat work per packet, and one vnet's traffic never reaches
another vnet's share."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from core_helpers import ME, consistent, data, frame, make_core
from hypothesis import given, settings
from hypothesis import strategies as st
from security_helpers import KEY1, V97, Clock, context, secured_core, sent

from xend_vnet.kernel_shim.control import listing
from xend_vnet.kernel_shim.core import bounds, peer_caps, reassembly, vfwd
from xend_vnet.kernel_shim.core.bounds import LIMITS, BoundedTable, Entry, Limits
from xend_vnet.kernel_shim.core.engine import EngineCore, SendUdp
from xend_vnet.kernel_shim.datapath.kernel import maps as kernel_maps
from xend_vnet.kernel_shim.datapath.kernel import path as kernel_path
from xend_vnet.kernel_shim.security import keys, keystore
from xend_vnet.kernel_shim.wire import offload
from xend_vnet.kernel_shim.wire.codec import encode_announce
from xend_vnet.kernel_shim.wire.segments import (
    CAP_KERNEL,
    CAP_PROBE,
    CAP_TRAILER,
    PROBE_TRAILER,
    segment_sends,
    trailer,
)
from xend_vnet.vnet_id import VnetId

V2, V3, V4 = (VnetId.parse(str(n)) for n in (2, 3, 4))
GROUP = "224.10.0.1"
PEER = "192.0.2.2"
MAC_A = bytes.fromhex("aa0000000001")
BCAST = b"\xff" * 6
KERNEL_PROBE_TRAILER = trailer(CAP_KERNEL | CAP_PROBE)


def addr(i: int) -> str:
    """A distinct unicast host address for every ``i`` below 2**24."""
    return f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"


def mac(i: int) -> bytes:
    return b"\x02" + i.to_bytes(5, "big")


def clear_core(*vids: VnetId, **options) -> EngineCore:
    c = make_core(ME, vnet=None, offload=True, **options)
    for v in vids:
        c.add_vnet(v, f"vnif{v.raw[-1]:04x}")
    return c


def touched(c: EngineCore) -> int:
    return sum(t.touched for t in c.bounded)


def check_bounds(c: EngineCore) -> None:
    """No table past any of its bounds."""
    for t in c.bounded:
        lim = t.limits
        assert len(t) <= lim.total, t.kind
        for part in t._parts:
            assert t.count_of(part) <= t.limit(part), t.kind
        if lim.per_source:
            for (part, source) in t._sources:
                assert t.count_of(part, source) <= lim.per_source, t.kind


# -- finding 1: forged capability announces ------------------------------------------------

def test_forged_capability_announces_cost_flat_work():
    """Announces with the trailer naming 20,000 care-of addresses on clear vnet
    2: the capability table stops at the vnet's bound, and each packet past it
    looks at a constant number of entries (no sweep of a full table)."""
    c = clear_core(V2, V3, V4)
    n = 10_000

    def forge(first: int) -> None:
        for i in range(first, first + n):
            c.receive_udp(encode_announce(V2.raw, mac(i), addr(i)) + CAP_TRAILER,
                          addr(i + 3 * n), GROUP, 1.0 + i * 0.001)

    forge(0)
    assert len(c.caps) == LIMITS["caps"].per_vnet
    before = touched(c)
    forge(n)
    assert (touched(c) - before) / n <= 2
    refused = c.vnet(V2).counters.refused
    assert refused["caps_vnet_full"] == 2 * n - LIMITS["caps"].per_vnet
    assert consistent(c) and c.counters.rx_varp == 2 * n
    check_bounds(c)


def test_capabilities_of_a_vnet_do_not_use_another_vnets_share():
    c = clear_core(V2, V3)
    for i in range(1000):
        c.receive_udp(encode_announce(V2.raw, mac(i), addr(i)) + CAP_TRAILER,
                      addr(i), GROUP, 1.0)
    c.receive_udp(encode_announce(V3.raw, MAC_A, PEER) + CAP_TRAILER, PEER, GROUP, 1.0)
    assert c.caps.fast(PEER, 2.0)


def test_one_source_claims_few_capabilities():
    c = clear_core(V2)
    for i in range(100):
        c.receive_udp(encode_announce(V2.raw, mac(i), addr(i)) + CAP_TRAILER, PEER, GROUP, 1.0)
    assert len(c.caps) == LIMITS["caps"].per_source
    assert c.vnet(V2).counters.refused["caps_source_full"] == 100 - LIMITS["caps"].per_source


# -- finding 2: the VARP cache per vnet ---------------------------------------------------

def test_clear_flood_of_random_macs_does_not_stop_learning_on_a_secured_vnet():
    """66,000 frames from random MACs (and sources) on clear vnet 2, more than
    the old engine-wide bound, then a verified sender on conf vnet 97."""
    clock = Clock()
    r = make_core(ME, vnet=V97, security="conf", key=KEY1, context=context(1, clock))
    r.add_vnet(V2, "vnif0002")
    for i in range(66_000):
        r.receive_udp(data(V2, frame(MAC_A, mac(i))), addr(i), ME, 1.0)
    s = secured_core(PEER, 2, clock)
    for a in sent(s.receive_tap(V97, frame(b"\xff" * 6, MAC_A), 2.0)):
        r.receive_udp(a.payload, PEER, a.dst_ip, 2.0)
    assert r.varp.resolve(V97.raw, MAC_A, 2.0) == PEER
    assert r.vnet(V97).counters.learned == 1
    assert r.varp.table.count_of(V2.raw) == LIMITS["varp"].per_vnet
    assert r.vnet(V2).counters.refused["varp_vnet_full"] == 66_000 - LIMITS["varp"].per_vnet
    assert consistent(r)


def test_one_source_teaches_at_most_its_share_of_a_vnet():
    c = clear_core(V2)
    for i in range(2000):
        c.receive_udp(data(V2, frame(MAC_A, mac(i))), PEER, ME, 1.0)
    c.receive_udp(data(V2, frame(MAC_A, mac(99_999))), "192.0.2.3", ME, 1.0)
    assert len(c.varp) == LIMITS["varp"].per_source + 1
    assert c.varp.resolve(V2.raw, mac(99_999), 1.0) == "192.0.2.3"


def test_learned_entries_take_the_place_of_a_domains_lookups():
    """A domain sending to random MACs fills its vnet with INCOMPLETE entries;
    what a host says still gets learned."""
    c = clear_core(V2)
    c.set_limit(V2, "varp", 8)
    for i in range(8):
        c.receive_tap(V2, frame(mac(i), MAC_A), 1.0)
    assert len(c.varp) == 8
    c.receive_udp(data(V2, frame(MAC_A, mac(100))), PEER, ME, 2.0)
    assert c.varp.resolve(V2.raw, mac(100), 2.0) == PEER and len(c.varp) == 8


def test_a_vnets_bound_is_set_per_vnet():
    c = clear_core(V2, V3)
    c.set_limit(V2, "varp", 10)
    for i in range(20):
        c.receive_udp(data(V2, frame(MAC_A, mac(i))), addr(i), ME, 1.0)
        c.receive_udp(data(V3, frame(MAC_A, mac(i))), addr(i), ME, 1.0)
    assert c.varp.table.count_of(V2.raw) == 10 and c.varp.table.count_of(V3.raw) == 20
    c.set_limit(V2, "varp", None)
    assert c.varp.table.limit(V2.raw) == LIMITS["varp"].per_vnet
    with pytest.raises(KeyError):
        c.set_limit(V2, "arp", 10)


def test_ageing_pops_from_the_front_only():
    c = clear_core(V2)
    for i in range(1000):
        c.receive_udp(data(V2, frame(MAC_A, mac(i))), addr(i), ME, float(i))
    before = touched(c)
    c.varp.sweep(1000.0, 60.0)
    # 940 aged entries removed, and one look at the first young one.
    assert len(c.varp) == 60 and touched(c) - before == 941


# -- finding 3: the vif table per vnet --------------------------------------------------

def test_a_domains_65536_macs_do_not_stop_another_vnets_vif():
    c = clear_core(V2, V3)
    for i in range(65_537):
        c.receive_tap(V2, frame(b"\xff" * 6, mac(i)), 1.0)
    c.receive_tap(V3, frame(b"\xff" * 6, MAC_A), 1.0)
    assert (V3.raw, MAC_A) in c.vifs and c.vnet(V3).counters.announced == 1
    assert len(c.vifs) == LIMITS["vif"].per_vnet + 1
    assert c.vnet(V2).counters.refused["vif_vnet_full"] == 65_537 - LIMITS["vif"].per_vnet
    assert c.vnet(V2).counters.announced == LIMITS["vif"].per_vnet


# -- finding 4: offload metadata -------------------------------------------------------

def tcp_packet(size: int, gso_size: int, hdr: tuple | None = None) -> bytes:
    """virtio_net_hdr + a TCP/IPv4 super-frame of ``size`` payload bytes."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + size, 1, 0x4000, 64, 6, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 5 << 4, 0x10, 512, 0, 0)
    fr = frame(bytes.fromhex("aa0000000002"), MAC_A, ip + tcp + bytes(size))
    fields = hdr or (offload.F_NEEDS_CSUM, offload.GSO_TCPV4, 54, gso_size, 34, 16)
    return offload.encode_vnet_hdr(*fields) + fr


def test_gso_size_1_super_frame_from_a_domain_is_dropped_and_counted():
    c = clear_core(V2)
    packet = tcp_packet(3000, 1)
    assert c.receive_tap(V2, packet[10:], 1.0, packet) == []
    assert c.vnet(V2).counters.dropped == {"gso_too_small": 1}


@pytest.mark.parametrize("hdr", [
    (0, offload.GSO_NONE, 0xFFFF, 0, 0, 0),                     # hdr_len past the frame
    (offload.F_NEEDS_CSUM, offload.GSO_NONE, 0, 0, 0xFFF0, 16),  # checksum past the frame
    (offload.F_NEEDS_CSUM, offload.GSO_NONE, 0, 0, 34, 0xFFF0),
    (0, offload.GSO_NONE, 0, 0, 34, 16),                        # offsets without NEEDS_CSUM
])
def test_inconsistent_vnet_hdr_from_a_tap_is_dropped(hdr):
    c = clear_core(V2)
    packet = tcp_packet(100, 0, hdr)
    assert c.receive_tap(V2, packet[10:], 1.0, packet) == []
    assert c.vnet(V2).counters.dropped == {"bad_vnet_hdr": 1}


@pytest.mark.parametrize(("hdr", "reason"), [
    ((offload.F_NEEDS_CSUM, offload.GSO_TCPV4, 0xFFFF, 1, 0xFFF0, 16), "fast_bad_vnet_hdr"),
    ((offload.F_NEEDS_CSUM, offload.GSO_TCPV4, 54, 1, 34, 16), "gso_too_small"),
    ((0, offload.GSO_NONE, 0, 0, 34, 16), "fast_bad_vnet_hdr"),
])
def test_inconsistent_vnet_hdr_in_a_segment_is_dropped(hdr, reason):
    """An unsolicited id-5 segment: only a header consistent with its frame,
    and no tiny GSO size, reaches a TAP."""
    c = clear_core(V2)
    packet = tcp_packet(1000, 0, hdr)
    [iov] = list(segment_sends(V2.raw, 7, packet, 2000))
    assert c.receive_udp(bytes(iov[0]) + bytes(iov[1]), PEER, ME, 1.0) == []
    assert c.counters.rx_dropped == {reason: 1} and consistent(c)


def test_a_super_frame_becomes_a_bounded_number_of_datagrams():
    """The floor keeps one TAP read under MAX_PLAIN_FRAMES frames; a lower floor
    (vnetd --min-gso-size) drops what would be more, counted."""
    c = clear_core(V2)
    packet = tcp_packet(65_000, 536)
    frames = [a for a in c.receive_tap(V2, packet[10:], 1.0, packet)
              if a.payload[:2] == b"\x00\x02"]
    assert len(frames) <= 128
    low = clear_core(V2, min_gso_size=64)
    packet = tcp_packet(65_000, 64)
    assert all(a.payload[:2] != b"\x00\x02"
               for a in low.receive_tap(V2, packet[10:], 1.0, packet))
    assert low.vnet(V2).counters.dropped == {"gso_too_many": 1}


# -- reassembly ---------------------------------------------------------------------------

def first_segment(vid: VnetId, frame_id: int, size: int = 3000) -> bytes:
    iov = next(segment_sends(vid.raw, frame_id, tcp_packet(size, 1448), 1000))
    return bytes(iov[0]) + bytes(iov[1])


def test_a_spoofer_cannot_evict_another_senders_partial_frames():
    """Partial frames from 1,000 spoofed sources do not push out a frame the
    real peer is putting together; past the vnet's share they are refused."""
    c = clear_core(V2)
    packet = tcp_packet(3000, 1448)
    segs = [bytes(v[i]) + bytes(v[i + 1])
            for v in segment_sends(V2.raw, 1, packet, 1000) for i in range(0, len(v), 2)]
    c.receive_udp(segs[0], PEER, ME, 1.0)
    # A real frame's segments arrive within milliseconds (one sendmsg train).
    for i in range(1000):
        c.receive_udp(first_segment(V2, i), addr(i), ME, 1.01)
    out = []
    for s in segs[1:]:
        out += c.receive_udp(s, PEER, ME, 1.02)
    assert [a.packet for a in out] == [packet] and consistent(c)
    assert c.counters.rx_dropped["reassembly_vnet_full"] == 1000 - (
        LIMITS["reassembly"].per_vnet - 1)


def test_spoofed_partial_frames_from_ever_new_sources_do_not_block_a_vnet():
    """A vnet full of stalled partial frames (first segments from spoofed
    sources, never completed) still takes a real peer's new super-frame: the
    oldest stalled frame gives way (reassembly.EVICT_AGE)."""
    c = clear_core(V2)
    for i in range(LIMITS["reassembly"].per_vnet):
        c.receive_udp(first_segment(V2, i), addr(i), ME, 1.0)
    packet = tcp_packet(3000, 1448)
    segs = [bytes(v[i]) + bytes(v[i + 1])
            for v in segment_sends(V2.raw, 7, packet, 1000) for i in range(0, len(v), 2)]
    out = []
    for s in segs:
        out += c.receive_udp(s, PEER, ME, 1.0 + 2 * reassembly.EVICT_AGE)
    assert [a.packet for a in out] == [packet] and consistent(c)
    assert c.counters.rx_dropped.get("reassembly_vnet_full", 0) == 0


def test_partial_frames_of_one_vnet_do_not_use_anothers_share():
    """Vnet 2 flooded with partial frames while vnet 3 puts a frame together."""
    c = clear_core(V2, V3)
    packet = tcp_packet(3000, 1448)
    segs = [bytes(v[i]) + bytes(v[i + 1])
            for v in segment_sends(V3.raw, 1, packet, 1000) for i in range(0, len(v), 2)]
    out = c.receive_udp(segs[0], PEER, ME, 1.0)
    for i in range(1000):
        c.receive_udp(first_segment(V2, i), addr(i), ME, 1.0)
    for s in segs[1:]:
        out += c.receive_udp(s, PEER, ME, 1.0)
    assert [a.packet for a in out] == [packet]


def test_a_planted_segment_never_delivers_on_a_secured_vnet():
    """Confirmed: a segment planted under the real sender's address and next
    frame id loses that frame (the sealed super-frame fails its ICV as a
    whole), and delivers and teaches nothing."""
    clock = Clock()
    r = make_core(ME, vnet=V97, security="conf", key=KEY1, context=context(1, clock),
                  offload=True)
    s = make_core(PEER, vnet=V97, security="conf", key=KEY1, context=context(2, clock),
                  offload=True)
    s.sealed_caps.heard(ME, 1.0)
    s.varp.learn(V97.raw, bytes.fromhex("aa0000000002"), ME, 1.0)
    packet = tcp_packet(3000, 1448)
    [fast] = [a for a in s.receive_tap(V97, packet[10:], 1.0, packet)
              if a.__class__.__name__ == "SendFast"]
    segs = [bytes(v[i]) + bytes(v[i + 1]) for v in segment_sends(
        V97.raw, fast.frame_id, fast.packet, 1000, fast.opcode) for i in range(0, len(v), 2)]
    planted = segs[0][:28 + 36] + bytes(len(segs[0]) - 28 - 36)    # header kept, body not
    out = r.receive_udp(planted, PEER, ME, 1.0)
    for seg in segs[1:]:
        out += r.receive_udp(seg, PEER, ME, 1.0)
    assert out == [] and r.counters.rx_dropped.get("bad_icv") == 1
    assert len(r.varp) == 0 and not r.sealed_caps.fast(PEER, 1.0)


# -- the probe and answer limiters ------------------------------------------------------

def test_probes_naming_cycling_addresses_get_a_bounded_number_of_answers():
    """Probes naming 10,000 addresses within one interval: the engine answers
    at most the table's share, and never one address twice an interval."""
    c = clear_core(V2)
    c.receive_tap(V2, frame(b"\xff" * 6, MAC_A), 0.0)
    answers = 0
    for i in range(10_000):
        probe = encode_announce(V2.raw, mac(i), addr(i)) + PROBE_TRAILER
        answers += len(c.receive_udp(probe, addr(i), GROUP, 1.0 + i * 1e-5))
    assert answers == LIMITS["answers"].per_vnet
    probe = encode_announce(V2.raw, mac(0), addr(0)) + PROBE_TRAILER
    assert c.receive_udp(probe, addr(0), GROUP, 1.5) == []
    assert c.vnet(V2).counters.refused["answers_vnet_full"] == 10_000 - answers
    check_bounds(c)


def test_probes_sent_are_bounded_per_vnet():
    c = clear_core(V2)
    for i in range(600):
        c.varp.learn(V2.raw, mac(i), addr(i), 1.0)
    packet = tcp_packet(100, 0, (offload.F_NEEDS_CSUM, 0, 0, 0, 34, 16))
    probes = 0
    for i in range(600):
        fr = mac(i) + packet[16:]
        probes += sum(a.payload.endswith(PROBE_TRAILER)
                      for a in c.receive_tap(V2, fr, 1.0, packet[:10] + fr))
    assert probes == LIMITS["probes"].per_vnet


# -- the duplicate window ----------------------------------------------------------------

def test_one_sender_fills_only_its_share_of_the_duplicate_window():
    c = clear_core(V2)
    c.peer_add("198.51.100.7")
    for i in range(10_000):
        c.receive_udp(data(V2, frame(MAC_A, mac(i))), PEER, GROUP, 1.0)
    assert len(c.duplicates) == LIMITS["duplicates"].per_source
    copy = data(V2, frame(MAC_A, mac(1)))
    c.receive_udp(copy, "192.0.2.3", GROUP, 1.0)
    c.receive_udp(copy, "192.0.2.3", GROUP, 1.1)
    assert c.counters.vfwd_duplicates == 1


# -- secured vnets: forged packets -------------------------------------------------------

def test_forged_secured_packets_cost_no_more_than_a_genuine_one(monkeypatch):
    """A forged packet naming a new sender costs one HMAC block and one key
    set-up, as a genuine sender's first packet does, no HKDF extract; past
    the vnet's budget of such derivations, none (``new_sender_limited``), so
    a flood costs less per packet than genuine traffic.  It changes no
    state; a genuine packet of a known sender derives nothing."""
    clock = Clock()
    r = secured_core(ME, 1, clock)
    s = secured_core(PEER, 2, clock)
    calls = {"hkdf": 0, "expand": 0}
    real_hkdf, real_expand = keys._hkdf, getattr(keys, "traffic_key_with", None)

    def spy_hkdf(*a):
        calls["hkdf"] += 1
        return real_hkdf(*a)

    def spy_expand(*a):
        calls["expand"] += 1
        return real_expand(*a)

    monkeypatch.setattr(keys, "_hkdf", spy_hkdf)
    monkeypatch.setattr(keys, "traffic_key_with", spy_expand, raising=False)
    [genuine, second] = [sent(s.receive_tap(V97, frame(b"\xff" * 6, MAC_A), 1.0))[-1].payload
                         for _ in range(2)]
    burst = 1024        # docs/security.md "Resource limits"
    for n in range(burst + 1000):       # random sender ids, each a key derivation at most
        forged = bytearray(genuine)
        forged[8:16] = (1000 + n).to_bytes(8, "big")
        assert r.receive_udp(bytes(forged), PEER, GROUP, 1.0) == []
    assert calls["hkdf"] == 0 and keystore.NEW_SENDER_BURST == burst
    assert r.counters.rx_dropped == {"bad_icv": burst, "new_sender_limited": 1000}
    assert calls == {"hkdf": 0, "expand": 1 + burst}      # the sender's epoch, the budget
    gen = next(iter(r.vnet(V97).keys.generations.values()))
    assert gen.peers == {} and len(r.varp) == 0
    assert r.receive_udp(genuine, PEER, GROUP, 1.0) == []       # waits for the budget
    assert r.receive_udp(genuine, PEER, GROUP, 1.1)             # refilled: accepted
    r.receive_udp(second, PEER, GROUP, 1.1)
    assert calls["expand"] == 1 + burst + 1 and calls["hkdf"] == 0   # one per (sender, epoch)


def test_traffic_keys_are_still_hkdf():
    group = bytes(range(32))
    info = b"traffic" + bytes([2]) + (7).to_bytes(8, "big") + (9).to_bytes(8, "big")
    assert keys.traffic_key(group, 2, 7, 9) == keys._hkdf(group, info, 16)


# -- the shared mechanism -----------------------------------------------------------------

def test_a_thousand_vnets_stay_within_the_global_cap_with_a_reserve_each():
    t = BoundedTable("varp", 60.0, Limits(per_vnet=50, reserve=2, total=3000))
    t.vnets = 1000
    for part in range(1000):
        for i in range(60):
            if t.room(part, None, 0.0):
                t.insert((part, i), Entry(part, None, 0.0))
    assert len(t) == 3000
    assert all(t.count_of(part) >= 2 for part in range(1000))
    for kind, lim in LIMITS.items():
        if kind != "duplicates":
            assert lim.reserve * 1000 <= lim.total, kind


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(("data", "announce", "probe", "segment", "tap",
                                           "kernel_announce", "kernel_remote", "kernel_local")),
                          st.sampled_from((V2, V3, V97)), st.integers(0, 40),
                          st.integers(0, 6), st.floats(0, 2)), max_size=120))
def test_no_sequence_of_packets_grows_a_table_past_its_bounds(packets):
    clock = Clock()
    c = make_core(ME, vnet=V97, security="auth", key=KEY1, context=context(1, clock),
                  offload=True)
    c.add_vnet(V2, "vnif0002")
    c.add_vnet(V3, "vnif0003")
    c.peer_add("198.51.100.7")
    c.mirror_tables()
    c.set_kernel(V2, True)      # the kernel path's reports and peers (design.md 1.1)
    for t in c.bounded:
        t.limits = Limits(per_vnet=5, reserve=1, total=9, per_source=3)
    now = 1.0
    for kind, vid, m, src, dt in packets:
        now += dt
        source = addr(src)
        if kind == "data":
            c.receive_udp(data(vid, frame(MAC_A, mac(m))), source, GROUP, now)
        elif kind in ("announce", "probe", "kernel_announce"):
            trailer = {"announce": CAP_TRAILER, "probe": PROBE_TRAILER,
                       "kernel_announce": KERNEL_PROBE_TRAILER}[kind]
            c.receive_udp(encode_announce(vid.raw, mac(m), addr(m)) + trailer, source, GROUP,
                          now)
        elif kind == "kernel_remote":
            c.receive_tap(vid, frame(BCAST, mac(src)), now)     # a domain of ours to probe with
            c.kernel_remote_seen(vid, mac(m), source, now)
        elif kind == "kernel_local":
            c.kernel_local_seen(vid, mac(m), now)
        elif kind == "segment":
            c.receive_udp(first_segment(vid, m), source, ME, now)
        else:
            c.receive_tap(vid, frame(mac(src), mac(m)), now)
        check_bounds(c)
    assert consistent(c)
    mirrored = {}
    for change in c.drain_table_changes():
        key = (change.table, change.vid, change.mac, change.addr if change.table ==
               "kernel_peer" else None)
        if change.present:
            mirrored[key] = change.addr
        else:
            mirrored.pop(key, None)
    # What the changes made is what the tables hold (core/mirror.py).
    assert sorted(mirrored.items()) == sorted(
        ((e.table, e.vid, e.mac, e.addr if e.table == "kernel_peer" else None), e.addr)
        for v in (V2, V3, V97) for e in c.table_entries(v))


def test_resource_limits_in_security_md_match_the_code():
    """docs/security.md "Resource limits" is where every bound is written."""
    doc = (Path(__file__).parent.parent / "docs" / "security.md").read_text()
    section = doc.split("## Resource limits", 1)[1].split("\n## ", 1)[0]
    rows = {m[1]: m[2] for m in re.finditer(r"^\| `(\w+)` [^|]*\|([^|]*)\|", section, re.M)}
    assert set(LIMITS) <= set(rows)
    for kind, lim in LIMITS.items():
        numbers = [int(n.replace(",", "")) for n in re.findall(r"[\d,]+\d|\d", rows[kind])]
        assert numbers == [lim.per_vnet, lim.reserve, lim.total] + (
            [lim.per_source] if lim.per_source else []), kind
    for name, value in (("min-gso-size", offload.MIN_GSO_SIZE),
                        ("plain-frames", offload.MAX_PLAIN_FRAMES),
                        ("cap-ttl", peer_caps.CAP_TTL),
                        ("probe-interval", peer_caps.PROBE_INTERVAL),
                        ("reassembly-timeout", reassembly.REASSEMBLY_TIMEOUT),
                        ("duplicate-window", vfwd.DUPLICATE_WINDOW),
                        ("new-senders", keystore.NEW_SENDERS_PER_SECOND),
                        ("new-sender-burst", keystore.NEW_SENDER_BURST),
                        ("kernel-remotes", kernel_maps.MAX_REMOTES),
                        ("kernel-locals", kernel_maps.MAX_LOCALS),
                        ("kernel-vnets", kernel_maps.MAX_VNETS),
                        ("kernel-seen", kernel_maps.MAX_SEEN),
                        ("kernel-event-budget", kernel_maps.EVENT_BUDGET),
                        ("use-reads", kernel_path.USE_READS)):
        assert re.search(rf"<!-- {name} -->\s*{value:g}\b", section), name
    assert bounds.__doc__ and "Resource limits" in bounds.__doc__


def test_refusals_appear_in_vnet_stats():
    c = clear_core(V2)
    c.set_limit(V2, "vif", 1)
    c.receive_tap(V2, frame(b"\xff" * 6, mac(1)), 1.0)
    c.receive_tap(V2, frame(b"\xff" * 6, mac(2)), 1.0)
    assert "(refused (vif_vnet_full 1))" in listing.vnet_stats(c)
    assert isinstance(c.receive_tap(V2, frame(b"\xff" * 6, mac(1)), 1.0)[0], SendUdp)
