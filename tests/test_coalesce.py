"""Receive coalescing of plain frames into super-frames (coalesce.py)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from test_fastpath import check_ipv4_frame, ref_checksum, tcp_super_frame

from xend_vnet.kernel_shim.datapath.coalesce import coalesce, parse_segment
from xend_vnet.kernel_shim.core.engine import DeliverFrame, DeliverOffload, SendUdp
from xend_vnet.kernel_shim.wire.offload import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    VNET_HDR_LEN,
    plain_frames,
)
from xend_vnet.vnet_id import VnetId

V1 = VnetId.parse("99")
V2 = VnetId.parse("9a")


def segments(size: int, mss: int = 1448, seed: int = 0, **kw) -> list[bytes]:
    """The plain frames a sending engine makes of one super-frame (software TSO)."""
    payload = bytes((seed + i * 7) & 0xFF for i in range(size))
    return plain_frames(tcp_super_frame(payload, mss, **kw))


def deliver(frames: list[bytes], vid: VnetId = V1) -> list:
    return [DeliverFrame(vid, f) for f in frames]


def expand(actions: list) -> list[tuple[VnetId, bytes]]:
    """What the domain's stack ends up with: merged packets segmented again."""
    out = []
    for a in actions:
        if isinstance(a, DeliverOffload):
            out += [(a.vid, f) for f in plain_frames(a.packet)]
        elif isinstance(a, DeliverFrame):
            out.append((a.vid, a.frame))
    return out


def without_ip_id(frame: bytes) -> bytes:
    """IPv4 id and header checksum blanked: a merged run gets the first's id, and
    segmentation numbers the rest from it, as a NIC's TSO does."""
    seg = parse_segment(frame)
    if seg is None or seg.v6:
        return frame
    b = bytearray(frame)
    b[seg.l3 + 4:seg.l3 + 6] = b"\0\0"
    b[seg.l3 + 10:seg.l3 + 12] = b"\0\0"
    return bytes(b)


def vnet_hdr(packet: bytes) -> tuple:
    """``(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)`` of the
    virtio_net_hdr in front of ``packet`` (native byte order)."""
    return struct.unpack_from("=BBHHHH", packet)


def full_checksum_ok(packet: bytes) -> bool:
    """The merged frame's TCP checksum, completed as the kernel does from the
    partial sum in its field, is right (checked with an independent sum)."""
    flags, _gso, _hl, _gs, start, offset = vnet_hdr(packet)
    assert flags == F_NEEDS_CSUM and offset == 16
    frame = bytearray(packet[VNET_HDR_LEN:])
    partial = int.from_bytes(frame[start + 16:start + 18], "big")
    frame[start + 16:start + 18] = b"\0\0"
    body = bytes(frame[start:])
    if len(body) % 2:
        body += b"\0"
    s = sum(struct.unpack(f"!{len(body) // 2}H", body)) + partial
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    frame[start + 16:start + 18] = (~s & 0xFFFF).to_bytes(2, "big")
    l3 = start - 20
    if frame[l3] >> 4 == 4:
        check_ipv4_frame(bytes(frame))
        return True
    src_dst = bytes(frame[start - 32:start])
    l4 = bytes(frame[start:])
    pseudo = src_dst + struct.pack("!IxxxB", len(l4), 6)
    return ref_checksum(pseudo + l4) == 0


def test_a_run_of_segments_becomes_one_super_frame_that_segments_back_to_it():
    frames = segments(40_000)
    out, merged = coalesce(deliver(frames))
    assert merged == len(frames) == 28
    assert len(out) == 1 and isinstance(out[0], DeliverOffload)
    flags, gso_type, hdr_len, gso_size, start, offset = vnet_hdr(out[0].packet)
    assert (flags, gso_type, hdr_len, gso_size, start, offset) == (
        F_NEEDS_CSUM, GSO_TCPV4, 54, 1448, 34, 16)
    assert full_checksum_ok(out[0].packet)
    assert [without_ip_id(f) for _, f in expand(out)] == [without_ip_id(f) for f in frames]


def test_vlan_tagged_and_ipv6_runs_merge_too():
    for kw, gso in (({"vlan": 5}, GSO_TCPV4), ({"v6": True}, GSO_TCPV6)):
        frames = segments(10_000, **kw)
        out, merged = coalesce(deliver(frames))
        assert merged == len(frames) and len(out) == 1, kw
        assert vnet_hdr(out[0].packet)[1] == gso
        assert full_checksum_ok(out[0].packet)
        assert [without_ip_id(f) for _, f in expand(out)] == [without_ip_id(f) for f in frames]


def test_psh_stays_on_the_last_segment_and_a_short_one_ends_the_run():
    first, second = segments(3 * 1448 + 100), segments(5 * 1448, seed=3)
    out, merged = coalesce(deliver(first))
    tcp_flags = out[0].packet[VNET_HDR_LEN + 34 + 13]
    assert tcp_flags == 0x18 and merged == 4          # PSH came from the last segment
    # The short segment closes the first run; the next flow's run starts afresh.
    out, _ = coalesce(deliver(first + second))
    assert [type(a) for a in out] == [DeliverOffload, DeliverOffload]


def test_a_segment_with_a_bad_checksum_is_passed_alone_and_unchanged():
    frames = segments(10 * 1448, flags=0x10)
    bad = bytearray(frames[4])
    bad[-1] ^= 0xFF
    frames[4] = bytes(bad)
    out, merged = coalesce(deliver(frames))
    assert [type(a) for a in out] == [DeliverOffload, DeliverFrame, DeliverOffload]
    assert out[1].frame == frames[4]
    assert merged == 9
    assert [without_ip_id(f) for _, f in expand(out)] == [without_ip_id(f) for f in frames]


def test_gaps_reordering_other_flows_and_other_vnets_are_not_merged():
    frames = segments(6 * 1448, flags=0x10)
    reordered = frames[:2] + [frames[3], frames[2]] + frames[4:]
    out, _ = coalesce(deliver(reordered))
    assert [without_ip_id(f) for _, f in expand(out)] == [without_ip_id(f) for f in reordered]
    assert len(out) == 4      # 0-1 merged, 3 and 2 alone, 4-5 merged
    other = segments(3 * 1448, seed=9, flags=0x10)
    other = [f[:6] + b"\xaa\x00\x00\x00\x00\x09" + f[12:] for f in other]   # another sender
    mixed = [frames[0], other[0], frames[1], other[1]]
    out, merged = coalesce(deliver(mixed))
    assert merged == 0 and [a.frame for a in out] == mixed
    out, merged = coalesce(deliver(frames[:3]) + deliver(frames[3:], V2))
    assert [(type(a), a.vid) for a in out] == [(DeliverOffload, V1), (DeliverOffload, V2)]


def test_other_actions_keep_their_place_and_non_tcp_frames_pass():
    frames = segments(4 * 1448, flags=0x10)
    send = SendUdp("192.0.2.2", b"x")
    ping = b"\xaa" * 12 + b"\x08\x00" + b"\x45" + bytes(83)
    actions = [send, DeliverFrame(V1, ping)] + deliver(frames) + [send]
    out, merged = coalesce(actions)
    assert out[:2] == actions[:2] and out[-1] is send and merged == 4
    assert isinstance(out[2], DeliverOffload) and len(out) == 4


def test_frames_longer_than_the_vnet_mtu_are_never_merged():
    """A jumbo sender on a 1500-byte vnet: the writer must still refuse its
    frames one by one (frame_too_big), so they must not hide in a merged one."""
    frames = segments(5 * 8948, mss=8948, flags=0x10)
    out, merged = coalesce(deliver(frames), max_frame=1518)
    assert merged == 0 and [a.frame for a in out] == frames
    out, merged = coalesce(deliver(frames), max_frame=9018)
    assert merged == 5


def shift_seq(frames: list[bytes], delta: int) -> list[bytes]:
    """IPv4 segments moved ``delta`` bytes on in the stream, checksums redone."""
    out = []
    for f in frames:
        b = bytearray(f)
        seq = int.from_bytes(b[38:42], "big")
        b[38:42] = ((seq + delta) & 0xFFFFFFFF).to_bytes(4, "big")
        b[50:52] = b"\0\0"
        pseudo = bytes(b[26:34]) + struct.pack("!BBH", 0, 6, len(b) - 34)
        b[50:52] = ref_checksum(pseudo + bytes(b[34:])).to_bytes(2, "big")
        out.append(bytes(b))
    return out


def test_a_merged_frame_never_exceeds_64_kib():
    burst = segments(40 * 1448, flags=0x10)
    frames = burst + shift_seq(burst, 40 * 1448) + shift_seq(burst, 80 * 1448)
    out, merged = coalesce(deliver(frames))
    assert merged == len(frames) == 120
    assert all(len(a.packet) - VNET_HDR_LEN <= 65536 for a in out)
    assert len(out) == 3          # 45 full segments fit in 64 KiB: 45, 45, 30
    assert [without_ip_id(f) for _, f in expand(out)] == [without_ip_id(f) for f in frames]


def _mutate(frames: list[bytes], data) -> list[bytes]:
    out = []
    for f in frames:
        choice = data.draw(st.integers(0, 9))
        if choice == 0 and len(f) > 1:
            at = data.draw(st.integers(0, len(f) - 1))
            f = f[:at] + bytes([f[at] ^ data.draw(st.integers(1, 255))]) + f[at + 1:]
        elif choice == 1:
            f = f[:data.draw(st.integers(0, len(f)))]
        elif choice == 4 and len(f) > 30:
            f = f[:24] + bytes([f[24] ^ 1]) + f[25:]     # the IPv4 header checksum
        elif choice == 2:
            continue
        out.append(f)
        if choice == 3:
            out.append(data.draw(st.binary(max_size=200)))
    return out


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_coalescing_loses_and_changes_nothing(data):
    """Any frames, merged or not, come out as the same frames in the same order
    (once merged ones are segmented again); bytes of any kind never raise."""
    size = data.draw(st.integers(1, 30_000))
    mss = data.draw(st.integers(240, 1448))   # at most MAX_PLAIN_FRAMES segments
    kw = data.draw(st.sampled_from(({}, {"vlan": 7}, {"v6": True})))
    frames = _mutate(segments(size, mss, flags=data.draw(st.sampled_from((0x10, 0x18))),
                              **kw), data)
    out, merged = coalesce(deliver(frames))
    assert merged <= len(frames)
    got = [(f, isinstance(a, DeliverOffload)) for a in out
           for f in (plain_frames(a.packet) if isinstance(a, DeliverOffload) else [a.frame])]
    assert len(got) == len(frames)
    for (frame, from_merge), sent in zip(got, frames):
        if not from_merge:
            assert frame == sent            # passed alone: untouched
            continue
        # Merged: equal but for the IPv4 id, and only frames whose checksums held.
        assert without_ip_id(frame) == without_ip_id(sent)
        seg = parse_segment(sent)
        if not seg.v6:
            assert ref_checksum(sent[seg.l3:seg.l4]) == 0
        assert check_tcp_checksum(sent, seg)


def check_tcp_checksum(frame: bytes, seg) -> bool:
    l4 = frame[seg.l4:]
    if seg.v6:
        pseudo = frame[seg.l3 + 8:seg.l3 + 40] + struct.pack("!IxxxB", len(l4), 6)
    else:
        pseudo = frame[seg.l3 + 12:seg.l3 + 20] + struct.pack("!BBH", 0, 6, len(l4))
    return ref_checksum(pseudo + l4) == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_coalesce_takes_any_bytes(frames):
    out, merged = coalesce(deliver(frames))
    assert merged == 0 or len(out) < len(frames)
    assert len(expand(out)) == len(frames)
