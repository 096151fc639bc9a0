"""What benchmarks/hostile.py's attacker sends, and when: pure, no sockets.

One builder per kind of hostile traffic, each made with the project's own
codecs (xend_vnet/kernel_shim/wire, security/secure_codec.py) so a packet
is exactly what the engine parses, and ``RateSchedule``, the sender's
timetable.  Every forged address is in a TEST-NET range or in 10.0.0.0/8
(``forged_address_ok``); the benchmark's namespaces route none of them
anywhere outside.
"""

from __future__ import annotations

import ipaddress
import os
import random
import struct
import sys
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from xend_vnet.kernel_shim.security import keys, secure_codec  # noqa: E402
from xend_vnet.kernel_shim.wire import codec, offload, segments  # noqa: E402
from xend_vnet.vnet_id import VnetId  # noqa: E402

# kind -> (where it is sent from, what it is)
KINDS = {
    "varp": ("lan", "forged VARP announces, fresh MACs and care-of addresses, our trailer"),
    "data": ("lan", "forged clear data frames from fresh source MACs"),
    "random": ("lan", "random datagrams to port 1798"),
    "segments": ("lan", "unsolicited id-5 segments, random frame ids, bad virtio_net_hdr"),
    "vfwd": ("raw", "VFWD flood from a spoofed peer address, fresh inner sources"),
    "secure": ("lan", "forged secured packets (id 4), the vnet's SPI, a random tag"),
    "domain-gso": ("tap", "a domain's TCP super-frames with gso_size 1"),
    "domain-macs": ("tap", "a domain sending broadcasts from fresh MACs"),
}
ALLOWED_NETS = tuple(ipaddress.ip_network(n) for n in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "10.0.0.0/8"))
ETH_EXPERIMENTAL = 0x88B5          # IEEE local experimental EtherType
BROADCAST = b"\xff" * 6


def forged_address_ok(addr: str) -> bool:
    """Whether ``addr`` is one a forged packet may carry (TEST-NET or 10/8)."""
    a = ipaddress.ip_address(addr)
    return any(a in n for n in ALLOWED_NETS)


def fresh_mac(sender: int, i: int) -> bytes:
    """A locally administered unicast MAC no other sender or packet uses."""
    return bytes((0x06, sender & 0xFF)) + (i & 0xFFFFFFFF).to_bytes(4, "big")


def fresh_address(i: int, sender: int = 0) -> str:
    """The i-th forged care-of (or inner source) address of a sender: half in
    10.200.0.0/13, a quarter on the benchmark's LAN where nobody answers, a
    quarter in TEST-NET-3 (off the LAN, unroutable there)."""
    k, n = i % 4, (i // 4) * 16 + sender % 16
    if k == 2:
        return f"198.51.100.{128 + n % 126}"
    if k == 3:
        return f"203.0.113.{1 + n % 254}"
    m = (2 * n + k) % (8 * 256 * 254)      # the host part, never .0 or .255
    a = m // 254
    return f"10.{200 + a // 256}.{a % 256}.{1 + m % 254}"


@dataclass(frozen=True)
class Target:
    """What the attacker knows of the engines under attack."""

    measured: str = "99"                       # the vnet the domains use
    clear: tuple[str, ...] = ("2", "3", "4", "99")
    secured: str = "9a"                        # an auth vnet both engines have
    secured_level: str = "auth"
    secured_key: bytes = b"\0" * 32            # stands for an SPI seen on the wire
    group: str = codec.VARP_MCADDR
    peer: str = "203.0.113.7"                  # a peer both engines are configured with
    injector_mac: bytes = b"\x06\x68\x62\xfe\x00\x01"
    clear_raw: tuple[bytes, ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "clear_raw",
                           tuple(VnetId.parse(v).raw for v in self.clear))

    def vid(self, text: str) -> bytes:
        return VnetId.parse(text).raw

    def secured_spi(self) -> int:
        vid = self.vid(self.secured)
        return keys.spi(self.secured_key, vid, keys.generation(self.secured_key, vid))


class Forger:
    """The packets of one kind from one sender: ``next()`` gives the next one."""

    def __init__(self, kind: str, target: Target, sender: int = 0, seed: int = 1):
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
        self.kind = kind
        self.t = target
        self.sender = sender
        self.rng = random.Random(seed * 1000 + sender)
        self.i = 0
        self._build = getattr(self, "_" + kind.replace("-", "_"))
        self._spi = target.secured_spi() if kind == "secure" else 0

    def next(self) -> bytes:
        i = self.i
        self.i += 1
        return self._build(i)

    def _mac(self, i: int) -> bytes:
        return fresh_mac(self.sender, i)

    def _address(self, i: int) -> str:
        return fresh_address(i, self.sender)

    def _varp(self, i: int) -> bytes:
        vid = self.t.clear_raw[i % len(self.t.clear_raw)]
        return (codec.encode_announce(vid, self._mac(i), self._address(i))
                + segments.CAP_TRAILER)

    def _frame(self, i: int) -> bytes:
        return (BROADCAST + self._mac(i) + struct.pack("!H", ETH_EXPERIMENTAL)
                + i.to_bytes(8, "big") + bytes(38))

    def _data(self, i: int) -> bytes:
        vid = self.t.clear_raw[i % len(self.t.clear_raw)]
        return codec.DATA_PREFIX + vid + self._frame(i)

    def _random(self, i: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(1, 1400))

    def _segments(self, i: int) -> bytes:
        """Three in four open a frame that never completes; the fourth is a
        whole one-segment frame whose virtio_net_hdr no TAP would take."""
        r = self.rng
        vid = self.t.vid(self.t.measured)
        frame_id = r.getrandbits(32)
        if i % 4 == 3:
            hdr = offload.encode_vnet_hdr(r.choice((4, 0xFF)), r.choice((3, 0x41, 1)),
                                          r.getrandbits(16), 0, r.getrandbits(16),
                                          r.getrandbits(16))
            data = hdr + self._frame(i)
            return struct.pack("!HH16sIHH", segments.MSG_FAST, segments.FAST_SEGMENT,
                               vid, frame_id, 0, 1) + data
        count = r.randint(2, segments.MAX_SEGMENTS)
        return (struct.pack("!HH16sIHH", segments.MSG_FAST, segments.FAST_SEGMENT, vid,
                            frame_id, r.randrange(count), count) + r.randbytes(1024))

    def _vfwd(self, i: int) -> bytes:
        """A whole IPv4 packet (for a raw socket) from the peer's address to
        the group, carrying a forged announce or data frame from a fresh source."""
        src = self._address(i)
        inner = self._varp(i) if i % 2 else self._data(i)
        message = codec.encode_vfwd(codec.inner_udp_packet(inner, self.t.group, src=src))
        outer = bytearray(codec.inner_udp_packet(message, self.t.group, src=self.t.peer))
        outer[8] = 1                     # TTL 1: the LAN only
        return bytes(outer)

    def _secure(self, i: int) -> bytes:
        level = secure_codec.SUITES[self.t.secured_level]
        r = self.rng
        inner = codec.DATA_PREFIX + self.t.vid(self.t.secured) + self._frame(i)
        head = secure_codec.HEADER.pack(codec.MSG_SECURE, level, self._spi, r.getrandbits(64),
                                        time.time_ns(), 1 + i,
                                        codec.ipv4_bytes(self._address(i)))
        return head + inner + r.randbytes(secure_codec.ICV_LEN)

    def _domain_gso(self, i: int) -> bytes:
        return gso_super_frame(self.t.injector_mac, 1024, i)

    def _domain_macs(self, i: int) -> bytes:
        return offload.ZERO_VNET_HDR + self._frame(i)


def gso_super_frame(src_mac: bytes, size: int, i: int, gso_size: int = 1) -> bytes:
    """virtio_net_hdr + a TCP/IPv4 super-frame of ``size`` payload bytes with
    ``gso_size`` as the MSS, checksum left partial, to a MAC nobody has (so
    it floods); addresses in the domain subnet, nobody's."""
    payload = bytes(size)
    tcp_len = 20 + size
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, i & 0xFFFF, 0x4000,
                               64, 6, 0, codec.ipv4_bytes("10.99.0.200"),
                               codec.ipv4_bytes("10.99.0.201")))
    ip[10:12] = offload.checksum(bytes(ip)).to_bytes(2, "big")
    pseudo = offload.swap16(offload.ones_sum(bytes(ip[12:20]) + struct.pack("!BBH", 0, 6,
                                                                             tcp_len)))
    tcp = struct.pack("!HHIIBBHHH", 40000, 5001, i & 0xFFFFFFFF, 0, 5 << 4, 0x18, 65535,
                      pseudo, 0)
    frame = (b"\x06\x68\x62\xff\x00\x01" + src_mac + b"\x08\x00" + bytes(ip) + tcp + payload)
    hdr = offload.encode_vnet_hdr(offload.F_NEEDS_CSUM, offload.GSO_TCPV4, 54, gso_size,
                                  34, 16)
    return hdr + frame


class RateSchedule:
    """When a sender may send: ``rate`` packets a second from ``start``, in
    batches of at most ``batch``; a sender that falls more than ``slack``
    seconds behind skips what it missed (counted) rather than bursting."""

    def __init__(self, rate: float, start: float, batch: int = 32, slack: float = 0.05):
        if rate <= 0:
            raise ValueError(f"rate {rate!r}: expected packets per second above 0")
        self.rate = rate
        self.start = start
        self.batch = batch
        self.slack = slack
        self.sent = 0
        self.skipped = 0

    def due(self, now: float) -> int:
        """How many to send now (0: wait ``wait(now)`` seconds)."""
        owed = int((now - self.start) * self.rate) - self.sent - self.skipped
        behind = owed - max(1, int(self.slack * self.rate))
        if behind > 0:
            self.skipped += behind
            owed -= behind
        return max(0, min(owed, self.batch))

    def done(self, n: int) -> None:
        self.sent += n

    def wait(self, now: float) -> float:
        """Seconds until the next packet is due."""
        return max(0.0, self.start + (self.sent + self.skipped + 1) / self.rate - now)
