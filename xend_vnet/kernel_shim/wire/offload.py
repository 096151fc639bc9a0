"""The virtio_net_hdr of a TAP with offloads, and the software completion of
plain frames (checksums, TCP segmentation), sans-IO (docs/performance.md).

A TAP with offloads (``IFF_VNET_HDR`` and ``TUNSETOFFLOAD``) hands the engine
a TCP super-frame behind a 10-byte ``virtio_net_hdr`` that says whether the
kernel left the checksum partial (``NEEDS_CSUM``) and how to segment it
(``gso_type``, ``gso_size``).  Frames that must go plain (to legacy hosts,
every flood to the group, secured vnets) leave with complete checksums and
no GSO: ``plain_frames`` finishes the partial checksum or segments the TCP
super-frame in software, for that case only.
"""

from __future__ import annotations

import struct

from .codec import ETH_HEADER_LEN, DecodeError

VNET_HDR_LEN = 10                # struct virtio_net_hdr, native byte order
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)
F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_ECN = 0x80
MAX_PACKET = 65536 + VNET_HDR_LEN
MIN_SEGMENT = 536                # RFC 879's default MSS: never cut plain frames smaller
# The GSO size below which a super-frame is refused (vnetd --min-gso-size),
# and the most plain frames one super-frame becomes: 65,536 / 536 is 123
# (docs/security.md "Resource limits").
MIN_GSO_SIZE = MIN_SEGMENT
MAX_PLAIN_FRAMES = 128
PACKET_ETH_SRC = slice(VNET_HDR_LEN + 6, VNET_HDR_LEN + 12)   # the frame's source MAC

_VNET_HDR = struct.Struct("=BBHHHH")
_TCP_FRONT = struct.Struct("!4sI4sBBH")          # ports, seq, ack, offset, flags, window
_IPV4_VARIABLE = struct.Struct("!HH")            # total length, id
_U16 = struct.Struct("!H")
_ETH_VLAN = (0x8100, 0x88A8)
_UDP_CSUM_OFFSET = 6              # offsetof(struct udphdr, check); TCP's is 16


def check_vnet_hdr(packet: bytes, min_gso: int = MIN_GSO_SIZE,
                   bad: str = "bad_vnet_hdr") -> None:
    """DecodeError unless the virtio_net_hdr in front of ``packet`` fits its
    frame: known flags and GSO type, ``hdr_len`` and the checksum span inside
    the frame, checksum offsets only with NEEDS_CSUM (reason ``bad``), and a
    super-frame's ``gso_size`` at least ``min_gso`` ("gso_too_small"), so one
    frame never becomes thousands (docs/security.md "Resource limits")."""
    size = len(packet) - VNET_HDR_LEN
    if size < ETH_HEADER_LEN:
        raise DecodeError("short_frame", f"{len(packet)} bytes")
    flags, gso_type, hdr_len, gso_size, start, offset = _VNET_HDR.unpack_from(packet)
    kind = gso_type & ~GSO_ECN
    if flags & ~(F_NEEDS_CSUM | F_DATA_VALID) or kind not in (GSO_NONE, GSO_TCPV4, GSO_TCPV6):
        raise DecodeError(bad, f"flags {flags:#x} gso {gso_type:#x}")
    if hdr_len > size or (start + offset + 2 > size if flags & F_NEEDS_CSUM
                          else start or offset):
        raise DecodeError(bad, f"hdr_len {hdr_len} csum {start}+{offset} in {size} bytes")
    if kind != GSO_NONE and gso_size < min_gso:
        raise DecodeError("gso_too_small", f"gso_size {gso_size}")


def check_packet(packet: bytes, min_gso: int = MIN_GSO_SIZE) -> bytes:
    """A reassembled packet must hold a header that fits its Ethernet frame
    (``check_vnet_hdr``); the kernel checks the rest when the TAP takes it."""
    check_vnet_hdr(packet, min_gso, "fast_bad_vnet_hdr")
    return packet


def encode_vnet_hdr(flags: int, gso_type: int, hdr_len: int, gso_size: int,
                    csum_start: int, csum_offset: int) -> bytes:
    """The 10-byte virtio_net_hdr, in the host's byte order as the TAP reads it."""
    return _VNET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def residue(data: bytes, extra: int = 0) -> int:
    """The sum of ``data``'s 16-bit words, read little-endian, plus ``extra``,
    modulo 0xffff: 0 for data whose Internet checksum holds.

    A sum of 16-bit words equals the number they make modulo 0xffff (as
    2**16 is 1), which CPython computes in C on the whole buffer.  Read
    little-endian (no byte reversal, twice as fast) the words come out
    swapped, and so does their sum (RFC 1071 2(B)); an odd last byte is then
    the low byte of a word whose high byte is zero, the padding RFC 1071
    asks for.  Four quarters cut at even offsets add up to the same residue
    and make the division, the slow part, four times shorter."""
    q = (len(data) >> 3) << 1
    if q < 64:
        return (int.from_bytes(data, "little") + extra) % 0xFFFF
    return (int.from_bytes(data[:q], "little") + int.from_bytes(data[q:2 * q], "little")
            + int.from_bytes(data[2 * q:3 * q], "little")
            + int.from_bytes(data[3 * q:], "little") + extra) % 0xFFFF


def ones_sum(data: bytes, extra: int = 0) -> int:
    """The ones' complement sum (RFC 1071) of ``data`` plus ``extra`` (a sum of
    swapped 16-bit words), folded to 16 bits, its bytes swapped (``residue``)."""
    return residue(data, extra) or (0xFFFF if extra or any(data) else 0)


def swap16(x: int) -> int:
    return ((x & 0xFF) << 8) | (x >> 8)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``, as an int to store big-endian."""
    return swap16(~ones_sum(data) & 0xFFFF)


def plain_frames(packet: bytes, max_frame: int = 0) -> list[bytes]:
    """The frames a legacy host would have received for ``packet`` (virtio_net_hdr
    + frame): checksums complete, TCP super-frames cut at ``gso_size``, or
    smaller so that each frame is at most ``max_frame`` bytes (what fits one
    datagram unfragmented) when that leaves segments of 536 bytes or more."""
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = _VNET_HDR.unpack_from(packet)
    frame = packet[VNET_HDR_LEN:]
    kind = gso_type & ~GSO_ECN
    if kind == GSO_NONE:
        if flags & F_NEEDS_CSUM:
            return [_complete_checksum(frame, csum_start, csum_offset)]
        return [frame]
    if kind in (GSO_TCPV4, GSO_TCPV6) and gso_size > 0:
        return _segment_tcp(frame, gso_size, max_frame)
    raise DecodeError("gso_unsupported", f"gso type {gso_type:#x}")


def _complete_checksum(frame: bytes, start: int, offset: int) -> bytes:
    """Fold the data from ``start`` into the field at ``start + offset``, which
    holds the pseudo-header sum (the CHECKSUM_PARTIAL contract)."""
    at = start + offset
    if at + 2 > len(frame) or start >= len(frame):
        raise DecodeError("bad_csum_offset", f"start {start} offset {offset}")
    c = checksum(frame[start:])
    if c == 0 and offset == _UDP_CSUM_OFFSET:
        c = 0xFFFF       # UDP sends a computed zero as all ones (RFC 768)
    out = bytearray(frame)
    out[at:at + 2] = c.to_bytes(2, "big")
    return bytes(out)


def _l3_offset(frame: bytes) -> int:
    off = 12
    while off + 2 <= len(frame) and int.from_bytes(frame[off:off + 2], "big") in _ETH_VLAN:
        off += 4
    return off + 2


def _tcp_offsets(frame: bytes) -> tuple[int, int, int]:
    """``(l3, l4, body)``: where the IP header, the TCP header and the TCP
    payload of ``frame`` start; DecodeError unless it is TCP over IPv4, or
    over IPv6 without extension headers."""
    l3 = _l3_offset(frame)
    if l3 + 20 > len(frame):
        raise DecodeError("gso_bad_frame", "no IP header")
    version = frame[l3] >> 4
    if version == 4:
        ihl = (frame[l3] & 15) * 4
        if ihl < 20 or frame[l3 + 9] != 6:
            raise DecodeError("gso_bad_frame", "not TCP over IPv4")
        l4 = l3 + ihl
    elif version == 6:
        if frame[l3 + 6] != 6:
            raise DecodeError("gso_bad_frame", "not TCP over IPv6 without extension headers")
        l4 = l3 + 40
    else:
        raise DecodeError("gso_bad_frame", f"IP version {version}")
    if l4 + 20 > len(frame):
        raise DecodeError("gso_bad_frame", "no TCP header")
    body = l4 + (frame[l4 + 12] >> 4) * 4
    if body - l4 < 20 or body > len(frame):
        raise DecodeError("gso_bad_frame", "bad TCP header length")
    return l3, l4, body


def _segment_tcp(frame: bytes, mss: int, max_frame: int = 0) -> list[bytes]:
    """Software TSO: what the NIC would have sent for this super-frame (one VLAN
    tag or more kept, IPv4 id incremented, checksums computed), in segments
    of ``mss`` or fewer bytes so that frames stay within ``max_frame``.

    A smaller segment than the domain's MSS is a valid TCP segment; it spares
    every datagram its two IP fragments (design.md 11: legacy vnetd fragments
    every full frame), and a train of equal datagrams that fit the MTU can
    leave in one UDP_SEGMENT send."""
    l3, l4, body = _tcp_offsets(frame)
    v4 = frame[l3] >> 4 == 4
    ihl, thl = l4 - l3, body - l4
    if max_frame and MIN_SEGMENT <= max_frame - body < mss:
        mss = max_frame - body
    n = -(-(len(frame) - body) // mss) or 1
    if n > MAX_PLAIN_FRAMES:
        raise DecodeError("gso_too_many", f"{n} segments of {mss} bytes")
    eth = frame[:l3]
    ports, seq, ack, doff, tcp_flags, window = _TCP_FRONT.unpack_from(frame, l4)
    after_sum = frame[l4 + 18:body]                     # urgent pointer and options
    ip = bytearray(frame[l3:l4])
    if v4:
        ip_id = int.from_bytes(ip[4:6], "big")
        ip[2:6] = bytes(4)                              # total length, id
        ip[10:12] = bytes(2)                            # checksum
    # What stays the same in every segment's sums: the pseudo-header (RFC 793,
    # RFC 8200 8.1) but its length, and the TCP header but its first 16 bytes
    # (in little-endian "swapped" words, as residue reads them); the IPv4
    # header with length, id and checksum zero (big-endian words).
    addresses = ip[12:20] if v4 else ip[8:40]
    fixed = int.from_bytes(addresses, "little") + 0x0600 + int.from_bytes(after_sum, "little")
    ip_fixed = int.from_bytes(ip, "big") if v4 else 0
    out = []
    view = memoryview(frame)
    for i in range(n):
        data = view[body + i * mss:body + (i + 1) * mss]
        # FIN and PSH belong to the last segment, CWR to the first (as GSO does).
        flags = tcp_flags & ~(0x09 if i != n - 1 else 0) & ~(0x80 if i else 0)
        front = _TCP_FRONT.pack(ports, (seq + i * mss) & 0xFFFFFFFF, ack, doff, flags, window)
        tcp_len = thl + len(data)
        if v4:
            ident = (ip_id + i) & 0xFFFF
            ip_sum = (ip_fixed + ihl + tcp_len + ident) % 0xFFFF or 0xFFFF
            _IPV4_VARIABLE.pack_into(ip, 2, ihl + tcp_len, ident)
            _U16.pack_into(ip, 10, ~ip_sum & 0xFFFF)
        else:
            _U16.pack_into(ip, 4, tcp_len)
        # The parts sum apart: each starts at an even offset of the segment,
        # so their words are the segment's words.
        total = ones_sum(data, int.from_bytes(front, "little") + fixed + swap16(tcp_len))
        out.append(b"".join((eth, ip, front, swap16(~total & 0xFFFF).to_bytes(2, "big"),
                             after_sum, data)))
    return out
