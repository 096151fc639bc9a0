"""The data path as an interface: what carries a vnet's frames (design.md 4).

Two paths implement it: the user-space path (``userspace.py``: a TAP per
vnet, every frame through the engine core and its UDP socket) and the
kernel VXLAN path (``vxlan/vnets.py``: a VXLAN device per vnet, docs/vxlan.md).
The control layer picks one per vnet at ``vnet.add`` and drives it through
this interface.  A kernel data path for the legacy wire format would be a
third: it mirrors the core's tables (learned and aged VARP entries, the vif
MACs of each vnet) into its maps through ``table_changed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from ...vnet_id import VnetId


class DataPathError(Exception):
    """A data path refused or failed a change: the errno legacy would give and
    a message quoting the device; the control layer names the command."""

    def __init__(self, errno: int, message: str):
        self.errno = errno
        self.message = message
        super().__init__(message)


class TableChange(NamedTuple):
    """One change of the core's tables, for a path that keeps its own copy."""

    table: str          # "varp" (a cache entry) or "vif" (a local MAC of the vnet)
    vid: VnetId
    mac: bytes
    addr: str | None    # the care-of address of a VARP entry; None: the entry went


class PathStatus(NamedTuple):
    """Which path carries a vnet, and why (for the operator)."""

    path: str     # the (data-path ...) value of vnet.add: "vnetd" or "vxlan"
    reason: str


class DataPath(Protocol):
    """What the control layer needs of a data path."""

    name: str     # the (data-path ...) value that selects it

    def attach(self, vid: VnetId, ifname: str) -> None:
        """Carry the vnet's frames on device ``ifname``, made or taken over;
        DataPathError when it cannot."""

    def detach(self, vid: VnetId) -> None:
        """Stop carrying the vnet and delete its device if it is ours (vnet.del);
        DataPathError when the device cannot be deleted."""

    def table_changed(self, changes: Sequence[TableChange]) -> None:
        """The core learned, moved or aged VARP entries or vif MACs."""

    def counters(self) -> dict[str, int]:
        """The path's own counters by name (its engine.status children)."""

    def status(self, vid: VnetId) -> PathStatus | None:
        """How this path carries the vnet, or None when it does not."""

    def close(self) -> None:
        """Stop carrying frames; the devices stay for the next start (design.md 5)."""
