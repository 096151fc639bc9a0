"""Golden tests: the legacy vnetd capture decodes to the right fields, and our
encoders give the same bytes for data, VARP and own-multicast VFWD."""

import json
import pathlib

import pytest

from xend_vnet.kernel_shim.wire import codec
from xend_vnet.kernel_shim.wire.codec import DecodeError, VarpHeader
from xend_vnet.vnet_id import VnetId

VECTORS = {
    v["name"]: v for v in json.loads(
        (pathlib.Path(__file__).parent / "vectors" / "legacy-vnetd-capture.json")
        .read_text())["vectors"]
}
VID97 = VnetId.parse("97").raw
MAC_A = bytes.fromhex("8e3a52c8081c")      # 10.0.0.100 behind 192.0.2.1
MAC_B = bytes.fromhex("eae96973f09d")      # 10.0.0.101 behind 192.0.2.2


def payload(name: str) -> bytes:
    return bytes.fromhex(VECTORS[name]["udp_payload_hex"])


def test_every_vector_is_known():
    assert set(VECTORS) == {
        "data-flood-broadcast-arp", "data-unicast-arp-reply", "data-unicast-icmp-echo",
        "varp-request-multicast", "varp-announce-reply", "varp-request-unknown-mac",
        "vfwd-own-multicast", "vfwd-relayed-multicast"}
    for v in VECTORS.values():
        assert v["udp_sport"] in (1798, 58194, 52392) and v["udp_dport"] == 1798


@pytest.mark.parametrize("name,dst,src,ethertype", [
    ("data-flood-broadcast-arp", b"\xff" * 6, MAC_A, 0x0806),
    ("data-unicast-arp-reply", MAC_A, MAC_B, 0x0806),
    ("data-unicast-icmp-echo", MAC_B, MAC_A, 0x0800),
])
def test_data_vectors(name, dst, src, ethertype):
    p = payload(name)
    assert codec.msg_id(p) == codec.MSG_DATA
    vid, frame = codec.decode_data(p)
    assert vid == VID97
    assert frame[:6] == dst and frame[6:12] == src
    assert int.from_bytes(frame[12:14], "big") == ethertype
    assert codec.DATA_PREFIX + vid + frame == p


def test_data_arp_flood_is_not_padded():
    _, frame = codec.decode_data(payload("data-flood-broadcast-arp"))
    assert len(frame) == 42     # protocol.md 4.2: no padding to 60 bytes


@pytest.mark.parametrize("name,opcode,vmac,addr", [
    ("varp-request-multicast", codec.VARP_REQUEST, MAC_A, "192.0.2.2"),
    ("varp-announce-reply", codec.VARP_ANNOUNCE, MAC_A, "192.0.2.1"),
    ("varp-request-unknown-mac", codec.VARP_REQUEST, bytes.fromhex("020000009999"), "192.0.2.2"),
])
def test_varp_vectors(name, opcode, vmac, addr):
    p = payload(name)
    assert len(p) == codec.VARP_HEADER_LEN
    h = VarpHeader.decode(p)
    assert (h.opcode, h.vnet, h.vmac, h.family, h.ipv4) == (opcode, VID97, vmac, 2, addr)
    assert h.addr[4:] == bytes(12)
    assert h.encode() == p


def test_announce_builder_matches_legacy_reply():
    assert codec.encode_announce(VID97, MAC_A, "192.0.2.1") == payload("varp-announce-reply")


def test_wire_md_announce_example():
    expected = bytes.fromhex(
        "00010002" + "00" * 15 + "04" + "aa0000110012" + "02c000020b" + "00" * 12)
    assert codec.encode_announce(VnetId.parse("4").raw, bytes.fromhex("aa0000110012"),
                                 "192.0.2.11") == expected


def test_vfwd_own_multicast_decodes_and_reencodes():
    p = payload("vfwd-own-multicast")
    assert codec.msg_id(p) == codec.MSG_VFWD
    inner = codec.decode_vfwd(p)
    assert inner[:5] == ("0.0.0.0", "224.10.0.1", 17, 1798, 1798)
    vid, frame = codec.decode_data(inner.udp_payload)
    assert vid == VID97 and frame[:6] == b"\xff" * 6
    rebuilt = codec.encode_vfwd(codec.inner_udp_packet(inner.udp_payload, "224.10.0.1"))
    assert rebuilt == p


def test_vfwd_relayed_multicast_decodes_at_fixed_offsets():
    inner = codec.decode_vfwd(payload("vfwd-relayed-multicast"))
    # Version, lengths, TTL and the UDP length are zero: ignored (protocol.md 7).
    assert inner[:5] == ("192.0.2.1", "224.10.0.1", 17, 1798, 1798)
    vid, frame = codec.decode_data(inner.udp_payload)
    assert vid == VID97 and frame[6:12] == MAC_A


def test_etherip_version_nibble_of_byte_one():
    p = bytearray(payload("data-unicast-icmp-echo"))
    p[4], p[5] = 0xBC, 0x4A          # reserved bits are legacy garbage (protocol.md 4.1)
    assert codec.decode_data(bytes(p))[0] == VID97
    p[5] = 0x30
    with pytest.raises(DecodeError) as e:
        codec.decode_data(bytes(p))
    assert e.value.reason == "bad_etherip_version"
    p[4], p[5] = 0x40, 0x00          # the RFC / big-endian layout is not accepted
    with pytest.raises(DecodeError):
        codec.decode_data(bytes(p))


@pytest.mark.parametrize("data,reason", [
    (b"", "short_header"), (b"\x00\x02", "short_header"),
])
def test_msg_id_short(data, reason):
    with pytest.raises(DecodeError) as e:
        codec.msg_id(data)
    assert e.value.reason == reason


@pytest.mark.parametrize("cut,reason", [(21, "data_truncated"), (35, "short_frame")])
def test_data_truncated(cut, reason):
    with pytest.raises(DecodeError) as e:
        codec.decode_data(payload("data-unicast-icmp-echo")[:cut])
    assert e.value.reason == reason


def test_data_minimum_frame_accepted():
    assert len(codec.decode_data(payload("data-unicast-icmp-echo")[:36])[1]) == 14


def test_varp_truncated_and_trailing():
    p = payload("varp-announce-reply")
    with pytest.raises(DecodeError) as e:
        VarpHeader.decode(p[:42])
    assert e.value.reason == "varp_truncated"
    assert VarpHeader.decode(p + b"junk").ipv4 == "192.0.2.1"


def test_vfwd_errors():
    with pytest.raises(DecodeError) as e:
        codec.decode_vfwd(payload("vfwd-own-multicast")[:31])
    assert e.value.reason == "vfwd_truncated"
    p = bytearray(payload("vfwd-own-multicast"))
    p[13] = 97
    with pytest.raises(DecodeError) as e:
        codec.decode_vfwd(bytes(p))
    assert e.value.reason == "vfwd_not_udp"


@pytest.mark.parametrize("text", ["aa:bb:cc:dd:ee:ff", "AA-BB-CC-DD-EE-FF", "aA:bB:cC:dD:eE:fF"])
def test_parse_mac(text):
    assert codec.parse_mac(text) == bytes.fromhex("aabbccddeeff")
    assert codec.mac_text(codec.parse_mac(text)) == "aa:bb:cc:dd:ee:ff"


@pytest.mark.parametrize("text", ["", "aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:fg", "aa:bb-cc:dd:ee:ff",
                                  "aabb.ccdd.eeff.00", "aa:bb:cc:dd:ee:ff:", " a:bb:cc:dd:ee:ff"])
def test_parse_mac_rejects(text):
    with pytest.raises(ValueError) as e:
        codec.parse_mac(text)
    assert repr(text) in str(e.value)


@pytest.mark.parametrize("text,ok", [
    ("192.0.2.1", "192.0.2.1"), ("224.010.0.1", "224.10.0.1"), ("1.2.3", None),
    ("1.2.3.256", None), ("a.b.c.d", None), ("1.2.3.4.5", None), ("", None), ("١.2.3.4", None)])
def test_parse_ipv4(text, ok):
    if ok:
        assert codec.parse_ipv4(text) == ok
    else:
        with pytest.raises(ValueError):
            codec.parse_ipv4(text)


def test_is_multicast():
    assert codec.is_multicast("224.10.0.1") and codec.is_multicast("239.255.255.255")
    assert not codec.is_multicast("223.1.1.1") and not codec.is_multicast("240.0.0.1")
