"""Peer forwarding helpers, sans-IO: the duplicate window, the re-multicast packet.

(protocol.md 7)

Legacy vnet's only loop avoidance is not sending a packet back to the peer
named as its inner source, so two forwarders on one subnet, or a ring of
peers, relay each multicast forever.  ``DuplicateWindow`` remembers, for a
short time, which (original sender, UDP payload) pairs were already
handled; a second copy arriving by another path within the window is
dropped.  The key ignores everything a hop rewrites (the inner IPv4 and UDP
headers: TTL, id, lengths, checksums, destination group), so a copy relayed
by a legacy host matches the original.

``remulticast_packet`` builds the packet a VFWD receiver sends onto its own
link: the legacy relay leaves the inner header zeroed (version, IHL,
lengths, TTL, checksum), and Linux refuses an IPPROTO_RAW send with IHL 0,
so the header is rebuilt with the original source kept.
"""

from __future__ import annotations

import struct
from hashlib import blake2b

from ..wire.codec import ipv4_bytes
from .bounds import LIMITS, BoundedTable, Entry, Limits

DUPLICATE_WINDOW = 0.5     # seconds: covers a mesh's relay delay, short enough for real repeats
# Entries (about 150 bytes each): a full window at 130,000 multicast packets
# a second, and a share per sender (bounds.py, docs/security.md "Resource
# limits").  Past that the window does not evict live entries (a flood must
# not flush it); it stops remembering new ones and counts them.
DUPLICATE_LIMIT = LIMITS["duplicates"].total
_ENGINE = b""               # the window is the engine's, not a vnet's
REMULTICAST_TTL = 1        # link-local, like legacy vnetd's multicast TTL (protocol.md 3.1)

_IP_UDP = struct.Struct("!BBHHHBBH4s4sHHHH")


class DuplicateWindow:
    """(original sender, payload digest) -> first seen, for ``window`` seconds."""

    def __init__(self, window: float = DUPLICATE_WINDOW, limit: int = DUPLICATE_LIMIT):
        lim = LIMITS["duplicates"]
        self.table = BoundedTable("duplicates", window, Limits(
            limit, 0, limit, min(lim.per_source, limit)), inclusive=True)
        self.overflows = 0      # packets not remembered because the window was full

    @property
    def window(self) -> float:
        return self.table.ttl

    @window.setter
    def window(self, seconds: float) -> None:
        self.table.ttl = seconds

    def __len__(self) -> int:
        return len(self.table)

    def seen(self, sender: str, payload: bytes, now: float) -> bool:
        """True if this (sender, payload) was handled within the window; else remember it.

        The first copy opens the window and later copies do not extend it, so a
        payload repeated on purpose (an ARP retry a second later) still passes.
        """
        table = self.table
        table.expire(now)
        key = (sender, blake2b(payload, digest_size=16).digest())
        if key in table:
            return True
        if not table.room(_ENGINE, sender, now):
            self.overflows += 1
            return False
        table.insert(key, Entry(_ENGINE, sender, now))
        return False


def ipv4_checksum(header: bytes) -> int:
    """The one's-complement sum of RFC 791 over an even-length header."""
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def remulticast_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """A complete IPv4+UDP packet for an IP_HDRINCL socket (protocol.md 7, receiver step 4).

    Version 4, IHL 5, the real total length, id 0 (the kernel picks one), DF
    clear, TTL 1, protocol 17, a valid checksum, the original ``src`` kept,
    UDP length filled and UDP checksum 0 as legacy sends it.
    """
    udp_len = 8 + len(payload)
    header = bytearray(_IP_UDP.pack(0x45, 0, 20 + udp_len, 0, 0, REMULTICAST_TTL, 17, 0,
                                    ipv4_bytes(src), ipv4_bytes(dst),
                                    sport, dport, udp_len, 0))
    header[10:12] = ipv4_checksum(bytes(header[:20])).to_bytes(2, "big")
    return bytes(header) + payload
