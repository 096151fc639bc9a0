"""The engine's vnets on the kernel VXLAN data path (docs/vxlan.md): their
devices, flood entries and pending retries.

``VxlanVnets`` owns the ``VxlanTable`` of ``(data-path vxlan)`` vnets and
what is left to retry about them (a flood-entry sync, group moves, device
problems already logged).  It drives ``device.py`` (pyroute2) by the rules
of ``table.py``; what it needs of the engine (group, multicast TTL,
underlay device and MTU, peers) it reads through small callables given at
construction, at the moment it is needed.  It is a data path
(``interface.DataPath``): the control layer attaches and detaches vnets
through it and the engine's refresh calls ``refresh``.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence

from ....vnet_id import VnetId
from ..interface import DataPathError, PathStatus, TableChange
from .device import (
    VxlanError,
    VxlanSpec,
    delete_vxlan,
    link_states,
    netlink,
    not_ours,
    open_vxlan,
    set_group,
    set_up,
    sync_flood,
    sync_floods,
)
from .table import (
    MIN_MTU,
    VxlanTable,
    VxlanVnet,
    device_alias,
    kernel_ttl,
    ttl_problem,
    vni_of,
    vxlan_mtu,
)

log = logging.getLogger("vnetd")     # the daemon's log: these are its messages


class VxlanVnets:
    """The engine's vnets on the kernel VXLAN data path (a DataPath): their
    devices, flood entries and pending retries.

    ``port`` is ``--vxlan-port``, ``mtu`` is ``--mtu``; the callables give the
    engine's current group, multicast TTL, underlay device and MTU, and the
    addresses of its peers.
    """

    name = "vxlan"

    def __init__(self, port: int, mtu: int, *, group: Callable[[], str],
                 mcast_ttl: Callable[[], int], device: Callable[[], str],
                 underlay_mtu: Callable[[], int], peers: Callable[[], list[str]]):
        self.table = VxlanTable(port)
        self.mtu = mtu
        self._group = group
        self._mcast_ttl = mcast_ttl
        self._device = device
        self._underlay_mtu = underlay_mtu
        self._peers = peers
        self.flood_sync_pending = False   # a flood-entry sync failed: retried at refresh
        self.group_move_pending: set[VnetId] = set()   # set_group failed: retried at refresh
        self.noted: dict[VnetId, str] = {}   # a device problem logged once, by vnet

    def _spec(self, vnet: VxlanVnet) -> VxlanSpec:
        return VxlanSpec(vnet.ifname, vnet.vni, self._group(), self.table.port,
                         kernel_ttl(self._mcast_ttl()), self._device(), vnet.mtu,
                         device_alias(vnet.vid))

    def attach(self, vid: VnetId, ifname: str) -> None:
        """Create (or take over) the vnet's kernel VXLAN device with a flood
        entry per peer; the core never sees this vnet's frames."""
        problem = ttl_problem(self._mcast_ttl())
        if problem:
            raise DataPathError(errno.EINVAL, f"vnet {vid.canonical}: {problem}")
        underlay_mtu = self._underlay_mtu()
        mtu = vxlan_mtu(self.mtu, underlay_mtu)
        if mtu < MIN_MTU:
            raise DataPathError(errno.EINVAL, f"the underlay MTU {underlay_mtu} "
                                "leaves no room for VXLAN")
        vnet = VxlanVnet(vid, ifname, vni_of(vid), mtu)
        try:
            self.table.add(vnet)
        except (KeyError, ValueError) as e:
            raise DataPathError(errno.EEXIST, str(e)) from None
        spec = self._spec(vnet)
        try:
            created = open_vxlan(spec)
            try:
                sync_flood(ifname, spec.alias, self._peers())
            except VxlanError:
                if created:
                    delete_vxlan(ifname, spec.alias)
                raise
        except VxlanError as e:
            self.table.remove(vid)
            raise DataPathError(e.errno, e.message) from None
        log.info("vnet %s up on %s: kernel VXLAN, VNI %d, group %s, port %d, device %s, "
                 "MTU %d%s", vid.canonical, ifname, vnet.vni, spec.group, spec.port,
                 spec.device, mtu, "" if mtu == self.mtu else
                 f" (underlay MTU {underlay_mtu} - 50; domains on its bridge need "
                 f"MTU {mtu} or less)")

    def detach(self, vid: VnetId) -> None:
        """Remove the vnet and its device, if the device is still ours."""
        ifname = self.table.get(vid).ifname
        try:
            if not delete_vxlan(ifname, device_alias(vid)):
                log.warning("vnet %s: no VXLAN device of ours named %s to delete", vid.canonical,
                            ifname)
        except VxlanError as e:
            raise DataPathError(e.errno, e.message) from None
        self.table.remove(vid)
        log.info("vnet %s deleted with its VXLAN device %s", vid.canonical, ifname)

    def sync_floods(self, ipr=None, links: dict[str, int] | None = None) -> None:
        """Give every VXLAN vnet a flood entry per peer, and only those: the
        kernel sends floods to each peer directly (there is no VFWD relay).
        A failure leaves the peer change in place: it is logged and the sync
        is retried at every refresh until it succeeds."""
        changes, failed = sync_floods({v.ifname: device_alias(v.vid) for v in self.table},
                                      self._peers(), ipr, links)
        for vnet in self.table:
            added, removed = changes.get(vnet.ifname, ((), ()))
            for dst in added:
                log.info("vnet %s: floods also go to peer %s", vnet.vid.canonical, dst)
            for dst in removed:
                log.info("vnet %s: floods no longer go to %s", vnet.vid.canonical, dst)
        if failed and not self.flood_sync_pending:
            log.warning("VXLAN flood entries not in line with the peers (retried at each "
                        "refresh): %s", "; ".join(e.message for e in failed))
        elif self.flood_sync_pending and not failed:
            log.info("VXLAN flood entries in line with the peers again")
        self.flood_sync_pending = bool(failed)

    def move_group(self, addr: str) -> None:
        """A new group applies to the VXLAN vnets too (the kernel rejoins)."""
        ttl = kernel_ttl(self._mcast_ttl())
        failed = []
        for vnet in self.table:
            try:
                set_group(vnet.ifname, device_alias(vnet.vid), addr, ttl)
            except VxlanError as e:
                failed.append(e.message)
                self.group_move_pending.add(vnet.vid)
            else:
                self.group_move_pending.discard(vnet.vid)
        if failed:
            raise DataPathError(errno.EIO, f"the engine moved to {addr}, but "
                                + "; ".join(failed) + " (retried at each refresh)")

    def _retry_group_moves(self, ipr) -> bool:
        """Move the devices a failed set_group left on the old group; True if any moved."""
        self.group_move_pending &= {v.vid for v in self.table}
        moved = False
        for vnet in self.table:
            if vnet.vid not in self.group_move_pending:
                continue
            group = self._group()
            try:
                set_group(vnet.ifname, device_alias(vnet.vid), group,
                          kernel_ttl(self._mcast_ttl()), ipr)
            except VxlanError:
                continue    # reported by varp.mcaddr; retried at the next refresh
            self.group_move_pending.discard(vnet.vid)
            moved = True
            log.info("vnet %s: VXLAN device %s moved to group %s", vnet.vid.canonical,
                     vnet.ifname, group)
        return moved

    def _note(self, vnet: VxlanVnet, problem: str | None) -> None:
        """Log a device problem of ``vnet`` once, not at every refresh."""
        if problem is None:
            self.noted.pop(vnet.vid, None)
        elif self.noted.get(vnet.vid) != problem:
            self.noted[vnet.vid] = problem
            log.warning("vnet %s: %s", vnet.vid.canonical, problem)

    def refresh(self) -> None:
        """A VXLAN device deleted from outside is made again, like a lost TAP,
        and flood entries a failure left behind are synced again: one IPRoute,
        one link dump (and one FDB dump when entries need a sync) per refresh."""
        with netlink() as ipr:
            try:
                present = link_states(ipr)
            except VxlanError as e:
                log.warning("cannot check the VXLAN devices: %s", e.message)
                return
            sync = self.flood_sync_pending
            self.noted = {v.vid: self.noted[v.vid] for v in self.table
                          if v.vid in self.noted}    # of deleted vnets: gone
            for vnet in self.table:
                state = present.get(vnet.ifname)
                if state is not None:
                    problem = not_ours(vnet.ifname, state.kind, state.alias,
                                       device_alias(vnet.vid))
                    if problem:
                        problem = f"its name is held by a device that is not ours: {problem}"
                    elif not state.up:
                        try:
                            set_up(vnet.ifname, state.index, ipr)
                            log.warning("vnet %s: VXLAN device %s was down; set it up",
                                        vnet.vid.canonical, vnet.ifname)
                        except VxlanError as e:
                            problem = e.message
                    self._note(vnet, problem)
                    continue
                self.group_move_pending.discard(vnet.vid)   # made on the current group
                self.noted.pop(vnet.vid, None)
                try:
                    open_vxlan(self._spec(vnet), ipr)
                except VxlanError as e:
                    log.warning("vnet %s: cannot recreate %s yet: %s", vnet.vid.canonical,
                                vnet.ifname, e.message)
                    continue
                sync = True
                log.warning("vnet %s: VXLAN device %s was deleted from outside; recreated",
                            vnet.vid.canonical, vnet.ifname)
            if self.group_move_pending and self._retry_group_moves(ipr):
                present = None    # groups changed: sync_floods dumps the links again
            if sync:
                self.sync_floods(ipr, present)

    # -- DataPath ------------------------------------------------------------------

    def table_changed(self, changes: Sequence[TableChange]) -> None:
        """Nothing to mirror: the kernel learns the MACs behind each device."""

    def counters(self) -> dict[str, int]:
        """None of its own: the kernel's are in ``ip -s link show IFNAME``."""
        return {}

    def status(self, vid: VnetId) -> PathStatus | None:
        vnet = self.table.get(vid)
        if vnet is None:
            return None
        reason = (f"kernel VXLAN device {vnet.ifname}, VNI {vnet.vni}: its frames never "
                  "reach the engine")
        problem = self.noted.get(vid)
        return PathStatus(self.name, f"{reason}; {problem}" if problem else reason)

    def close(self) -> None:
        """The devices stay, with their flood entries, for the next start (design.md 5)."""
