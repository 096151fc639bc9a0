"""The kernel's link and forwarding-entry notifications, for EVPN devices
(docs/fleet.md): a raw netlink socket and a parser of its messages.

Under EVPN the engine reacts to two things the moment they happen: one of
its VXLAN devices put on a bridge (its port must not learn), and a MAC
learnt on a local port of such a bridge (the device may hold a stale entry
for it, ``table.stale_remote_entries``).  At convergence FRR installs
thousands of entries, each a notification; pyroute2 would decode every
attribute of each, so the few fields needed are read here with ``struct``
(``parse``, pure) and the rest skipped.  When the socket's buffer overflows
(ENOBUFS) notifications are lost: ``read`` says so, and the engine checks
everything once with a dump.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4
RCVBUF = 8 << 20            # bytes: a convergence burst fits

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS = 3, 10, 18, 20
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_GROUP = 2
NDA_DST, NDA_LLADDR, NDA_MASTER = 1, 2, 9
AF_BRIDGE = 7
NTF_EXT_LEARNED = 0x10
NUD_PERMANENT = 0x80

_NLMSG = struct.Struct("=IHHII")     # len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")   # family, type, index, flags, change
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_RTA = struct.Struct("=HH")          # len, type


@dataclass(frozen=True)
class LinkEvent:
    """A link changed (RTM_NEWLINK) or went (RTM_DELLINK), or one link of a dump."""

    new: bool
    family: int
    index: int
    master: int                 # IFLA_MASTER, 0 when absent
    name: str | None = None     # IFLA_IFNAME
    flags: int = 0              # IFF_*
    alias: str | None = None    # IFLA_IFALIAS
    kind: str | None = None     # IFLA_INFO_KIND
    group: str | None = None    # IFLA_VXLAN_GROUP of a VXLAN device (IPv4)


@dataclass(frozen=True)
class NeighEvent:
    """A forwarding or neighbour entry added or changed (RTM_NEWNEIGH) or
    deleted (RTM_DELNEIGH)."""

    new: bool
    family: int
    ifindex: int
    state: int
    flags: int
    mac: str | None      # NDA_LLADDR of six bytes, as aa:bb:cc:dd:ee:ff
    master: int          # NDA_MASTER, 0 when absent
    dst: str | None      # NDA_DST (IPv4, or "" for another family): a VXLAN device's own entry

    @property
    def has_dst(self) -> bool:
        return self.dst is not None

    @property
    def local_on_bridge(self) -> bool:
        """A MAC a bridge learnt or was given on one of its ports (not one a
        control plane installed, not a port's own address)."""
        return (self.new and self.family == AF_BRIDGE and self.master != 0
                and not self.has_dst and self.mac is not None
                and not self.flags & NTF_EXT_LEARNED and not self.state & NUD_PERMANENT)


def _attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in data[start:end];
    stops at the first malformed one."""
    pos = start
    while pos + _RTA.size <= end:
        length, kind = _RTA.unpack_from(data, pos)
        if length < _RTA.size or pos + length > end:
            return
        yield kind & 0x3FFF, pos + _RTA.size, pos + length     # without NLA_F_* bits
        pos += (length + 3) & ~3


def _u32(data: bytes, start: int, end: int) -> int:
    return struct.unpack_from("=I", data, start)[0] if end - start >= 4 else 0


def _text(data: bytes, a: int, b: int) -> str:
    return data[a:b].split(b"\0", 1)[0].decode("utf-8", "replace")


def _link(new: bool, data: bytes, start: int, end: int) -> LinkEvent | None:
    if end - start < _IFINFO.size:
        return None
    family, _type, index, flags, _change = _IFINFO.unpack_from(data, start)
    master, name, alias, link_kind, group = 0, None, None, None, None
    for kind, a, b in _attrs(data, start + _IFINFO.size, end):
        if kind == IFLA_MASTER:
            master = _u32(data, a, b)
        elif kind == IFLA_IFNAME:
            name = _text(data, a, b)
        elif kind == IFLA_IFALIAS:
            alias = _text(data, a, b) or None
        elif kind == IFLA_LINKINFO:
            for info, c, d in _attrs(data, a, b):
                if info == IFLA_INFO_KIND:
                    link_kind = _text(data, c, d)
                elif info == IFLA_INFO_DATA and link_kind == "vxlan":
                    for vx, e, f in _attrs(data, c, d):
                        if vx == IFLA_VXLAN_GROUP and f - e == 4:
                            group = "%d.%d.%d.%d" % tuple(data[e:f])
    return LinkEvent(new, family, index, master, name, flags, alias, link_kind, group)


def _neigh(new: bool, data: bytes, start: int, end: int) -> NeighEvent | None:
    if end - start < _NDMSG.size:
        return None
    family, ifindex, state, flags, _type = _NDMSG.unpack_from(data, start)
    mac, master, dst = None, 0, None
    for kind, a, b in _attrs(data, start + _NDMSG.size, end):
        if kind == NDA_LLADDR and b - a == 6:
            mac = "%02x:%02x:%02x:%02x:%02x:%02x" % tuple(data[a:b])
        elif kind == NDA_MASTER:
            master = _u32(data, a, b)
        elif kind == NDA_DST:
            dst = "%d.%d.%d.%d" % tuple(data[a:b]) if b - a == 4 else ""
    return NeighEvent(new, family, ifindex, state, flags, mac, master, dst)


def parse(data: bytes) -> list[LinkEvent | NeighEvent]:
    """The link and neighbour notifications in one datagram of a netlink
    socket; anything else, and anything malformed, is skipped (a truncated
    message ends the datagram)."""
    out: list[LinkEvent | NeighEvent] = []
    pos = 0
    while pos + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, pos)
        if length < _NLMSG.size or pos + length > len(data):
            break
        start, end = pos + _NLMSG.size, pos + length
        event = None
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            event = _link(kind == RTM_NEWLINK, data, start, end)
        elif kind in (RTM_NEWNEIGH, RTM_DELNEIGH):
            event = _neigh(kind == RTM_NEWNEIGH, data, start, end)
        if event is not None:
            out.append(event)
        pos += (length + 3) & ~3
    return out


NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTM_GETNEIGH = 30
NLMSG_ERROR, NLMSG_DONE = 2, 3
DUMP_TIMEOUT = 10.0


def dump_request(seq: int, family: int = AF_BRIDGE) -> bytes:
    """An RTM_GETNEIGH dump request: every forwarding entry of ``family``."""
    body = struct.pack("=BxxxiHBB", family, 0, 0, 0, 0)
    return _NLMSG.pack(_NLMSG.size + len(body), RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP,
                       seq, 0) + body


def _done(data: bytes, seq: int) -> int | None:
    """0 when ``data`` holds the end of dump ``seq``, an errno for its error, else None."""
    pos = 0
    while pos + _NLMSG.size <= len(data):
        length, kind, _flags, got, _pid = _NLMSG.unpack_from(data, pos)
        if length < _NLMSG.size:
            return None
        if got == seq and kind == NLMSG_DONE:
            return 0
        if got == seq and kind == NLMSG_ERROR and pos + 20 <= len(data):
            return -struct.unpack_from("=i", data, pos + 16)[0]
        pos += (length + 3) & ~3
    return None


def link_dump_request(seq: int, kind: str | None = None) -> bytes:
    """An RTM_GETLINK dump request; with ``kind`` the kernel sends only the
    links of that kind (IFLA_LINKINFO/IFLA_INFO_KIND, a filtered dump)."""
    body = _IFINFO.pack(0, 0, 0, 0, 0)
    if kind is not None:
        name = kind.encode() + b"\0"
        inner = _RTA.pack(_RTA.size + len(name), IFLA_INFO_KIND) + name
        inner += b"\0" * (-len(inner) % 4)
        body += _RTA.pack(_RTA.size + len(inner), IFLA_LINKINFO) + inner
    return _NLMSG.pack(_NLMSG.size + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP,
                       seq, 0) + body


def _dump(sock: socket.socket | None, request, wanted: type) -> list:
    own = sock is None
    if own:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_ROUTE)
    try:
        sock.settimeout(DUMP_TIMEOUT)
        seq = int.from_bytes(os.urandom(3), "big") + 1
        sock.send(request(seq))
        out: list = []
        while True:
            data = sock.recv(1 << 20)
            if not data:
                raise OSError(errno.EIO, "netlink dump ended early")
            out += [e for e in parse(data) if isinstance(e, wanted)]
            end = _done(data, seq)
            if end is not None:
                if end:
                    raise OSError(end, f"netlink dump: {os.strerror(end)}")
                return out
    finally:
        if own:
            sock.close()


def dump_neighbours(sock: socket.socket | None = None,
                    family: int = AF_BRIDGE) -> list[NeighEvent]:
    """Every forwarding entry, read with one dump on ``sock`` (a NETLINK_ROUTE
    socket, perhaps made in another network namespace) or a socket of its
    own; parsed here, many times faster than pyroute2 for the thousands of
    entries FRR installs.  OSError on failure."""
    return _dump(sock, lambda seq: dump_request(seq, family), NeighEvent)


def dump_links(kind: str | None = None, sock: socket.socket | None = None) -> list[LinkEvent]:
    """Every link (of ``kind``, filtered by the kernel), read with one dump and
    parsed here: the engine's refresh looks at its VXLAN devices every few
    seconds on hosts with hundreds of links.  OSError on failure."""
    return _dump(sock, lambda seq: link_dump_request(seq, kind), LinkEvent)


class NetlinkWatch:
    """A netlink socket subscribed to link and neighbour notifications."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.overflowed = False        # notifications were lost since the last check

    def open(self) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)   # SO_RCVBUFFORCE (root)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((0, RTMGRP_LINK | RTMGRP_NEIGH))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        return sock

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def read(self, limit: int = 256) -> list[LinkEvent | NeighEvent]:
        """What has arrived (at most ``limit`` datagrams: the loop comes back);
        an overflow sets ``overflowed``."""
        out: list[LinkEvent | NeighEvent] = []
        for _ in range(limit):
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.overflowed = True
                continue
            out += parse(data)
        return out

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
