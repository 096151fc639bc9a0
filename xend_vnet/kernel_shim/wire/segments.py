"""Id-5 segments between our own engines and the capability trailer, sans-IO.

(protocol.md 2, docs/performance.md)

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

Message id 5 (``VnetMsgHdr``, protocol.md 2), big-endian like the rest::

    segment   00 05 | opcode | vnet id (16) | u32 frame id | u16 index | u16 count | data

Opcode 1: the data reassemble to virtio_net_hdr + frame.  Opcode 2 (secured
vnets, design.md 7): they reassemble to one secured message (id 4), sealed
once for the whole super-frame, whose clear-mode message is
``00 05 00 02 | vnet id | virtio_net_hdr + frame``; the receiver verifies it
before anything is learned or delivered, so an AES-GCM pass per super-frame,
not per segment, is all security costs on this path.

Legacy hosts drop unknown ids (protocol.md 4.4), but no id-5 message ever goes
to an address that has not shown it takes them.  The capability rides on
VARP announces, which every host accepts: our engines append an 8-byte
trailer (``CAP_TRAILER``) to the announces they send, which legacy hosts
ignore (trailing bytes, protocol.md 2), and learn it per announced care-of
address.  An address we send unicast to without knowing its capability
gets a unicast announce of the sending domain's MAC (true, so harmless to
a legacy host) whose trailer has the ``CAP_PROBE`` bit (rate-limited); an
engine of ours answers with an announce of one of its own domains carrying
its trailer, a legacy host only learns the MAC and says nothing, so it
keeps getting plain frames.  No VARP request is ever sent (design.md 8,
protocol.md 7: requests endanger legacy hosts).  A secured vnet learns the
capability only from sealed announces and verified sealed frames, kept
apart from what clear traffic claims (design.md 7: nothing unauthenticated
changes its state).

A second bit, ``CAP_KERNEL``, says the announcing engine's kernel path
decapsulates the announced vnet's known unicast (design.md 1.1): it rides on
the announces of clear vnets the kernel path carries, with or without the
segment bit (an engine with ``--no-offload`` sends it alone), and the probe
bit asks for it the same way.

Frames that must go plain (to legacy hosts, every flood to the group,
secured vnets) leave with complete checksums and no GSO: ``plain_frames``
finishes the partial checksum or segments the TCP super-frame in software,
for that case only.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from .codec import VARP_HEADER_LEN, DecodeError
from .offload import MIN_GSO_SIZE, check_packet

MSG_FAST = 5
FAST_SEGMENT = 1
FAST_SEALED = 2
CAP_SEGMENTS = 1                 # takes id-5 segments
CAP_KERNEL = 2                   # its kernel path decapsulates this vnet's unicast (design.md 1.1)
CAP_PROBE = 0x8000               # "tell me yours": answer with an announce of your own
CAP_MAGIC = b"XVNF"


def trailer(bits: int) -> bytes:
    """The 8-byte trailer with capability ``bits`` (version 1); no bits, no trailer."""
    return CAP_MAGIC + struct.pack("!HH", 1, bits) if bits else b""


CAP_TRAILER = trailer(CAP_SEGMENTS)
PROBE_TRAILER = trailer(CAP_SEGMENTS | CAP_PROBE)

SEGMENT_HEADER_LEN = 28
SEGMENT_VNET = slice(4, 20)      # the vnet id in a segment's header
MAX_SEGMENTS = 255               # a 64 KB frame over a 576-byte underlay MTU fits
UDP_IP_OVERHEAD = 28             # IPv4 header without options, UDP header
# One sendmsg carries at most 64 segments (older kernels) and one IPv4
# datagram's worth of payload (UDP_SEGMENT builds one large skb).
SEGMENTS_PER_SEND = 64
BYTES_PER_SEND = 65507

_SEGMENT = struct.Struct("!HH16sIHH")
_SEALED_PREFIX = struct.pack("!HH", MSG_FAST, FAST_SEALED)
# The VnetMsgHdr a segment starts with, of either opcode.
SEGMENT_PREFIXES = (struct.pack("!HH", MSG_FAST, FAST_SEGMENT), _SEALED_PREFIX)


# -- capability trailer of VARP announces ----------------------------------------------

def trailer_bits(payload: bytes) -> int:
    """The capability bits of a VARP announce's trailer; 0 without one."""
    if (payload[VARP_HEADER_LEN:VARP_HEADER_LEN + 4] != CAP_MAGIC
            or len(payload) < VARP_HEADER_LEN + len(CAP_TRAILER)):
        return 0
    return int.from_bytes(payload[VARP_HEADER_LEN + 6:VARP_HEADER_LEN + 8], "big")


def has_capability(payload: bytes) -> bool:
    """Whether a VARP announce carries our trailer with the segment capability."""
    return trailer_bits(payload) & CAP_SEGMENTS != 0


def asks_answer(payload: bytes) -> bool:
    """Whether a VARP announce is a probe: its sender wants our capability back."""
    return trailer_bits(payload) & CAP_PROBE != 0


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


def decode_sealed_inner(inner: bytes, min_gso: int = MIN_GSO_SIZE) -> tuple[bytes, bytes]:
    """``(vnet id, packet)`` of a verified clear-mode message from
    ``encode_sealed_inner``, its virtio_net_hdr checked (``check_packet``)."""
    if inner[:4] != _SEALED_PREFIX:
        raise DecodeError("secure_bad_inner", "fast message")
    return inner[4:20], check_packet(inner[20:], min_gso)
