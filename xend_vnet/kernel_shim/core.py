"""EngineCore: the era-C forwarding state machine, sans-IO (wire.md 3-5, 7).

Bytes and events go in with the time as an argument; actions come out
(``SendUdp``, ``DeliverFrame``).  The daemon owns every socket and TAP.

Receive side (wire.md 4.4): packets from our own addresses and multicast to
another group are ignored; the VnetMsgHdr id picks VARP, data or VFWD; data
for a known vnet teaches (vnet, inner source MAC) -> outer source IP and is
delivered to the vnet's TAP.  VARP requests are answered only for local
vifs, announces are learned, requests are never sent.  Secured messages
(id 4) are dropped and counted until secured vnets exist (design.md 7).

TAP side (wire.md 3.5, 5, design.md 8): the source MAC goes into the vif
table (a new MAC gets one gratuitous announce to the group); group and
unknown unicast destinations are flooded to the group, known unicast goes to
the learned address.  Everything sent to the group is also sent to each
peer as VFWD, and multicast received for the group is relayed to the peers
(wire.md 7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ..vnet_id import VnetId
from . import codec
from .codec import (
    DATA_PREFIX,
    MSG_DATA,
    MSG_SECURE,
    MSG_VARP,
    MSG_VFWD,
    VARP_ANNOUNCE,
    VARP_REQUEST,
    DecodeError,
    VarpHeader,
)
from .counters import EngineCounters, VnetCounters, count
from .peer_table import PeerTable
from .varp_cache import VarpCache
from .vif_table import VifTable


@dataclass
class CoreOptions:
    mcaddr: str = codec.VARP_MCADDR
    port: int = codec.VARP_PORT
    varp_ttl: float = 60.0          # wire.md 3.5
    vif_ttl: float = 60.0           # wire.md 3.6
    sweep_interval: float | None = None   # None: the shorter TTL, like legacy

    @property
    def sweep_every(self) -> float:
        return self.sweep_interval or min(self.varp_ttl, self.vif_ttl)


class SendUdp(NamedTuple):
    """Send ``payload`` from the engine socket to (dst_ip, options.port)."""

    dst_ip: str
    payload: bytes


class DeliverFrame(NamedTuple):
    """Write ``frame`` to the TAP of vnet ``vid``."""

    vid: VnetId
    frame: bytes


class Vnet:
    __slots__ = ("counters", "ifname", "security", "vid")

    def __init__(self, vid: VnetId, ifname: str, security: str):
        self.vid = vid
        self.ifname = ifname
        self.security = security
        self.counters = VnetCounters()


_ZERO_ADDR = "0.0.0.0"
_GROUP_KIND_LIMIT = 256


class EngineCore:
    def __init__(self, options: CoreOptions | None = None):
        self.options = options or CoreOptions()
        self.mcaddr = self.options.mcaddr
        self.port = self.options.port
        self.own_addresses: set[str] = set()
        self.self_address: str | None = None
        self.varp = VarpCache()
        self.vifs = VifTable()
        self.peers = PeerTable()
        self.counters = EngineCounters()
        self._vnets: dict[bytes, Vnet] = {}
        self._next_sweep: float | None = None
        # dst address -> "multicast to another group"; the few addresses a
        # host receives on, so the per-packet test is one dict lookup.
        self._foreign_group: dict[str, bool] = {}

    # -- configuration ---------------------------------------------------------

    def add_vnet(self, vid: VnetId, ifname: str, security: str = "none") -> None:
        """KeyError if the vnet exists; ValueError for a name in use or a
        security level other than none (secured vnets do not exist yet)."""
        if vid.raw in self._vnets:
            raise KeyError(f"vnet {vid} already exists")
        if security != "none":
            raise ValueError(f"security {security!r} is not supported yet")
        for other in self._vnets.values():
            if other.ifname == ifname:
                raise ValueError(f"interface {ifname} is already used by vnet {other.vid}")
        self._vnets[vid.raw] = Vnet(vid, ifname, security)

    def remove_vnet(self, vid: VnetId) -> None:
        """KeyError if absent; also drops the vnet's cache entries and vifs."""
        del self._vnets[vid.raw]
        self.varp.remove_vnet(vid.raw)
        self.vifs.remove_vnet(vid.raw)

    def has_vnet(self, vid: VnetId) -> bool:
        return vid.raw in self._vnets

    def vnet(self, vid: VnetId) -> Vnet | None:
        return self._vnets.get(vid.raw)

    def vnets(self) -> list[Vnet]:
        """Sorted by id."""
        return [self._vnets[k] for k in sorted(self._vnets)]

    def vif_add(self, vid: VnetId, mac: bytes, now: float) -> None:
        """KeyError when the vnet does not exist (wire.md 8.3)."""
        if vid.raw not in self._vnets:
            raise KeyError(f"no such vnet {vid}")
        self.vifs.update(vid.raw, mac, now)
        self._arm(now)

    def vif_del(self, vid: VnetId, mac: bytes) -> None:
        """KeyError when the vif is not in the table."""
        if not self.vifs.remove(vid.raw, mac):
            raise KeyError(f"no vif {codec.mac_text(mac)} in vnet {vid}")

    def varp_flush(self) -> None:
        self.varp.flush()

    def set_mcaddr(self, addr: str) -> None:
        self.mcaddr = addr
        self._foreign_group.clear()

    def peer_add(self, addr: str, port: int = codec.VARP_PORT) -> None:
        self.peers.add(addr, port)

    def peer_del(self, addr: str) -> None:
        """KeyError when ``addr`` is not a peer."""
        self.peers.remove(addr)

    # -- timers ----------------------------------------------------------------

    def next_timer(self) -> float | None:
        """Absolute time of the next sweep; None while there is nothing to age."""
        return self._next_sweep

    def handle_timer(self, now: float) -> list:
        if self._next_sweep is None or now < self._next_sweep:
            return []
        self.varp.sweep(now, self.options.varp_ttl)
        self.vifs.sweep(now, self.options.vif_ttl)
        self._next_sweep = None
        if len(self.varp) or len(self.vifs):
            self._next_sweep = now + self.options.sweep_every
        return []

    def _arm(self, now: float) -> None:
        if self._next_sweep is None:
            self._next_sweep = now + self.options.sweep_every

    # -- network side ------------------------------------------------------------

    def receive_udp(self, payload: bytes, src_ip: str, dst_ip: str, now: float) -> list:
        """One datagram received on the engine port.  Never raises on any
        bytes: each datagram is accepted or dropped under a counted reason."""
        c = self.counters
        c.rx_datagrams += 1
        c.rx_bytes += len(payload)
        if src_ip in self.own_addresses:
            # Our own multicast looped back, or a relay of it (wire.md 5).
            count(c.rx_dropped, "own_packet")
            return []
        to_group = dst_ip == self.mcaddr
        if not to_group:
            foreign = self._foreign_group.get(dst_ip)
            if foreign is None:
                foreign = self._is_foreign_group(dst_ip)
            if foreign:
                count(c.rx_dropped, "other_group")     # wire.md 3.1
                return []
        if self._next_sweep is None:
            self._arm(now)
        actions: list = []
        try:
            ident = codec.msg_id(payload)
            if to_group and ident != MSG_VFWD and len(self.peers):
                # Relayed before validation: a peer may have a vnet we lack.
                self._relay(payload, src_ip, actions)
            self._dispatch(ident, payload, src_ip, now, actions)
        except DecodeError as e:
            count(c.rx_dropped, e.reason)
        return actions

    def _is_foreign_group(self, dst_ip: str) -> bool:
        try:
            foreign = codec.is_multicast(codec.parse_ipv4(dst_ip))
        except ValueError:
            foreign = False
        if len(self._foreign_group) >= _GROUP_KIND_LIMIT:
            self._foreign_group.clear()
        self._foreign_group[dst_ip] = foreign
        return foreign

    def _dispatch(self, ident: int, payload: bytes, src_ip: str, now: float,
                  actions: list) -> None:
        if ident == MSG_DATA:
            self._receive_data(payload, src_ip, now, actions)
        elif ident == MSG_VARP:
            self._receive_varp(payload, src_ip, now, actions)
        elif ident == MSG_VFWD:
            self._receive_vfwd(payload, src_ip, now, actions)
        elif ident == MSG_SECURE:
            raise DecodeError("secure_not_supported", "secure vnets not supported yet")
        else:
            raise DecodeError("unknown_msg_id", f"id {ident}")

    def _receive_data(self, payload: bytes, src_ip: str, now: float, actions: list) -> None:
        vid_raw, frame = codec.decode_data(payload)
        vnet = self._vnets.get(vid_raw)
        if vnet is None:
            raise DecodeError("unknown_vnet")
        vc = vnet.counters
        self._learn(vid_raw, frame[6:12], src_ip, now, vc)
        vc.rx_packets += 1
        vc.rx_bytes += len(frame)
        self.counters.rx_data += 1
        actions.append(DeliverFrame(vnet.vid, frame))

    def _learn(self, vid_raw: bytes, mac: bytes, addr: str, now: float,
               vc: VnetCounters) -> None:
        if self.varp.learn(vid_raw, mac, addr, now):
            vc.learned += 1
            # The MAC lives elsewhere now (a domain migrated away, design.md
            # 8): stop answering for it, and announce it again if it returns.
            self.vifs.remove(vid_raw, mac)

    def _receive_varp(self, payload: bytes, src_ip: str, now: float, actions: list) -> None:
        h = VarpHeader.decode(payload)
        if h.opcode == VARP_REQUEST:
            # Answer only for local vifs, to the request's IP source on the
            # VARP port, never from the cache (wire.md 3.3).
            if (h.vnet, h.vmac) in self.vifs:
                if self.self_address is None:
                    raise DecodeError("no_self_address", "cannot answer VARP request")
                self.counters.varp_replies += 1
                self._send(src_ip, codec.encode_announce(h.vnet, h.vmac, self.self_address),
                           actions)
        elif h.opcode == VARP_ANNOUNCE:
            vnet = self._vnets.get(h.vnet)
            if vnet is None:
                raise DecodeError("unknown_vnet")
            if h.family != codec.AF_INET_WIRE:
                raise DecodeError("varp_bad_family", f"family {h.family}")  # wire.md 3.7
            addr = h.ipv4
            if addr in self.own_addresses:
                raise DecodeError("varp_own_address", addr)
            first = h.addr[0]
            if first == 0 or first >= 224:
                raise DecodeError("varp_bad_address", addr)
            self._learn(h.vnet, h.vmac, addr, now, vnet.counters)
        else:
            raise DecodeError("varp_bad_opcode", f"opcode {h.opcode}")
        self.counters.rx_varp += 1

    def _receive_vfwd(self, payload: bytes, src_ip: str, now: float, actions: list) -> None:
        peer = self.peers.get(src_ip)
        if peer is None:
            raise DecodeError("vfwd_not_peer", src_ip)           # wire.md 7
        inner = codec.decode_vfwd(payload)
        if inner.dport != self.port:
            raise DecodeError("vfwd_wrong_port", f"inner port {inner.dport}")
        # A host forwarding its own multicast leaves the source 0.0.0.0.
        src = peer.addr if inner.src == _ZERO_ADDR else inner.src
        if src in self.own_addresses:
            raise DecodeError("own_packet")
        peer.rx_packets += 1
        self.counters.vfwd_rx += 1
        ident = codec.msg_id(inner.udp_payload)
        if ident == MSG_VFWD:
            raise DecodeError("vfwd_nested")
        # Processed as if received by multicast; the inner packet is not
        # relayed to peers again (wire.md 7).  Re-sending it onto the local
        # link is the job of a separate action type, added with that feature.
        self._dispatch(ident, inner.udp_payload, src, now, actions)

    # -- TAP side ------------------------------------------------------------------

    def receive_tap(self, vid: VnetId, frame: bytes, now: float) -> list:
        """One Ethernet frame read off vnet ``vid``'s TAP."""
        vraw = vid.raw
        vnet = self._vnets.get(vraw)
        if vnet is None:
            count(self.counters.tap_dropped, "unknown_vnet")
            return []
        vc = vnet.counters
        if len(frame) < codec.ETH_HEADER_LEN:
            count(vc.dropped, "short_frame")
            return []
        if self._next_sweep is None:
            self._arm(now)
        actions: list = []
        src = frame[6:12]
        if not frame[6] & 1 and self.vifs.update(vraw, src, now):
            # A domain arrived (design.md 8): whatever we had learned about
            # this MAC is stale, and the others learn its new place.
            self.varp.forget(vraw, src)
            if self.self_address is not None:
                vc.announced += 1
                self._send_group(codec.encode_announce(vraw, src, self.self_address), actions)
        payload = DATA_PREFIX + vraw + frame
        vc.tx_packets += 1
        vc.tx_bytes += len(frame)
        if not frame[0] & 1:
            addr = self.varp.resolve(vraw, frame[:6], now)
            if addr is not None:
                self._send(addr, payload, actions)
                return actions
        vc.flooded += 1                                      # wire.md 5
        self._send_group(payload, actions)
        return actions

    # -- sending ---------------------------------------------------------------------

    def _send(self, dst_ip: str, payload: bytes, actions: list) -> None:
        c = self.counters
        c.tx_datagrams += 1
        c.tx_bytes += len(payload)
        actions.append(SendUdp(dst_ip, payload))

    def _send_group(self, payload: bytes, actions: list) -> None:
        """To the group, and as VFWD to every peer (wire.md 7: own multicast)."""
        self._send(self.mcaddr, payload, actions)
        if len(self.peers):
            vfwd = codec.encode_vfwd(codec.inner_udp_packet(payload, self.mcaddr, self.port))
            for peer in self.peers:
                peer.tx_packets += 1
                self.counters.vfwd_tx += 1
                self._send(peer.addr, vfwd, actions)

    def _relay(self, payload: bytes, src_ip: str, actions: list) -> None:
        """Multicast received for the group goes to the peers, except to the
        one it came from (the only loop avoidance legacy has, wire.md 7)."""
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
