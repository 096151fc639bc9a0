"""Wire codecs of era-C vnet on UDP port 1798 (protocol.md 2, 3.2, 4.1-4.2, 7).

Every UDP payload starts with a VnetMsgHdr (u16 id, u16 opcode, big-endian).
Decoders raise ``DecodeError`` whose ``reason`` is a short snake_case word:
the engine counts drops under it.  The data path works on byte slices at
fixed offsets, no per-field objects.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import NamedTuple

VARP_PORT = 1798
VARP_MCADDR = "224.10.0.1"

# VnetMsgHdr ids (protocol.md 2) and VARP opcodes (protocol.md 3.3).
MSG_VARP = 1
MSG_DATA = 2
MSG_VFWD = 3
MSG_SECURE = 4
VARP_REQUEST = 1
VARP_ANNOUNCE = 2

AF_INET_WIRE = 2        # the Linux AF_INET value carried in VARP (protocol.md 3.2)
VARP_HEADER_LEN = 43
ETHERIP_VERSION = 4
ETH_HEADER_LEN = 14
# VnetMsgHdr `00 02 00 00` + etherip `00 40`: the x86 legacy layout puts
# the version in the high nibble of the second byte (protocol.md 4.1).  A data
# payload is this prefix, the vnet id and the frame as is (no padding).
DATA_PREFIX = b"\x00\x02\x00\x00\x00\x40"
ETHERIP_HEADER_LEN = 18   # version/reserved + vnet id (protocol.md 4.1)
DATA_HEADER_LEN = 4 + ETHERIP_HEADER_LEN
VFWD_PREFIX = b"\x00\x03\x00\x00"
INNER_HEADER_LEN = 28   # fixed 20-byte IPv4 + 8-byte UDP header (protocol.md 7)

# Fields read in place on the data path, as slices: of an Ethernet frame, and
# of a data payload (VnetMsgHdr, etherip header, frame; protocol.md 4.1).
ETH_DST = slice(0, 6)
ETH_SRC = slice(6, 12)
DATA_VNET = slice(6, DATA_HEADER_LEN)
DATA_HEADER = slice(0, DATA_HEADER_LEN)
DATA_ETH_SRC = slice(DATA_HEADER_LEN + 6, DATA_HEADER_LEN + 12)
ETHERIP_VNET = slice(2, ETHERIP_HEADER_LEN)

_VARP = struct.Struct("!HH16s6sB16s")
_INNER = struct.Struct("!BBHHHBBH4s4sHHHH")
_ZERO12 = bytes(12)


class DecodeError(ValueError):
    """Bytes that are not a valid message; ``reason`` keys the drop counter."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def msg_id(payload: bytes) -> int:
    """The VnetMsgHdr id; DecodeError when the payload is under 4 bytes."""
    if len(payload) < 4:
        raise DecodeError("short_header", f"{len(payload)} bytes")
    return (payload[0] << 8) | payload[1]


# -- data (VUDP) ----------------------------------------------------------------

def decode_data(payload: bytes) -> tuple[bytes, bytes]:
    """``(vnet id bytes, ethernet frame)`` of a data payload (protocol.md 4.4)."""
    if len(payload) < DATA_HEADER_LEN:
        raise DecodeError("data_truncated", f"{len(payload)} bytes")
    # Only the version nibble counts; the other 12 bits are legacy garbage.
    if payload[5] >> 4 != ETHERIP_VERSION:
        raise DecodeError("bad_etherip_version", f"byte 1 = {payload[5]:#04x}")
    if len(payload) < DATA_HEADER_LEN + ETH_HEADER_LEN:
        raise DecodeError("short_frame", f"{len(payload) - DATA_HEADER_LEN} bytes")
    return payload[DATA_VNET], payload[DATA_HEADER_LEN:]


def decode_etherip(packet: bytes) -> tuple[bytes, bytes]:
    """``(vnet id bytes, ethernet frame)`` of an IP protocol 97 payload: the
    18-byte etherip header and the frame, no VnetMsgHdr (protocol.md 4.3)."""
    if len(packet) < ETHERIP_HEADER_LEN:
        raise DecodeError("etherip_truncated", f"{len(packet)} bytes")
    if packet[1] >> 4 != ETHERIP_VERSION:
        raise DecodeError("bad_etherip_version", f"byte 1 = {packet[1]:#04x}")
    if len(packet) < ETHERIP_HEADER_LEN + ETH_HEADER_LEN:
        raise DecodeError("short_frame", f"{len(packet) - ETHERIP_HEADER_LEN} bytes")
    return packet[ETHERIP_VNET], packet[ETHERIP_HEADER_LEN:]


# -- VARP -------------------------------------------------------------------------

@dataclass(frozen=True)
class VarpHeader:
    """The 43-byte packed VARP header (protocol.md 3.2)."""

    opcode: int
    vnet: bytes
    vmac: bytes
    family: int = AF_INET_WIRE
    addr: bytes = bytes(16)

    @property
    def ipv4(self) -> str:
        """The IPv4 in the first 4 address bytes, as legacy uses it (protocol.md 3.7)."""
        return ipv4_text(self.addr[:4])

    @classmethod
    def announce(cls, vnet: bytes, vmac: bytes, ipv4: str) -> VarpHeader:
        """An announce of (vnet, vmac) at ``ipv4``; the 12 spare bytes zero."""
        return cls(VARP_ANNOUNCE, vnet, vmac, AF_INET_WIRE, ipv4_bytes(ipv4) + _ZERO12)

    def encode(self) -> bytes:
        return _VARP.pack(MSG_VARP, self.opcode, self.vnet, self.vmac, self.family, self.addr)

    @classmethod
    def decode(cls, payload: bytes) -> VarpHeader:
        """Trailing bytes are ignored, as legacy does (protocol.md 2)."""
        if len(payload) < VARP_HEADER_LEN:
            raise DecodeError("varp_truncated", f"{len(payload)} bytes")
        ident, opcode, vnet, vmac, family, addr = _VARP.unpack_from(payload)
        if ident != MSG_VARP:
            raise DecodeError("not_varp", f"message id {ident}")
        return cls(opcode, vnet, vmac, family, addr)


def encode_announce(vnet: bytes, vmac: bytes, ipv4: str) -> bytes:
    """The 43 bytes of an announce (the hot-path shortcut of VarpHeader)."""
    return VarpHeader.announce(vnet, vmac, ipv4).encode()


# -- VFWD (peer forwarding, protocol.md 7) ----------------------------------------------

class InnerPacket(NamedTuple):
    """The inner IPv4+UDP packet of a VFWD message, read at fixed offsets."""

    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    udp_payload: bytes


def inner_udp_packet(payload: bytes, dst: str, port: int = VARP_PORT,
                     src: str = "0.0.0.0") -> bytes:
    """An IPv4+UDP packet as the legacy copies its own multicast to peers:
    taken before the IP layer fills it, so id 0, IP checksum 0, UDP checksum 0,
    source 0.0.0.0 unless given, TTL 64, DF clear (protocol.md 7, vector
    vfwd-own-multicast)."""
    udp_len = 8 + len(payload)
    return _INNER.pack(0x45, 0, 20 + udp_len, 0, 0, 64, 17, 0,
                       ipv4_bytes(src), ipv4_bytes(dst),
                       port, port, udp_len, 0) + payload


def encode_vfwd(inner_ip_packet: bytes) -> bytes:
    return VFWD_PREFIX + inner_ip_packet


def decode_vfwd(payload: bytes) -> InnerPacket:
    """The inner packet; version, IHL, lengths, TTL and checksums are ignored
    because legacy relays leave them zero (protocol.md 7)."""
    if len(payload) < 4 + INNER_HEADER_LEN:
        raise DecodeError("vfwd_truncated", f"{len(payload)} bytes")
    if payload[4 + 9] != 17:
        raise DecodeError("vfwd_not_udp", f"inner protocol {payload[4 + 9]}")
    sport = (payload[24] << 8) | payload[25]
    dport = (payload[26] << 8) | payload[27]
    return InnerPacket(ipv4_text(payload[16:20]), ipv4_text(payload[20:24]),
                       17, sport, dport, payload[32:])


# -- MAC and IPv4 text -------------------------------------------------------------------

@functools.lru_cache(maxsize=1024)
def ipv4_bytes(text: str) -> bytes:
    """The 4 wire bytes of a dotted quad.  Cached: the engine converts the
    same few addresses (its own, the group, peers) again and again, and the
    cache keeps this as fast as the socket module's C conversion without
    bringing sockets into the codecs."""
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        raise ValueError(f"not a dotted quad: {text!r}")
    return bytes(int(p) for p in parts)      # ValueError above 255


def ipv4_text(raw: bytes) -> str:
    """The dotted quad of the first 4 wire bytes of ``raw``."""
    return "%d.%d.%d.%d" % (raw[0], raw[1], raw[2], raw[3])


def mac_text(b: bytes) -> str:
    """``aa:bb:cc:dd:ee:ff``, lower case."""
    return ":".join(f"{x:02x}" for x in b)


_HEX = frozenset("0123456789abcdefABCDEF")


def parse_mac(text: str) -> bytes:
    """17 characters, ``:`` or ``-`` separated hex pairs, either case (protocol.md 8.3)."""
    if not isinstance(text, str) or len(text) != 17:
        raise ValueError(f"invalid MAC {text!r}: expected xx:xx:xx:xx:xx:xx")
    sep = text[2]
    if sep not in ":-":
        raise ValueError(f"invalid MAC {text!r}: expected xx:xx:xx:xx:xx:xx")
    parts = text.split(sep)
    if len(parts) != 6 or not all(len(p) == 2 and p[0] in _HEX and p[1] in _HEX
                                  for p in parts):
        raise ValueError(f"invalid MAC {text!r}: expected six hex pairs "
                         "separated by ':' or '-'")
    return bytes(int(p, 16) for p in parts)


def parse_ipv4(text: str) -> str:
    """A dotted quad in canonical form; ValueError quoting the text."""
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 4 or not all(p.isdigit() and p.isascii() and len(p) <= 3
                                  and int(p) <= 255 for p in parts):
        raise ValueError(f"invalid IPv4 address {text!r}: expected A.B.C.D")
    return ".".join(str(int(p)) for p in parts)


def is_multicast(ipv4: str) -> bool:
    """224.0.0.0/4; ``ipv4`` must be a dotted quad."""
    return 224 <= int(ipv4.partition(".")[0]) <= 239

