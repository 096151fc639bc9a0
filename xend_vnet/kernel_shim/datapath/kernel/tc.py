"""The kernel data path's tc filters, through netlink (pyroute2).

Our programs hang as direct-action ``bpf`` filters on clsact hooks: the
decapsulator at the underlay's ingress, the encapsulator at each attached
TAP's egress.  A filter is ours when its kind is ``bpf`` and its name
starts with ``xend-vnet:`` (``xend-vnet:encap``, ``xend-vnet:decap``); we
add ours at priority ``PRIO`` with handle ``HANDLE`` and never change,
list as ours or delete any other filter.  A clsact qdisc is added when a
device has none; ``purge`` removes a clsact only when no filter at all is
left on it.

pyroute2 does not name the filter attribute that holds the program id
(TCA_BPF_ID), so ``parse_filter`` reads the filter messages' bytes itself.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

from .nlattr import attributes

OWNER = "xend-vnet:"
PRIO = 1798
HANDLE = 1798
INGRESS = 0xFFFFFFF2     # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
EGRESS = 0xFFFFFFF3      # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)
CLSACT_HANDLE = 0xFFFF0000

ROLE_ENCAP = "encap"
ROLE_DECAP = "decap"

_NLMSG = struct.Struct("=IHHII")
_TCMSG = struct.Struct("=B3xiIII")
TCA_KIND = 1
TCA_OPTIONS = 2
TCA_BPF_NAME = 7
TCA_BPF_ID = 11


class TcError(OSError):
    """A tc request failed: errno and what was asked."""


@dataclass(frozen=True)
class FilterInfo:
    ifindex: int
    parent: int
    prio: int
    handle: int
    kind: str
    name: str
    prog_id: int

    @property
    def ours(self) -> bool:
        return is_ours(self.kind, self.name)

    @property
    def role(self) -> str | None:
        return role_of(self.name) if self.ours else None


def filter_name(role: str) -> str:
    if role not in (ROLE_ENCAP, ROLE_DECAP):
        raise ValueError(f"unknown filter role {role!r}")
    return OWNER + role


def is_ours(kind: str, name: str) -> bool:
    return kind == "bpf" and name.startswith(OWNER)


def role_of(name: str) -> str | None:
    if not name.startswith(OWNER):
        return None
    role = name[len(OWNER):]
    return role if role in (ROLE_ENCAP, ROLE_DECAP) else None



def _text(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_filter(raw: bytes) -> FilterInfo | None:
    """One RTM_NEWTFILTER message (netlink header included) as a FilterInfo;
    None for a message too short to be one (the chain's head entry, which
    has no kind, gives kind '')."""
    if len(raw) < _NLMSG.size + _TCMSG.size:
        return None
    length = min(_NLMSG.unpack_from(raw)[0], len(raw))
    _family, ifindex, handle, parent, info = _TCMSG.unpack_from(raw, _NLMSG.size)
    kind = name = ""
    prog_id = 0
    for t, value in attributes(raw[_NLMSG.size + _TCMSG.size:length]):
        if t == TCA_KIND:
            kind = _text(value)
        elif t == TCA_OPTIONS:
            for ot, ov in attributes(value):
                if ot == TCA_BPF_NAME:
                    name = _text(ov)
                elif ot == TCA_BPF_ID and len(ov) >= 4:
                    prog_id = struct.unpack_from("=I", ov)[0]
    return FilterInfo(ifindex, parent, info >> 16, handle, kind, name, prog_id)


def _raw(msg) -> bytes:
    return bytes(msg.data[msg.offset:msg.offset + msg.length])


class TcFilters:
    """clsact and our bpf filters on the devices of one network namespace."""

    def __init__(self, ipr):
        self.ipr = ipr

    def _call(self, what: str, *args, **kwargs):
        try:
            return self.ipr.tc(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 -- pyroute2 raises NetlinkError and others
            code = getattr(e, "code", None) or errno.EIO
            raise TcError(code, f"{what}: {e}") from None

    def has_clsact(self, ifindex: int) -> bool:
        for q in self.ipr.get_qdiscs(index=ifindex):
            if q.get_attr("TCA_KIND") == "clsact":
                return True
        return False

    def ensure_clsact(self, ifindex: int) -> None:
        if not self.has_clsact(ifindex):
            try:
                self.ipr.tc("add", "clsact", ifindex)
            except Exception as e:  # noqa: BLE001
                if getattr(e, "code", None) != errno.EEXIST:
                    code = getattr(e, "code", None) or errno.EIO
                    raise TcError(code, f"clsact refused on ifindex {ifindex}: {e}") from None

    def filters(self, ifindex: int, parent: int) -> list[FilterInfo]:
        """Every filter (ours or not) on one hook; [] when the device has no clsact."""
        try:
            msgs = self.ipr.get_filters(index=ifindex, parent=parent)
        except Exception as e:  # noqa: BLE001
            if getattr(e, "code", None) in (errno.EINVAL, errno.ENOENT, errno.ENODEV):
                return []
            raise TcError(getattr(e, "code", None) or errno.EIO, f"list filters: {e}") from None
        out = []
        for m in msgs:
            info = parse_filter(_raw(m))
            if info is not None and info.kind:
                out.append(info)
        return out

    def ours(self, ifindex: int, parent: int) -> list[FilterInfo]:
        return [f for f in self.filters(ifindex, parent) if f.ours]

    def attach(self, ifindex: int, parent: int, prog_fd: int, role: str) -> None:
        """Put our program on a hook; one already there at our priority and
        handle is replaced in one step (no gap)."""
        self.ensure_clsact(ifindex)
        self._call(f"attach {role} to ifindex {ifindex}", "replace-filter", "bpf", ifindex,
                   HANDLE, fd=prog_fd, name=filter_name(role), parent=parent, classid=1,
                   direct_action=True, prio=PRIO)

    def remove(self, info: FilterInfo) -> None:
        if not info.ours:
            raise ValueError(f"not our filter: {info}")
        try:
            self.ipr.tc("del-filter", "bpf", info.ifindex, info.handle, parent=info.parent,
                        prio=info.prio)
        except Exception as e:  # noqa: BLE001
            if getattr(e, "code", None) not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                raise TcError(getattr(e, "code", None) or errno.EIO,
                              f"remove filter: {e}") from None

    def remove_ours(self, ifindex: int, parent: int) -> int:
        n = 0
        for f in self.ours(ifindex, parent):
            self.remove(f)
            n += 1
        return n

    def drop_clsact_if_empty(self, ifindex: int) -> bool:
        if not self.has_clsact(ifindex):
            return False
        if self.filters(ifindex, INGRESS) or self.filters(ifindex, EGRESS):
            return False
        try:
            self.ipr.tc("del", "clsact", ifindex, CLSACT_HANDLE)
        except Exception as e:  # noqa: BLE001
            if getattr(e, "code", None) not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                raise TcError(getattr(e, "code", None) or errno.EIO,
                              f"remove clsact: {e}") from None
        return True
