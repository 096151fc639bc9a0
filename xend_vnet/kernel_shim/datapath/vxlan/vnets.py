"""The engine's vnets on the kernel VXLAN data path (docs/vxlan.md): their
devices, flood entries and pending retries.

``VxlanVnets`` owns the ``VxlanTable`` of ``(data-path vxlan)`` vnets and
what is left to retry about them (a flood-entry sync, group moves, device
problems already logged).  Under the EVPN control plane (docs/fleet.md) it
leaves the flood entries and remote MACs to FRR and keeps two things in
order itself: each device's bridge port does not learn (set when the
device joins a bridge), and an entry FRR left for a MAC that is now on a
local port is removed (``table.stale_remote_entries``); both react to the
kernel's notifications (``netlink_events``), with one full check after
notifications were lost.  It drives ``device.py`` (pyroute2) by the rules
of ``table.py``; what it needs of the engine (group, multicast TTL,
underlay device and MTU, peers) it reads through small callables given at
construction, at the moment it is needed.  It is a data path
(``interface.DataPath``): the control layer attaches and detaches vnets
through it and the engine's refresh calls ``refresh``.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from ....vnet_id import VnetId
from ..interface import DataPathError, PathStatus, TableChange
from .device import (
    LinkState,
    VxlanError,
    VxlanSpec,
    delete_vxlan,
    link_state,
    link_states,
    netlink,
    not_ours,
    open_vxlan,
    read_fdb,
    remove_fdb_entry,
    set_group,
    set_port_flags,
    set_up,
    sync_flood,
    sync_floods,
)
from .table import (
    DEFAULT_CONTROL_PLANE,
    DEFAULT_MAX_MACS,
    MIN_MTU,
    PortFlags,
    VxlanTable,
    VxlanVnet,
    device_alias,
    kernel_ttl,
    stale_remote_entries,
    ttl_problem,
    vni_of,
    vxlan_mtu,
)
from .watch import LinkEvent, NeighEvent

log = logging.getLogger("vnetd")     # the daemon's log: these are its messages


@contextmanager
def _kept(ipr) -> Iterator:
    """A netlink socket the caller owns, left open."""
    yield ipr


class VxlanVnets:
    """The engine's vnets on the kernel VXLAN data path (a DataPath): their
    devices, flood entries and pending retries.

    ``port`` is ``--vxlan-port``, ``mtu`` is ``--mtu``; the callables give the
    engine's current group, multicast TTL, underlay device and MTU, and the
    addresses of its peers.  ``control_plane``, ``local``, ``neigh_suppress``
    and ``max_macs`` are ``--vxlan-control-plane``, ``--vxlan-local``,
    ``--vxlan-neigh-suppress`` and ``--vxlan-max-macs``.
    """

    name = "vxlan"

    def __init__(self, port: int, mtu: int, *, group: Callable[[], str],
                 mcast_ttl: Callable[[], int], device: Callable[[], str],
                 underlay_mtu: Callable[[], int], peers: Callable[[], list[str]],
                 control_plane: str = DEFAULT_CONTROL_PLANE, local: str | None = None,
                 neigh_suppress: bool = False, max_macs: int = DEFAULT_MAX_MACS):
        self.table = VxlanTable(port, control_plane, local)
        self.port_flags = PortFlags(learning=False, neigh_suppress=neigh_suppress)
        self.max_macs = max_macs
        # EVPN: each device's ifindex and the bridge it was last seen on (0: none)
        # with its port flags set; a full stale-entry check is owed after lost
        # notifications and at the first refresh.
        self.evpn_ports: dict[int, VxlanVnet] = {}
        self.evpn_masters: dict[int, int] = {}
        self.evpn_check_pending = self.table.evpn
        self.stale_removed = 0
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
        if self.table.evpn:
            # Unicast only: the kernel's automatic TTL (the host's default).
            return VxlanSpec(vnet.ifname, vnet.vni, None, self.table.port, 0, self._device(),
                             vnet.mtu, device_alias(vnet.vid), self.table.local,
                             self.max_macs)
        return VxlanSpec(vnet.ifname, vnet.vni, self._group(), self.table.port,
                         kernel_ttl(self._mcast_ttl()), self._device(), vnet.mtu,
                         device_alias(vnet.vid))

    def attach(self, vid: VnetId, ifname: str) -> None:
        """Create (or take over) the vnet's kernel VXLAN device with a flood
        entry per peer (under EVPN: with none, FRR installs them); the core
        never sees this vnet's frames."""
        problem = None if self.table.evpn else ttl_problem(self._mcast_ttl())
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
                if spec.evpn:
                    self._track(vnet)
                else:
                    sync_flood(ifname, spec.alias, self._peers())
            except VxlanError:
                if created:
                    delete_vxlan(ifname, spec.alias)
                raise
        except VxlanError as e:
            self._untrack(vid)
            self.table.remove(vid)
            raise DataPathError(e.errno, e.message) from None
        where = (f"EVPN, local {spec.local}" if spec.evpn
                 else f"group {spec.group}, device {spec.device}")
        log.info("vnet %s up on %s: kernel VXLAN, VNI %d, %s, port %d, MTU %d%s",
                 vid.canonical, ifname, vnet.vni, where, spec.port,
                 mtu, "" if mtu == self.mtu else
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
        self._untrack(vid)
        self.table.remove(vid)
        log.info("vnet %s deleted with its VXLAN device %s", vid.canonical, ifname)

    def sync_floods(self, ipr=None, links: dict[str, int] | None = None) -> None:
        """Give every VXLAN vnet a flood entry per peer, and only those: the
        kernel sends floods to each peer directly (there is no VFWD relay).
        A failure leaves the peer change in place: it is logged and the sync
        is retried at every refresh until it succeeds.  Under EVPN the flood
        entries are FRR's: nothing is done."""
        if self.table.evpn:
            return
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
        """A new group applies to the VXLAN vnets too (the kernel rejoins);
        EVPN devices have no group."""
        if self.table.evpn:
            return
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
                if state is None:
                    # Not a VXLAN device: gone, or its name held by another kind.
                    try:
                        state = link_state(vnet.ifname, ipr)
                    except VxlanError:
                        state = None
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
                    if problem is None and self.table.evpn:
                        self._seen(vnet, state, ipr)
                    continue
                self.group_move_pending.discard(vnet.vid)   # made on the current group
                self.noted.pop(vnet.vid, None)
                try:
                    open_vxlan(self._spec(vnet), ipr)
                    if self.table.evpn:
                        self._track(vnet, ipr)
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
            if self.evpn_check_pending:
                self.check_stale_entries(ipr)

    # -- EVPN: bridge ports that do not learn, no stale entries -----------------------

    def _track(self, vnet: VxlanVnet, ipr=None) -> None:
        """Note the device of a vnet just made or taken over: its index, and its
        port flags if it is on a bridge already."""
        with netlink() if ipr is None else _kept(ipr) as ipr:
            state = link_state(vnet.ifname, ipr)
        if state is None:
            raise VxlanError(errno.ENODEV, f"VXLAN device {vnet.ifname} vanished")
        self._untrack(vnet.vid)
        self.evpn_ports[state.index] = vnet
        self.evpn_masters[state.index] = 0
        self._seen(vnet, state, ipr)

    def _untrack(self, vid: VnetId) -> None:
        for index in [i for i, v in self.evpn_ports.items() if v.vid == vid]:
            del self.evpn_ports[index]
            self.evpn_masters.pop(index, None)

    def _seen(self, vnet: VxlanVnet, state: LinkState, ipr=None) -> None:
        """The device is ``state`` now: when it joined a bridge, its port stops
        learning (and suppresses ARP/ND if asked)."""
        if self.evpn_ports.get(state.index) is not vnet:
            self._untrack(vnet.vid)          # made again behind our back: a new index
            self.evpn_ports[state.index] = vnet
            self.evpn_masters[state.index] = 0
        self._master_changed(state.index, state.master, ipr)

    def _master_changed(self, index: int, master: int, ipr=None) -> None:
        vnet = self.evpn_ports[index]
        if self.evpn_masters.get(index) == master:
            return
        self.evpn_masters[index] = master
        if not master:
            return
        flags = self.port_flags
        try:
            set_port_flags(vnet.ifname, index, flags.brport(), ipr)
        except VxlanError as e:
            self.evpn_masters[index] = 0      # tried again at the next refresh
            self._note(vnet, e.message)
            return
        log.info("vnet %s: bridge port %s set not to learn%s", vnet.vid.canonical,
                 vnet.ifname, ", with ARP/ND suppression" if flags.neigh_suppress else "")

    def netlink_events(self, events: Sequence[LinkEvent | NeighEvent],
                       overflowed: bool = False) -> None:
        """React to the kernel's notifications (watch.py): a device of ours that
        joined a bridge, a MAC now on a local port of its bridge."""
        if overflowed:
            self.evpn_check_pending = True     # a full check at the next refresh
        if not self.evpn_ports:
            return
        bridges = {m: i for i, m in self.evpn_masters.items() if m}
        stale: dict[int, set[str]] = {}
        for ev in events:
            if isinstance(ev, LinkEvent):
                if ev.new and ev.index in self.evpn_ports:
                    self._master_changed(ev.index, ev.master)
                    bridges = {m: i for i, m in self.evpn_masters.items() if m}
            elif ev.local_on_bridge and ev.ifindex not in self.evpn_ports:
                device = bridges.get(ev.master)
                if device is not None:
                    stale.setdefault(device, set()).add(ev.mac)
        for index, macs in stale.items():
            vnet = self.evpn_ports[index]
            for mac in sorted(macs):
                self._remove_stale(vnet, index, mac)

    def _remove_stale(self, vnet: VxlanVnet, index: int, mac: str,
                      dst: str | None = None, ipr=None) -> None:
        try:
            removed = remove_fdb_entry(vnet.ifname, index, mac, ipr)
        except VxlanError as e:
            log.warning("vnet %s: %s", vnet.vid.canonical, e.message)
            self.evpn_check_pending = True
            return
        if removed:
            self.stale_removed += 1
            log.info("vnet %s: %s is on a local port now; its entry on %s%s, left by the "
                     "control plane, removed", vnet.vid.canonical, mac, vnet.ifname,
                     f" (to {dst})" if dst else "")

    def check_stale_entries(self, ipr=None) -> None:
        """One FDB dump: remove every entry of an EVPN device for a MAC its bridge
        has on a local port (after lost notifications, and at the first refresh)."""
        self.evpn_check_pending = False
        if not self.evpn_ports:
            return
        try:
            fdb = read_fdb(dict(self.evpn_masters))
        except OSError as e:
            log.warning("cannot read the forwarding entries of the EVPN devices: %s "
                        "(tried again at the next refresh)", e)
            self.evpn_check_pending = True
            return
        for index, view in fdb.items():
            vnet = self.evpn_ports.get(index)
            if vnet is None:
                continue
            for mac, dst in stale_remote_entries(view.local, view.remote.items()):
                self._remove_stale(vnet, index, mac, dst, ipr)

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
        if self.table.evpn:
            reason += (f"; EVPN control plane (local {self.table.local}): FRR installs its "
                       "remote MACs and flood list")
        problem = self.noted.get(vid)
        return PathStatus(self.name, f"{reason}; {problem}" if problem else reason)

    def close(self) -> None:
        """The devices stay, with their flood entries, for the next start (design.md 5)."""
