"""The data path as an interface: what carries a vnet's frames (design.md 4).

Three paths implement it: the user-space path (``userspace.py``: a TAP per
vnet, every frame through the engine core and its UDP socket), the kernel
path (``kernel/path.py``: the known unicast of the user-space path's clear
vnets in TC eBPF programs, design.md 1.1) and the kernel VXLAN path
(``vxlan/vnets.py``: a VXLAN device per vnet, docs/vxlan.md).  The control
layer picks the user-space or the VXLAN path per vnet at ``vnet.add``, and
puts a clear vnet of the first on the kernel path too; it drives them
through this interface.  The kernel path mirrors the core's tables
(learned, moved and aged VARP entries, the vif MACs of each vnet, which
engines decapsulate in their kernel) into its maps through
``table_changed`` (core/mirror.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from ...vnet_id import VnetId
from ..core.mirror import TableChange

__all__ = ["DataPath", "DataPathError", "PathStatus", "TableChange"]


class DataPathError(Exception):
    """A data path refused or failed a change: the errno legacy would give and
    a message quoting the device; the control layer names the command."""

    def __init__(self, errno: int, message: str):
        self.errno = errno
        self.message = message
        super().__init__(message)


class PathStatus(NamedTuple):
    """Which path carries a vnet, and why (for the operator)."""

    path: str     # the path's name: "vnetd", "kernel" or "vxlan"
    reason: str


class DataPath(Protocol):
    """What the control layer needs of a data path."""

    name: str     # the (data-path ...) value that selects it; "kernel" for the kernel path

    def attach(self, vid: VnetId, ifname: str) -> None:
        """Carry the vnet's frames on device ``ifname``, made or taken over;
        DataPathError when it cannot."""

    def detach(self, vid: VnetId) -> None:
        """Stop carrying the vnet and delete its device if it is ours (vnet.del);
        DataPathError when the device cannot be deleted."""

    def table_changed(self, changes: Sequence[TableChange]) -> None:
        """The core made, moved or dropped VARP entries, vif MACs or kernel
        peers (core/mirror.py), in that order."""

    def counters(self) -> dict[str, int]:
        """The path's own counters by name (its engine.status children)."""

    def status(self, vid: VnetId) -> PathStatus | None:
        """How this path carries the vnet, or None when it does not."""

    def close(self) -> None:
        """Stop carrying frames; the devices stay for the next start (design.md 5)."""
