"""The fast framing between our own engines, sans-IO (issue 7, design.md 10 item 2).

A TAP with offloads (``IFF_VNET_HDR`` and ``TUNSETOFFLOAD``, tap.py) hands
the engine a TCP super-frame (up to about 62 KB) behind a 10-byte
``virtio_net_hdr`` that says whether the kernel left the checksum partial
(``NEEDS_CSUM``) and how to segment it (``gso_type``, ``gso_size``).

Toward an engine that has shown it understands (``PeerCapabilities``),
the header and the frame travel together, cut into segments that each fit
the underlay MTU, each behind its own 28-byte header so the receiver can
put the frame together again (never one fragmented datagram: one lost
fragment would lose the whole super-frame).  The daemon sends all segments
of a frame with one ``sendmsg`` and ``UDP_SEGMENT``; the receiving engine
writes the reassembled packet to its TAP with the header, and its kernel
finishes checksums and segmentation: Python computes no checksum on the
fast path.

Message id 5 (``VnetMsgHdr``, wire.md 2), big-endian like the rest::

    segment   00 05 | opcode | vnet id (16) | u32 frame id | u16 index | u16 count | data

Opcode 1: the data reassemble to virtio_net_hdr + frame.  Opcode 2 (secured
vnets, design.md 7): they reassemble to one secured message (id 4), sealed
once for the whole super-frame, whose clear-mode message is
``00 05 00 02 | vnet id | virtio_net_hdr + frame``; the receiver verifies it
before anything is learned or delivered, so an AES-GCM pass per super-frame,
not per segment, is all security costs on this path.

Legacy hosts drop unknown ids (wire.md 4.4), but no id-5 message ever goes
to an address that has not shown it takes them.  The capability rides on
VARP announces, which every host accepts: our engines append an 8-byte
trailer (``CAP_TRAILER``) to the announces they send, which legacy hosts
ignore (trailing bytes, wire.md 2), and learn it per announced care-of
address.  An address we send unicast to without knowing its capability
gets a unicast announce of the sending domain's MAC (true, so harmless to
a legacy host) whose trailer has the ``CAP_PROBE`` bit (rate-limited); an
engine of ours answers with an announce of one of its own domains carrying
its trailer, a legacy host only learns the MAC and says nothing, so it
keeps getting plain frames.  No VARP request is ever sent (design.md 8,
wire.md 7: requests endanger legacy hosts).  A secured vnet learns the
capability only from sealed announces and verified sealed frames, kept
apart from what clear traffic claims (design.md 7: nothing unauthenticated
changes its state).

Frames that must go plain (to legacy hosts, every flood to the group,
secured vnets) leave with complete checksums and no GSO: ``plain_frames``
finishes the partial checksum or segments the TCP super-frame in software,
for that case only.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from .codec import ETH_HEADER_LEN, VARP_HEADER_LEN, DecodeError

MSG_FAST = 5
FAST_SEGMENT = 1
FAST_SEALED = 2
CAP_SEGMENTS = 1                 # the only capability bit so far
CAP_PROBE = 0x8000               # "tell me yours": answer with an announce of your own
CAP_MAGIC = b"XVNF"
CAP_TRAILER = CAP_MAGIC + struct.pack("!HH", 1, CAP_SEGMENTS)   # version 1, bits
PROBE_TRAILER = CAP_MAGIC + struct.pack("!HH", 1, CAP_SEGMENTS | CAP_PROBE)

VNET_HDR_LEN = 10                # struct virtio_net_hdr, native byte order
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)
F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_ECN = 0x80
MAX_PACKET = 65536 + VNET_HDR_LEN

SEGMENT_HEADER_LEN = 28
MAX_SEGMENTS = 255               # a 64 KB frame over a 576-byte underlay MTU fits
UDP_IP_OVERHEAD = 28             # IPv4 header without options, UDP header
MIN_SEGMENT = 536                # RFC 879's default MSS: never cut plain frames smaller
# One sendmsg carries at most 64 segments (older kernels) and one IPv4
# datagram's worth of payload (UDP_SEGMENT builds one large skb).
SEGMENTS_PER_SEND = 64
BYTES_PER_SEND = 65507

CAP_TTL = 180.0                  # a capability not heard of for this long is forgotten
CAP_REFRESH = 60.0               # hello again before it runs out
PROBE_INTERVAL = 5.0             # at most one probe (or answer) per address this often
CAP_LIMIT = 4096
REASSEMBLY_TIMEOUT = 1.0
REASSEMBLY_LIMIT = 64            # frames in flight at once, all senders together

_SEGMENT = struct.Struct("!HH16sIHH")
_SEALED_PREFIX = struct.pack("!HH", MSG_FAST, FAST_SEALED)
_VNET_HDR = struct.Struct("=BBHHHH")
_TCP_FRONT = struct.Struct("!4sI4sBBH")          # ports, seq, ack, offset, flags, window
_IPV4_VARIABLE = struct.Struct("!HH")            # total length, id
_U16 = struct.Struct("!H")
_ETH_VLAN = (0x8100, 0x88A8)
_UDP_CSUM_OFFSET = 6              # offsetof(struct udphdr, check); TCP's is 16


# -- capability trailer of VARP announces ----------------------------------------------

def _trailer_bits(payload: bytes) -> int:
    if (payload[VARP_HEADER_LEN:VARP_HEADER_LEN + 4] != CAP_MAGIC
            or len(payload) < VARP_HEADER_LEN + len(CAP_TRAILER)):
        return 0
    return int.from_bytes(payload[VARP_HEADER_LEN + 6:VARP_HEADER_LEN + 8], "big")


def has_capability(payload: bytes) -> bool:
    """Whether a VARP announce carries our trailer with the segment capability."""
    return _trailer_bits(payload) & CAP_SEGMENTS != 0


def asks_answer(payload: bytes) -> bool:
    """Whether a VARP announce is a probe: its sender wants our capability back."""
    return _trailer_bits(payload) & CAP_PROBE != 0


# -- segments ------------------------------------------------------------------------

def chunk_size(underlay_mtu: int) -> int:
    """Bytes of frame data per segment so each datagram fits ``underlay_mtu`` unfragmented."""
    return underlay_mtu - UDP_IP_OVERHEAD - SEGMENT_HEADER_LEN


def segment_sends(vid_raw: bytes, frame_id: int, packet: bytes, chunk: int,
                  opcode: int = FAST_SEGMENT) -> Iterator[list]:
    """The segments of ``packet`` (virtio_net_hdr + frame) as gather lists,
    one per ``sendmsg``: header, data, header, data...  All segments but the
    last of a list have the same size, as ``UDP_SEGMENT`` requires."""
    if chunk < 64:
        raise ValueError(f"segment size {chunk} is too small")
    view = memoryview(packet)
    count = -(-len(packet) // chunk)
    if count > MAX_SEGMENTS:
        raise ValueError(f"{len(packet)} bytes need {count} segments, more than {MAX_SEGMENTS}")
    per_send = min(SEGMENTS_PER_SEND, BYTES_PER_SEND // (chunk + SEGMENT_HEADER_LEN))
    pack = _SEGMENT.pack
    for first in range(0, count, per_send):
        iov = []
        for index in range(first, min(first + per_send, count)):
            iov.append(pack(MSG_FAST, opcode, vid_raw, frame_id, index, count))
            iov.append(view[index * chunk:(index + 1) * chunk])
        yield iov


def decode_segment(payload: bytes) -> tuple[int, bytes, int, int, int]:
    """``(opcode, vnet id, frame id, index, count)`` of a segment; its data
    follows the header."""
    if len(payload) <= SEGMENT_HEADER_LEN:
        raise DecodeError("fast_truncated", f"{len(payload)} bytes")
    _ident, opcode, vid_raw, frame_id, index, count = _SEGMENT.unpack_from(payload)
    if opcode not in (FAST_SEGMENT, FAST_SEALED):
        raise DecodeError("fast_bad_opcode", f"opcode {opcode}")
    if not 0 < count <= MAX_SEGMENTS or index >= count:
        raise DecodeError("fast_bad_segment", f"segment {index} of {count}")
    return opcode, vid_raw, frame_id, index, count


def encode_sealed_inner(vid_raw: bytes, packet: bytes) -> bytes:
    """The clear-mode message sealed for a secured vnet's super-frame."""
    return _SEALED_PREFIX + vid_raw + packet


def decode_sealed_inner(inner: bytes) -> tuple[bytes, bytes]:
    """``(vnet id, packet)`` of a verified clear-mode message from ``encode_sealed_inner``."""
    if inner[:4] != _SEALED_PREFIX:
        raise DecodeError("secure_bad_inner", "fast message")
    return inner[4:20], check_packet(inner[20:])


class _Partial:
    __slots__ = ("count", "got", "opcode", "parts", "size", "started", "vid_raw")

    def __init__(self, opcode: int, vid_raw: bytes, count: int, now: float):
        self.opcode = opcode
        self.vid_raw = vid_raw
        self.count = count
        self.got = 0
        self.size = 0
        self.parts: list = [None] * count
        self.started = now


class Reassembler:
    """Segments in, whole packets out, with bounded memory: at most
    ``REASSEMBLY_LIMIT`` frames in flight, each given ``REASSEMBLY_TIMEOUT``
    seconds (a lost segment loses its frame only; TCP resends it)."""

    def __init__(self) -> None:
        self._partial: dict[tuple[str, int], _Partial] = {}
        self.expired = 0

    def __len__(self) -> int:
        return len(self._partial)

    def add(self, src_ip: str, payload: bytes,
            now: float) -> tuple[int, bytes, bytes] | None:
        """``(opcode, vnet id, data)`` once ``payload`` completes a frame, else
        None; the data of opcode 1 are a checked packet, of opcode 2 a secured
        message still to verify.

        DecodeError for a malformed or inconsistent segment (its frame is dropped)."""
        opcode, vid_raw, frame_id, index, count = decode_segment(payload)
        if count == 1:
            return opcode, vid_raw, _complete(opcode, payload[SEGMENT_HEADER_LEN:])
        key = (src_ip, frame_id)
        p = self._partial_for(key, opcode, vid_raw, count, now)
        if p.parts[index] is not None:
            raise DecodeError("fast_duplicate", f"segment {index} of frame {frame_id}")
        data = payload[SEGMENT_HEADER_LEN:]
        self._grow(key, p, len(data))
        p.parts[index] = data
        p.got += 1
        return self._done(key, p)

    def add_train(self, src_ip: str, data: bytes, gso: int,
                  now: float) -> tuple[int, bytes, bytes] | None:
        """``add`` for a train of segments received in one ``recvmsg`` (UDP_GRO,
        ``gso`` bytes each but the last): consecutive segments of one frame, as
        one ``sendmsg`` of ours sends them, are taken in one step, without a
        bytes object per segment.  DecodeError("fast_train_mixed"), with nothing
        changed, when the train is anything else: the caller then gives the
        segments to ``add`` one by one."""
        opcode, vid_raw, frame_id, index, count = decode_segment(data)
        n = -(-len(data) // gso)
        if index + n > count or gso <= SEGMENT_HEADER_LEN:
            raise DecodeError("fast_train_mixed")
        pack = _SEGMENT.pack
        view = memoryview(data)
        parts = []
        for k in range(n):
            at = k * gso
            if (view[at:at + SEGMENT_HEADER_LEN] != pack(MSG_FAST, opcode, vid_raw, frame_id,
                                                          index + k, count)
                    or at + SEGMENT_HEADER_LEN >= len(data)):
                raise DecodeError("fast_train_mixed")
            parts.append(view[at + SEGMENT_HEADER_LEN:at + gso])
        if n == count:
            return opcode, vid_raw, _complete(opcode, b"".join(parts))
        key = (src_ip, frame_id)
        p = self._partial_for(key, opcode, vid_raw, count, now)
        if any(p.parts[index + k] is not None for k in range(n)):
            raise DecodeError("fast_duplicate", f"segments of frame {frame_id}")
        self._grow(key, p, len(data) - n * SEGMENT_HEADER_LEN)
        p.parts[index:index + n] = parts
        p.got += n
        return self._done(key, p)

    def _partial_for(self, key: tuple[str, int], opcode: int, vid_raw: bytes, count: int,
                     now: float) -> _Partial:
        """The frame being put together under ``key``, made on its first segment."""
        p = self._partial.get(key)
        if p is None:
            if len(self._partial) >= REASSEMBLY_LIMIT:
                self._expire(now)
            p = self._partial[key] = _Partial(opcode, vid_raw, count, now)
        elif p.count != count or p.vid_raw != vid_raw or p.opcode != opcode:
            # Drop the newcomer, keep the frame: a spoofed segment must not
            # destroy a legitimate one being put together.
            raise DecodeError("fast_inconsistent", f"frame {key[1]} from {key[0]}")
        return p

    def _grow(self, key: tuple[str, int], p: _Partial, size: int) -> None:
        p.size += size
        if p.size > MAX_PACKET:
            del self._partial[key]
            raise DecodeError("fast_too_big", f"frame {key[1]} from {key[0]}")

    def _done(self, key: tuple[str, int], p: _Partial) -> tuple[int, bytes, bytes] | None:
        if p.got < p.count:
            return None
        del self._partial[key]
        return p.opcode, p.vid_raw, _complete(p.opcode, b"".join(p.parts))

    def _expire(self, now: float) -> None:
        """Drop frames past their time; when none is, the oldest (the table is full)."""
        old = [k for k, p in self._partial.items() if now - p.started > REASSEMBLY_TIMEOUT]
        if not old:
            old = [min(self._partial, key=lambda k: self._partial[k].started)]
        for k in old:
            del self._partial[k]
        self.expired += len(old)

    def sweep(self, now: float) -> None:
        if self._partial:
            old = [k for k, p in self._partial.items() if now - p.started > REASSEMBLY_TIMEOUT]
            for k in old:
                del self._partial[k]
            self.expired += len(old)


def _complete(opcode: int, data: bytes) -> bytes:
    return check_packet(data) if opcode == FAST_SEGMENT else data


def check_packet(packet: bytes) -> bytes:
    """A reassembled packet must hold a header we let through and an Ethernet frame;
    the kernel checks the rest when the TAP takes it (tun's virtio_net_hdr_to_skb)."""
    if len(packet) < VNET_HDR_LEN + ETH_HEADER_LEN:
        raise DecodeError("short_frame", f"{len(packet)} bytes")
    flags, gso_type = packet[0], packet[1]
    if flags & ~(F_NEEDS_CSUM | F_DATA_VALID) or gso_type & ~GSO_ECN not in (
            GSO_NONE, GSO_TCPV4, GSO_TCPV6):
        raise DecodeError("fast_bad_vnet_hdr", f"flags {flags:#x} gso {gso_type:#x}")
    return packet


# -- capabilities ----------------------------------------------------------------------

def _once_per_interval(last_times: dict[str, float], addr: str, now: float) -> bool:
    """True, and remembered, unless ``addr`` had its turn within PROBE_INTERVAL;
    the table is bounded (cleared when full)."""
    last = last_times.get(addr)
    if last is not None and now - last < PROBE_INTERVAL:
        return False
    if last is None and len(last_times) >= CAP_LIMIT:
        last_times.clear()
    last_times[addr] = now
    return True


class PeerCapabilities:
    """Which care-of addresses run an engine that takes segments, learned from
    their announces and segments; probed with an announce, never assumed."""

    def __init__(self) -> None:
        self._heard: dict[str, float] = {}
        self._probed: dict[str, float] = {}
        self._answered: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._heard)

    def heard(self, addr: str, now: float) -> None:
        if addr not in self._heard and len(self._heard) >= CAP_LIMIT:
            self.sweep(now)
        self._heard[addr] = now

    def fast(self, addr: str, now: float) -> bool:
        t = self._heard.get(addr)
        return t is not None and now - t < CAP_TTL

    def probe_due(self, addr: str, now: float) -> bool:
        """True (and remembered) when a hello should go to ``addr`` now."""
        t = self._heard.get(addr)
        if t is not None and now - t < CAP_REFRESH:
            return False
        return _once_per_interval(self._probed, addr, now)

    def answer_due(self, addr: str, now: float) -> bool:
        """True (and remembered) when a probe from ``addr`` may be answered now:
        a flood of probes gets one answer per address and interval."""
        return _once_per_interval(self._answered, addr, now)

    def sweep(self, now: float) -> None:
        self._heard = {a: t for a, t in self._heard.items() if now - t < CAP_TTL}
        self._probed = {a: t for a, t in self._probed.items() if now - t < CAP_TTL}
        self._answered = {a: t for a, t in self._answered.items() if now - t < CAP_TTL}

    def addresses(self, now: float) -> list[str]:
        return sorted(a for a, t in self._heard.items() if now - t < CAP_TTL)


# -- software completion for plain frames ------------------------------------------------

def decode_vnet_hdr(hdr: bytes) -> tuple[int, int, int, int, int, int]:
    """``(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)``."""
    return _VNET_HDR.unpack_from(hdr)


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


def _segment_tcp(frame: bytes, mss: int, max_frame: int = 0) -> list[bytes]:
    """Software TSO: what the NIC would have sent for this super-frame (one VLAN
    tag or more kept, IPv4 id incremented, checksums computed), in segments
    of ``mss`` or fewer bytes so that frames stay within ``max_frame``.

    A smaller segment than the domain's MSS is a valid TCP segment; it spares
    every datagram its two IP fragments (platform.md: legacy vnetd fragments
    every full frame), and a train of equal datagrams that fit the MTU can
    leave in one UDP_SEGMENT send."""
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
    thl = (frame[l4 + 12] >> 4) * 4
    body = l4 + thl
    if thl < 20 or body > len(frame):
        raise DecodeError("gso_bad_frame", "bad TCP header length")
    if max_frame and MIN_SEGMENT <= max_frame - body < mss:
        mss = max_frame - body
    eth = frame[:l3]
    ports, seq, ack, doff, tcp_flags, window = _TCP_FRONT.unpack_from(frame, l4)
    after_sum = frame[l4 + 18:body]                     # urgent pointer and options
    ip = bytearray(frame[l3:l4])
    if version == 4:
        ip_id = int.from_bytes(ip[4:6], "big")
        ip[2:6] = bytes(4)                              # total length, id
        ip[10:12] = bytes(2)                            # checksum
    # What stays the same in every segment's sums: the pseudo-header (RFC 793,
    # RFC 8200 8.1) but its length, and the TCP header but its first 16 bytes
    # (in little-endian "swapped" words, as residue reads them); the IPv4
    # header with length, id and checksum zero (big-endian words).
    addresses = ip[12:20] if version == 4 else ip[8:40]
    fixed = int.from_bytes(addresses, "little") + 0x0600 + int.from_bytes(after_sum, "little")
    ip_fixed = int.from_bytes(ip, "big") if version == 4 else 0
    out = []
    size = len(frame) - body
    n = -(-size // mss) or 1
    view = memoryview(frame)
    for i in range(n):
        data = view[body + i * mss:body + (i + 1) * mss]
        # FIN and PSH belong to the last segment, CWR to the first (as GSO does).
        flags = tcp_flags & ~(0x09 if i != n - 1 else 0) & ~(0x80 if i else 0)
        front = _TCP_FRONT.pack(ports, (seq + i * mss) & 0xFFFFFFFF, ack, doff, flags, window)
        tcp_len = thl + len(data)
        if version == 4:
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
