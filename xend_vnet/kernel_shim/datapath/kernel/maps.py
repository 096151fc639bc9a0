"""Keys, values and records of the kernel data path's maps, as bytes.

Pure packing and unpacking (no system calls), mirroring
``bpf/vnet_shim.h`` field for field; ``tests/test_kernel_shim_maps.py``
checks the sizes and the counter order against that header.  Integers are
in the host's order (the programs run on this host), addresses and MACs as
their wire bytes.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Union

from ....vnet_id import VnetId

LAYOUT_VERSION = 3
MAX_VNETS = 4096
MAX_DEVS = 2 * MAX_VNETS   # a TAP and a kernel port P per vnet
MAX_REMOTES = 131072
MAX_LOCALS = 65536
MAX_SEEN = 16384          # (vnet, MAC, kind) last reported, LRU
EVENT_BUDGET = 256        # learn events per vnet per second
EVENTS_BYTES = 256 * 1024
ENCAP_LEN = 64          # outer IPv4 20, UDP 8, VnetMsgHdr 4, etherip 18, inner Ethernet 14
TCP_IP_HEADERS = 40     # IPv4 20 + TCP 20: what an MSS leaves out of an inner packet

REMOTE_KERNEL_PEER = 1
EVENT_REMOTE_SEEN = 1
EVENT_LOCAL_SEEN = 2

# The programs' counters per vnet, in the order of enum vs_counter.
COUNTER_NAMES = (
    "encapsulated",
    "decapsulated",
    "to_user_not_ipv4",
    "to_user_flood",
    "to_user_no_route",
    "to_user_no_fit",
    "to_user_partial_csum_to_legacy",
    "to_user_fragment",
    "to_user_error",
    "to_user_rx_fragment",
    "to_user_rx_no_fit",
    "to_user_rx_own",
    "to_user_rx_error",
    "mss_clamped",
    "events_suppressed",
    "events_lost",
    "dropped_loop",
    "dropped_port_flood",
    "to_user_rx_merged",
)

CONFIG = struct.Struct("=4sIHHHHII")
VID_KEY = struct.Struct("=16s")
VNET = struct.Struct("=IIII")
DEV_KEY = struct.Struct("=I")
DEV = struct.Struct("=16sIIII")
MAC_KEY = struct.Struct("=16s6sBB")
REMOTE = struct.Struct("=4sIQ")
LOCAL = struct.Struct("=Q")
COUNTERS = struct.Struct("=%dQ" % len(COUNTER_NAMES))
EVENT = struct.Struct("=I4s16s6sH")
INDEX_KEY = struct.Struct("=I")

# map name -> (key size, value size, max entries): what an adopted map must match
MAP_SHAPES = {
    "vs_config": (4, CONFIG.size, 1),
    "vs_vnets": (VID_KEY.size, VNET.size, MAX_VNETS),
    "vs_devs": (DEV_KEY.size, DEV.size, MAX_DEVS),
    "vs_remotes": (MAC_KEY.size, REMOTE.size, MAX_REMOTES),
    "vs_locals": (MAC_KEY.size, LOCAL.size, MAX_LOCALS),
    "vs_counters": (4, COUNTERS.size, MAX_VNETS),
    "vs_seen": (MAC_KEY.size, 8, MAX_SEEN),
    "vs_budget": (4, 16, MAX_VNETS),
    "vs_events": (0, 0, EVENTS_BYTES),
}


class MapValueError(ValueError):
    """Bytes that are not a record of the expected map."""


def mss_clamp(tap_mtu: int, underlay_mtu: int) -> int:
    """The TCP MSS that lets a full-size inner segment fit the underlay once
    encapsulated (and the TAP): 1396 for both MTUs at 1500."""
    return max(0, min(tap_mtu, underlay_mtu - ENCAP_LEN) - TCP_IP_HEADERS)


def _addr(addr: str) -> bytes:
    try:
        return socket.inet_aton(addr)
    except OSError:
        raise MapValueError(f"not an IPv4 address: {addr!r}") from None


def _mac(mac: bytes) -> bytes:
    if not isinstance(mac, (bytes, bytearray)) or len(mac) != 6:
        raise MapValueError(f"a MAC is 6 bytes, not {mac!r}")
    return bytes(mac)


def _u16(name: str, v: int) -> int:
    if not 0 <= v <= 0xFFFF:
        raise MapValueError(f"{name} {v} is not 0 to 65535")
    return v


@dataclass(frozen=True)
class Config:
    local_addr: str
    underlay_ifindex: int
    port: int
    underlay_mtu: int
    tap_mtu: int
    mss: int
    version: int = LAYOUT_VERSION

    def pack(self) -> bytes:
        return CONFIG.pack(_addr(self.local_addr), self.underlay_ifindex,
                           _u16("port", self.port), _u16("underlay mtu", self.underlay_mtu),
                           _u16("tap mtu", self.tap_mtu), _u16("mss", self.mss),
                           self.version, 0)

    @classmethod
    def unpack(cls, data: bytes) -> Config:
        if len(data) != CONFIG.size:
            raise MapValueError(f"config is {CONFIG.size} bytes, not {len(data)}")
        addr, ifindex, port, ul_mtu, tap_mtu, mss, version, _pad = CONFIG.unpack(data)
        return cls(socket.inet_ntoa(addr), ifindex, port, ul_mtu, tap_mtu, mss, version)


def vid_key(vid: VnetId) -> bytes:
    return VID_KEY.pack(vid.raw)


def unpack_vid_key(data: bytes) -> VnetId:
    if len(data) != VID_KEY.size:
        raise MapValueError(f"a vnet key is 16 bytes, not {len(data)}")
    return VnetId(bytes(data))


@dataclass(frozen=True)
class VnetEntry:
    """Where the decapsulator delivers a vnet's frames: the TAP, and the
    kernel port's ends P (0 while P is on no bridge) and Q."""
    tap_ifindex: int
    port_ifindex: int
    peer_ifindex: int
    index: int

    def pack(self) -> bytes:
        return VNET.pack(self.tap_ifindex, self.port_ifindex, self.peer_ifindex, self.index)

    @classmethod
    def unpack(cls, data: bytes) -> VnetEntry:
        if len(data) != VNET.size:
            raise MapValueError(f"a vnet entry is {VNET.size} bytes, not {len(data)}")
        return cls(*VNET.unpack(data))


DEV_TAP = 0
DEV_PORT = 1


def dev_key(ifindex: int) -> bytes:
    return DEV_KEY.pack(ifindex)


def unpack_dev_key(data: bytes) -> int:
    if len(data) != DEV_KEY.size:
        raise MapValueError(f"a device key is 4 bytes, not {len(data)}")
    return DEV_KEY.unpack(data)[0]


@dataclass(frozen=True)
class DevEntry:
    """An egress device the encapsulator sits on: a vnet's TAP
    (``kind`` DEV_TAP, ``other`` its port P while P is on the TAP's bridge,
    else 0) or its kernel port P (DEV_PORT, ``other`` the TAP)."""
    vid: VnetId
    index: int
    kind: int
    other: int

    def pack(self) -> bytes:
        if self.kind not in (DEV_TAP, DEV_PORT):
            raise MapValueError(f"unknown device kind {self.kind}")
        return DEV.pack(self.vid.raw, self.index, self.kind, self.other, 0)

    @classmethod
    def unpack(cls, data: bytes) -> DevEntry:
        if len(data) != DEV.size:
            raise MapValueError(f"a device entry is {DEV.size} bytes, not {len(data)}")
        raw, index, kind, other, _pad = DEV.unpack(data)
        return cls(VnetId(raw), index, kind, other)


def mac_key(vid: VnetId, mac: bytes, kind: int = 0) -> bytes:
    return MAC_KEY.pack(vid.raw, _mac(mac), kind, 0)


def unpack_mac_key(data: bytes) -> tuple[VnetId, bytes]:
    if len(data) != MAC_KEY.size:
        raise MapValueError(f"a MAC key is {MAC_KEY.size} bytes, not {len(data)}")
    raw, mac, _kind, _pad = MAC_KEY.unpack(data)
    return VnetId(raw), mac


def pack_remote(addr: str, kernel_peer: bool) -> bytes:
    """A remote entry as the engine writes it: not used yet (``used`` 0)."""
    return REMOTE.pack(_addr(addr), REMOTE_KERNEL_PEER if kernel_peer else 0, 0)


def unpack_remote(data: bytes) -> tuple[str, bool]:
    if len(data) != REMOTE.size:
        raise MapValueError(f"a remote is {REMOTE.size} bytes, not {len(data)}")
    addr, flags, _used = REMOTE.unpack(data)
    return socket.inet_ntoa(addr), bool(flags & REMOTE_KERNEL_PEER)


def pack_local() -> bytes:
    """A local entry as the engine writes it: not used yet."""
    return LOCAL.pack(0)


def unpack_used(data: bytes) -> int:
    """The use stamp of a remote or local entry: the programs' clock
    (bpf_ktime_get_ns) when a frame last came from its MAC, written at most
    once a second; 0 when none came since the engine wrote the entry."""
    if len(data) == REMOTE.size:
        return REMOTE.unpack(data)[2]
    if len(data) == LOCAL.size:
        return LOCAL.unpack(data)[0]
    raise MapValueError(f"a remote or local entry is {REMOTE.size} or {LOCAL.size} bytes, "
                        f"not {len(data)}")


def index_key(index: int) -> bytes:
    return INDEX_KEY.pack(index)


def sum_counters(data: bytes, cpus: int) -> dict[str, int]:
    """Add up one per-CPU counters value (``cpus`` records, each padded to 8 bytes)."""
    if len(data) != COUNTERS.size * cpus:
        raise MapValueError(f"counters of {cpus} CPUs are {COUNTERS.size * cpus} bytes, "
                            f"not {len(data)}")
    totals = [0] * len(COUNTER_NAMES)
    for cpu in range(cpus):
        for i, v in enumerate(COUNTERS.unpack_from(data, cpu * COUNTERS.size)):
            totals[i] += v
    return dict(zip(COUNTER_NAMES, totals))


def pack_counters(values: dict[str, int]) -> bytes:
    """One CPU's record (tests build per-CPU values with it)."""
    return COUNTERS.pack(*(values.get(n, 0) for n in COUNTER_NAMES))


@dataclass(frozen=True)
class RemoteSeen:
    """The decapsulator saw (vid, mac) coming from ``addr``, which the remote
    table does not say (absent, or at another address)."""
    vid: VnetId
    mac: bytes
    addr: str


@dataclass(frozen=True)
class LocalSeen:
    """The encapsulator saw a source MAC the local table does not hold."""
    vid: VnetId
    mac: bytes


ShimEvent = Union[RemoteSeen, LocalSeen]


def pack_event(event: ShimEvent) -> bytes:
    if isinstance(event, RemoteSeen):
        return EVENT.pack(EVENT_REMOTE_SEEN, _addr(event.addr), event.vid.raw, _mac(event.mac), 0)
    return EVENT.pack(EVENT_LOCAL_SEEN, b"\0" * 4, event.vid.raw, _mac(event.mac), 0)


def unpack_event(data: bytes) -> ShimEvent:
    """One ring buffer record; MapValueError for anything else."""
    if len(data) != EVENT.size:
        raise MapValueError(f"an event is {EVENT.size} bytes, not {len(data)}")
    kind, addr, raw, mac, _pad = EVENT.unpack(data)
    if kind == EVENT_REMOTE_SEEN:
        return RemoteSeen(VnetId(raw), mac, socket.inet_ntoa(addr))
    if kind == EVENT_LOCAL_SEEN:
        return LocalSeen(VnetId(raw), mac)
    raise MapValueError(f"unknown event kind {kind}")
