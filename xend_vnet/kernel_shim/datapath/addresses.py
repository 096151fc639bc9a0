"""The host as the engine sees it: its IPv4 addresses, the underlay device
and its MTU, and the care-of address announced to other hosts (protocol.md 3.4).

The care-of address is ``--address``, else the first address of
``--device``, else of the interface the group is routed on.  Read with
pyroute2 at start and at every refresh; the choice itself is pure
(``care_of_address``).
"""

from __future__ import annotations

import logging
import socket
from typing import NamedTuple

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..core.engine import EngineCore
from .trains import DEFAULT_UNDERLAY_MTU

log = logging.getLogger("vnetd")

MIN_UNDERLAY_MTU = 576      # an MTU below this is not believed


class Underlay(NamedTuple):
    """One reading of the host."""

    addresses: list[tuple[int, str]]    # (ifindex, address) of every IPv4 address
    index: int          # of --device, else of the route to the group (0: none yet)
    ifname: str         # its name ("" when unknown)
    mtu: int | None     # its MTU


def read_underlay(device: str | None, group: str) -> Underlay:
    """Read the host's addresses and the underlay device; OSError or
    NetlinkError when netlink cannot be read."""
    with IPRoute() as ipr:
        addrs = [(a["index"], a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS"))
                 for a in ipr.get_addr(family=socket.AF_INET)]
        if device:
            found = ipr.link_lookup(ifname=device)
            index = found[0] if found else 0
        else:
            try:
                index = ipr.route("get", dst=group)[0].get_attr("RTA_OIF") or 0
            except NetlinkError:
                index = 0  # no route to the group yet
        links = ipr.link("get", index=index) if index else []
    if not links:
        return Underlay(addrs, index, "", None)
    return Underlay(addrs, index, links[0].get_attr("IFLA_IFNAME") or "",
                    links[0].get_attr("IFLA_MTU"))


def care_of_address(underlay: Underlay, configured: str | None) -> str | None:
    """``configured`` (--address), else the first address of the underlay
    device, else the first that is not loopback; None while there is none."""
    if configured:
        return configured
    preferred = [a for i, a in underlay.addresses if i == underlay.index and a]
    others = [a for _, a in underlay.addresses if a and not a.startswith("127.")]
    return (preferred or others or [None])[0]


class HostAddresses:
    """The last reading, applied to the core: own addresses (own packets are
    ignored), the care-of address, the underlay MTU (sizes segments)."""

    def __init__(self, core: EngineCore, device: str | None, configured: str | None):
        self.core = core
        self.device_option = device      # --device
        self.configured = configured     # --address
        self.device = device or ""       # shown as (device ...) by varp.list
        self.device_index = 0            # of --device (0: the route decides)
        self.underlay_mtu = DEFAULT_UNDERLAY_MTU
        # The host's own address the engine's packets leave from and arrive
        # at: the care-of address, or behind NAT (--address not one of ours)
        # the underlay's (the kernel path's outer source, design.md 1.1).
        self.local_address: str | None = None

    def refresh(self) -> bool:
        """Read the host again and apply it; True when the underlay MTU changed."""
        try:
            underlay = read_underlay(self.device_option, self.core.mcaddr)
        except (OSError, NetlinkError) as e:
            log.warning("cannot read the host's addresses: %s", e)
            return False
        if self.device_option:
            self.device_index = underlay.index
        else:
            self.device = underlay.ifname
        mtu = underlay.mtu
        changed = bool(mtu and mtu != self.underlay_mtu and mtu >= MIN_UNDERLAY_MTU)
        if changed:
            self.underlay_mtu = self.core.underlay_mtu = mtu
        self.core.own_addresses = {a for _, a in underlay.addresses if a}
        address = care_of_address(underlay, self.configured)
        if address != self.core.self_address:
            log.info("care-of address %s", address or "(none yet)")
            self.core.self_address = address
        self.local_address = (address if address in self.core.own_addresses
                              else care_of_address(underlay, None))
        return changed

    def source(self) -> str | None:
        """The address to send from: ``--address`` when it is one of ours;
        behind NAT (not a local address) the routing table picks and the NAT
        rewrites (docs/peering.md)."""
        address = self.configured
        return address if address in self.core.own_addresses else None
