"""The kernel VXLAN device of a vnet, through pyroute2 (issue 7, docs/vxlan.md).

The engine owns the device as it owns TAPs (tap.py): it is created when
its name is free, and an existing device of that name is taken over only
if it is a VXLAN device with the vnet's VNI and port (the one an earlier
run of the engine left; devices stay when the engine stops, like TAPs).
A name held by anything else is refused (design.md 4).  Flood entries for
peers are all-zeros FDB entries, one per peer, beside the kernel's own
entry for the multicast group.  What to set is decided in vxlan_table.py.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .vxlan_table import flood_changes

ALL_ZEROS = "00:00:00:00:00:00"


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
    group: str
    port: int
    ttl: int          # 0: the kernel's automatic TTL (vxlan_table.kernel_ttl)
    device: str       # the underlay interface: the group is joined on it
    mtu: int


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


def open_vxlan(spec: VxlanSpec) -> bool:
    """Create or take over the device of ``spec``, set its MTU and bring it up;
    True when this call created it (a later failure removes it again)."""
    with IPRoute() as ipr:
        try:
            found = ipr.link_lookup(ifname=spec.device) if spec.device else []
            if not found:
                raise VxlanError(errno.ENODEV, f"underlay device {spec.device or '(none)'} "
                                 "not found: the VXLAN device needs the interface the group "
                                 "is joined on (vnetd --device)")
            dev_index = found[0]
            link = _link(ipr, spec.ifname)
            created = link is None
            if created:
                ipr.link("add", ifname=spec.ifname, kind="vxlan", vxlan_id=spec.vni,
                         vxlan_group=spec.group, vxlan_port=spec.port, vxlan_link=dev_index,
                         vxlan_ttl=spec.ttl, vxlan_learning=1, mtu=spec.mtu)
            else:
                _take_over(ipr, link, spec, dev_index)
        except NetlinkError as e:
            raise _failure(f"cannot create VXLAN device {spec.ifname}", e) from None
        try:
            index = ipr.link_lookup(ifname=spec.ifname)[0]
            ipr.link("set", index=index, mtu=spec.mtu, state="up")
        except (NetlinkError, IndexError) as e:
            if created:
                _delete(ipr, spec.ifname)
            if isinstance(e, IndexError):
                raise VxlanError(errno.ENODEV, f"VXLAN device {spec.ifname} vanished") from None
            raise _failure(f"cannot configure VXLAN device {spec.ifname}", e) from None
    return created


def _take_over(ipr: IPRoute, link, spec: VxlanSpec, dev_index: int) -> None:
    """Take over our own device from an earlier run; refuse any other (design.md 4)."""
    kind, data = _kind_and_data(link)
    if kind != "vxlan" or data is None:
        raise VxlanError(errno.EEXIST, f"interface {spec.ifname} exists and is a {kind}, "
                         "not a VXLAN device")
    vni, port = data.get_attr("IFLA_VXLAN_ID"), data.get_attr("IFLA_VXLAN_PORT")
    if (vni, port) != (spec.vni, spec.port):
        raise VxlanError(errno.EEXIST, f"interface {spec.ifname} exists and is a VXLAN device "
                         f"with VNI {vni} port {port}, not VNI {spec.vni} port {spec.port}")
    changes = {}
    if data.get_attr("IFLA_VXLAN_GROUP") != spec.group:
        changes["vxlan_group"] = spec.group
    if data.get_attr("IFLA_VXLAN_TTL") != spec.ttl:
        changes["vxlan_ttl"] = spec.ttl
    if data.get_attr("IFLA_VXLAN_LINK") != dev_index:
        changes["vxlan_link"] = dev_index
    if changes:
        ipr.link("set", index=link["index"], kind="vxlan", **changes)


def _delete(ipr: IPRoute, ifname: str) -> bool:
    try:
        for index in ipr.link_lookup(ifname=ifname):
            ipr.link("del", index=index)
            return True
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise
    return False


def delete_vxlan(ifname: str) -> bool:
    """Remove the device; False when it was already gone."""
    with IPRoute() as ipr:
        try:
            return _delete(ipr, ifname)
        except NetlinkError as e:
            raise _failure(f"cannot delete VXLAN device {ifname}", e) from None


def vxlan_exists(ifname: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def set_group(ifname: str, group: str, ttl: int) -> None:
    """Move the device to another multicast group (the kernel leaves and joins)."""
    with IPRoute() as ipr:
        try:
            index = ipr.link_lookup(ifname=ifname)[0]
            ipr.link("set", index=index, kind="vxlan", vxlan_group=group, vxlan_ttl=ttl)
        except IndexError:
            raise VxlanError(errno.ENODEV, f"VXLAN device {ifname} not found") from None
        except NetlinkError as e:
            raise _failure(f"cannot move VXLAN device {ifname} to group {group}", e) from None


def _flood_destinations(ipr: IPRoute, index: int) -> set[str]:
    return {entry.get_attr("NDA_DST")
            for entry in ipr.get_neighbours(family=socket.AF_BRIDGE)
            if entry["ifindex"] == index and entry.get_attr("NDA_LLADDR") == ALL_ZEROS
            and entry.get_attr("NDA_DST")}


def sync_flood(ifname: str, group: str, peers: list[str]) -> tuple[list[str], list[str]]:
    """Make the device's all-zeros entries one per peer (plus the group's);
    return the destinations (added, removed)."""
    with IPRoute() as ipr:
        try:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise VxlanError(errno.ENODEV, f"VXLAN device {ifname} not found")
            index = found[0]
            add, remove = flood_changes(_flood_destinations(ipr, index), peers, group)
            for dst in add:
                ipr.fdb("append", ifindex=index, lladdr=ALL_ZEROS, dst=dst)
            for dst in remove:
                ipr.fdb("del", ifindex=index, lladdr=ALL_ZEROS, dst=dst)
        except NetlinkError as e:
            raise _failure(f"cannot update the flood entries of {ifname}", e) from None
    return add, remove
