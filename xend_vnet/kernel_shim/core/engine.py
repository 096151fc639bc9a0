"""EngineCore: the era-C forwarding state machine, sans-IO (protocol.md 3-5, 7).

Bytes and events go in with the time as an argument; actions come out
(``actions.py``).  The daemon owns every socket and TAP.

This module holds the engine's state (vnets, keys, peers, timers) and its
entry points.  Each datagram is counted once, under one outcome: packets
from our own addresses and multicast to another group are dropped first
(``_admit``), and a ``DecodeError`` raised anywhere below is a drop counted
under its reason.  What arrives from the network is handled in
``receive.py``, what a TAP hands us and everything we send in
``transmit.py``; the two receive paths that look their sender up in the
state kept here stay here:

Secured vnets (design.md 7, docs/security.md): a secured message (id 4) is
verified before anything changes (its SPI names the vnet and the key
generation), and teaches the care-of address carried in its authenticated
header, never the outer source.  Clear data and VARP for a secured vnet are
dropped and counted; what leaves a secured vnet is sealed first.

Peer forwarding (protocol.md 7): a VFWD from a configured peer is processed as
if multicast (hosts learn the original sender) and its inner packet is
re-multicast onto the local link with the original source (``SendRaw``), so
hosts there learn it too.  Beyond legacy, a short duplicate window keyed on
(original sender, UDP payload) drops the copies that a mesh of peers or two
forwarders on one subnet would otherwise relay forever (``vfwd.py``).
Etherip without UDP (IP protocol 97, protocol.md 4.3) is accepted on receive.

The kernel path (design.md 1.1): known unicast of the clear vnets it carries
never reaches the core, so the kernel reports the sources it sees
(``kernel_remote_seen``, ``kernel_local_seen``), which teach the tables as a
datagram or a TAP frame would, within the same bounds, and says which of
the entries it holds it used (``kernel_used``), which keeps them from
ageing; the tables report their changes back for its maps
(``mirror_tables``, core/mirror.py).  Which
engines decapsulate a vnet in their kernel is learned from the announces'
``CAP_KERNEL`` bit (``KernelPeers``), probed for when unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...vnet_id import VnetId
from ...vnet_rules import SECURED_LEVELS, is_host_address, name_owner, security_problem
from ..security import secure_codec
from ..security.keystore import Generation, SecurityContext, VnetKeys
from ..wire import codec
from ..wire.codec import MSG_VFWD, DecodeError
from ..wire.offload import MIN_GSO_SIZE, check_vnet_hdr
from ..wire.segments import CAP_KERNEL, CAP_PROBE, CAP_SEGMENTS, SEGMENT_PREFIXES, trailer
from .actions import (
    Action,
    DeliverFrame,
    DeliverOffload,
    SendFast,
    SendRaw,
    SendTrain,
    SendUdp,
)
from .bounds import LIMITS, BoundedTable
from .counters import EngineCounters, VnetCounters, count
from .mirror import KERNEL_PEER, VARP, VIF, TableChange
from .peer_caps import KernelPeers, PeerCapabilities
from .peer_table import PeerTable
from .reassembly import Reassembler
from .receive import ReceivePath
from .transmit import SendPath
from .varp_cache import REACHABLE, VarpCache
from .vfwd import DuplicateWindow, remulticast_packet
from .vif_table import VifTable

# The actions are re-exported: the daemon and the tests import them from here.
__all__ = ["CoreOptions", "DeliverFrame", "DeliverOffload", "EngineCore", "SendFast",
           "SendRaw", "SendTrain", "SendUdp", "Vnet"]


@dataclass
class CoreOptions:
    mcaddr: str = codec.VARP_MCADDR
    port: int = codec.VARP_PORT
    varp_ttl: float = 60.0          # protocol.md 3.5
    vif_ttl: float = 60.0           # protocol.md 3.6
    sweep_interval: float | None = None   # None: the shorter TTL, like legacy
    offload: bool = False           # fast framing toward engines that take it
    min_gso_size: int = MIN_GSO_SIZE  # smaller super-frames are dropped (docs/security.md)

    @property
    def sweep_every(self) -> float:
        return self.sweep_interval or min(self.varp_ttl, self.vif_ttl)


class Vnet:
    __slots__ = ("counters", "ifname", "kernel", "keys", "security", "vid")

    def __init__(self, vid: VnetId, ifname: str, security: str,
                 keys: VnetKeys | None = None):
        self.vid = vid
        self.ifname = ifname
        self.security = security
        self.keys = keys            # None for security none
        self.kernel = False         # the kernel path carries its known unicast
        self.counters = VnetCounters()


_ZERO_ADDR = "0.0.0.0"


_GROUP_KIND_LIMIT = 256


class EngineCore(ReceivePath, SendPath):
    def __init__(self, options: CoreOptions | None = None,
                 security: SecurityContext | None = None):
        self.options = options or CoreOptions()
        # Sender id, wall clock and epoch source of secured vnets (injected).
        self.security = security or SecurityContext.system()
        self._spis: dict[int, tuple[Vnet, Generation]] = {}
        # self_address packed, as sealed into secured messages (SendPath._seal).
        self._care_of_addr: str | None = None
        self._care_of_raw = b""
        self.mcaddr = self.options.mcaddr
        self.port = self.options.port
        self.own_addresses: set[str] = set()
        self.self_address: str | None = None
        # MTU of the device toward the other hosts (set by the daemon): plain
        # frames cut from super-frames fit one datagram of it.
        self.underlay_mtu = 1500
        self.varp = VarpCache(self.options.varp_ttl)
        self.vifs = VifTable(self.options.vif_ttl)
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
        self.kernel_peers = KernelPeers()       # engines whose kernel path takes a vnet
        # Appended to our announces (wire/segments.py): we take segments, and
        # by vnet (its ``kernel``) our kernel path decapsulates its unicast.
        segments = CAP_SEGMENTS if self.options.offload else 0
        self._trailer = trailer(segments)
        self._trailers = (self._trailer, trailer(segments | CAP_KERNEL))
        self._probe_trailers = (trailer(segments | CAP_PROBE),
                                trailer(segments | CAP_KERNEL | CAP_PROBE))
        # What the tables report to a data path that mirrors them (core/mirror.py).
        self.table_changes: list[TableChange] | None = None
        self.reassembler = Reassembler(self.options.min_gso_size)
        self._frame_id = 0
        # Every table packets or domains fill (bounds.py, docs/security.md
        # "Resource limits"): each reserves room for every vnet.
        self.bounded: list[BoundedTable] = [
            self.varp.table, self.vifs.table, *self.caps.tables(), *self.sealed_caps.tables(),
            *self.kernel_peers.tables(), self.reassembler.table, self.duplicates.table]

    # -- configuration ---------------------------------------------------------

    def add_vnet(self, vid: VnetId, ifname: str, security: str = "none",
                 key: bytes | None = None) -> None:
        """KeyError if the vnet exists; ValueError for a name in use, an unknown
        security level, a secured vnet without ``key`` (the file key, design.md
        7) or a key given to an unsecured one, and an SPI collision."""
        if vid.raw in self._vnets:
            raise KeyError(f"vnet {vid} already exists")
        problem = security_problem(security)
        if problem:
            raise ValueError(problem)
        if (security in SECURED_LEVELS) != (key is not None):
            raise ValueError(f"security {security} vnets take a key" if key is None
                             else "only secured vnets take a key")
        other = name_owner(ifname, ((v.ifname, v) for v in self._vnets.values()))
        if other is not None:
            raise ValueError(f"interface {ifname} is already used by vnet {other.vid}")
        vnet = Vnet(vid, ifname, security)
        if key is not None:
            vnet.keys = VnetKeys(vid.raw, security, self.security)
            self._add_generation(vnet, key)
        self._vnets[vid.raw] = vnet
        self._count_vnets()

    def _count_vnets(self) -> None:
        for table in self.bounded:
            table.vnets = max(1, len(self._vnets))

    def refused(self) -> dict[str, int]:
        """Entries refused where no vnet was known (the tables' own counts)."""
        out: dict[str, int] = {}
        for table in self.bounded:
            for reason, n in table.refused.items():
                out[reason] = out.get(reason, 0) + n
        return out

    def set_limit(self, vid: VnetId, kind: str, per_vnet: int | None) -> None:
        """Override the bound of the ``kind`` tables (a ``bounds.LIMITS`` key) for
        vnet ``vid``; None restores the default.  KeyError for an unknown kind."""
        if kind not in LIMITS:
            raise KeyError(f"no table {kind!r}: one of {', '.join(LIMITS)}")
        for table in self.bounded:
            if table.kind == kind:
                table.set_limit(vid.raw, per_vnet)

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
                owner, _ = self._spis.get(g.spi, (None, None))
                if owner is vnet:
                    del self._spis[g.spi]
        self.varp.remove_vnet(vid.raw)
        self.vifs.remove_vnet(vid.raw)
        self.caps.remove_vnet(vid.raw)
        self.sealed_caps.remove_vnet(vid.raw)
        self.kernel_peers.remove_vnet(vid.raw)
        self.reassembler.remove_vnet(vid.raw)
        self._count_vnets()

    def has_vnet(self, vid: VnetId) -> bool:
        return vid.raw in self._vnets

    def vnet(self, vid: VnetId) -> Vnet | None:
        return self._vnets.get(vid.raw)

    def vnets(self) -> list[Vnet]:
        """Sorted by id."""
        return [self._vnets[k] for k in sorted(self._vnets)]

    def vif_add(self, vid: VnetId, mac: bytes, now: float) -> bool:
        """False when the vnet's vif table is at its bound and the MAC is new
        (docs/security.md, resource limits); KeyError when the vnet does not
        exist (protocol.md 8.3)."""
        if vid.raw not in self._vnets:
            raise KeyError(f"no such vnet {vid}")
        self.vifs.update(vid.raw, mac, now, self._vnets[vid.raw].counters.refused)
        self._arm(now)
        return self.vifs.table.get((vid.raw, mac)) is not None

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

    # -- the kernel path (design.md 1.1) ------------------------------------------

    def mirror_tables(self) -> None:
        """From now on, report every change of the VARP cache, the vif table
        and the kernel peers (core/mirror.py); ``drain_table_changes`` takes them."""
        if self.table_changes is None:
            self.table_changes = []
            for table in (self.varp, self.vifs, self.kernel_peers):
                table.mirror(self.table_changes)

    def drain_table_changes(self) -> list[TableChange]:
        """The changes reported since the last call, oldest first."""
        changes = self.table_changes
        if not changes:
            return []
        out = changes[:]
        changes.clear()         # the tables append to this very list
        return out

    def table_entries(self, vid: VnetId) -> list[TableChange]:
        """What the tables hold for the vnet now, as changes that make it
        (a mirror filled from nothing, or checked against the kernel's)."""
        vraw = vid.raw
        out = []
        for key in self.varp.table.keys_of(vraw):
            entry = self.varp.table[key]
            if entry.state == REACHABLE:
                out.append(TableChange(VARP, vid, key[1], entry.addr, True))
        out += [TableChange(VIF, vid, key[1], None, True) for key in self.vifs.table.keys_of(vraw)]
        out += [TableChange(KERNEL_PEER, vid, b"", addr, True)
                for addr in self.kernel_peers.addresses(vraw)]
        return out

    def idle_entries(self, now: float, varp_age: float, vif_age: float) -> list[TableChange]:
        """Reachable VARP entries not refreshed for ``varp_age`` seconds and
        vifs not for ``vif_age``, oldest first: read from the front of the
        tables (kept in refresh order), so the work is what is found (the
        kernel path asks which of them its programs used, ``kernel_used``)."""
        out = []
        horizon = now - varp_age
        for (vraw, mac), entry in self.varp.table.items():
            if entry.stamp > horizon:
                break
            if entry.state == REACHABLE:
                out.append(TableChange(VARP, VnetId(vraw), mac, entry.addr, True))
        horizon = now - vif_age
        for (vraw, mac), entry in self.vifs.table.items():
            if entry.stamp > horizon:
                break
            out.append(TableChange(VIF, VnetId(vraw), mac, None, True))
        return out

    def set_kernel(self, vid: VnetId, on: bool, now: float | None = None) -> list[Action]:
        """The kernel path carries the vnet's known unicast (on) or no longer:
        its announces say so (``CAP_KERNEL``).  With ``now``, a change is
        announced at once for each of the vnet's domains, so no engine goes on
        sending it what only a kernel path takes.  KeyError: no such vnet;
        ValueError: a secured vnet (design.md 7: never in the kernel)."""
        vnet = self._vnets[vid.raw]
        if on and vnet.keys is not None:
            raise ValueError(f"vnet {vid} is secured: its frames never go through the kernel path")
        changed = vnet.kernel != on
        vnet.kernel = on
        if not on:
            self.kernel_peers.remove_vnet(vid.raw)
        actions: list = []
        if changed and now is not None and self.self_address is not None:
            trailer = self._trailers[on]
            for _, mac in self.vifs.table.keys_of(vid.raw):
                self._send_group(self._announce(vnet, mac, trailer, now), actions)
        return actions

    def kernel_peer(self, vid: VnetId, addr: str, now: float) -> bool:
        """Whether the engine at ``addr`` decapsulates the vnet in its kernel."""
        return self.kernel_peers.known(vid.raw, addr, now)

    def _kernel_event_vnet(self, vid: VnetId, mac: bytes, now: float) -> Vnet | None:
        """The clear vnet a kernel report is about, or None (counted)."""
        vnet = self._vnets.get(vid.raw)
        why = None
        if vnet is None:
            why = "unknown_vnet"
        elif vnet.keys is not None:
            why = "secured"         # never learns from outside the ICV (design.md 7)
        elif mac[0] & 1:
            why = "group_source"
        if why is not None:
            count(self.counters.kernel_ignored, why)
            return None
        self.counters.kernel_seen += 1
        if self._next_sweep is None:
            self._arm(now)
        return vnet

    def kernel_remote_seen(self, vid: VnetId, mac: bytes, addr: str,
                           now: float) -> list[Action]:
        """The kernel path decapsulated a frame from ``mac`` of ``vid`` sent
        from ``addr``: learned as from a data datagram, within the same bounds
        (the kernel reports a source it has not at that address; its use of
        one it has keeps the entry alive, ``kernel_used``)."""
        if addr in self.own_addresses or not is_host_address(addr):
            count(self.counters.kernel_ignored, "bad_address")
            return []
        vnet = self._kernel_event_vnet(vid, mac, now)
        if vnet is None:
            return []
        actions: list = []
        self._learn(vid.raw, mac, addr, now, vnet.counters)
        if vnet.kernel:
            self._probe_kernel(vnet, addr, now, actions)
        return actions

    def kernel_local_seen(self, vid: VnetId, mac: bytes, now: float) -> list[Action]:
        """The kernel path took a frame from the vnet's TAP sent by ``mac``: a
        local domain, recorded (and announced when new, design.md 8) as a
        frame read off the TAP is."""
        vnet = self._kernel_event_vnet(vid, mac, now)
        if vnet is None:
            return []
        actions: list = []
        if self.vifs.update(vid.raw, mac, now, vnet.counters.refused):
            self._domain_arrived(vnet, mac, now, actions)
        return actions

    def kernel_used(self, change: TableChange, now: float) -> bool:
        """The kernel path took frames from the MAC of an entry it holds (a
        VARP entry's from its care-of address ``change.addr``, a vif's from
        the TAP's side) since it last said so: the entry is refreshed as such
        a frame through user space would refresh it, so it does not age
        while the kernel alone sees its traffic.  Nothing is made or moved:
        an entry the core no longer holds, or holds at another address,
        stays as it is (False)."""
        key = (change.vid.raw, change.mac)
        if change.table == VARP:
            table = self.varp.table
            entry = table.get(key)
            if entry is None or entry.state != REACHABLE or entry.addr != change.addr:
                return False
        elif change.table == VIF:
            table = self.vifs.table
            entry = table.get(key)
            if entry is None:
                return False
        else:
            return False
        table.refresh(key, entry, now)
        self.counters.kernel_used += 1
        return True

    def kernel_adopt(self, vid: VnetId, mac: bytes, addr: str, kernel_peer: bool,
                     now: float) -> list[Action]:
        """A remote entry a previous engine left in the kernel's maps: taken as
        if just seen there (``kernel_remote_seen``), its ``kernel_peer`` as if
        announced."""
        vnet = self._vnets.get(vid.raw)
        if (kernel_peer and vnet is not None and vnet.kernel and is_host_address(addr)
                and addr not in self.own_addresses):
            self.kernel_peers.heard(vid.raw, addr, True, now, addr, vnet.counters.refused)
        return self.kernel_remote_seen(vid, mac, addr, now)

    # -- timers ----------------------------------------------------------------

    def next_timer(self) -> float | None:
        """Absolute time of the next sweep; None while there is nothing to age."""
        return self._next_sweep

    def handle_timer(self, now: float) -> list[Action]:
        if self._next_sweep is None or now < self._next_sweep:
            return []
        self.varp.sweep(now, self.options.varp_ttl)
        self.vifs.sweep(now, self.options.vif_ttl)
        for vnet in self._vnets.values():
            if vnet.keys is not None:
                vnet.keys.sweep()
        self.caps.sweep(now)
        self.sealed_caps.sweep(now)
        self.kernel_peers.sweep(now)
        self.reassembler.sweep(now)
        self._next_sweep = None
        if len(self.varp) or len(self.vifs):
            self._next_sweep = now + self.options.sweep_every
        return []

    def _arm(self, now: float) -> None:
        if self._next_sweep is None:
            self._next_sweep = now + self.options.sweep_every

    # -- entry points ---------------------------------------------------------------

    def receive_udp(self, payload: bytes, src_ip: str, dst_ip: str, now: float) -> list[Action]:
        """One datagram received on the engine port.  Never raises on any
        bytes: each datagram is accepted or dropped under a counted reason."""
        if not self._admit(len(payload), src_ip, dst_ip, now):
            return []
        actions: list = []
        try:
            ident = codec.msg_id(payload)
            if dst_ip == self.mcaddr and ident != MSG_VFWD and len(self.peers):
                # A forwarder sees each multicast once, whatever the path.
                self._check_duplicate(src_ip, payload, now)
                # Relayed before validation: a peer may have a vnet we lack.
                self._relay(payload, src_ip, actions)
            self._dispatch(ident, payload, src_ip, now, actions)
        except DecodeError as e:
            count(self.counters.rx_dropped, e.reason)
        return actions

    def receive_train(self, data: bytes, gso: int, src_ip: str, dst_ip: str,
                      now: float) -> list[Action]:
        """The datagrams of ``data``, ``gso`` bytes each but the last, received in
        one ``recvmsg`` (UDP_GRO): like ``receive_udp`` on each, with the
        segments of one frame taken in one step (``Reassembler.add_train``)."""
        if (self._trailer and data[:4] in SEGMENT_PREFIXES and dst_ip != self.mcaddr
                and src_ip not in self.own_addresses):
            actions = self._receive_segment_train(data, gso, src_ip, now)
            if actions is not None:
                return actions
        return self._receive_datagrams(data, gso, src_ip, dst_ip, now)

    def receive_etherip(self, packet: bytes, src_ip: str, dst_ip: str,
                        now: float) -> list[Action]:
        """One IP protocol 97 packet, ``packet`` starting after its IPv4 header
        (protocol.md 4.3): received like UDP data (protocol.md 4.4), never relayed."""
        self.counters.rx_etherip += 1
        if not self._admit(len(packet), src_ip, dst_ip, now):
            return []
        actions: list = []
        try:
            vid_raw, frame = codec.decode_etherip(packet)
            self._deliver_frame(self._clear_vnet(vid_raw), frame, src_ip, now, actions)
        except DecodeError as e:
            count(self.counters.rx_dropped, e.reason)
        return actions

    def receive_tap(self, vid: VnetId, frame: bytes, now: float,
                    packet: bytes | None = None) -> list[Action]:
        """One Ethernet frame read off vnet ``vid``'s TAP; ``packet``: the same
        frame behind its virtio_net_hdr when that header asks for a checksum or
        segmentation (a TAP with offloads, wire/offload.py)."""
        vnet = self._vnets.get(vid.raw)
        if vnet is None:
            count(self.counters.tap_dropped, "unknown_vnet")
            return []
        if len(frame) < codec.ETH_HEADER_LEN:
            count(vnet.counters.dropped, "short_frame")
            return []
        if self._next_sweep is None:
            self._arm(now)
        if vnet.keys is not None and self.self_address is None:
            count(vnet.counters.dropped, "no_self_address")  # the header needs a care-of address
            return []
        if packet is not None:
            try:    # offsets inside the frame, no tiny GSO (docs/security.md)
                check_vnet_hdr(packet, self.options.min_gso_size)
            except DecodeError as e:
                count(vnet.counters.dropped, e.reason)
                return []
        return self._send_frame(vnet, frame, packet, now)

    def _admit(self, size: int, src_ip: str, dst_ip: str, now: float) -> bool:
        """The prologue of every received datagram: count it, and drop (False)
        our own and multicast to another group before anything is decoded."""
        c = self.counters
        c.rx_datagrams += 1
        c.rx_bytes += size
        if src_ip in self.own_addresses:
            # Our own multicast looped back, or a relay of it (protocol.md 5).
            count(c.rx_dropped, "own_packet")
            return False
        if dst_ip != self.mcaddr:
            foreign = self._foreign_group.get(dst_ip)
            if foreign is None:
                foreign = self._is_foreign_group(dst_ip)
            if foreign:
                count(c.rx_dropped, "other_group")     # protocol.md 3.1
                return False
        if self._next_sweep is None:
            self._arm(now)
        return True

    def _is_foreign_group(self, dst_ip: str) -> bool:
        try:
            foreign = codec.is_multicast(codec.parse_ipv4(dst_ip))
        except ValueError:
            foreign = False
        if len(self._foreign_group) >= _GROUP_KIND_LIMIT:
            self._foreign_group.clear()
        self._foreign_group[dst_ip] = foreign
        return foreign

    # -- the receive paths that look their sender up here -------------------------------

    def _receive_secure(self, payload: bytes, now: float, actions: list) -> None:
        """A secured message (design.md 7): SPI -> (vnet, generation), verify,
        replay and epoch checks (``VnetKeys.open``), then the clear-mode message
        inside (``_receive_opened``), at the authenticated care-of address."""
        suite, spi, sender, epoch, seq, care_of_raw = secure_codec.unpack(payload)
        found = self._spis.get(spi)
        if found is None:
            raise DecodeError("unknown_spi")
        vnet, g = found
        keys = vnet.keys
        if suite != keys.suite:
            raise DecodeError("secure_bad_suite", f"suite {suite}")
        inner = keys.open(g, sender, epoch, seq, payload, now)
        care_of = codec.ipv4_text(care_of_raw)
        if care_of in self.own_addresses:
            raise DecodeError("own_packet")
        if not is_host_address(care_of):
            raise DecodeError("secure_bad_care_of", care_of)
        self._receive_opened(vnet, inner, care_of, now, actions)

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
        if not is_host_address(src):
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
