"""Linux bridges for vnets, through netlink (pyroute2); never brctl/ip.

Also the removal of a deleted vnet's device left behind while the engine
was down (design.md 5): a TUN/TAP, or a VXLAN device carrying the vnet's
alias, of that exact name, never anything else.

Everything acts in the caller's current network namespace.  The legacy
sequence was ``brctl addbr``, hello 0, forward delay 0, STP off, up, addif
(protocol.md 11.2); hello time cannot be 0 on Linux and does not matter
with STP off, so it is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP
from pyroute2.netlink.exceptions import NetlinkError

from .kernel_shim.datapath.vxlan.device import VxlanError, delete_vxlan
from .kernel_shim.datapath.vxlan.table import device_alias
from .vnet_id import VnetId


class BridgeError(Exception):
    """A bridge or link operation failed; names the interface and the reason."""

    def __init__(self, ifname: str, reason: str):
        self.ifname = ifname
        self.reason = reason
        super().__init__(f"{ifname}: {reason}")


class NotOurs(BridgeError):
    """The name belongs to a device of another kind: it is left in place."""


def _reason(e: NetlinkError) -> str:
    return e.args[1] if len(e.args) > 1 else str(e)


def _link(ipr: IPRoute, name: str):
    # One RTM_GETLINK by name: a filtered dump would read every link of the host.
    try:
        found = ipr.link("get", ifname=name)
    except NetlinkError as e:
        if e.code == 19:  # ENODEV
            return None
        raise BridgeError(name, _reason(e)) from None
    return found[0] if found else None


def _index(ipr: IPRoute, name: str) -> int:
    link = _link(ipr, name)
    if link is None:
        raise BridgeError(name, "no such interface")
    return link["index"]


def _kind(link) -> str | None:
    return link.get(("linkinfo", "kind")) if link is not None else None


def link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return _link(ipr, name) is not None


def is_bridge(name: str) -> bool:
    with IPRoute() as ipr:
        return _kind(_link(ipr, name)) == "bridge"


def ensure_bridge(name: str) -> bool:
    """Create the bridge (STP off, forward delay 0, up) or adopt an existing one.

    An adopted bridge is someone else's: it is only brought up, its STP and
    forward delay are left as its owner set them.  Returns True if this call
    created it.  A non-bridge of that name is refused.
    """
    with IPRoute() as ipr:
        link = _link(ipr, name)
        created = False
        if link is None:
            try:
                ipr.link("add", ifname=name, kind="bridge")
            except NetlinkError as e:
                raise BridgeError(name, f"cannot create bridge: {_reason(e)}") from None
            created = True
            link = _link(ipr, name)
            if link is None:
                raise BridgeError(name, "bridge vanished right after it was created")
        elif _kind(link) != "bridge":
            raise BridgeError(name, f"exists and is not a bridge (kind {_kind(link) or 'unknown'})")
        try:
            if created:
                ipr.link("set", index=link["index"], kind="bridge",
                         br_stp_state=0, br_forward_delay=0)
            ipr.link("set", index=link["index"], state="up")
        except NetlinkError as e:
            if created:
                _delete_quietly(ipr, link["index"])
            raise BridgeError(name, f"cannot configure bridge: {_reason(e)}") from None
        return created


def _set_link(ipr: IPRoute, ifname: str, failure: str, **attrs) -> None:
    """One ``link set`` on ``ifname``; BridgeError "<failure>: <reason>"."""
    index = _index(ipr, ifname)
    try:
        ipr.link("set", index=index, **attrs)
    except NetlinkError as e:
        raise BridgeError(ifname, f"{failure}: {_reason(e)}") from None


def enslave(bridge: str, ifname: str) -> None:
    """Make ``ifname`` a port of ``bridge`` (moving it from another master)."""
    with IPRoute() as ipr:
        master = _index(ipr, bridge)
        _set_link(ipr, ifname, f"cannot add to bridge {bridge}", master=master)


def release(ifname: str) -> None:
    """Take ``ifname`` off its bridge (nothing if it has none)."""
    with IPRoute() as ipr:
        _set_link(ipr, ifname, "cannot release from its bridge", master=0)


def set_up(ifname: str) -> None:
    with IPRoute() as ipr:
        _set_link(ipr, ifname, "cannot bring up", state="up")


def delete_bridge(name: str) -> None:
    """Delete a bridge (its ports are released by the kernel); refuse a non-bridge."""
    with IPRoute() as ipr:
        link = _link(ipr, name)
        if link is None:
            raise BridgeError(name, "no such interface")
        if _kind(link) != "bridge":
            raise BridgeError(name, "is not a bridge; refusing to delete it")
        try:
            ipr.link("del", index=link["index"])
        except NetlinkError as e:
            raise BridgeError(name, f"cannot delete bridge: {_reason(e)}") from None


def _delete_quietly(ipr: IPRoute, index: int) -> None:
    try:
        ipr.link("del", index=index)
    except NetlinkError:
        pass


def delete_tap(name: str) -> bool:
    """Delete the TUN/TAP device of exactly this name; False when there is none.
    A device of another kind raises NotOurs and is left in place."""
    with IPRoute() as ipr:
        link = _link(ipr, name)
        if link is None:
            return False
        if _kind(link) != "tun":
            raise NotOurs(name, f"is a {_kind(link) or 'device'}, not a TAP; left in place")
        try:
            ipr.link("del", index=link["index"])
        except NetlinkError as e:
            if e.code == 19:  # ENODEV: gone meanwhile
                return False
            raise BridgeError(name, f"cannot delete TAP: {_reason(e)}") from None
        return True


def delete_vxlan_device(name: str, vid: VnetId) -> bool:
    """Delete the VXLAN device of this name if it carries the vnet's alias
    (docs/vxlan.md); False when there is none or it is not the vnet's."""
    try:
        return delete_vxlan(name, device_alias(vid))
    except VxlanError as e:
        raise BridgeError(name, str(e)) from None


def bridge_ports(name: str) -> list[str]:
    """Names of the ports of ``name``, sorted."""
    with IPRoute() as ipr:
        master = _index(ipr, name)
        return sorted(link.get("ifname") for link in ipr.get_links()
                      if link.get("master") == master)


def master_of(ifname: str) -> str | None:
    """The bridge ``ifname`` is a port of, or None."""
    with IPRoute() as ipr:
        link = _link(ipr, ifname)
        if link is None:
            raise BridgeError(ifname, "no such interface")
        master = link.get("master")
        if not master:
            return None
        found = ipr.get_links(master)
        return found[0].get("ifname") if found else None


def list_bridges() -> dict[str, list[str]]:
    """Every bridge with its ports: {bridge: [port, ...]}."""
    with IPRoute() as ipr:
        links = ipr.get_links()
    names = {link["index"]: link.get("ifname") for link in links}
    bridges: dict[str, list[str]] = {names[link["index"]]: [] for link in links
                                     if _kind(link) == "bridge"}
    for link in links:
        master = link.get("master")
        if master and names.get(master) in bridges:
            bridges[names[master]].append(link.get("ifname"))
    return {b: sorted(p) for b, p in sorted(bridges.items())}


@dataclass
class LinkState:
    """What a restore needs of a link, kept in step with its own changes."""

    index: int
    kind: str | None
    master: int
    up: bool

    @classmethod
    def of(cls, link) -> LinkState:
        return cls(link["index"], _kind(link), link.get("master") or 0,
                   bool(link["flags"] & IFF_UP))


class LinkBatch:
    """The checks and changes of many vnets' bridges on one netlink socket
    (design.md 5: a restart restores every stored vnet at once): one dump of
    the links up front, the same functions as this module answered from it,
    and a link the dump did not have (a TAP the engine made since) looked up
    by name when it must exist.  Valid while nothing else changes these
    links: the caller holds the service's lock."""

    def __init__(self):
        self.ipr = IPRoute()
        try:
            links = self.ipr.get_links()
        except NetlinkError as e:
            self.ipr.close()
            raise BridgeError("(all links)", _reason(e)) from None
        self.links = {link.get("ifname"): LinkState.of(link) for link in links}
        self.names = {state.index: name for name, state in self.links.items()}

    def __enter__(self) -> LinkBatch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.ipr.close()

    def _lookup(self, name: str) -> LinkState | None:
        link = _link(self.ipr, name)
        if link is None:
            self.links.pop(name, None)
            return None
        state = self.links[name] = LinkState.of(link)
        self.names[state.index] = name
        return state

    def _required(self, name: str) -> LinkState:
        state = self.links.get(name) or self._lookup(name)
        if state is None:
            raise BridgeError(name, "no such interface")
        return state

    def link_exists(self, name: str) -> bool:
        return name in self.links

    def is_bridge(self, name: str) -> bool:
        state = self.links.get(name)
        return state is not None and state.kind == "bridge"

    def ensure_bridge(self, name: str) -> bool:
        """As ``ensure_bridge``; a new bridge is made with STP off, forward delay 0
        and up in one message."""
        state = self.links.get(name)
        if state is None:
            try:
                self.ipr.link("add", ifname=name, kind="bridge", br_stp_state=0,
                              br_forward_delay=0, state="up")
            except NetlinkError as e:
                if e.code != 17:    # EEXIST: made since the dump; adopted below
                    raise BridgeError(name, f"cannot create bridge: {_reason(e)}") from None
            else:
                if self._lookup(name) is None:
                    raise BridgeError(name, "bridge vanished right after it was created")
                return True
            state = self._required(name)
        if state.kind != "bridge":
            raise BridgeError(name, f"exists and is not a bridge (kind {state.kind or 'unknown'})")
        self.set_up(name)
        return False

    def master_of(self, ifname: str) -> str | None:
        master = self._required(ifname).master
        if not master:
            return None
        if master not in self.names:
            found = self.ipr.get_links(master)
            self.names[master] = found[0].get("ifname") if found else None
        return self.names[master]

    def enslave(self, bridge: str, ifname: str) -> None:
        master = self._required(bridge).index
        state = self._required(ifname)
        try:
            self.ipr.link("set", index=state.index, master=master)
        except NetlinkError as e:
            raise BridgeError(ifname, f"cannot add to bridge {bridge}: {_reason(e)}") from None
        state.master = master

    def set_up(self, ifname: str) -> None:
        state = self._required(ifname)
        if state.up:
            return
        try:
            self.ipr.link("set", index=state.index, state="up")
        except NetlinkError as e:
            raise BridgeError(ifname, f"cannot bring up: {_reason(e)}") from None
        state.up = True


def batch() -> LinkBatch:
    """One netlink socket and one link dump for many vnets (``LinkBatch``)."""
    return LinkBatch()
