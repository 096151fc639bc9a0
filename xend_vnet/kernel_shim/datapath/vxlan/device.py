"""The kernel VXLAN device of a vnet, through pyroute2 (docs/vxlan.md).

The engine owns the device as it owns TAPs (datapath/tap.py): it is created when
its name is free and tagged with an interface alias naming the vnet
(``vxlan_table.device_alias``).  An existing device of that name is taken
over only if it carries that tag (the one an earlier run of the engine
left; devices stay when the engine stops, like TAPs); a tagged device
whose VNI or port differ (a restart with another ``--vxlan-port``) is
made again.  A name held by anything else, an untagged VXLAN device
included, is refused (design.md 4).  A change of group, underlay or
local address is made while the device is down, so that every kernel
leaves the old group and joins the new one when it comes up again (and FRR
sees the VTEP go and come back).  Flood entries for peers are all-zeros
FDB entries, one per peer, beside the kernel's own entry for the multicast
group.  An EVPN device (docs/fleet.md) has no group and does not learn:
FRR installs its entries, and the engine only keeps its bridge port from
learning (``set_port_flags``) and removes the entries FRR leaves stale
(``remove_fdb_entries``).  What to set is decided in table.py.

Each public function takes an optional ``ipr``: the daemon's refresh passes
one IPRoute to the whole pass; without it, the function opens its own.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .table import flood_changes
from .watch import NTF_EXT_LEARNED, NeighEvent, dump_links, dump_neighbours

log = logging.getLogger("vnetd.vxlan")

ALL_ZEROS = "00:00:00:00:00:00"
IFF_UP = 0x1
# pyroute2 keyword -> IFLA_VXLAN_* attribute, for the settings taken over
_SETTINGS = {"vxlan_group": "IFLA_VXLAN_GROUP", "vxlan_ttl": "IFLA_VXLAN_TTL",
             "vxlan_link": "IFLA_VXLAN_LINK", "vxlan_local": "IFLA_VXLAN_LOCAL"}
# Applied while the device is down: the kernel joins the group when it opens.
_REJOIN = ("vxlan_group", "vxlan_link", "vxlan_local")


class VxlanError(Exception):
    """A VXLAN device could not be created, changed or removed."""

    def __init__(self, errno_: int, message: str):
        self.errno = errno_
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class VxlanSpec:
    """What the device of one vnet must be."""

    ifname: str
    vni: int
    group: str | None  # None under EVPN: no group, FRR installs the flood list
    port: int
    ttl: int          # 0: the kernel's automatic TTL (vxlan_table.kernel_ttl)
    device: str       # the underlay interface: the group is joined on it (not under EVPN)
    mtu: int
    alias: str        # our tag (vxlan_table.device_alias)
    local: str | None = None   # EVPN: the source address, the VTEP FRR advertises
    max_macs: int = 0          # EVPN: the kernel's maxaddress (0: no bound)

    @property
    def evpn(self) -> bool:
        return self.local is not None

    def identity(self) -> tuple[int, int, int, int]:
        """What the kernel cannot change on a live device (VNI, port,
        learning, maxaddress), as IFLA_VXLAN_* values: a device of ours that
        differs is made again."""
        return (self.vni, self.port, 0 if self.evpn else 1, self.max_macs)

    def live_settings(self, underlay_index: int) -> dict[str, object]:
        """The pyroute2 keywords a device taken over is brought to (``_apply``)."""
        if self.evpn:
            # Unicast to the VTEPs FRR names, routed like any packet: no underlay
            # device to bind to, no group to join.
            return {"vxlan_ttl": self.ttl, "vxlan_local": self.local}
        return {"vxlan_ttl": self.ttl, "vxlan_link": underlay_index,
                "vxlan_group": self.group}


@dataclass(frozen=True)
class LinkState:
    """What one link dump says of an interface (``link_states``)."""

    index: int
    kind: str              # IFLA_INFO_KIND, "device" when there is none
    alias: str | None      # IFLA_IFALIAS: ours carry ``VxlanSpec.alias``
    group: str | None      # IFLA_VXLAN_GROUP of a VXLAN device
    up: bool
    master: int = 0        # IFLA_MASTER: the bridge it is a port of (0: none)


def netlink() -> IPRoute:
    """One netlink socket for several calls (``with netlink() as ipr``)."""
    return IPRoute()


@contextmanager
def _netlink(ipr: IPRoute | None) -> Iterator[IPRoute]:
    if ipr is not None:
        yield ipr
    else:
        with IPRoute() as own:
            yield own


def _failure(what: str, e: NetlinkError) -> VxlanError:
    return VxlanError(e.code, f"{what}: {os.strerror(e.code)}")


def _link(ipr: IPRoute, ifname: str):
    """The link message of ``ifname``, or None."""
    try:
        return ipr.link("get", ifname=ifname)[0]
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise


def _kind_and_data(link) -> tuple[str, object]:
    info = link.get_attr("IFLA_LINKINFO")
    if info is None:
        return "device", None
    return info.get_attr("IFLA_INFO_KIND") or "device", info.get_attr("IFLA_INFO_DATA")


def not_ours(ifname: str, kind: str, found: str | None, alias: str) -> str | None:
    """Why a device named ``ifname`` of ``kind`` with alias ``found`` is not our
    device tagged ``alias``, or None when it is (design.md 4)."""
    if kind != "vxlan":
        return f"interface {ifname} exists and is a {kind}, not a VXLAN device"
    if found == alias:
        return None
    tag = f"alias {found!r}" if found else "no alias"
    return (f"interface {ifname} exists and is a VXLAN device that is not ours ({tag}, not "
            f"{alias!r}): the engine takes over only the devices it made; if it is one an "
            "engine left without its alias (stopped while making it), delete it "
            f"(ip link delete {ifname}) and the engine makes its own, else give the "
            "vnet another vnetif")


def _ours(link, ifname: str, alias: str):
    """The VXLAN data of ``link`` when it is our device (tagged ``alias``);
    VxlanError EEXIST for any other device (design.md 4)."""
    kind, data = _kind_and_data(link)
    if data is None and kind == "vxlan":
        kind = "vxlan without VXLAN data"
    problem = not_ours(ifname, kind, link.get_attr("IFLA_IFALIAS"), alias)
    if problem:
        raise VxlanError(errno.EEXIST, problem)
    return data


def _apply(ipr: IPRoute, link, data, **wanted) -> None:
    """Give the device the ``wanted`` settings (pyroute2 keywords of
    ``_SETTINGS``).  A new group or underlay is set while the device is down:
    only kernels with commit d42d54336834 (6.14) leave and join groups on a
    live change, every kernel joins when the device comes up.  The device
    keeps its bridge and its flood entries (ours are permanent)."""
    changes = {k: v for k, v in wanted.items() if data.get_attr(_SETTINGS[k]) != v}
    if not changes:
        return
    index = link["index"]
    if not any(k in changes for k in _REJOIN):
        ipr.link("set", index=index, kind="vxlan", **changes)
        return
    ipr.link("set", index=index, state="down")
    try:
        ipr.link("set", index=index, kind="vxlan", **changes)
    except NetlinkError:
        # Up again without the change; a failure here must not hide the first one
        # (the refresh sets our devices up again).
        try:
            ipr.link("set", index=index, state="up")
        except NetlinkError as e:
            log.warning("cannot set VXLAN device %s up again: %s (retried at refresh)",
                        link.get_attr("IFLA_IFNAME"), os.strerror(e.code))
        raise
    ipr.link("set", index=index, state="up")


def _underlay_index(ipr: IPRoute, spec: VxlanSpec) -> int:
    found = ipr.link_lookup(ifname=spec.device) if spec.device else []
    if not found:
        raise VxlanError(errno.ENODEV, f"underlay device {spec.device or '(none)'} "
                         "not found: the VXLAN device needs the interface the group "
                         "is joined on (vnetd --device)")
    return found[0]


def open_vxlan(spec: VxlanSpec, ipr: IPRoute | None = None) -> bool:
    """Create or take over the device of ``spec``, set its MTU and bring it up;
    True when this call created it (a later failure removes it again)."""
    with _netlink(ipr) as ipr:
        created = False
        what = "create"
        replaced = ""   # our device of an earlier run, deleted to be made again
        try:
            dev_index = 0 if spec.evpn else _underlay_index(ipr, spec)
            link = _link(ipr, spec.ifname)
            master = None
            if link is not None:
                data = _ours(link, spec.ifname, spec.alias)
                what = "take over"
                if _identity(data) == spec.identity():
                    _apply(ipr, link, data, **spec.live_settings(dev_index))
                else:
                    # Ours, from a run with another --vxlan-port or control plane:
                    # made again, on its bridge.
                    master = link.get_attr("IFLA_MASTER")
                    ipr.link("del", index=link["index"])
                    replaced = (f"; the vnet is refused, and its device {spec.ifname} of an "
                                f"earlier run (VNI {data.get_attr('IFLA_VXLAN_ID')}, port "
                                f"{data.get_attr('IFLA_VXLAN_PORT')}, "
                                f"{_plane(data)} control plane) was removed"
                                + (", with its place on its bridge" if master else "")
                                + " before this failure: add the vnet again (xend-vnet's "
                                "reconcile puts the new device on the bridge)")
                    link = None
                    what = "create"
            if link is None:
                ipr.link("add", ifname=spec.ifname, kind="vxlan", mtu=spec.mtu,
                         **_creation(spec, dev_index))
                created = True
                # The kernel ignores IFLA_IFALIAS in a link creation: set it now.
                index = ipr.link_lookup(ifname=spec.ifname)[0]
                ipr.link("set", index=index, ifalias=spec.alias)
                if master:
                    ipr.link("set", index=index, master=master)
            index = ipr.link_lookup(ifname=spec.ifname)[0]
            ipr.link("set", index=index, mtu=spec.mtu, state="up")
        except (NetlinkError, IndexError, VxlanError) as e:
            if created:
                _delete(ipr, spec.ifname)
            if isinstance(e, VxlanError):
                error = e
            elif isinstance(e, IndexError):
                error = VxlanError(errno.ENODEV, f"VXLAN device {spec.ifname} vanished")
            else:
                error = _failure(f"cannot {what} VXLAN device {spec.ifname}", e)
            if replaced:
                error = VxlanError(error.errno, error.message + replaced)
                log.error("%s", error.message)
            raise error from None
    return created


def _creation(spec: VxlanSpec, dev_index: int) -> dict[str, object]:
    """The pyroute2 keywords of a new device: with a group and learning under the
    multicast control plane; under EVPN no group, no learning, the local
    address FRR advertises and the bound on forwarding entries."""
    settings = {"vxlan_id": spec.vni, "vxlan_port": spec.port,
                "vxlan_learning": spec.identity()[2], **spec.live_settings(dev_index)}
    if spec.max_macs:
        settings["vxlan_limit"] = spec.max_macs
    return settings


def _identity(data) -> tuple[int, int, int, int]:
    """``VxlanSpec.identity`` of an existing device's VXLAN data."""
    return (data.get_attr("IFLA_VXLAN_ID"), data.get_attr("IFLA_VXLAN_PORT"),
            data.get_attr("IFLA_VXLAN_LEARNING"), data.get_attr("IFLA_VXLAN_LIMIT") or 0)


def _plane(data) -> str:
    return "multicast" if data.get_attr("IFLA_VXLAN_LEARNING") else "evpn"


def _delete(ipr: IPRoute, ifname: str) -> bool:
    try:
        for index in ipr.link_lookup(ifname=ifname):
            ipr.link("del", index=index)
            return True
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise
    return False


def delete_vxlan(ifname: str, alias: str, ipr: IPRoute | None = None) -> bool:
    """Remove our device; False when it is gone, or when the name now belongs
    to a device that is not ours (left in place)."""
    with _netlink(ipr) as ipr:
        try:
            link = _link(ipr, ifname)
            if link is None:
                return False
            try:
                _ours(link, ifname, alias)
            except VxlanError:
                return False
            ipr.link("del", index=link["index"])
            return True
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return False
            raise _failure(f"cannot delete VXLAN device {ifname}", e) from None


def _state(link) -> LinkState:
    kind, data = _kind_and_data(link)
    return LinkState(link["index"], kind, link.get_attr("IFLA_IFALIAS"),
                     data.get_attr("IFLA_VXLAN_GROUP") if data is not None else None,
                     bool(link["flags"] & IFF_UP), link.get_attr("IFLA_MASTER") or 0)


def link_states(ipr: IPRoute | None = None) -> dict[str, LinkState]:
    """Every VXLAN device by name, with its alias, group, state and bridge: one
    link dump, filtered by the kernel and parsed without pyroute2 (the
    refresh runs every few seconds on hosts with hundreds of links).  A name
    missing here may be held by a device of another kind: ``link_state``.
    ``ipr`` is not used (the dump has a socket of its own); callers that hold
    one for a pass may pass it."""
    try:
        links = dump_links("vxlan")
    except OSError as e:
        raise VxlanError(e.errno or errno.EIO, f"cannot list the interfaces: {e}") from None
    return {link.name: LinkState(link.index, link.kind or "device", link.alias, link.group,
                                 bool(link.flags & IFF_UP), link.master)
            for link in links if link.name}


def link_state(ifname: str, ipr: IPRoute | None = None) -> LinkState | None:
    """One interface's ``LinkState`` (one request, not a dump), or None."""
    with _netlink(ipr) as ipr:
        try:
            link = _link(ipr, ifname)
        except NetlinkError as e:
            raise _failure(f"cannot read interface {ifname}", e) from None
    return _state(link) if link is not None else None


def set_up(ifname: str, index: int, ipr: IPRoute | None = None) -> None:
    """Bring a device of ours (checked by the caller) up."""
    with _netlink(ipr) as ipr:
        try:
            ipr.link("set", index=index, state="up")
        except NetlinkError as e:
            raise _failure(f"cannot set VXLAN device {ifname} up", e) from None


def set_group(ifname: str, alias: str, group: str, ttl: int,
              ipr: IPRoute | None = None) -> None:
    """Move our device to another multicast group (and TTL): down, changed, up."""
    with _netlink(ipr) as ipr:
        try:
            link = _link(ipr, ifname)
            if link is None:
                raise VxlanError(errno.ENODEV, f"VXLAN device {ifname} not found")
            _apply(ipr, link, _ours(link, ifname, alias), vxlan_group=group, vxlan_ttl=ttl)
        except NetlinkError as e:
            raise _failure(f"cannot move VXLAN device {ifname} to group {group}", e) from None


def _flood_destinations(ipr: IPRoute, indexes: set[int]) -> dict[int, set[str]]:
    """The IPv4 all-zeros destinations of each device of ``indexes``: one FDB
    dump.  Other destinations (IPv6, which the kernel accepts) are never ours."""
    out: dict[int, set[str]] = {index: set() for index in indexes}
    for entry in ipr.get_neighbours(family=socket.AF_BRIDGE):
        dst = entry.get_attr("NDA_DST")
        if entry["ifindex"] in out and dst and entry.get_attr("NDA_LLADDR") == ALL_ZEROS:
            try:
                if ipaddress.ip_address(dst).version == 4:
                    out[entry["ifindex"]].add(dst)
            except ValueError:
                pass
    return out


def sync_floods(devices: dict[str, str], peers: list[str], ipr: IPRoute | None = None,
                links: dict[str, LinkState] | None = None
                ) -> tuple[dict[str, tuple[list[str], list[str]]], list[VxlanError]]:
    """Make the all-zeros entries of each device (name: our alias) one per peer,
    plus the kernel's for the group the device is on, with one link dump (none
    when ``links``, a ``link_states`` of this pass, is given; a device missing
    from it is looked up) and one FDB dump for all of them.  A device that is
    not ours (another kind or alias) is a failure and nothing is changed on it.
    Returns the destinations (added, removed) by device, and the failures (a
    device that failed is left as it was; the others are done)."""
    if not devices:
        return {}, []
    changes: dict[str, tuple[list[str], list[str]]] = {}
    failed: list[VxlanError] = []
    with _netlink(ipr) as ipr:
        try:
            if links is None:
                links = link_states(ipr)
            states: dict[str, LinkState | None] = {}
            for ifname in devices:
                state = links.get(ifname)
                if state is None:
                    link = _link(ipr, ifname)
                    state = _state(link) if link is not None else None
                states[ifname] = state
            present = _flood_destinations(ipr, {s.index for s in states.values() if s})
        except NetlinkError as e:
            return {}, [_failure("cannot read the flood entries", e)]
        except VxlanError as e:
            return {}, [e]
        for ifname, alias in devices.items():
            state = states[ifname]
            if state is None:
                failed.append(VxlanError(errno.ENODEV, f"VXLAN device {ifname} not found"))
                continue
            problem = not_ours(ifname, state.kind, state.alias, alias)
            if problem:
                failed.append(VxlanError(errno.EEXIST, f"{problem} (not ours: its flood "
                                         "entries are left alone)"))
                continue
            index = state.index
            add, remove = flood_changes(present[index], peers, state.group)
            try:
                for dst in add:
                    ipr.fdb("append", ifindex=index, lladdr=ALL_ZEROS, dst=dst)
                for dst in remove:
                    ipr.fdb("del", ifindex=index, lladdr=ALL_ZEROS, dst=dst)
            except NetlinkError as e:
                failed.append(_failure(f"cannot update the flood entries of {ifname}", e))
                continue
            changes[ifname] = (add, remove)
    return changes, failed


def sync_flood(ifname: str, alias: str, peers: list[str],
               ipr: IPRoute | None = None) -> tuple[list[str], list[str]]:
    """``sync_floods`` for one device; VxlanError on failure."""
    changes, failed = sync_floods({ifname: alias}, peers, ipr)
    if failed:
        raise failed[0]
    return changes[ifname]


# -- EVPN devices: bridge-port flags, forwarding entries FRR installed ------------

AF_BRIDGE_FAMILY = socket.AF_BRIDGE


def set_port_flags(ifname: str, index: int, changes: dict[str, int],
                   ipr: IPRoute | None = None) -> None:
    """Set bridge-port flags (``table.PortFlags.brport``) of our device."""
    with _netlink(ipr) as ipr:
        try:
            ipr.brport("set", index=index, **changes)
        except NetlinkError as e:
            raise _failure(f"cannot set the bridge-port flags of {ifname}", e) from None


@dataclass
class DeviceFdb:
    """What one FDB dump says of a VXLAN device and its bridge."""

    flood: list[str]                     # all-zeros destinations: the flood list
    remote: dict[str, str]               # MAC -> its destination (the first one)
    external: set[str]                   # MACs whose entry a control plane installed
    local: set[str]                      # MACs the bridge has on its other ports


def fdb_views(indexes: dict[int, int], entries: Iterable[NeighEvent]) -> dict[int, DeviceFdb]:
    """The forwarding tables of VXLAN devices (``{device index: its bridge's
    index, 0 for none}``) and the MACs their bridges have on other ports,
    from the entries of one dump (``watch.dump_neighbours``)."""
    out = {index: DeviceFdb([], {}, set(), set()) for index in indexes}
    by_bridge: dict[int, list[DeviceFdb]] = {}
    for index, master in indexes.items():
        if master:
            by_bridge.setdefault(master, []).append(out[index])
    for entry in entries:
        mac = entry.mac
        if mac is None or entry.family != AF_BRIDGE_FAMILY:
            continue
        device = out.get(entry.ifindex)
        if device is not None:
            if not entry.dst:
                continue                     # the bridge's own entry for the device
            if mac == ALL_ZEROS:
                device.flood.append(entry.dst)
            else:
                device.remote.setdefault(mac, entry.dst)
                if entry.flags & NTF_EXT_LEARNED:
                    device.external.add(mac)
            continue
        if entry.local_on_bridge and entry.master in by_bridge:
            for fdb in by_bridge[entry.master]:
                fdb.local.add(mac)
    return out


def read_fdb(indexes: dict[int, int], sock: socket.socket | None = None
             ) -> dict[int, DeviceFdb]:
    """``fdb_views`` of one FDB dump (on ``sock``, a netlink socket, if given);
    OSError passes to the caller."""
    return fdb_views(indexes, dump_neighbours(sock))


def remove_fdb_entry(ifname: str, index: int, mac: str, ipr: IPRoute | None = None) -> bool:
    """Delete the device's own forwarding entry for ``mac`` (every destination);
    False when there was none."""
    with _netlink(ipr) as ipr:
        try:
            ipr.fdb("del", ifindex=index, lladdr=mac)
        except NetlinkError as e:
            if e.code in (errno.ENOENT, errno.ENODEV):
                return False
            raise _failure(f"cannot remove the entry of {mac} from {ifname}", e) from None
    return True
