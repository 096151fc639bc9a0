"""What EngineCore does with what arrives from the network (protocol.md 3.3, 4.4).

The VnetMsgHdr id picks VARP, data, VFWD, secured or (between our engines)
segments.  Data for a known vnet teaches (vnet, inner source MAC) -> outer
source IP and is delivered to the vnet's TAP: learn, count, deliver
(``_deliver_frame``), the one rule for every frame that reaches a vnet,
whatever carried it.  VARP requests are answered only for local vifs,
announces are learned, requests are never sent.

Segments from our engines (``wire/segments.py``, ``reassembly.py``) are put
together again and delivered with their virtio_net_hdr (``DeliverOffload``);
the capability they need is learned from the trailer our engines add to
their announces, and a probe (an announce asking for an answer) is answered
with an announce of one of our domains.  Without ``CoreOptions.offload``
id 5 is an unknown id, as for legacy hosts.

On a vnet the kernel path carries, announces also say whether their engine
decapsulates the vnet in its kernel (``CAP_KERNEL``, ``KernelPeers``), and a
sender learned there whose kernel path is not known yet is probed for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...vnet_rules import is_host_address
from ..wire import codec
from ..wire.codec import (
    DATA_ETH_SRC,
    DATA_HEADER,
    DATA_HEADER_LEN,
    DATA_PREFIX,
    ETH_HEADER_LEN,
    ETH_SRC,
    MSG_DATA,
    MSG_SECURE,
    MSG_VARP,
    MSG_VFWD,
    VARP_ANNOUNCE,
    VARP_REQUEST,
    DecodeError,
    VarpHeader,
)
from ..wire.offload import PACKET_ETH_SRC, VNET_HDR_LEN
from ..wire.segments import (
    CAP_KERNEL,
    CAP_PROBE,
    CAP_SEGMENTS,
    FAST_SEALED,
    MSG_FAST,
    SEGMENT_VNET,
    decode_sealed_inner,
    trailer_bits,
)
from .actions import DeliverFrame, DeliverOffload
from .counters import EngineCounters, VnetCounters, count
from .peer_caps import KernelPeers, PeerCapabilities
from .reassembly import Reassembler
from .varp_cache import VarpCache
from .vif_table import VifTable

if TYPE_CHECKING:
    from .engine import CoreOptions, Vnet

_MIN_DATA = DATA_HEADER_LEN + ETH_HEADER_LEN
_DATA_ID = DATA_PREFIX[:2]


class ReceivePath:
    """The receiving half of ``EngineCore``; the state is the engine's."""

    options: CoreOptions
    counters: EngineCounters
    varp: VarpCache
    vifs: VifTable
    caps: PeerCapabilities
    sealed_caps: PeerCapabilities
    kernel_peers: KernelPeers
    reassembler: Reassembler
    mcaddr: str
    own_addresses: set[str]
    self_address: str | None
    _vnets: dict[bytes, Vnet]
    _trailer: bytes
    _trailers: tuple[bytes, bytes]

    def _dispatch(self, ident: int, payload: bytes, src_ip: str, now: float,
                  actions: list) -> None:
        if ident == MSG_DATA:
            vid_raw, frame = codec.decode_data(payload)
            self._deliver_frame(self._clear_vnet(vid_raw), frame, src_ip, now, actions)
        elif ident == MSG_VARP:
            self._receive_varp(payload, src_ip, now, actions)
        elif ident == MSG_VFWD:
            self._receive_vfwd(payload, src_ip, now, actions)
        elif ident == MSG_SECURE:
            self._receive_secure(payload, now, actions)
        elif ident == MSG_FAST and self.options.offload:
            self._receive_fast(payload, src_ip, now, actions)
        else:
            raise DecodeError("unknown_msg_id", f"id {ident}")

    def _clear_vnet(self, vid_raw: bytes) -> Vnet:
        """The vnet clear data is for; DecodeError when unknown or secured."""
        vnet = self._vnets.get(vid_raw)
        if vnet is None:
            raise DecodeError("unknown_vnet")
        if vnet.keys is not None:
            raise DecodeError("clear_on_secured")           # design.md 7
        return vnet

    # -- learn, count, deliver ----------------------------------------------------------

    def _deliver_frame(self, vnet: Vnet, frame: bytes, src: str | None, now: float,
                       actions: list) -> None:
        """A frame for ``vnet``: its source MAC is learned at ``src`` (None: it
        was, for the datagram before in the same train), it is counted, and it
        goes to the TAP."""
        vc = vnet.counters
        if src is not None:
            self._learn(vnet.vid.raw, frame[ETH_SRC], src, now, vc)
            if vnet.kernel:
                self._probe_kernel(vnet, src, now, actions)
        vc.rx_packets += 1
        vc.rx_bytes += len(frame)
        self.counters.rx_data += 1
        actions.append(DeliverFrame(vnet.vid, frame))

    def _deliver_packet(self, vnet: Vnet, packet: bytes, src: str, now: float,
                        actions: list) -> None:
        """``_deliver_frame`` for a frame behind its virtio_net_hdr (a whole
        super-frame from another engine), to a TAP with offloads."""
        vc = vnet.counters
        self._learn(vnet.vid.raw, packet[PACKET_ETH_SRC], src, now, vc)
        if vnet.kernel:
            self._probe_kernel(vnet, src, now, actions)
        vc.rx_packets += 1
        vc.rx_bytes += len(packet) - VNET_HDR_LEN
        self.counters.rx_fast_frames += 1
        actions.append(DeliverOffload(vnet.vid, packet))

    def _learn(self, vid_raw: bytes, mac: bytes, addr: str, now: float,
               vc: VnetCounters, source: str | None = None) -> None:
        """(vnet, mac) at ``addr``, as ``source`` (default ``addr``) said: each
        source within its vnet's and its own bound (core/bounds.py)."""
        if self.varp.learn(vid_raw, mac, addr, now, source or addr, vc.refused):
            vc.learned += 1
            # The MAC lives elsewhere now (a domain migrated away, design.md
            # 8): stop answering for it, and announce it again if it returns.
            self.vifs.remove(vid_raw, mac)

    # -- VARP -----------------------------------------------------------------------

    def _receive_varp(self, payload: bytes, src_ip: str, now: float, actions: list) -> None:
        h = VarpHeader.decode(payload)
        if h.opcode == VARP_REQUEST:
            # Answer only for local vifs, to the request's IP source on the
            # VARP port, never from the cache (protocol.md 3.3).
            if (h.vnet, h.vmac) in self.vifs:
                if self._vnets[h.vnet].keys is not None:
                    raise DecodeError("clear_on_secured")   # no clear answers (design.md 7)
                if self.self_address is None:
                    raise DecodeError("no_self_address", "cannot answer VARP request")
                self.counters.varp_replies += 1
                self._send(src_ip, codec.encode_announce(h.vnet, h.vmac, self.self_address),
                           actions)
        elif h.opcode == VARP_ANNOUNCE:
            vnet = self._clear_vnet(h.vnet)
            if h.family != codec.AF_INET_WIRE:
                raise DecodeError("varp_bad_family", f"family {h.family}")  # protocol.md 3.7
            addr = h.ipv4
            if addr in self.own_addresses:
                raise DecodeError("varp_own_address", addr)
            if not is_host_address(addr):
                raise DecodeError("varp_bad_address", addr)
            self._learn(h.vnet, h.vmac, addr, now, vnet.counters, src_ip)
            self._heard_announce(vnet, payload, addr, self.caps, now, actions, src_ip)
        else:
            raise DecodeError("varp_bad_opcode", f"opcode {h.opcode}")
        self.counters.rx_varp += 1

    def _heard_announce(self, vnet: Vnet, announce: bytes, addr: str, caps: PeerCapabilities,
                        now: float, actions: list, source: str) -> None:
        """The trailer of an announce learned at ``addr`` from ``source``: it
        takes segments, its kernel path decapsulates the vnet (or no longer),
        and a probe asks for our capabilities back (wire/segments.py); all
        within the vnet's and the source's bounds."""
        bits = trailer_bits(announce)
        if vnet.kernel:     # only clear vnets: nothing unauthenticated touches a secured one
            self.kernel_peers.heard(vnet.vid.raw, addr, bits & CAP_KERNEL != 0, now, source,
                                    vnet.counters.refused)
        if not bits:
            return
        if self._trailer and bits & CAP_SEGMENTS:
            caps.heard(addr, now, vnet.vid.raw, source, vnet.counters.refused)
        if bits & CAP_PROBE and bits & (CAP_SEGMENTS | CAP_KERNEL) and (
                self._trailer or vnet.kernel):
            self._answer_probe(vnet, addr, caps, now, actions, source)

    def _answer_probe(self, vnet: Vnet, addr: str, caps: PeerCapabilities, now: float,
                      actions: list, source: str) -> None:
        """Tell an engine that probed us that we take segments too: a unicast
        announce of one of our domains in that vnet, with our trailer (no
        probe bit, so the exchange ends there), sealed on a secured vnet."""
        if self.self_address is None or not caps.answer_due(
                addr, now, vnet.vid.raw, source, vnet.counters.refused):
            return
        mac = self.vifs.any_mac(vnet.vid.raw)
        if mac is None:
            return      # no domain of ours here: nothing true to announce
        answer = self._announce(vnet, mac, self._trailers[vnet.kernel], now)
        self.counters.varp_replies += 1
        self._send(addr, answer, actions)

    # -- secured --------------------------------------------------------------------

    def _receive_opened(self, vnet: Vnet, inner: bytes, care_of: str, now: float,
                        actions: list) -> None:
        """The clear-mode message of a verified secured one (design.md 7): data
        is delivered and an announce learned, both at the care-of address."""
        vraw = vnet.vid.raw
        ident = codec.msg_id(inner)
        if ident == MSG_FAST and self._trailer:
            vid_raw, packet = decode_sealed_inner(inner, self.options.min_gso_size)
            if vid_raw != vraw:
                raise DecodeError("secure_vnet_mismatch")
            self._deliver_packet(vnet, packet, care_of, now, actions)
            # Verified: it takes segments.
            self.sealed_caps.heard(care_of, now, vraw, care_of, vnet.counters.refused)
        elif ident == MSG_DATA:
            vid_raw, frame = codec.decode_data(inner)
            if vid_raw != vraw:
                raise DecodeError("secure_vnet_mismatch")
            self._deliver_frame(vnet, frame, care_of, now, actions)
        elif ident == MSG_VARP:
            a = VarpHeader.decode(inner)
            if a.opcode != VARP_ANNOUNCE or a.vnet != vraw:
                raise DecodeError("secure_bad_inner", f"VARP opcode {a.opcode}")
            self._learn(vraw, a.vmac, care_of, now, vnet.counters)
            self._heard_announce(vnet, inner, care_of, self.sealed_caps, now, actions, care_of)
            self.counters.rx_varp += 1
        else:
            raise DecodeError("secure_bad_inner", f"id {ident}")

    # -- segments and trains --------------------------------------------------------------

    def _receive_fast(self, payload: bytes, src_ip: str, now: float, actions: list) -> None:
        """A segment from another engine (which therefore takes segments), kept
        until its frame is complete; only for a vnet we have, so that a flood
        of segments fills the bounds of a vnet it names (core/bounds.py)."""
        vnet = self._fast_vnet(payload)
        done = self.reassembler.add(src_ip, payload, now)
        self.caps.heard(src_ip, now, vnet.vid.raw, src_ip, vnet.counters.refused)
        if done is None:
            self.counters.rx_fast += 1
            return
        self._fast_done(done, src_ip, now, actions)

    def _fast_vnet(self, segment: bytes) -> Vnet:
        """The vnet a segment names (its header: ``wire/segments.py``)."""
        vnet = self._vnets.get(segment[SEGMENT_VNET])
        if vnet is None:
            raise DecodeError("unknown_vnet")
        return vnet

    def _fast_done(self, done: tuple[int, bytes, bytes], src_ip: str, now: float,
                   actions: list) -> None:
        """A reassembled frame: delivered, or a sealed one verified first."""
        opcode, vid_raw, packet = done
        if opcode == FAST_SEALED:
            # The whole super-frame is one secured message: verified, then
            # delivered like sealed data (design.md 7).
            self._receive_secure(packet, now, actions)
        else:
            self._deliver_packet(self._clear_vnet(vid_raw), packet, src_ip, now, actions)
        self.counters.rx_fast += 1

    def _receive_segment_train(self, data: bytes, gso: int, src_ip: str,
                               now: float) -> list | None:
        """The segments of one frame, taken in one step; None when the train
        mixes frames and is taken datagram by datagram instead."""
        n = -(-len(data) // gso)
        c = self.counters
        try:
            vnet = self._fast_vnet(data)
            done = self.reassembler.add_train(src_ip, data, gso, now)
        except DecodeError as e:
            if e.reason == "fast_train_mixed":
                return None
            c.rx_datagrams += n
            c.rx_bytes += len(data)
            c.rx_dropped[e.reason] = c.rx_dropped.get(e.reason, 0) + n
            return []
        c.rx_datagrams += n
        c.rx_bytes += len(data)
        self.caps.heard(src_ip, now, vnet.vid.raw, src_ip, vnet.counters.refused)
        if done is None:
            c.rx_fast += n
            return []
        c.rx_fast += n - 1
        actions: list = []
        try:
            self._fast_done(done, src_ip, now, actions)
        except DecodeError as e:
            count(c.rx_dropped, e.reason)
        return actions

    def _receive_datagrams(self, data: bytes, gso: int, src_ip: str, dst_ip: str,
                           now: float) -> list:
        """``receive_udp`` on each datagram of a train, but a run of data with
        the same header and sender as the one before, already decoded, checked
        and learned, is only counted and delivered."""
        out: list = []
        c = self.counters
        vnet = header = mac = None      # of the last datagram that was such data
        for at in range(0, len(data), gso):
            payload = data[at:at + gso]
            if (vnet is not None and payload[DATA_HEADER] == header
                    and payload[DATA_ETH_SRC] == mac and len(payload) >= _MIN_DATA):
                c.rx_datagrams += 1
                c.rx_bytes += len(payload)
                self._deliver_frame(vnet, payload[DATA_HEADER_LEN:], None, now, out)
                continue
            actions = self.receive_udp(payload, src_ip, dst_ip, now)
            out += actions
            vnet = None
            if (len(actions) == 1 and actions[0].__class__ is DeliverFrame
                    and payload[:2] == _DATA_ID and dst_ip != self.mcaddr):
                vnet = self._vnets[actions[0].vid.raw]
                header, mac = payload[DATA_HEADER], payload[DATA_ETH_SRC]
        return out
