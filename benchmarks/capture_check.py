"""What a capture of the underlay carried: the framing of each vnet datagram and
whether every frame inside has complete checksums.

Pure: reads the bytes of a pcap file (what ``tcpdump -w`` writes on an
Ethernet device), puts outer IPv4 fragments back together, reads each UDP
datagram on port 1798 and each IP protocol 97 packet with the project's
codec (protocol.md 4.1, 4.3) and checks the IPv4 header checksum and the
TCP and UDP checksums of every frame the data messages carry, the inner
IPv4 fragments put back together first.  A legacy host writes what it
receives to a TAP without offloads, so a checksum left for a NIC to fill
in (checksum-partial) reaches its domain wrong and is dropped there: the
check is that no such frame reaches it.  The outer checksums are not
checked: a veth hands on checksum-partial datagrams, whose sum in a
capture is only the pseudo-header's.

A veth also hands on segmentation-offload packets whole, so a capture on
one shows packets longer than the link's MTU that never existed on a wire:
a UDP_SEGMENT train (datagrams of one size but the last, one payload after
the other) is cut back into its datagrams, the size read from its first
frame; a frame longer than the MTU inside one message is a TCP super-frame
(tunnel segmentation) whose segments, and their checksums, the kernel that
cuts it makes: counted (``gso_frames``), not checked.

    python3 benchmarks/capture_check.py FILE.pcap [--from ADDR ...]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xend_vnet.kernel_shim.wire import codec  # noqa: E402
from xend_vnet.kernel_shim.wire.segments import MSG_FAST  # noqa: E402

LINKTYPE_ETHERNET = 1
_MAGICS = {  # first 4 bytes -> (byte order, divisor of the fraction of a second)
    b"\xd4\xc3\xb2\xa1": ("<", 1e6), b"\xa1\xb2\xc3\xd4": (">", 1e6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e9), b"\xa1\xb2\x3c\x4d": (">", 1e9),
}
ETH_VLAN = (b"\x81\x00", b"\x88\xa8")
ETH_IPV4, ETH_IPV6 = b"\x08\x00", b"\x86\xdd"
IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ETHERIP = 6, 17, 97
MAX_PENDING = 4096           # datagrams waiting for fragments, per reassembler
MAX_PROBLEMS = 20            # problems kept as text; all are counted
MIN_FRAME = 60               # an Ethernet frame's minimum, without its FCS


class CaptureError(ValueError):
    """A file that is not a pcap capture this checker reads."""


@dataclass
class Packet:
    """A record of the capture: its time, and whether the snap length cut it."""

    time: float
    data: bytes
    truncated: bool


def read_pcap(data: bytes) -> Iterator[Packet]:
    """The records of a classic pcap file of Ethernet frames.  A record cut
    short by the end of the file ends the iteration (tcpdump killed mid-write)."""
    if len(data) < 24 or data[:4] not in _MAGICS:
        raise CaptureError("not a pcap file (bad magic number)")
    order, divisor = _MAGICS[data[:4]]
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF
    if linktype != LINKTYPE_ETHERNET:
        raise CaptureError(f"link type {linktype}: only Ethernet captures (1) are read")
    record = struct.Struct(order + "IIII")
    off = 24
    while off + record.size <= len(data):
        sec, frac, caplen, origlen = record.unpack_from(data, off)
        off += record.size
        if off + caplen > len(data):
            return
        yield Packet(sec + frac / divisor, data[off:off + caplen], caplen < origlen)
        off += caplen


def ones_sum(data: bytes, start: int = 0) -> int:
    """The 16-bit one's complement sum (RFC 1071) of ``data``, plus ``start``."""
    if len(data) % 2:
        data += b"\0"
    total = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def l3_start(frame: bytes) -> tuple[bytes, int]:
    """(EtherType, offset of the network header) of an Ethernet frame, past
    any 802.1Q or 802.1ad tags."""
    off = 12
    while frame[off:off + 2] in ETH_VLAN:
        off += 4
    return frame[off:off + 2], off + 2


@dataclass(frozen=True)
class Ipv4:
    """An IPv4 packet's fields that matter here; ``payload`` is cut at the total length."""

    src: str
    dst: str
    ident: int
    proto: int
    more: bool
    offset: int          # of this fragment's payload, in bytes
    header: bytes
    payload: bytes

    @property
    def fragment(self) -> bool:
        return self.more or self.offset > 0


def parse_ipv4(packet: bytes) -> Ipv4 | str:
    """The packet, or what is wrong with it."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return "not IPv4"
    ihl = (packet[0] & 15) * 4
    total = int.from_bytes(packet[2:4], "big")
    if ihl < 20 or total < ihl or len(packet) < total:
        return f"IPv4 lengths (header {ihl}, total {total}, captured {len(packet)})"
    flags = int.from_bytes(packet[6:8], "big")
    return Ipv4(codec.ipv4_text(packet[12:16]), codec.ipv4_text(packet[16:20]),
                int.from_bytes(packet[4:6], "big"), packet[9], bool(flags & 0x2000),
                (flags & 0x1FFF) * 8, packet[:ihl], packet[ihl:total])


class Reassembler:
    """IPv4 fragments back into whole payloads, at most ``MAX_PENDING``
    datagrams waiting (the oldest forgotten first)."""

    def __init__(self) -> None:
        self.pending: dict[tuple, dict[int, Ipv4]] = {}
        self.forgotten = 0

    def add(self, p: Ipv4) -> Ipv4 | None:
        """The whole packet once its last fragment is in, else None."""
        if not p.fragment:
            return p
        key = (p.src, p.dst, p.ident, p.proto)
        parts = self.pending.setdefault(key, {})
        parts[p.offset] = p
        end = next((q.offset + len(q.payload) for q in parts.values() if not q.more), None)
        if end is not None:
            payload, at = b"", 0
            while at < end and at in parts:
                payload += parts[at].payload
                at = parts[at].offset + len(parts[at].payload)
            if at == end and len(payload) == end:
                del self.pending[key]
                first = parts[0]
                return Ipv4(p.src, p.dst, p.ident, p.proto, False, 0, first.header, payload)
        if len(self.pending) > MAX_PENDING:
            self.pending.pop(next(iter(self.pending)))
            self.forgotten += 1
        return None

    @property
    def incomplete(self) -> int:
        """Datagrams still missing fragments, and those forgotten."""
        return len(self.pending) + self.forgotten


def l4_problem(proto: int, pseudo: bytes, segment: bytes) -> str | None:
    """What is wrong with a TCP or UDP segment's checksum, given its pseudo-header."""
    name = "TCP" if proto == IPPROTO_TCP else "UDP"
    if len(segment) < (20 if proto == IPPROTO_TCP else 8):
        return f"{name} segment of {len(segment)} bytes"
    if proto == IPPROTO_UDP and segment[6:8] == b"\0\0" and len(pseudo) == 12:
        return None                      # IPv4 UDP without a checksum
    if ones_sum(segment, ones_sum(pseudo)) != 0xFFFF:
        return f"{name} checksum {segment[16 if proto == IPPROTO_TCP else 6:][:2].hex()}"
    return None


@dataclass
class Report:
    """What a capture held; ``problems`` are frames a legacy host would drop."""

    packets: int = 0
    truncated: int = 0             # records the snap length cut: not checked
    datagrams: int = 0             # UDP 1798 datagrams and protocol 97 packets, whole
    gso_packets: int = 0           # captured longer than the MTU: segmentation offload
    data_frames: int = 0           # frames in legacy data messages (id 2) and protocol 97
    varp: int = 0
    fast: int = 0                  # id-5 messages (our engines' fast framing)
    other: int = 0                 # any other message id, or one the codec refused
    ipv4_checked: int = 0          # inner IPv4 headers checked
    l4_checked: int = 0            # inner TCP and UDP checksums checked
    gso_frames: int = 0            # inner super-frames: checksummed where they are cut
    incomplete: int = 0            # outer or inner datagrams missing fragments
    bad: int = 0
    problems: list[str] = field(default_factory=list)
    by_source: dict[str, int] = field(default_factory=dict)   # data frames per outer source

    def problem(self, text: str) -> None:
        self.bad += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def add(self, other: Report) -> None:
        """Count ``other`` (another capture of the same thing) in this one."""
        for name, value in vars(other).items():
            if isinstance(value, int):
                setattr(self, name, getattr(self, name) + value)
        self.problems += other.problems[:MAX_PROBLEMS - len(self.problems)]
        for src, n in other.by_source.items():
            self.by_source[src] = self.by_source.get(src, 0) + n

    @property
    def legacy_framing(self) -> bool:
        """Data frames in the legacy framing were seen, and nothing in ours."""
        return self.data_frames > 0 and self.fast == 0


class FrameChecker:
    """Checks the frames of data messages, inner fragments put back together."""

    def __init__(self, report: Report, mtu: int):
        self.report = report
        self.mtu = mtu
        self.inner = Reassembler()

    def check(self, frame: bytes, where: str) -> None:
        if len(frame) < codec.ETH_HEADER_LEN:
            self.report.problem(f"{where}: frame of {len(frame)} bytes")
            return
        ethertype, off = l3_start(frame)
        if ethertype == ETH_IPV4:
            self._ipv4(frame[off:], where)
        elif ethertype == ETH_IPV6:
            self._ipv6(frame[off:], where)

    def _ipv4(self, packet: bytes, where: str) -> None:
        p = parse_ipv4(packet)
        if isinstance(p, str):
            self.report.problem(f"{where}: {p}")
            return
        self.report.ipv4_checked += 1
        if ones_sum(p.header) != 0xFFFF:
            self.report.problem(f"{where}: IPv4 header checksum {p.header[10:12].hex()} "
                                f"({p.src} > {p.dst})")
            return
        if not p.fragment and len(p.header) + len(p.payload) > self.mtu:
            self.report.gso_frames += 1
            return
        whole = self.inner.add(p)
        if whole is None or whole.proto not in (IPPROTO_TCP, IPPROTO_UDP):
            return
        pseudo = (whole.header[12:20]
                  + struct.pack("!BBH", 0, whole.proto, len(whole.payload)))
        self._l4(whole.proto, pseudo, whole.payload, f"{where}: {whole.src} > {whole.dst}")

    def _ipv6(self, packet: bytes, where: str) -> None:
        if len(packet) < 40 or packet[6] not in (IPPROTO_TCP, IPPROTO_UDP):
            return                      # extension headers are not followed
        length = int.from_bytes(packet[4:6], "big")
        segment = packet[40:40 + length]
        if len(segment) != length:
            self.report.problem(f"{where}: IPv6 payload length {length}")
            return
        pseudo = packet[8:40] + struct.pack("!IxxxB", length, packet[6])
        self._l4(packet[6], pseudo, segment, f"{where}: IPv6")

    def _l4(self, proto: int, pseudo: bytes, segment: bytes, where: str) -> None:
        self.report.l4_checked += 1
        problem = l4_problem(proto, pseudo, segment)
        if problem:
            self.report.problem(f"{where}: {problem}")


def check_packets(packets: Iterable[Packet], sources: set[str] | None = None,
                  port: int = codec.VARP_PORT, mtu: int = 1500) -> Report:
    """The report of a capture's packets on a link of ``mtu`` whose domains
    have ``mtu`` too; with ``sources``, only the datagrams sent from those
    addresses count."""
    report = Report()
    outer = Reassembler()
    frames = FrameChecker(report, mtu)
    for pkt in packets:
        report.packets += 1
        if pkt.truncated:
            report.truncated += 1
            continue
        if len(pkt.data) < codec.ETH_HEADER_LEN:
            continue
        ethertype, off = l3_start(pkt.data)
        if ethertype != ETH_IPV4:
            continue
        p = parse_ipv4(pkt.data[off:])
        if isinstance(p, str) or (sources is not None and p.src not in sources):
            continue
        if p.proto not in (IPPROTO_UDP, IPPROTO_ETHERIP):
            continue
        whole = outer.add(p)
        if whole is None:
            continue
        gso = not p.fragment and len(p.header) + len(p.payload) > mtu
        report.gso_packets += gso
        _datagram(whole, port, report, frames, gso)
    report.incomplete = outer.incomplete + frames.inner.incomplete
    return report


def _datagram(p: Ipv4, port: int, report: Report, frames: FrameChecker, gso: bool) -> None:
    where = f"{p.src} > {p.dst}"
    if p.proto == IPPROTO_ETHERIP:
        report.datagrams += 1
        try:
            _vid, frame = codec.decode_etherip(p.payload)
        except codec.DecodeError as e:
            report.other += 1
            report.problem(f"{where}: protocol 97 refused ({e.reason})")
            return
        _data_frame(frame, p.src, where, report, frames)
        return
    if len(p.payload) < 8:
        return
    sport, dport = struct.unpack_from("!HH", p.payload)
    if port not in (sport, dport):
        return
    for payload in split_train(p.payload[8:], frames.mtu) if gso else [p.payload[8:]]:
        _message(payload, where, p.src, report, frames)


def split_train(payload: bytes, mtu: int) -> list[bytes]:
    """The datagrams of a UDP_SEGMENT train captured whole: one size but the
    last, the size that of its first data message (read from its frame's
    IPv4 length); the payload as one datagram when that cannot be read."""
    size = message_length(payload)
    if size is None or size >= len(payload) or size > mtu:
        return [payload]
    return [payload[i:i + size] for i in range(0, len(payload), size)]


def message_length(payload: bytes) -> int | None:
    """The length of the data message that starts ``payload``, from its
    frame's IPv4 total length (frames shorter than Ethernet's minimum padded)."""
    if payload[:len(codec.DATA_PREFIX)] != codec.DATA_PREFIX:
        return None
    frame = payload[codec.DATA_HEADER_LEN:]
    if len(frame) < codec.ETH_HEADER_LEN:
        return None
    ethertype, off = l3_start(frame)
    if ethertype != ETH_IPV4 or len(frame) < off + 4:
        return None
    total = int.from_bytes(frame[off + 2:off + 4], "big")
    return codec.DATA_HEADER_LEN + max(off + total, MIN_FRAME)


def _message(payload: bytes, where: str, src: str, report: Report,
             frames: FrameChecker) -> None:
    report.datagrams += 1
    try:
        ident = codec.msg_id(payload)
        if ident == codec.MSG_DATA:
            _vid, frame = codec.decode_data(payload)
            _data_frame(frame, src, where, report, frames)
            return
    except codec.DecodeError as e:
        report.other += 1
        report.problem(f"{where}: data message refused ({e.reason})")
        return
    if ident == codec.MSG_VARP:
        report.varp += 1
    elif ident == MSG_FAST:
        report.fast += 1
    else:
        report.other += 1


def _data_frame(frame: bytes, src: str, where: str, report: Report,
                frames: FrameChecker) -> None:
    report.data_frames += 1
    report.by_source[src] = report.by_source.get(src, 0) + 1
    frames.check(frame, where)


def check_file(path: str, sources: set[str] | None = None, mtu: int = 1500) -> Report:
    with open(path, "rb") as f:
        return check_packets(read_pcap(f.read()), sources, mtu=mtu)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pcap", nargs="+")
    p.add_argument("--from", dest="sources", action="append", metavar="ADDR",
                   help="count only datagrams from this address (repeatable)")
    p.add_argument("--mtu", type=int, default=1500,
                   help="the link's MTU, and the domains' (default %(default)s)")
    opts = p.parse_args(argv)
    bad = 0
    for path in opts.pcap:
        report = check_file(path, set(opts.sources) if opts.sources else None, opts.mtu)
        print(json.dumps({"file": path, **vars(report)}, indent=2))
        bad += report.bad
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
