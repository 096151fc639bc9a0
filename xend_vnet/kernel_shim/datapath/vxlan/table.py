"""Vnets on the kernel VXLAN data path: the engine's bookkeeping (docs/vxlan.md).

A vnet with ``(data-path vxlan)`` has no TAP and no frame of it crosses
user space: the kernel's VXLAN device sits on the vnet's bridge.  Under the
multicast control plane (the default) it floods to the engine's multicast
group and, through all-zeros FDB entries, to each peer, and learns remote
MACs from what it receives.  Under the EVPN control plane (docs/fleet.md)
it has no group, learns nothing, and FRR fills its forwarding table: remote
MACs and the flood list.  This module holds what the engine decides about
such vnets (VNI, MTU, TTL, which flood entries a device should have, which
entries FRR left stale) without touching the kernel; ``device.py`` is the
pyroute2 adapter.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ....vnet_id import VnetId
# The VNI is the vnet id, 24 bits: vnet_rules owns that rule (vxlan_id_problem).
from ....vnet_rules import vni_of as vni_of

DEFAULT_VXLAN_PORT = 4789       # IANA's VXLAN port
CONTROL_PLANES = ("multicast", "evpn")
DEFAULT_CONTROL_PLANE = "multicast"
# Forwarding entries an EVPN device holds at most (the kernel's VXLAN
# "maxaddress"): the bound of a table the network fills, per vnet.
DEFAULT_MAX_MACS = 4096
# Outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14: the kernel refuses a
# larger MTU than the underlay's minus this on a device bound to one.
VXLAN_OVERHEAD = 50
MIN_MTU = 68


def device_alias(vid: VnetId) -> str:
    """The interface alias (IFLA_IFALIAS) that marks a VXLAN device as the
    engine's own for ``vid``: only a device with it is ever taken over."""
    return f"xend-vnet vnet {vid.canonical}"


def vxlan_mtu(requested: int, underlay_mtu: int) -> int:
    """The device MTU: the vnet MTU, capped so the outer packet fits the underlay."""
    return min(requested, underlay_mtu - VXLAN_OVERHEAD)


def kernel_ttl(mcast_ttl: int) -> int:
    """The VXLAN ``ttl`` for the engine's multicast TTL (1 to 255; see
    ``ttl_problem`` for 0).

    The kernel has one TTL for every packet of the device, unicast to peers
    included.  Its automatic value (0) sends multicast with TTL 1 and
    unicast with the host default, so the legacy TTL 1 must stay automatic,
    or packets to peers behind a router would die at the router.
    """
    return 0 if mcast_ttl <= 1 else mcast_ttl


def ttl_problem(mcast_ttl: int) -> str | None:
    """Why the VXLAN data path cannot honour the engine's multicast TTL, or None.

    TTL 0 keeps group traffic on the host.  A VXLAN device cannot say that:
    its ``ttl`` 0 is the kernel's automatic TTL, which sends multicast with
    TTL 1, onto the link.
    """
    if mcast_ttl == 0:
        return ("the engine's multicast TTL is 0 (group traffic kept on this host), "
                "which a kernel VXLAN device cannot honour (its TTL 0 means automatic: "
                "TTL 1 onto the link); run vnetd with --mcast-ttl 1 or more, or use "
                "data-path vnetd")
    return None


def flood_changes(present: Iterable[str], peers: Iterable[str],
                  group: str | None) -> tuple[list[str], list[str]]:
    """(destinations to append, to delete) so that a device's all-zeros FDB
    entries are its group (the kernel's own entry for the group the device is
    on, never touched) and one per peer."""
    have = set(present) - {group}
    want = set(peers) - {group}
    return sorted(want - have, key=_ip_key), sorted(have - want, key=_ip_key)


def stale_remote_entries(local_macs: Iterable[str],
                         remote: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (MAC, destination) forwarding entries of an EVPN device that point
    to another host for a MAC its own bridge has on a local port.

    When a MAC moves from another host to this one, the bridge takes its
    entry over, but FRR may leave the device's own entry for the old host
    behind: a frame the bridge then floods for that MAC (its entry aged out,
    or the domain moved on) would go to the old host only, not to the
    flood list.  A remote entry for a local MAC is wrong by definition, so
    it is removed; FRR puts back any it still means.
    """
    local = set(local_macs)
    return sorted((mac, dst) for mac, dst in set(remote) if mac in local)


@dataclass(frozen=True)
class PortFlags:
    """The bridge-port flags an EVPN device's port gets when it joins a bridge:
    no learning (FRR installs the remote MACs), ARP/ND suppression if asked."""

    def brport(self) -> dict[str, int]:
        """As pyroute2's ``brport`` keywords."""
        return {"learning": int(self.learning), "neigh_suppress": int(self.neigh_suppress)}

    learning: bool
    neigh_suppress: bool


def _ip_key(addr: str) -> tuple:
    """Numeric order, IPv4 first; anything else last (never raises)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return (7, 0, addr)
    return (ip.version, int(ip), addr)


@dataclass
class VxlanVnet:
    """One vnet of this engine on the kernel VXLAN data path."""

    vid: VnetId
    ifname: str
    vni: int
    mtu: int


class VxlanTable:
    """The engine's VXLAN vnets, by id; VNIs are unique within one engine.

    ``control_plane`` and ``local`` are the engine's (``--vxlan-control-plane``,
    ``--vxlan-local``): every VXLAN vnet of one engine has the same."""

    def __init__(self, port: int = DEFAULT_VXLAN_PORT,
                 control_plane: str = DEFAULT_CONTROL_PLANE, local: str | None = None):
        if control_plane not in CONTROL_PLANES:
            raise ValueError(f"unknown control plane {control_plane!r}")
        if (control_plane == "evpn") != (local is not None):
            raise ValueError("the evpn control plane, and only it, has a local address")
        self.port = port
        self.control_plane = control_plane
        self.local = local
        self._vnets: dict[bytes, VxlanVnet] = {}

    @property
    def evpn(self) -> bool:
        return self.control_plane == "evpn"

    def __len__(self) -> int:
        return len(self._vnets)

    def __iter__(self) -> Iterator[VxlanVnet]:
        return iter(self.vnets())

    def add(self, vnet: VxlanVnet) -> None:
        """KeyError when the id is there; ValueError when the VNI or the
        interface name belongs to another vnet."""
        if vnet.vid.raw in self._vnets:
            raise KeyError(f"vnet {vnet.vid} already exists")
        other = self.vni_owner(vnet.vni)
        if other is not None:
            raise ValueError(f"VNI {vnet.vni} is already used by vnet {other.vid}")
        for other in self._vnets.values():
            if other.ifname == vnet.ifname:
                raise ValueError(f"interface {vnet.ifname} is already used by vnet {other.vid}")
        self._vnets[vnet.vid.raw] = vnet

    def remove(self, vid: VnetId) -> VxlanVnet:
        """KeyError when absent."""
        return self._vnets.pop(vid.raw)

    def get(self, vid: VnetId) -> VxlanVnet | None:
        return self._vnets.get(vid.raw)

    def vni_owner(self, vni: int) -> VxlanVnet | None:
        return next((v for v in self._vnets.values() if v.vni == vni), None)

    def vnets(self) -> list[VxlanVnet]:
        """Sorted by id."""
        return [self._vnets[k] for k in sorted(self._vnets)]
