"""The core's tables as a data path that keeps its own copy sees them change
(design.md 1.1, architecture.md 4), sans-IO.

The kernel path (datapath/kernel/path.py) holds the remote MACs of each
vnet (the VARP cache's reachable entries), its local MACs (the vif table)
and which care-of addresses run an engine whose kernel path decapsulates
the vnet (``CAP_KERNEL``, wire/segments.py).  Once ``EngineCore.mirror_tables``
is on, each of those tables appends a ``TableChange`` to one list as an
entry is made, moves, ages, is forgotten or refused away, in the order it
happens; the engine drains the list after every wakeup
(``EngineCore.drain_table_changes``), as it performs actions.  Without a
mirror nothing is recorded and a packet costs what it did.
"""

from __future__ import annotations

from typing import NamedTuple

from ...vnet_id import VnetId

VARP = "varp"                   # (vnet, MAC) -> the care-of address it was learned at
VIF = "vif"                     # (vnet, MAC) of a local domain
KERNEL_PEER = "kernel_peer"     # (vnet, care-of address) whose kernel path takes the vnet


class TableChange(NamedTuple):
    """One change of a mirrored table."""

    table: str          # VARP, VIF or KERNEL_PEER
    vid: VnetId
    mac: bytes          # b"" for KERNEL_PEER
    addr: str | None    # VARP: the care-of address; KERNEL_PEER: the engine's; VIF: None
    present: bool       # False: the entry went
