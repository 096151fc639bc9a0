"""Receive coalescing: consecutive TCP segments of one flow become one super-frame.

The legacy wire carries one frame per datagram (protocol.md 4.4), so a TCP
stream arrives as one datagram per segment.  Writing each to the TAP makes
the kernel run the bridge, the veth and the domain's TCP receive once per
segment, and the domain acknowledges every second one, each acknowledgement
crossing both engines.  What a NIC's GRO does for a real interface we do
for the frames one batch of datagrams delivers to a TAP with a
virtio_net_hdr: a run of segments of one TCP flow that GRO would merge
(the same headers but for the sequence number, the IP id and length and
the checksums; consecutive sequence numbers; equal sizes but for the last;
only ACK, PSH on the last; correct IPv4 and TCP checksums on every one) is written
as one frame marked for segmentation (GSO TCPv4/TCPv6, checksum partial),
and the domain's kernel sees what it would have seen from a local GRO.

Pure functions over the core's actions: ``coalesce(actions)`` returns them
with such runs of ``DeliverFrame`` replaced by one ``DeliverOffload`` each.
Nothing is held back: a run ends with the batch, so no frame waits.
"""

from __future__ import annotations

from ..core.engine import DeliverFrame, DeliverOffload
from ..wire.offload import F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, encode_vnet_hdr, residue, swap16

_ETH_IPV4 = b"\x08\x00"
_ETH_IPV6 = b"\x86\xdd"
_ETH_VLAN = b"\x81\x00"
_TCP_ACK = 0x10
_TCP_PSH = 0x08
_TCP_CSUM_OFFSET = 16
MAX_FRAME = 65536


class _Segment:
    """The parsed headers of the first TCP segment of a run."""

    __slots__ = ("frame", "l3", "l4", "body", "v6", "seq", "flags", "size")

    def __init__(self, frame: bytes, l3: int, l4: int, body: int, v6: bool) -> None:
        self.frame = frame
        self.l3 = l3
        self.l4 = l4
        self.body = body
        self.v6 = v6
        self.seq = int.from_bytes(frame[l4 + 4:l4 + 8], "big")
        self.flags = frame[l4 + 13]
        self.size = len(frame) - body


def parse_segment(frame: bytes) -> _Segment | None:
    """The segment if ``frame`` is a TCP segment GRO could merge: IPv4 without
    options or fragments, or IPv6 without extension headers, no more than one
    VLAN tag, no Ethernet padding, payload present, only ACK or ACK+PSH set."""
    l3 = 14
    ethertype = frame[12:14]
    if ethertype == _ETH_VLAN:
        l3 = 18
        ethertype = frame[16:18]
    if ethertype == _ETH_IPV4:
        if len(frame) < l3 + 40 or frame[l3] != 0x45 or frame[l3 + 9] != 6:
            return None
        if frame[l3 + 6] & 0x3F or frame[l3 + 7]:            # MF or a fragment offset
            return None
        l4 = l3 + 20
        v6 = False
    elif ethertype == _ETH_IPV6:
        if len(frame) < l3 + 60 or frame[l3] >> 4 != 6 or frame[l3 + 6] != 6:
            return None
        l4 = l3 + 40
        v6 = True
    else:
        return None
    if not _length_right(frame, l3, v6):
        return None
    body = l4 + (frame[l4 + 12] >> 4) * 4
    if body <= l4 + 19 or body >= len(frame):
        return None              # a bad header length, or no payload to merge
    if frame[l4 + 13] & ~_TCP_PSH != _TCP_ACK:
        return None              # SYN, FIN, RST, URG, ECE, CWR end a GRO run too
    return _Segment(frame, l3, l4, body, v6)


def _length_right(frame: bytes, l3: int, v6: bool) -> bool:
    """The IP length field says the frame's length (no Ethernet padding)."""
    if v6:
        return int.from_bytes(frame[l3 + 4:l3 + 6], "big") == len(frame) - l3 - 40
    return int.from_bytes(frame[l3 + 2:l3 + 4], "big") == len(frame) - l3


def checksums_ok(frame: bytes, l3: int, l4: int, v6: bool) -> bool:
    """Whether the segment's IPv4 header and TCP checksums are right: a ones'
    complement sum over data and checksum of 0xffff, that is 0 modulo 0xffff."""
    if not v6 and int.from_bytes(frame[l3:l4], "little") % 0xFFFF:
        return False
    # In swapped words (wire/offload.py ``residue``): a zero is zero in either byte order.
    addrs = frame[l3 + 8:l4] if v6 else frame[l3 + 12:l4]
    pseudo = int.from_bytes(addrs, "little") + 0x0600 + swap16(len(frame) - l4)
    return residue(frame[l4:], pseudo) == 0


class _Run:
    """Segments of one flow so far: the first parsed, the others' frames."""

    __slots__ = ("vid", "first", "frames", "total", "next_seq", "psh")

    def __init__(self, vid, first: _Segment) -> None:
        self.vid = vid
        self.first = first
        self.frames = [first.frame]
        self.total = first.size
        self.next_seq = ((first.seq + first.size) & 0xFFFFFFFF).to_bytes(4, "big")
        self.psh = first.flags & _TCP_PSH

    def takes(self, frame: bytes) -> bool:
        """Whether ``frame`` continues the run: every header byte GRO requires
        equal is (tcp_gro_receive, inet_gro_receive), the sequence number is
        the next, the size no larger than the first's, only ACK (+PSH) set."""
        first = self.first
        a, l3, l4, body = first.frame, first.l3, first.l4, first.body
        size = len(frame) - body
        if (size <= 0 or size > first.size or self.total + size > MAX_FRAME - body
                or frame[l4 + 4:l4 + 8] != self.next_seq
                or frame[l4 + 13] & ~_TCP_PSH != _TCP_ACK):
            return False
        if a[:l3 + 2] != frame[:l3 + 2]:                 # Ethernet, IP version and TOS
            return False
        if first.v6:
            if a[l3:l3 + 4] != frame[l3:l3 + 4] or a[l3 + 6:l4] != frame[l3 + 6:l4]:
                return False                             # flow label, hop limit, addresses
        elif a[l3 + 6:l3 + 10] != frame[l3 + 6:l3 + 10] or a[l3 + 12:l4] != frame[l3 + 12:l4]:
            return False                                 # no fragment, TTL, protocol, addresses
        return (a[l4:l4 + 4] == frame[l4:l4 + 4]               # ports
                and a[l4 + 8:l4 + 13] == frame[l4 + 8:l4 + 13]  # ack, header length
                and a[l4 + 14:l4 + 16] == frame[l4 + 14:l4 + 16]  # window
                and a[l4 + 18:body] == frame[l4 + 18:body]      # urgent pointer, options
                and _length_right(frame, l3, first.v6)
                and checksums_ok(frame, l3, l4, first.v6))

    def add(self, frame: bytes) -> None:
        size = len(frame) - self.first.body
        self.frames.append(frame)
        self.total += size
        self.next_seq = ((int.from_bytes(self.next_seq, "big") + size)
                         & 0xFFFFFFFF).to_bytes(4, "big")
        self.psh = frame[self.first.l4 + 13] & _TCP_PSH

    def ended(self) -> bool:
        """PSH or a short segment ends a run, as in GRO."""
        return bool(self.psh) or len(self.frames[-1]) < len(self.first.frame)

    def action(self):
        if len(self.frames) == 1:
            return DeliverFrame(self.vid, self.first.frame)
        return DeliverOffload(self.vid, merge(self.first, self.frames, self.psh))


def _pseudo_sum(seg: _Segment, tcp_len: int) -> int:
    """The pseudo-header's contribution to the TCP checksum (RFC 793, RFC 8200 8.1)."""
    f, l3 = seg.frame, seg.l3
    addrs = f[l3 + 8:l3 + 40] if seg.v6 else f[l3 + 12:l3 + 20]
    return int.from_bytes(addrs, "big") + 6 + tcp_len


def merge(first: _Segment, frames: list[bytes], psh: int) -> bytes:
    """One virtio_net_hdr and super-frame for a run of two or more segments."""
    f, l3, l4, body = first.frame, first.l3, first.l4, first.body
    payload = b"".join([frame[body:] for frame in frames])
    tcp_len = body - l4 + len(payload)
    header = bytearray(f[:body])
    if first.v6:
        header[l3 + 4:l3 + 6] = (tcp_len).to_bytes(2, "big")
        gso_type = GSO_TCPV6
    else:
        header[l3 + 2:l3 + 4] = (20 + tcp_len).to_bytes(2, "big")
        header[l3 + 10:l3 + 12] = b"\0\0"
        s = int.from_bytes(header[l3:l4], "big") % 0xFFFF or 0xFFFF
        header[l3 + 10:l3 + 12] = (~s & 0xFFFF).to_bytes(2, "big")
        gso_type = GSO_TCPV4
    header[l4 + 13] = first.flags | psh
    # Checksum partial: the field holds the folded pseudo-header sum, and the
    # kernel completes it per segment (the contract of VIRTIO_NET_HDR_F_NEEDS_CSUM).
    s = _pseudo_sum(first, tcp_len) % 0xFFFF
    header[l4 + 16:l4 + 18] = (s or 0xFFFF).to_bytes(2, "big")
    vnet_hdr = encode_vnet_hdr(F_NEEDS_CSUM, gso_type, body, first.size, l4, _TCP_CSUM_OFFSET)
    return b"".join((vnet_hdr, header, payload))


def coalesce(actions: list, max_frame: int = MAX_FRAME) -> tuple[list, int]:
    """``actions`` with each run of adjacent ``DeliverFrame`` that GRO would merge
    (same vnet) replaced by one ``DeliverOffload``, everything in its order;
    and how many frames were merged.  A frame longer than ``max_frame`` (the
    vnet's MTU) is never merged, so the writer still refuses it."""
    out: list = []
    merged = 0
    run: _Run | None = None

    def close() -> None:
        nonlocal run, merged
        if run is not None:
            out.append(run.action())
            if len(run.frames) > 1:
                merged += len(run.frames)
            run = None

    for action in actions:
        if action.__class__ is not DeliverFrame:
            close()
            out.append(action)
            continue
        frame = action.frame
        if run is not None and action.vid == run.vid and run.takes(frame):
            run.add(frame)
        else:
            close()
            seg = parse_segment(frame) if len(frame) <= max_frame else None
            if seg is None or not checksums_ok(frame, seg.l3, seg.l4, seg.v6):
                # Not mergeable, or corrupt: the domain's stack drops it, as it would have.
                out.append(action)
                continue
            run = _Run(action.vid, seg)
        if run.ended():
            close()
    close()
    return out, merged
