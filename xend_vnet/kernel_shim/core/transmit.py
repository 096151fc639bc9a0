"""What EngineCore sends: frames read off a TAP, announces, floods and relays.

(protocol.md 3.5, 5, 7, design.md 7-8)

A frame from a TAP teaches the vif table its source MAC (a new MAC gets one
gratuitous announce to the group); group and unknown unicast destinations
are flooded to the group, known unicast goes to the learned address.
Everything sent to the group is also sent to each peer as VFWD, and
multicast received for the group is relayed to the peers (protocol.md 7).
Every message that leaves a secured vnet is sealed first (``_seal``).

Fast framing (``wire/segments.py``, ``peer_caps.py``), only with
``CoreOptions.offload``: a frame read from a TAP with offloads comes with
its virtio_net_hdr.  When it goes to one learned address that has shown it
takes segments, it leaves whole as ``SendFast`` and the daemon cuts it into
segments (on a secured vnet it is sealed once first, and the secured
message is what is cut, opcode 2); toward any other address and in every
flood it is made plain in software first (complete checksums, no GSO).
Unicast to an address not known to be fast sends it a probe: a true
announce of the sending domain with the trailer and a probe bit (at most
every few seconds), which our engines answer with an announce of their own
and legacy hosts only learn from.  Without the option no trailer is sent,
as for legacy hosts.

Plain frames of one super-frame toward one address leave as ``SendTrain``:
cut no larger than fits one datagram of the underlay (``underlay_mtu``), so
they need no IP fragments, and the daemon sends the train with one
``sendmsg`` (UDP_SEGMENT).  On the wire they are what a legacy host sends:
one frame per datagram.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..security import secure_codec
from ..wire import codec
from ..wire.codec import DATA_HEADER_LEN, DATA_PREFIX, ETH_DST, ETH_SRC, DecodeError
from ..wire.offload import plain_frames
from ..wire.segments import (
    FAST_SEALED,
    FAST_SEGMENT,
    UDP_IP_OVERHEAD,
    encode_sealed_inner,
)
from .actions import SendFast, SendTrain, SendUdp
from .counters import EngineCounters, count
from .peer_caps import KernelPeers, PeerCapabilities
from .peer_table import PeerTable
from .varp_cache import VarpCache
from .vif_table import VifTable

if TYPE_CHECKING:
    from .engine import Vnet


class SendPath:
    """The sending half of ``EngineCore``; the state is the engine's."""

    counters: EngineCounters
    varp: VarpCache
    vifs: VifTable
    peers: PeerTable
    caps: PeerCapabilities
    sealed_caps: PeerCapabilities
    kernel_peers: KernelPeers
    mcaddr: str
    port: int
    self_address: str | None
    underlay_mtu: int
    _trailer: bytes
    _trailers: tuple[bytes, bytes]          # by ``Vnet.kernel``
    _probe_trailers: tuple[bytes, bytes]
    _frame_id: int
    _care_of_addr: str | None
    _care_of_raw: bytes

    def _send_frame(self, vnet: Vnet, frame: bytes, packet: bytes | None,
                    now: float) -> list:
        """A frame read off ``vnet``'s TAP (``EngineCore.receive_tap``)."""
        actions: list = []
        vraw = vnet.vid.raw
        vc = vnet.counters
        src = frame[ETH_SRC]
        # A unicast source (group bit clear) is a domain of ours.
        if not frame[6] & 1 and self.vifs.update(vraw, src, now, vc.refused):
            self._domain_arrived(vnet, src, now, actions)
        if packet is not None:
            self._send_offloaded(vnet, frame, packet, now, actions)
            return actions
        payload = self._seal(vnet, DATA_PREFIX + vraw + frame, now)
        vc.tx_packets += 1
        vc.tx_bytes += len(frame)
        if not frame[0] & 1:                                 # a unicast destination
            addr = self.varp.resolve(vraw, frame[ETH_DST], now, vc.refused)
            if addr is not None:
                self._send(addr, payload, actions)
                return actions
        vc.flooded += 1                                      # protocol.md 5
        self._send_group(payload, actions)
        return actions

    def _domain_arrived(self, vnet: Vnet, mac: bytes, now: float, actions: list) -> None:
        """A MAC new in the vif table: a domain arrived (design.md 8).  Whatever
        we had learned about it is stale, and the others learn its new place."""
        self.varp.forget(vnet.vid.raw, mac)
        if self.self_address is not None:
            vnet.counters.announced += 1
            self._send_group(self._announce(vnet, mac, self._trailers[vnet.kernel], now),
                             actions)

    def _probe_kernel(self, vnet: Vnet, addr: str, now: float, actions: list) -> None:
        """Ask ``addr``, a sender on a vnet our kernel path carries, whether its
        kernel path does too, when that is not known or about to run out
        (``KernelPeers``): a true announce of one of our domains there with the
        probe bit, which our engines answer and legacy hosts only learn from."""
        if self.self_address is None:
            return
        mac = self.vifs.any_mac(vnet.vid.raw)
        if mac is None or not self.kernel_peers.probe_due(vnet.vid.raw, addr, now,
                                                          vnet.counters.refused):
            return      # no domain of ours here: nothing true to announce
        self.counters.kernel_probes += 1
        self._send(addr, self._announce(vnet, mac, self._probe_trailers[1], now), actions)

    def _seal(self, vnet: Vnet, message: bytes, now: float) -> bytes:
        """``message`` as it leaves ``vnet``: sealed with our care-of address when
        the vnet is secured (design.md 7), as is otherwise.  The callers have
        made sure a secured vnet has a ``self_address``."""
        keys = vnet.keys
        if keys is None:
            return message
        if self._care_of_addr != self.self_address:
            self._care_of_addr = self.self_address
            self._care_of_raw = codec.ipv4_bytes(self.self_address)
        return keys.seal(message, self._care_of_raw, now)

    def _announce(self, vnet: Vnet, mac: bytes, trailer: bytes, now: float) -> bytes:
        """An announce of our domain ``mac`` in ``vnet`` at ``self_address``, with
        ``trailer`` (wire/segments.py), sealed on a secured vnet."""
        message = codec.encode_announce(vnet.vid.raw, mac, self.self_address) + trailer
        return self._seal(vnet, message, now)

    def _send_offloaded(self, vnet: Vnet, frame: bytes, packet: bytes, now: float,
                        actions: list) -> None:
        """Whole to an engine that takes segments, else plain (wire/offload.py)."""
        vc = vnet.counters
        vc.tx_packets += 1
        vc.tx_bytes += len(frame)
        addr = None
        if not frame[0] & 1:                                 # a unicast destination
            addr = self.varp.resolve(vnet.vid.raw, frame[ETH_DST], now, vc.refused)
            if (addr is not None and self._trailer
                    and self._send_whole(vnet, addr, frame, packet, now, actions)):
                return
        self._send_plain(vnet, addr, packet, now, actions)

    def _send_whole(self, vnet: Vnet, addr: str, frame: bytes, packet: bytes, now: float,
                    actions: list) -> bool:
        """``SendFast`` to an engine known to take segments (True); toward any
        other address a probe when one is due, and False: the frame goes plain."""
        caps = self.caps if vnet.keys is None else self.sealed_caps
        if caps.fast(addr, now):
            vraw = vnet.vid.raw
            self._frame_id = (self._frame_id + 1) & 0xFFFFFFFF
            self.counters.tx_fast += 1
            if vnet.keys is None:
                whole, opcode = packet, FAST_SEGMENT
            else:
                # One secured message for the whole super-frame (opcode 2).
                whole = self._seal(vnet, encode_sealed_inner(vraw, packet), now)
                opcode = FAST_SEALED
            actions.append(SendFast(addr, vraw, self._frame_id, whole, opcode))
            return True
        if (caps.probe_due(addr, now, vnet.vid.raw, vnet.counters.refused)
                and self.self_address is not None):
            # A true announce of the sending domain, asking for an answer;
            # never a VARP request (design.md 8).  Sealed on secured vnets.
            self._send(addr, self._announce(vnet, frame[ETH_SRC],
                                            self._probe_trailers[vnet.kernel], now), actions)
        return False

    def _send_plain(self, vnet: Vnet, addr: str | None, packet: bytes, now: float,
                    actions: list) -> None:
        """The frames a legacy host would get for ``packet``, each fitting one
        datagram of the underlay: flooded when ``addr`` is None, else one train."""
        room = self.underlay_mtu - UDP_IP_OVERHEAD - DATA_HEADER_LEN
        if vnet.keys is not None:
            room -= secure_codec.OVERHEAD
        try:
            frames = plain_frames(packet, room)
        except DecodeError as e:
            count(vnet.counters.dropped, e.reason)
            return
        vraw = vnet.vid.raw
        payloads = [self._seal(vnet, DATA_PREFIX + vraw + f, now) for f in frames]
        if addr is None:
            vnet.counters.flooded += 1                       # protocol.md 5
            for payload in payloads:
                self._send_group(payload, actions)
            return
        c = self.counters
        c.tx_datagrams += len(payloads)
        c.tx_bytes += sum(map(len, payloads))
        actions.append(SendTrain(addr, payloads) if len(payloads) > 1
                       else SendUdp(addr, payloads[0]))

    # -- sending ---------------------------------------------------------------------

    def _send(self, dst_ip: str, payload: bytes, actions: list) -> None:
        c = self.counters
        c.tx_datagrams += 1
        c.tx_bytes += len(payload)
        actions.append(SendUdp(dst_ip, payload))

    def _send_group(self, payload: bytes, actions: list) -> None:
        """To the group, and as VFWD to every peer (protocol.md 7: own multicast)."""
        self._send(self.mcaddr, payload, actions)
        if len(self.peers):
            vfwd = codec.encode_vfwd(codec.inner_udp_packet(payload, self.mcaddr, self.port))
            for peer in self.peers:
                peer.tx_packets += 1
                self.counters.vfwd_tx += 1
                self._send(peer.addr, vfwd, actions)

    def _relay(self, payload: bytes, src_ip: str, actions: list) -> None:
        """Multicast received for the group goes to the peers, except to the
        one it came from (the only loop avoidance legacy has, protocol.md 7)."""
        vfwd = None
        for peer in self.peers:
            if peer.addr == src_ip:
                continue
            if vfwd is None:
                vfwd = codec.encode_vfwd(
                    codec.inner_udp_packet(payload, self.mcaddr, self.port, src_ip))
            peer.tx_packets += 1
            self.counters.vfwd_tx += 1
            self._send(peer.addr, vfwd, actions)
