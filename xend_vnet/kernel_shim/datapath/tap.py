"""TAP devices of the engine: one persistent TAP per vnet (protocol.md 9.1, design.md 4-5).

A vnet's device is created with pyroute2 when its name is free, then
attached through /dev/net/tun as a single-queue TAP without packet
information, marked persistent so it survives the engine (and stays on its
bridge), and configured (MTU, up) with pyroute2.  When the vnet is added
again the existing TAP is reattached by name.  A name held by a device that
is not a TAP is refused before anything is opened; a TAP already attached
by another vnet (or process) answers EBUSY, which is refused too.

With offloads (wire/offload.py) the TAP is attached with
``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` (checksum, TSO for IPv4 and IPv6):
every read and write carries a 10-byte virtio_net_hdr, and a TCP
super-frame crosses user space once.  Its GSO size is left alone: capping
it makes the kernel segment every larger super-frame that the bridge
forwards to the TAP (the domain's side does not know the cap); the daemon
sends a frame too big for one ``UDP_SEGMENT`` train as two.  Without
offloads the offload flags are cleared explicitly, since a persistent TAP
keeps the flags of its last user.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ...ifnames import ifname_problem

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
VNET_HDR_LEN = 10
IFLA_TUN_TYPE_TAP = 2
DEFAULT_MTU = 1500
MAX_FRAME = 65536


class TapError(Exception):
    """A TAP device could not be created, attached or removed."""

    def __init__(self, errno_: int, message: str):
        self.errno = errno_
        self.message = message
        super().__init__(message)


def _link_kind(ipr: IPRoute, ifname: str) -> str | None:
    """None when no device has that name, "tap" for a TAP, else the device kind."""
    try:
        links = ipr.link("get", ifname=ifname)
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise
    info = links[0].get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    if kind == "tun":
        data = info.get_attr("IFLA_INFO_DATA")
        if data is not None and data.get_attr("IFLA_TUN_TYPE") == IFLA_TUN_TYPE_TAP:
            return "tap"
        return "tun"
    return kind or "device"


class TapDevice:
    """An attached TAP: a non-blocking fd that reads and writes whole frames."""

    def __init__(self, ifname: str, fd: int, index: int, created: bool = False,
                 vnet_hdr: bool = False):
        self.ifname = ifname
        self.fd = fd
        self.index = index
        self.vnet_hdr = vnet_hdr    # reads and writes carry a virtio_net_hdr
        self.read_size = MAX_FRAME + (VNET_HDR_LEN if vnet_hdr else 0)
        self.created = created     # this open made the device (else it was reattached)

    def fileno(self) -> int:
        return self.fd

    def read_batch(self, limit: int) -> list[bytes]:
        """Up to ``limit`` frames waiting on the device (none when it is drained).

        Raises TapError when the device is gone (deleted from outside: the
        fd then reports EBADFD), so the engine can drop it, not die."""
        frames = []
        read = os.read
        fd = self.fd
        size = self.read_size
        try:
            for _ in range(limit):
                frames.append(read(fd, size))
        except BlockingIOError:
            pass
        except OSError as e:
            if frames:
                return frames   # deliver what was read; the error shows again next time
            raise TapError(e.errno or errno.EIO,
                           f"TAP {self.ifname} failed: {e.strerror or e}") from None
        return frames

    def write(self, frame: bytes) -> None:
        """Inject one frame as received on the device (protocol.md 4.4 step 6)."""
        os.write(self.fd, frame)

    def close(self) -> None:
        """Detach; the persistent device stays (design.md 5)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def check_tap_name(ifname: str) -> None:
    """Refuse names the kernel would reject or treat as a template (``%d``)."""
    problem = ifname_problem(ifname)
    if problem:
        raise TapError(errno.EINVAL, problem)


def open_tap(ifname: str, mtu: int = DEFAULT_MTU, offload: bool = False) -> TapDevice:
    """Create or reattach the persistent TAP ``ifname``, set its MTU and bring it up;
    ``offload``: with virtio_net_hdr, checksum and TSO offloads (module doc).

    A device this call created is removed again if a later step fails."""
    check_tap_name(ifname)
    with IPRoute() as ipr:
        created = False
        try:
            kind = _link_kind(ipr, ifname)
            if kind is None:
                ipr.link("add", ifname=ifname, kind="tuntap", mode="tap")
                created = True
            elif kind != "tap":
                # design.md 4: never take over a name another device holds.
                raise TapError(errno.EEXIST,
                               f"interface {ifname} exists and is a {kind}, not a TAP device")
        except NetlinkError as e:
            raise TapError(e.code, f"cannot create TAP {ifname}: {os.strerror(e.code)}") from None
        try:
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            _undo_create(ipr, ifname, created)
            raise TapError(e.errno, f"cannot open {TUN_DEVICE}: {e.strerror}") from None
        try:
            try:
                flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), flags))
            except OSError as e:
                if e.errno == errno.EBUSY:
                    raise TapError(errno.EBUSY,
                                   f"TAP {ifname} is already attached by another vnet "
                                   "or process") from None
                raise TapError(e.errno, f"cannot attach TAP {ifname}: {e.strerror}") from None
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
            fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS if offload else 0)
            index = ipr.link_lookup(ifname=ifname)[0]
            ipr.link("set", index=index, mtu=mtu, state="up")
        except NetlinkError as e:
            os.close(fd)
            _undo_create(ipr, ifname, created)
            raise TapError(e.code, f"cannot configure TAP {ifname}: {os.strerror(e.code)}") \
                from None
        except BaseException:
            os.close(fd)
            _undo_create(ipr, ifname, created)
            raise
    return TapDevice(ifname, fd, index, created, offload)


def _undo_create(ipr: IPRoute, ifname: str, created: bool) -> None:
    """A failed create leaves nothing behind (design.md 4)."""
    if not created:
        return
    try:
        for index in ipr.link_lookup(ifname=ifname):
            ipr.link("del", index=index)
    except NetlinkError:
        pass   # already gone; the original error is the one to report


def delete_tap(tap: TapDevice) -> None:
    """Remove the device for good (vnet.del, vn rmmod --purge)."""
    if tap.fd >= 0:
        try:
            fcntl.ioctl(tap.fd, TUNSETPERSIST, 0)
        except OSError:
            pass   # the device is already gone: deleting by name below settles it
        finally:
            tap.close()
    with IPRoute() as ipr:
        try:
            for index in ipr.link_lookup(ifname=tap.ifname):
                ipr.link("del", index=index)
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise TapError(e.code,
                               f"cannot delete TAP {tap.ifname}: {os.strerror(e.code)}") from None
