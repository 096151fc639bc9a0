"""EngineCore: the era-C forwarding state machine, sans-IO (protocol.md 3-5, 7).

Bytes and events go in with the time as an argument; actions come out
(``SendUdp``, ``DeliverFrame``, ``SendRaw``).  The daemon owns every socket
and TAP.

Receive side (protocol.md 4.4): packets from our own addresses and multicast to
another group are ignored; the VnetMsgHdr id picks VARP, data or VFWD; data
for a known vnet teaches (vnet, inner source MAC) -> outer source IP and is
delivered to the vnet's TAP.  VARP requests are answered only for local
vifs, announces are learned, requests are never sent.  Secured messages
(id 4) belong to secured vnets (below).

TAP side (protocol.md 3.5, 5, design.md 8): the source MAC goes into the vif
table (a new MAC gets one gratuitous announce to the group); group and
unknown unicast destinations are flooded to the group, known unicast goes to
the learned address.  Everything sent to the group is also sent to each
peer as VFWD, and multicast received for the group is relayed to the peers
(protocol.md 7).

Peer forwarding (protocol.md 7): a VFWD from a configured peer is processed as
if multicast (hosts learn the original sender) and its inner packet is
re-multicast onto the local link with the original source (``SendRaw``), so
hosts there learn it too.  Beyond legacy, a short duplicate window keyed on
(original sender, UDP payload) drops the copies that a mesh of peers or two
forwarders on one subnet would otherwise relay forever (``vfwd.py``).
Etherip without UDP (IP protocol 97, protocol.md 4.3) is accepted on receive.

Secured vnets (design.md 7, docs/security.md): the clear-mode message is
sealed (``security/``) before it leaves; a secured message (id 4) is
verified before anything changes, and teaches the care-of address carried
in its authenticated header, never the outer source.  Clear data and VARP
for a secured vnet are dropped and counted.

Fast framing (``wire/segments.py``, ``peer_caps.py``, ``reassembly.py``), only
with ``CoreOptions.offload``:
a frame read from a TAP with offloads comes with its virtio_net_hdr
(``receive_tap(..., packet=)``).  When it goes to one learned address that
has shown it takes segments, it leaves whole as ``SendFast`` and the
daemon cuts it into segments (on a secured vnet it is sealed once first,
and the secured message is what is cut, opcode 2); toward any other
address and in every flood it is made plain in software first (complete
checksums, no GSO).  The capability is learned from the trailer our engines add to
their announces; unicast to an address not known to be fast sends it a
probe, a true announce of the sending domain with the trailer and a probe
bit (at most every few seconds), which our engines answer with an announce
of their own and legacy hosts only learn from.  Received segments are put
together again and delivered with their header (``DeliverOffload``).
Without the option no trailer is sent and id 5 is an unknown id, as for
legacy hosts.

Plain frames of one super-frame toward one address leave as ``SendTrain``:
cut no larger than fits one datagram of the underlay (``underlay_mtu``), so
they need no IP fragments, and the daemon sends the train with one
``sendmsg`` (UDP_SEGMENT).  On the wire they are what a legacy host sends:
one frame per datagram.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import NamedTuple

from ...vnet_id import VnetId
from ...vnet_rules import is_host_address
from ..wire import codec
from ..wire.codec import (
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
from ..wire.segments import (
    CAP_TRAILER,
    FAST_SEALED,
    PROBE_TRAILER,
    FAST_SEGMENT,
    MSG_FAST,
    UDP_IP_OVERHEAD,
    asks_answer,
    has_capability,
    decode_sealed_inner,
    encode_sealed_inner,
)
from ..wire.offload import VNET_HDR_LEN, plain_frames
from .peer_caps import PeerCapabilities
from .reassembly import Reassembler
from .peer_table import PeerTable
from ..security import secure_codec
from ..security.keystore import Generation, SecurityContext, VnetKeys
from .vfwd import DuplicateWindow, remulticast_packet
from .varp_cache import VarpCache
from .vif_table import VifTable


@dataclass
class CoreOptions:
    mcaddr: str = codec.VARP_MCADDR
    port: int = codec.VARP_PORT
    varp_ttl: float = 60.0          # protocol.md 3.5
    vif_ttl: float = 60.0           # protocol.md 3.6
    sweep_interval: float | None = None   # None: the shorter TTL, like legacy
    offload: bool = False           # fast framing toward engines that take it

    @property
    def sweep_every(self) -> float:
        return self.sweep_interval or min(self.varp_ttl, self.vif_ttl)


class SendUdp(NamedTuple):
    """Send ``payload`` from the engine socket to (dst_ip, options.port)."""

    dst_ip: str
    payload: bytes


class SendTrain(NamedTuple):
    """Send each of ``payloads`` as one datagram to (dst_ip, options.port);
    all have the same size but the last, which may be shorter."""

    dst_ip: str
    payloads: list


class DeliverFrame(NamedTuple):
    """Write ``frame`` to the TAP of vnet ``vid``."""

    vid: VnetId
    frame: bytes


class SendFast(NamedTuple):
    """Send ``packet`` (virtio_net_hdr + frame, or for opcode 2 the secured
    message holding them) to ``dst_ip`` as the segments of frame ``frame_id``
    of vnet ``vid_raw`` (segments.segment_sends)."""

    dst_ip: str
    vid_raw: bytes
    frame_id: int
    packet: bytes
    opcode: int = FAST_SEGMENT


class DeliverOffload(NamedTuple):
    """Write ``packet`` (virtio_net_hdr + frame) to vnet ``vid``'s TAP, which has offloads."""

    vid: VnetId
    packet: bytes


class SendRaw(NamedTuple):
    """Send a complete IPv4 packet (header included) to ``dst_ip`` from a raw
    socket with multicast loop off: the re-multicast of a VFWD (protocol.md 7)."""

    dst_ip: str
    packet: bytes


class Vnet:
    __slots__ = ("counters", "ifname", "keys", "security", "vid")

    def __init__(self, vid: VnetId, ifname: str, security: str,
                 keys: VnetKeys | None = None):
        self.vid = vid
        self.ifname = ifname
        self.security = security
        self.keys = keys            # None for security none
        self.counters = VnetCounters()


_ZERO_ADDR = "0.0.0.0"
_SEGMENT_PREFIXES = (bytes((0, MSG_FAST, 0, FAST_SEGMENT)), bytes((0, MSG_FAST, 0, FAST_SEALED)))


def _is_unicast_host(addr: str) -> bool:
    """A dotted quad another host can have (the one rule: vnet_rules)."""
    return is_host_address(addr)
_GROUP_KIND_LIMIT = 256
DATA_HEADER_LEN = codec.DATA_HEADER_LEN
_MIN_DATA = DATA_HEADER_LEN + codec.ETH_HEADER_LEN


class EngineCore:
    def __init__(self, options: CoreOptions | None = None,
                 security: SecurityContext | None = None):
        self.options = options or CoreOptions()
        # Sender id, wall clock and epoch source of secured vnets (injected).
        self.security = security or SecurityContext.system()
        self._spis: dict[int, tuple[Vnet, Generation]] = {}
        self._care_of: tuple[str | None, bytes] = (None, b"")   # self_address packed
        self.mcaddr = self.options.mcaddr
        self.port = self.options.port
        self.own_addresses: set[str] = set()
        self.self_address: str | None = None
        # MTU of the device toward the other hosts (set by the daemon): plain
        # frames cut from super-frames fit one datagram of it.
        self.underlay_mtu = 1500
        self.varp = VarpCache()
        self.vifs = VifTable()
        self.peers = PeerTable()
        self.duplicates = DuplicateWindow()
        self.counters = EngineCounters()
        self._vnets: dict[bytes, Vnet] = {}
        self._next_sweep: float | None = None
        # dst address -> "multicast to another group"; the few addresses a
        # host receives on, so the per-packet test is one dict lookup.
        self._foreign_group: dict[str, bool] = {}
        self.caps = PeerCapabilities()          # claimed by clear traffic
        self.sealed_caps = PeerCapabilities()   # proven by verified secured traffic
        # Appended to our clear announces: we take segments (wire/segments.py).
        self._trailer = CAP_TRAILER if self.options.offload else b""
        self.reassembler = Reassembler()
        self._frame_id = 0

    # -- configuration ---------------------------------------------------------

    def add_vnet(self, vid: VnetId, ifname: str, security: str = "none",
                 key: bytes | None = None) -> None:
        """KeyError if the vnet exists; ValueError for a name in use, an unknown
        security level, a secured vnet without ``key`` (the file key, design.md
        7) or a key given to an unsecured one, and an SPI collision."""
        if vid.raw in self._vnets:
            raise KeyError(f"vnet {vid} already exists")
        if security not in ("none", *secure_codec.SUITES):
            raise ValueError(f"invalid security {security!r}")
        if (security == "none") != (key is None):
            raise ValueError(f"security {security} vnets take a key" if key is None
                             else "only secured vnets take a key")
        for other in self._vnets.values():
            if other.ifname == ifname:
                raise ValueError(f"interface {ifname} is already used by vnet {other.vid}")
        vnet = Vnet(vid, ifname, security)
        if key is not None:
            vnet.keys = VnetKeys(vid.raw, security, self.security)
            self._add_generation(vnet, key)
        self._vnets[vid.raw] = vnet

    def _add_generation(self, vnet: Vnet, key: bytes) -> int:
        g = vnet.keys.prepare(key)
        if g.spi in self._spis:
            raise ValueError(f"the SPI of key generation {g.gen} is in use by another "
                             "vnet or generation: make a new key")
        vnet.keys.add(g)
        self._spis[g.spi] = (vnet, g)
        return g.gen

    def key_add(self, vid: VnetId, key: bytes) -> int:
        """Accept a new key generation on receive (rotation step 1, design.md 7);
        its number.  KeyError: no such vnet or generation already added;
        ValueError: not a secured vnet, or a collision."""
        vnet = self._secured(vid)
        return self._add_generation(vnet, key)

    def key_activate(self, vid: VnetId, gen: int) -> None:
        """Send with generation ``gen`` (rotation step 2).  KeyError if unknown."""
        self._secured(vid).keys.activate(gen)

    def key_retire(self, vid: VnetId, gen: int) -> None:
        """Stop accepting ``gen`` (rotation step 3).  KeyError if unknown,
        ValueError for the active generation."""
        g = self._secured(vid).keys.retire(gen)
        self._spis.pop(g.spi, None)

    def _secured(self, vid: VnetId) -> Vnet:
        vnet = self._vnets[vid.raw]
        if vnet.keys is None:
            raise ValueError(f"vnet {vid} has security none: it has no keys")
        return vnet

    def remove_vnet(self, vid: VnetId) -> None:
        """KeyError if absent; also drops the vnet's cache entries and vifs."""
        vnet = self._vnets.pop(vid.raw)
        if vnet.keys is not None:
            for g in vnet.keys.generations.values():
                if self._spis.get(g.spi, (None,))[0] is vnet:
                    del self._spis[g.spi]
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
        """KeyError when the vnet does not exist (protocol.md 8.3)."""
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
        for vnet in self._vnets.values():
            if vnet.keys is not None:
                vnet.keys.sweep()
        self.caps.sweep(now)
        self.sealed_caps.sweep(now)
        self.reassembler.sweep(now)
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
            # Our own multicast looped back, or a relay of it (protocol.md 5).
            count(c.rx_dropped, "own_packet")
            return []
        to_group = dst_ip == self.mcaddr
        if not to_group:
            foreign = self._foreign_group.get(dst_ip)
            if foreign is None:
                foreign = self._is_foreign_group(dst_ip)
            if foreign:
                count(c.rx_dropped, "other_group")     # protocol.md 3.1
                return []
        if self._next_sweep is None:
            self._arm(now)
        actions: list = []
        try:
            ident = codec.msg_id(payload)
            if to_group and ident != MSG_VFWD and len(self.peers):
                # A forwarder sees each multicast once, whatever the path.
                self._check_duplicate(src_ip, payload, now)
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
            self._receive_secure(payload, now, actions)
        elif ident == MSG_FAST and self.options.offload:
            self._receive_fast(payload, src_ip, now, actions)
        else:
            raise DecodeError("unknown_msg_id", f"id {ident}")

    def _receive_data(self, payload: bytes, src_ip: str, now: float, actions: list) -> None:
        self._deliver(*codec.decode_data(payload), src_ip, now, actions)

    def _clear_vnet(self, vid_raw: bytes) -> Vnet:
        """The vnet clear data is for; DecodeError when unknown or secured."""
        vnet = self._vnets.get(vid_raw)
        if vnet is None:
            raise DecodeError("unknown_vnet")
        if vnet.keys is not None:
            raise DecodeError("clear_on_secured")           # design.md 7
        return vnet

    def _deliver(self, vid_raw: bytes, frame: bytes, src_ip: str, now: float,
                 actions: list) -> None:
        vnet = self._clear_vnet(vid_raw)
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
            vnet = self._vnets.get(h.vnet)
            if vnet is None:
                raise DecodeError("unknown_vnet")
            if vnet.keys is not None:
                raise DecodeError("clear_on_secured")       # design.md 7
            if h.family != codec.AF_INET_WIRE:
                raise DecodeError("varp_bad_family", f"family {h.family}")  # protocol.md 3.7
            addr = h.ipv4
            if addr in self.own_addresses:
                raise DecodeError("varp_own_address", addr)
            if not _is_unicast_host(addr):
                raise DecodeError("varp_bad_address", addr)
            self._learn(h.vnet, h.vmac, addr, now, vnet.counters)
            if self._trailer and has_capability(payload):
                self.caps.heard(addr, now)
                if asks_answer(payload):
                    self._answer_probe(vnet, addr, self.caps, now, actions)
        else:
            raise DecodeError("varp_bad_opcode", f"opcode {h.opcode}")
        self.counters.rx_varp += 1

    def _answer_probe(self, vnet: Vnet, addr: str, caps: PeerCapabilities, now: float,
                      actions: list) -> None:
        """Tell an engine that probed us that we take segments too: a unicast
        announce of one of our domains in that vnet, with our trailer (no
        probe bit, so the exchange ends there), sealed on a secured vnet."""
        if self.self_address is None or not caps.answer_due(addr, now):
            return
        mac = self.vifs.any_mac(vnet.vid.raw)
        if mac is None:
            return      # no domain of ours here: nothing true to announce
        answer = codec.encode_announce(vnet.vid.raw, mac, self.self_address) + self._trailer
        if vnet.keys is not None:
            if self._care_of[0] != self.self_address:
                self._care_of = (self.self_address, socket.inet_aton(self.self_address))
            answer = vnet.keys.seal(answer, self._care_of[1], now)
        self.counters.varp_replies += 1
        self._send(addr, answer, actions)

    def _receive_secure(self, payload: bytes, now: float, actions: list) -> None:
        """A secured message (design.md 7): SPI -> (vnet, generation), verify,
        replay and epoch checks (``VnetKeys.open``), then the clear-mode message
        inside: data is delivered, an announce learned, both teaching the
        authenticated care-of address."""
        suite, spi, sender, epoch, seq, care_of_raw = secure_codec.unpack(payload)
        found = self._spis.get(spi)
        if found is None:
            raise DecodeError("unknown_spi")
        vnet, g = found
        keys = vnet.keys
        if suite != keys.suite:
            raise DecodeError("secure_bad_suite", f"suite {suite}")
        inner = keys.open(g, sender, epoch, seq, payload)
        care_of = socket.inet_ntoa(care_of_raw)
        if care_of in self.own_addresses:
            raise DecodeError("own_packet")
        if not _is_unicast_host(care_of):
            raise DecodeError("secure_bad_care_of", care_of)
        vraw = vnet.vid.raw
        vc = vnet.counters
        ident = codec.msg_id(inner)
        if ident == MSG_FAST and self._trailer:
            vid_raw, packet = decode_sealed_inner(inner)
            if vid_raw != vraw:
                raise DecodeError("secure_vnet_mismatch")
            self._learn(vraw, packet[VNET_HDR_LEN + 6:VNET_HDR_LEN + 12], care_of, now, vc)
            self.sealed_caps.heard(care_of, now)     # verified: it takes segments
            vc.rx_packets += 1
            vc.rx_bytes += len(packet) - VNET_HDR_LEN
            self.counters.rx_fast_frames += 1
            actions.append(DeliverOffload(vnet.vid, packet))
        elif ident == MSG_DATA:
            vid_raw, frame = codec.decode_data(inner)
            if vid_raw != vraw:
                raise DecodeError("secure_vnet_mismatch")
            self._learn(vraw, frame[6:12], care_of, now, vc)
            vc.rx_packets += 1
            vc.rx_bytes += len(frame)
            self.counters.rx_data += 1
            actions.append(DeliverFrame(vnet.vid, frame))
        elif ident == MSG_VARP:
            a = VarpHeader.decode(inner)
            if a.opcode != VARP_ANNOUNCE or a.vnet != vraw:
                raise DecodeError("secure_bad_inner", f"VARP opcode {a.opcode}")
            self._learn(vraw, a.vmac, care_of, now, vc)
            if self._trailer and has_capability(inner):
                self.sealed_caps.heard(care_of, now)
                if asks_answer(inner):
                    self._answer_probe(vnet, care_of, self.sealed_caps, now, actions)
            self.counters.rx_varp += 1
        else:
            raise DecodeError("secure_bad_inner", f"id {ident}")

    def receive_train(self, data: bytes, gso: int, src_ip: str, dst_ip: str,
                      now: float) -> list:
        """The datagrams of ``data``, ``gso`` bytes each but the last, received in
        one ``recvmsg`` (UDP_GRO): like ``receive_udp`` on each, with the
        segments of one frame taken in one step (``Reassembler.add_train``)."""
        if (self._trailer and data[:4] in _SEGMENT_PREFIXES and dst_ip != self.mcaddr
                and src_ip not in self.own_addresses):
            n = -(-len(data) // gso)
            try:
                done = self.reassembler.add_train(src_ip, data, gso, now)
            except DecodeError as e:
                if e.reason != "fast_train_mixed":
                    c = self.counters
                    c.rx_datagrams += n
                    c.rx_bytes += len(data)
                    c.rx_dropped[e.reason] = c.rx_dropped.get(e.reason, 0) + n
                    return []
            else:
                c = self.counters
                c.rx_datagrams += n
                c.rx_bytes += len(data)
                self.caps.heard(src_ip, now)
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
        out: list = []
        receive = self.receive_udp
        c = self.counters
        same = None        # header, source MAC, vnet id and counters of the last data
        for at in range(0, len(data), gso):
            payload = data[at:at + gso]
            if (same is not None and payload[:DATA_HEADER_LEN] == same[0]
                    and payload[28:34] == same[1] and len(payload) >= _MIN_DATA):
                # The same vnet and sender as the datagram before, already
                # decoded, checked and learned: only count and deliver.
                frame = payload[DATA_HEADER_LEN:]
                vc = same[3]
                c.rx_datagrams += 1
                c.rx_bytes += len(payload)
                c.rx_data += 1
                vc.rx_packets += 1
                vc.rx_bytes += len(frame)
                out.append(DeliverFrame(same[2], frame))
                continue
            actions = receive(payload, src_ip, dst_ip, now)
            out += actions
            same = None
            if (len(actions) == 1 and actions[0].__class__ is DeliverFrame
                    and payload[:2] == DATA_PREFIX[:2] and dst_ip != self.mcaddr):
                vid = actions[0].vid
                same = (payload[:DATA_HEADER_LEN], payload[28:34], vid,
                        self._vnets[vid.raw].counters)
        return out

    def _receive_fast(self, payload: bytes, src_ip: str, now: float, actions: list) -> None:
        """A segment from another engine (which therefore takes segments), kept
        until its frame is complete."""
        done = self.reassembler.add(src_ip, payload, now)
        self.caps.heard(src_ip, now)
        if done is None:
            self.counters.rx_fast += 1
            return
        self._fast_done(done, src_ip, now, actions)

    def _fast_done(self, done: tuple[int, bytes, bytes], src_ip: str, now: float,
                   actions: list) -> None:
        """A reassembled frame: delivered, or a sealed one verified first."""
        opcode, vid_raw, packet = done
        if opcode == FAST_SEALED:
            # The whole super-frame is one secured message: verified, then
            # delivered like sealed data (design.md 7).
            self._receive_secure(packet, now, actions)
            self.counters.rx_fast += 1
            return
        vnet = self._clear_vnet(vid_raw)
        vc = vnet.counters
        frame_at = VNET_HDR_LEN
        self._learn(vid_raw, packet[frame_at + 6:frame_at + 12], src_ip, now, vc)
        vc.rx_packets += 1
        vc.rx_bytes += len(packet) - frame_at
        self.counters.rx_fast += 1
        self.counters.rx_fast_frames += 1
        actions.append(DeliverOffload(vnet.vid, packet))

    def _receive_vfwd(self, payload: bytes, src_ip: str, now: float, actions: list) -> None:
        peer = self.peers.get(src_ip)
        if peer is None:
            raise DecodeError("vfwd_not_peer", src_ip)           # protocol.md 7
        inner = codec.decode_vfwd(payload)
        if inner.dport != self.port:
            raise DecodeError("vfwd_wrong_port", f"inner port {inner.dport}")
        # A host forwarding its own multicast leaves the source 0.0.0.0.
        src = peer.addr if inner.src == _ZERO_ADDR else inner.src
        if src in self.own_addresses:
            raise DecodeError("own_packet")
        if not _is_unicast_host(src):
            # Would be learned as a care-of address and re-multicast as a source.
            raise DecodeError("vfwd_bad_source", src)
        peer.rx_packets += 1
        self.counters.vfwd_rx += 1
        ident = codec.msg_id(inner.udp_payload)
        if ident == MSG_VFWD:
            raise DecodeError("vfwd_nested")
        self._check_duplicate(src, inner.udp_payload, now)
        if codec.is_multicast(inner.dst):
            # Re-multicast onto our link to our group with the original source,
            # before validation like the relay (a neighbour may have a vnet we
            # lack; secured packets pass unchanged).  Never to peers again.
            self.counters.vfwd_resent += 1
            actions.append(SendRaw(self.mcaddr, remulticast_packet(
                src, self.mcaddr, inner.sport, inner.dport, inner.udp_payload)))
        # Processed as if received by multicast, so we learn the original sender.
        self._dispatch(ident, inner.udp_payload, src, now, actions)

    def _check_duplicate(self, sender: str, payload: bytes, now: float) -> None:
        """DecodeError("duplicate") for a copy handled within the window (vfwd.py)."""
        if self.duplicates.seen(sender, payload, now):
            self.counters.vfwd_duplicates += 1
            raise DecodeError("duplicate")

    def receive_etherip(self, packet: bytes, src_ip: str, dst_ip: str, now: float) -> list:
        """One IP protocol 97 packet, ``packet`` starting after its IPv4 header
        (protocol.md 4.3): received like UDP data (protocol.md 4.4), never relayed."""
        c = self.counters
        c.rx_datagrams += 1
        c.rx_bytes += len(packet)
        c.rx_etherip += 1
        if src_ip in self.own_addresses:
            count(c.rx_dropped, "own_packet")
            return []
        if dst_ip != self.mcaddr:
            foreign = self._foreign_group.get(dst_ip)
            if foreign is None:
                foreign = self._is_foreign_group(dst_ip)
            if foreign:
                count(c.rx_dropped, "other_group")
                return []
        if self._next_sweep is None:
            self._arm(now)
        actions: list = []
        try:
            self._deliver(*codec.decode_etherip(packet), src_ip, now, actions)
        except DecodeError as e:
            count(c.rx_dropped, e.reason)
        return actions

    # -- TAP side ------------------------------------------------------------------

    def receive_tap(self, vid: VnetId, frame: bytes, now: float,
                    packet: bytes | None = None) -> list:
        """One Ethernet frame read off vnet ``vid``'s TAP; ``packet``: the same
        frame behind its virtio_net_hdr when that header asks for a checksum or
        segmentation (a TAP with offloads, wire/offload.py)."""
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
        keys = vnet.keys
        care_of = None
        if keys is not None:
            if self.self_address is None:
                count(vc.dropped, "no_self_address")  # the header needs a care-of address
                return actions
            if self._care_of[0] != self.self_address:
                self._care_of = (self.self_address, socket.inet_aton(self.self_address))
            care_of = self._care_of[1]
        src = frame[6:12]
        if not frame[6] & 1 and self.vifs.update(vraw, src, now):
            # A domain arrived (design.md 8): whatever we had learned about
            # this MAC is stale, and the others learn its new place.
            self.varp.forget(vraw, src)
            if self.self_address is not None:
                vc.announced += 1
                announce = codec.encode_announce(vraw, src, self.self_address) + self._trailer
                if keys is not None:
                    announce = keys.seal(announce, care_of, now)
                self._send_group(announce, actions)
        if packet is not None:
            self._send_offloaded(vnet, frame, packet, care_of, now, actions)
            return actions
        payload = DATA_PREFIX + vraw + frame
        if keys is not None:
            payload = keys.seal(payload, care_of, now)
        vc.tx_packets += 1
        vc.tx_bytes += len(frame)
        if not frame[0] & 1:
            addr = self.varp.resolve(vraw, frame[:6], now)
            if addr is not None:
                self._send(addr, payload, actions)
                return actions
        vc.flooded += 1                                      # protocol.md 5
        self._send_group(payload, actions)
        return actions

    def _send_offloaded(self, vnet: Vnet, frame: bytes, packet: bytes,
                        care_of: bytes | None, now: float, actions: list) -> None:
        """Whole to an engine that takes segments, else plain (wire/offload.py)."""
        vraw = vnet.vid.raw
        vc = vnet.counters
        vc.tx_packets += 1
        vc.tx_bytes += len(frame)
        addr = None
        keys = vnet.keys
        if not frame[0] & 1:
            addr = self.varp.resolve(vraw, frame[:6], now)
            caps = self.caps if keys is None else self.sealed_caps
            if addr is not None and self._trailer:
                if caps.fast(addr, now):
                    self._frame_id = (self._frame_id + 1) & 0xFFFFFFFF
                    self.counters.tx_fast += 1
                    if keys is None:
                        actions.append(SendFast(addr, vraw, self._frame_id, packet))
                    else:
                        sealed = keys.seal(encode_sealed_inner(vraw, packet), care_of, now)
                        actions.append(SendFast(addr, vraw, self._frame_id, sealed,
                                                FAST_SEALED))
                    return
                if caps.probe_due(addr, now) and self.self_address is not None:
                    # A true announce of the sending domain, asking for an answer;
                    # never a VARP request (design.md 8).  Sealed on secured vnets.
                    probe = codec.encode_announce(vraw, frame[6:12],
                                                  self.self_address) + PROBE_TRAILER
                    if keys is not None:
                        probe = keys.seal(probe, care_of, now)
                    self._send(addr, probe, actions)
        room = self.underlay_mtu - UDP_IP_OVERHEAD - DATA_HEADER_LEN
        if keys is not None:
            room -= secure_codec.OVERHEAD
        try:
            frames = plain_frames(packet, room)
        except DecodeError as e:
            count(vc.dropped, e.reason)
            return
        if addr is None:
            vc.flooded += 1                                  # protocol.md 5
            for f in frames:
                payload = DATA_PREFIX + vraw + f
                if keys is not None:
                    payload = keys.seal(payload, care_of, now)
                self._send_group(payload, actions)
            return
        payloads = [DATA_PREFIX + vraw + f for f in frames]
        if keys is not None:
            payloads = [keys.seal(p, care_of, now) for p in payloads]
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
