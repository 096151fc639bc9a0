"""The bridge forwarding database entries of the kernel ports
(docs/kernel-path.md 4): a remote MAC's entry points at its vnet's port P,
so the bridge sends P (and its encapsulator) that MAC's unicast.

Our entries are static (no ageing) and not sticky: when a MAC shows up on
a learning port (a domain that migrated here, on its vif) the bridge moves
the entry there itself, and the shim leaves it there.  The TAP's port
learns too, so a frame the engine writes into the TAP with a remote source
(a flood from the network, a fragment) moves that remote's entry to the
TAP: the entry then still reaches the kernel path through the TAP's
encapsulator, but not while the TAP has no carrier, so the shim moves such
entries back to P (``placement``), from the bridges' notifications, at
``KernelShim.refresh`` and ``close``.

Which entries are ours (``is_ours``): an entry on P, and a static entry on
the vnet's TAP port (only one of ours moved by learning gets there).
Nothing else is ever changed or removed.

The decisions are pure; ``FdbWatch`` reads the kernel's notifications
(RTM_NEWNEIGH, RTM_DELNEIGH of AF_BRIDGE) from a netlink socket of its own,
and the few calls that change entries go through pyroute2.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

from .nlattr import attributes

AF_BRIDGE = 7
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_MASTER = 0x04
NTF_EXT_LEARNED = 0x10
RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
NDA_LLADDR = 2
NDA_VLAN = 5
NDA_MASTER = 9
RTNLGRP_NEIGH = 3
NLMSG_ERROR = 2
NLMSG_OVERRUN = 4
WATCH_BUFFER = 4 << 20          # notifications between two refreshes
WATCH_READS = 4096              # datagrams read per drain; past it, read every entry instead

_NLMSG = struct.Struct("=IHHII")
_NDMSG = struct.Struct("=BxxxiHBB")

# what to do with an entry for a MAC we want behind P
KEEP = "keep"       # on P, static: nothing
ADD = "add"         # none: add ours on P
MOVE = "move"       # on the TAP (moved there by learning), or ours made dynamic: onto P
LEAVE = "leave"     # elsewhere (a local vif, the bridge's own address): the bridge knows


class FdbError(OSError):
    """A netlink request about fdb entries failed."""


def _failed(what: str, e: BaseException) -> FdbError:
    code = getattr(e, "code", None) or getattr(e, "errno", None) or errno.EIO
    return FdbError(code, f"{what}: {e}")


@dataclass(frozen=True)
class FdbEntry:
    """One bridge fdb entry (vlan 0 only: the shim uses no VLANs)."""
    mac: bytes
    port: int        # ndm_ifindex: the bridge port it points at
    master: int      # NDA_MASTER: the bridge
    state: int
    flags: int

    @property
    def local(self) -> bool:
        """The bridge's own address or a port's ("permanent")."""
        return bool(self.state & NUD_PERMANENT)

    @property
    def static(self) -> bool:
        return bool(self.state & NUD_NOARP) and not self.local

    @property
    def external(self) -> bool:
        """Learned by a switch driver: never ours."""
        return bool(self.flags & NTF_EXT_LEARNED)


def placement(entry: FdbEntry | None, port: int, tap: int) -> str:
    """What to do so that a remote MAC's unicast reaches port P (``port``)
    of a bridge whose TAP port is ``tap``, given the MAC's entry there."""
    if entry is None:
        return ADD
    if entry.local or entry.external:
        return LEAVE
    if entry.port == port:
        return KEEP if entry.static else MOVE
    if entry.port == tap:
        return MOVE
    return LEAVE


def is_ours(entry: FdbEntry | None, port: int, tap: int) -> bool:
    """An entry the shim may remove: on P, or static on the TAP's port."""
    if entry is None or entry.local or entry.external:
        return False
    return entry.port == port or (entry.port == tap and entry.static)



@dataclass(frozen=True)
class FdbNote:
    """One notification: ``gone`` for RTM_DELNEIGH."""
    entry: FdbEntry
    gone: bool


def parse_notes(data: bytes) -> list[FdbNote]:
    """The bridge fdb notifications in one netlink datagram; anything else
    (IPv4 and IPv6 neighbours, a device's own address lists, entries of a
    VLAN, messages cut short) is skipped."""
    out = []
    off = 0
    while off + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, off)
        if length < _NLMSG.size or off + length > len(data):
            break
        body = data[off + _NLMSG.size:off + length]
        off += (length + 3) & ~3
        if kind not in (RTM_NEWNEIGH, RTM_DELNEIGH) or len(body) < _NDMSG.size:
            continue
        family, ifindex, state, flags, _type = _NDMSG.unpack_from(body)
        if family != AF_BRIDGE:
            continue
        mac = None
        master = vlan = 0
        for t, v in attributes(body[_NDMSG.size:]):
            if t == NDA_LLADDR and len(v) == 6:
                mac = v
            elif t == NDA_MASTER and len(v) >= 4:
                master = struct.unpack_from("=I", v)[0]
            elif t == NDA_VLAN and len(v) >= 2:
                vlan = struct.unpack_from("=H", v)[0]
        if mac is None or not master or vlan or ifindex <= 0:
            continue
        out.append(FdbNote(FdbEntry(bytes(mac), ifindex, master, state, flags),
                           kind == RTM_DELNEIGH))
    return out


def latest(notes: list[FdbNote]) -> dict[tuple[int, bytes], FdbEntry | None]:
    """(bridge, MAC) -> its entry after ``notes`` (None: deleted).  A
    deletion on another port than the entry's latest one changes nothing."""
    out: dict[tuple[int, bytes], FdbEntry | None] = {}
    for note in notes:
        key = (note.entry.master, note.entry.mac)
        if note.gone:
            current = out.get(key)
            if current is None or current.port == note.entry.port:
                out[key] = None
        else:
            out[key] = note.entry
    return out


class FdbWatch:
    """The kernel's fdb notifications, read without blocking at each
    refresh; ``drain`` says when some were lost (the buffer overflowed),
    and then the caller reads every entry again."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                                  | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, 33, WATCH_BUFFER)  # SO_RCVBUFFORCE
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, WATCH_BUFFER)
            self.sock.bind((0, 1 << (RTNLGRP_NEIGH - 1)))
        except BaseException:
            self.sock.close()
            raise

    def drain(self) -> tuple[list[FdbNote], bool]:
        """(notifications waiting, whether some were lost)."""
        notes: list[FdbNote] = []
        lost = False
        for _ in range(WATCH_READS):
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return notes, lost
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    lost = True
                    continue
                raise
            if not data:
                return notes, lost
            notes.extend(parse_notes(data))
        # A storm of changes (a domain sending from ever new MACs): what is
        # left is skipped, and the caller reads every entry instead.
        self._skip()
        return [], True

    def _skip(self) -> None:
        for _ in range(WATCH_READS):
            try:
                if not self.sock.recv(1 << 16):
                    return
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise

    def close(self) -> None:
        self.sock.close()


def _entry(msg) -> FdbEntry | None:
    mac = msg.get_attr("NDA_LLADDR")
    master = msg.get_attr("NDA_MASTER")
    if not mac or not master or msg.get_attr("NDA_VLAN"):
        return None
    return FdbEntry(bytes.fromhex(mac.replace(":", "")), msg["ifindex"], master,
                    msg["state"], msg["flags"])


def _mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def get_entry(ipr, master: int, mac: bytes) -> FdbEntry | None:
    """The entry of ``mac`` on bridge ``master`` (vlan 0), or None."""
    try:
        msgs = ipr.neigh("get", family=AF_BRIDGE, lladdr=_mac(mac), master=master)
    except Exception as e:  # noqa: BLE001 -- NetlinkError
        if getattr(e, "code", None) == errno.ENOENT:
            return None
        raise _failed(f"fdb entry of {_mac(mac)}", e) from None
    for m in msgs:
        entry = _entry(m)
        if entry is not None:
            return entry
    return None


def dump(ipr) -> dict[tuple[int, bytes], FdbEntry]:
    """Every bridge's entries (vlan 0), by (bridge, MAC)."""
    out = {}
    try:
        msgs = list(ipr.neigh("dump", family=AF_BRIDGE))
    except Exception as e:  # noqa: BLE001 -- NetlinkError
        raise _failed("fdb dump", e) from None
    for m in msgs:
        entry = _entry(m)
        if entry is not None:
            out[(entry.master, entry.mac)] = entry
    return out


def put(ipr, port: int, mac: bytes, replace: bool) -> None:
    """A static entry (not sticky) for ``mac`` on bridge port ``port``;
    ``replace`` moves an entry that points elsewhere."""
    try:
        ipr.neigh("replace" if replace else "add", family=AF_BRIDGE, ifindex=port,
                  lladdr=_mac(mac), state=NUD_NOARP, flags=NTF_MASTER)
    except Exception as e:  # noqa: BLE001
        if getattr(e, "code", None) != errno.EEXIST:   # another made one meanwhile
            raise _failed(f"fdb entry of {_mac(mac)} on ifindex {port}", e) from None


def remove(ipr, entry: FdbEntry) -> None:
    try:
        ipr.neigh("del", family=AF_BRIDGE, ifindex=entry.port, lladdr=_mac(entry.mac),
                  state=NUD_NOARP, flags=NTF_MASTER)
    except Exception as e:  # noqa: BLE001
        if getattr(e, "code", None) not in (errno.ENOENT, errno.ENODEV):
            raise _failed(f"removing the fdb entry of {_mac(entry.mac)}", e) from None


def apply(ipr, action: str, port: int, mac: bytes) -> None:
    """Carry out ``placement``'s decision."""
    if action == ADD:
        put(ipr, port, mac, replace=False)
    elif action == MOVE:
        put(ipr, port, mac, replace=True)
