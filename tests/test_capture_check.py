"""benchmarks/capture_check.py: pcap records, outer and inner fragments, the
legacy framing through the project's codec, and the checksums of the frames
inside (against the legacy daemon's own captured frames and against frames
whose checksums the engine's offload code computes)."""

from __future__ import annotations

import json
import os
import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netns import REPO

from xend_vnet.kernel_shim.wire import codec, offload, segments

sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import capture_check as cc  # noqa: E402

with open(os.path.join(REPO, "tests", "vectors", "legacy-vnetd-capture.json")) as _f:
    VECTORS = {v["name"]: v for v in json.load(_f)["vectors"]}

VID = bytes(14) + b"\x00\x99"
OURS, LEGACY = "192.0.2.1", "192.0.2.2"
MACS = bytes.fromhex("aa0000000002aa0000000001")


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 1,
         flags_offset: int = 0x4000, checksum: bool = True) -> bytes:
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident,
                                   flags_offset, 64, proto, 0, codec.ipv4_bytes(src),
                                   codec.ipv4_bytes(dst)))
    if checksum:
        header[10:12] = offload.checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + payload


def tcp_frame(payload: bytes, partial: bool = False, src: str = "10.99.0.1",
              dst: str = "10.99.0.2") -> bytes:
    """An Ethernet frame of one TCP segment; ``partial`` leaves the checksum
    as a NIC would find it (the pseudo-header's sum, not complemented)."""
    segment = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 0x50, 0x18, 512, 0, 0)
                        + payload)
    pseudo = codec.ipv4_bytes(src) + codec.ipv4_bytes(dst) + struct.pack(
        "!BBH", 0, 6, len(segment))
    if partial:
        value = offload.swap16(offload.ones_sum(pseudo))
    else:
        value = offload.checksum(pseudo + bytes(segment))
    segment[16:18] = value.to_bytes(2, "big")
    return MACS + b"\x08\x00" + ipv4(src, dst, 6, bytes(segment))


def udp_frame(payload: bytes, zero: bool = False, bad: bool = False) -> bytes:
    src, dst = "10.99.0.1", "10.99.0.2"
    segment = bytearray(struct.pack("!HHHH", 5000, 5001, 8 + len(payload), 0) + payload)
    if not zero:
        pseudo = codec.ipv4_bytes(src) + codec.ipv4_bytes(dst) + struct.pack(
            "!BBH", 0, 17, len(segment))
        value = offload.checksum(pseudo + bytes(segment)) ^ (1 if bad else 0)
        segment[6:8] = value.to_bytes(2, "big")
    return MACS + b"\x08\x00" + ipv4(src, dst, 17, bytes(segment))


def udp_1798(src: str, dst: str, payload: bytes, ident: int = 7) -> list[bytes]:
    """The Ethernet frames of one UDP 1798 datagram, cut into IPv4 fragments
    of at most 1500 bytes as a host whose datagrams do not fit sends them."""
    udp = struct.pack("!HHHH", 1798, 1798, 8 + len(payload), 0) + payload
    frames, off = [], 0
    while off < len(udp):
        piece = udp[off:off + 1480]
        more = off + len(piece) < len(udp)
        frames.append(b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ipv4(
            src, dst, 17, piece, ident, (0x2000 if more else 0) | off // 8))
        off += len(piece)
    return frames


def pcap(frames: list[bytes], snaplen: int = 65535, nanoseconds: bool = False,
         big_endian: bool = False) -> bytes:
    order = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, 1)
    for i, frame in enumerate(frames):
        kept = frame[:snaplen]
        out += struct.pack(order + "IIII", 1000 + i, 5, len(kept), len(frame)) + kept
    return out


def data(frame: bytes) -> bytes:
    return codec.DATA_PREFIX + VID + frame


def check(frames: list[bytes], **kw) -> cc.Report:
    return cc.check_packets(cc.read_pcap(pcap(frames, **kw)))


def test_the_legacy_daemons_own_frames_pass():
    frames = [f for name in ("data-flood-broadcast-arp", "data-unicast-arp-reply",
                             "data-unicast-icmp-echo")
              for f in udp_1798(VECTORS[name]["outer_src"], VECTORS[name]["outer_dst"],
                                bytes.fromhex(VECTORS[name]["udp_payload_hex"]))]
    report = check(frames)
    assert (report.datagrams, report.data_frames, report.bad) == (3, 3, 0)
    assert report.ipv4_checked == 1          # the ICMP echo; ARP has no IPv4 header
    assert report.legacy_framing


def test_complete_tcp_and_udp_checksums_pass_partial_ones_do_not():
    good = [tcp_frame(b"x" * 100), udp_frame(b"y" * 33), udp_frame(b"z", zero=True)]
    report = check([f for frame in good for f in udp_1798(OURS, LEGACY, data(frame))])
    assert (report.data_frames, report.l4_checked, report.bad) == (3, 3, 0)
    bad = [tcp_frame(b"x" * 100, partial=True), udp_frame(b"y" * 33, bad=True)]
    report = check([f for frame in bad for f in udp_1798(OURS, LEGACY, data(frame))])
    assert report.bad == 2
    assert "TCP checksum" in report.problems[0] and "UDP checksum" in report.problems[1]
    assert "10.99.0.1 > 10.99.0.2" in report.problems[0]


def test_a_bad_inner_ipv4_header_checksum_is_found():
    frame = bytearray(tcp_frame(b"a" * 10))
    frame[14 + 10] ^= 0xFF
    report = check(udp_1798(OURS, LEGACY, data(bytes(frame))))
    assert report.bad == 1 and "IPv4 header checksum" in report.problems[0]


def test_a_full_size_frame_in_two_outer_fragments_is_put_back_together():
    frame = tcp_frame(bytes(range(256)) * 5 + b"q" * 180)     # 1514 bytes: 1544 of UDP
    assert len(frame) == 1514
    pieces = udp_1798(OURS, LEGACY, data(frame))
    assert len(pieces) == 2
    report = check(list(reversed(pieces)))                     # order does not matter
    assert (report.datagrams, report.l4_checked, report.bad, report.incomplete) == (1, 1, 0, 0)
    report = check(pieces[:1])                                 # the second one lost
    assert (report.datagrams, report.incomplete) == (0, 1)


def test_inner_fragments_are_put_back_together_before_the_tcp_check():
    whole = tcp_frame(b"k" * 2000)
    ip = whole[14:]
    header, body = ip[:20], ip[20:]
    pieces = []
    for off, more in ((0, True), (1480, False)):
        piece = body[off:off + 1480]
        pieces.append(MACS + b"\x08\x00" + ipv4("10.99.0.1", "10.99.0.2", 6, piece, 9,
                                                (0x2000 if more else 0) | off // 8))
    assert header[9] == 6
    report = check([f for p in pieces for f in udp_1798(OURS, LEGACY, data(p), ident=len(p))])
    assert (report.ipv4_checked, report.l4_checked, report.bad) == (2, 1, 0)


def test_vlan_tags_protocol_97_and_ipv6():
    inner = tcp_frame(b"v" * 64)
    tagged = inner[:12] + b"\x81\x00\x00\x64" + inner[12:]
    ether = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ipv4(
        OURS, LEGACY, 97, b"\x00\x40" + VID + tagged)
    src6, dst6 = bytes(15) + b"\x01", bytes(15) + b"\x02"
    seg = bytearray(struct.pack("!HHHH", 1, 2, 12, 0) + b"abcd")
    seg[6:8] = offload.checksum(src6 + dst6 + struct.pack("!IxxxB", 12, 17)
                                + bytes(seg)).to_bytes(2, "big")
    v6 = MACS + b"\x86\xdd" + struct.pack("!IHBB", 0x60000000, 12, 17, 64) + src6 + dst6
    report = check([ether, *udp_1798(OURS, LEGACY, data(v6 + bytes(seg)))])
    assert (report.datagrams, report.l4_checked, report.bad) == (2, 2, 0)
    seg[7] ^= 1
    report = check(udp_1798(OURS, LEGACY, data(v6 + bytes(seg))))
    assert report.bad == 1 and "IPv6" in report.problems[0]


def test_other_messages_sources_and_truncated_records():
    varp = codec.encode_announce(VID, MACS[:6], OURS)
    fast = segments.MSG_FAST.to_bytes(2, "big") + bytes(30)
    frames = [*udp_1798(OURS, LEGACY, varp), *udp_1798(OURS, LEGACY, fast),
              *udp_1798(LEGACY, OURS, data(tcp_frame(b"p", partial=True))),
              *udp_1798(OURS, LEGACY, b"\x00\x09\x00\x00")]
    report = check(frames)
    assert (report.varp, report.fast, report.other, report.bad) == (1, 1, 1, 1)
    assert not report.legacy_framing
    only_ours = cc.check_packets(cc.read_pcap(pcap(frames)), sources={OURS})
    assert (only_ours.data_frames, only_ours.bad) == (0, 0)
    cut = check(udp_1798(OURS, LEGACY, data(tcp_frame(b"x" * 500))), snaplen=96)
    assert (cut.truncated, cut.datagrams) == (1, 0)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nanoseconds", [False, True])
def test_pcap_flavours(big_endian, nanoseconds):
    frames = udp_1798(OURS, LEGACY, data(tcp_frame(b"f")))
    packets = list(cc.read_pcap(pcap(frames, nanoseconds=nanoseconds, big_endian=big_endian)))
    assert [p.data for p in packets] == frames
    assert packets[0].time == pytest.approx(1000 + 5 / (1e9 if nanoseconds else 1e6))


def test_not_a_pcap_or_not_ethernet():
    with pytest.raises(cc.CaptureError, match="magic"):
        list(cc.read_pcap(b"\x0a\x0d\x0d\x0a" + bytes(40)))
    linux_cooked = pcap([])[:20] + struct.pack("<I", 113)
    with pytest.raises(cc.CaptureError, match="link type 113"):
        list(cc.read_pcap(linux_cooked))


def test_a_record_cut_by_the_end_of_the_file_ends_the_capture():
    whole = pcap(udp_1798(OURS, LEGACY, data(tcp_frame(b"e"))) * 2)
    assert len(list(cc.read_pcap(whole[:-5]))) == 1


def test_pending_fragments_are_bounded():
    r = cc.Reassembler()
    for i in range(cc.MAX_PENDING + 10):
        first = cc.parse_ipv4(ipv4(OURS, LEGACY, 17, bytes(16), ident=i, flags_offset=0x2000))
        assert r.add(first) is None
    assert len(r.pending) == cc.MAX_PENDING
    assert r.incomplete == cc.MAX_PENDING + 10


# Anything a capture may hold: the checker reports it, never raises.
RECORDS = st.lists(st.one_of(
    st.binary(max_size=120),
    st.builds(lambda f, cut: f[:cut], st.sampled_from(
        udp_1798(OURS, LEGACY, data(tcp_frame(b"h" * 1600)))
        + udp_1798(OURS, LEGACY, data(udp_frame(b"u")))), st.integers(0, 1600)),
    st.builds(lambda tail: b"\x02" * 12 + b"\x08\x00" + tail, st.binary(max_size=200)),
), max_size=8)


@settings(max_examples=300)
@given(RECORDS)
def test_any_records_give_a_report(records):
    report = cc.check_packets(cc.read_pcap(pcap(records)))
    assert report.packets == len(records)
    assert report.bad == len(report.problems) or len(report.problems) == cc.MAX_PROBLEMS


@given(st.binary(max_size=200))
def test_any_file_is_read_or_refused(blob):
    try:
        list(cc.read_pcap(blob))
    except cc.CaptureError:
        pass


def test_reports_of_several_captures_add_up():
    one = check(udp_1798(OURS, LEGACY, data(tcp_frame(b"x", partial=True))))
    two = check(udp_1798(LEGACY, OURS, data(tcp_frame(b"y"))))
    one.add(two)
    assert (one.datagrams, one.data_frames, one.l4_checked, one.bad) == (2, 2, 2, 1)
    assert one.by_source == {OURS: 1, LEGACY: 1} and len(one.problems) == 1


def one_packet(src: str, dst: str, payload: bytes) -> bytes:
    """A UDP 1798 datagram as a veth hands on a segmentation-offload packet:
    one IPv4 packet, however long."""
    udp = struct.pack("!HHHH", 1798, 1798, 8 + len(payload), 0) + payload
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ipv4(src, dst, 17, udp)


def test_a_udp_segment_train_captured_whole_is_cut_back_into_its_datagrams():
    full = [data(tcp_frame(bytes([i]) * 1380)) for i in range(3)]
    last = data(tcp_frame(b"z" * 200))
    assert len({len(m) for m in full}) == 1
    report = check([one_packet(OURS, LEGACY, b"".join(full) + last)])
    assert (report.gso_packets, report.datagrams, report.l4_checked, report.bad) == (1, 4, 4, 0)
    middle = data(tcp_frame(b"\x01" * 1380, partial=True))
    report = check([one_packet(OURS, LEGACY, full[0] + middle + full[2] + last)])
    assert (report.datagrams, report.bad) == (4, 1)
    # Frames shorter than Ethernet's minimum travel padded.
    ack = tcp_frame(b"")
    assert len(ack) == 54
    padded = data(ack + bytes(6))
    report = check([one_packet(OURS, LEGACY, padded * 30)])
    assert (report.datagrams, report.l4_checked, report.bad) == (30, 30, 0)


def test_a_super_frame_inside_one_message_is_counted_not_checked():
    # Tunnel segmentation: the kernel that cuts it makes each segment's checksum.
    report = check([one_packet(OURS, LEGACY, data(tcp_frame(b"s" * 9000, partial=True)))])
    assert (report.gso_packets, report.gso_frames, report.l4_checked, report.bad) == (1, 1, 0, 0)
    assert cc.split_train(b"\x00\x01" + bytes(3000), 1500) == [b"\x00\x01" + bytes(3000)]
