"""The kernel port of an attached vnet: a veth pair that carries the vnet's
known unicast between the bridge and the programs, so that the kernel path
needs neither the TAP nor the engine (docs/kernel-path.md 4).

End P is a port of the TAP's bridge; the encapsulator sits at its egress
(what the bridge sends there is unicast to the remote MACs the shim's
static fdb entries put behind P).  End Q stays outside any bridge: the
decapsulator sends single segments out of Q, so they reach P through
veth's NAPI, whose GRO merges them as a NIC's would.  That needs GRO on P
and TCP segmentation off on Q (veth takes its GRO path only for frames the
sending end could not have segmented itself).

On the bridge P learns nothing (a decapsulated frame's source never moves
a local domain's entry) and is flooded nothing (no unknown unicast, no
broadcast, no multicast, never a multicast router port): the TAP keeps all
of that.  Neither end has an address or IPv6 (no link-local address, so no
router solicitation or MLD from the port); P has the MAC fe:ff:ff:ff:ff:ff,
as Xen gives its vifs, so that it never becomes the bridge's own address.

Names: ``vkp`` and ``vkq`` and the last field of the vnet id in four hex
digits (``vkp0097`` and ``vkq0097`` beside ``vnif0097``); an id with more
than its last field set adds eight hex digits of a hash of the whole id.
Both ends carry IFLA_IFALIAS ``xend-vnet vnet <canonical id> kernel-port
P`` (or ``Q``): only a veth with that tag is ever taken over or deleted; a
name held by anything else is refused (design.md 4).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from dataclasses import dataclass

from ....vnet_id import VnetId

PORT_END = "P"
PEER_END = "Q"
PORT_MAC = "fe:ff:ff:ff:ff:ff"
IN6_ADDR_GEN_MODE_NONE = 1
IFF_UP = 0x1
# the bridge port settings of P, as pyroute2's brport keywords
BRPORT_SETTINGS = {"learning": 0, "unicast_flood": 0, "mcast_flood": 0, "bcast_flood": 0,
                   "multicast_router": 0}
_ALIAS = re.compile(r"xend-vnet vnet ((?:[0-9a-f]{4}:){7}[0-9a-f]{4}) kernel-port ([PQ])")


class PortError(Exception):
    """A kernel port could not be made, taken over, changed or removed."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.errno = code
        self.message = message


def port_names(vid: VnetId) -> tuple[str, str]:
    """(P, Q) of ``vid``: at most 15 characters, as IFNAMSIZ allows."""
    tail = f"{vid.last_field:04x}"
    if not vid.short:
        tail += hashlib.blake2b(vid.raw, digest_size=4).hexdigest()
    return f"vkp{tail}", f"vkq{tail}"


def port_alias(vid: VnetId, end: str) -> str:
    """The tag (IFLA_IFALIAS) of end ``end`` ("P" or "Q") of ``vid``'s port."""
    if end not in (PORT_END, PEER_END):
        raise ValueError(f"a kernel port's end is P or Q, not {end!r}")
    return f"xend-vnet vnet {vid.canonical} kernel-port {end}"


def parse_alias(alias: str | None) -> tuple[VnetId, str] | None:
    """(vnet, end) of one of our tags; None for anything else."""
    m = _ALIAS.fullmatch(alias or "")
    if m is None:
        return None
    return VnetId(bytes.fromhex(m.group(1).replace(":", ""))), m.group(2)


def not_ours(ifname: str, kind: str, found: str | None, alias: str) -> str | None:
    """Why the device ``ifname`` (of ``kind``, tagged ``found``) is not the
    end tagged ``alias`` of our kernel port, or None when it is."""
    if kind == "veth" and found == alias:
        return None
    what = f"a {kind}" if kind != "veth" else "a veth"
    tag = f"alias {found!r}" if found else "no alias"
    return (f"interface {ifname} exists and is {what} that is not the kernel port the engine "
            f"makes ({tag}, not {alias!r}): rename or delete it, or use the user-space path "
            "for this vnet")


@dataclass
class KernelPort:
    """One vnet's veth pair, as the last link dump or change saw it."""
    vid: VnetId
    p_name: str
    p_index: int
    q_name: str
    q_index: int
    master: int = 0          # P's bridge (0: none)
    mtu: int = 0

    @property
    def on_bridge(self) -> bool:
        return self.master != 0


@dataclass(frozen=True)
class LinkInfo:
    """What the shim reads of a link: one link dump, all of them."""
    index: int
    name: str
    kind: str
    alias: str | None
    master: int
    link: int               # a veth's peer
    mtu: int
    up: bool


def _link_info(msg) -> LinkInfo:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or "device"
    return LinkInfo(msg["index"], msg.get_attr("IFLA_IFNAME") or "", kind,
                    msg.get_attr("IFLA_IFALIAS"), msg.get_attr("IFLA_MASTER") or 0,
                    msg.get_attr("IFLA_LINK") or 0, msg.get_attr("IFLA_MTU") or 0,
                    bool(msg["flags"] & IFF_UP))


def _code(e: BaseException) -> int:
    return getattr(e, "code", None) or getattr(e, "errno", None) or errno.EIO


def links(ipr) -> dict[int, LinkInfo]:
    """Every link of the namespace by ifindex (one dump)."""
    try:
        return {m["index"]: _link_info(m) for m in ipr.get_links()}
    except Exception as e:  # noqa: BLE001 -- pyroute2's NetlinkError and friends
        raise PortError(_code(e), f"cannot list the interfaces: {e}") from None


def find_ports(found: dict[int, LinkInfo]) -> tuple[dict[VnetId, KernelPort], list[LinkInfo]]:
    """Our kernel ports among ``found`` (a link dump), and our tagged devices
    that are no whole port (an end whose peer is gone or not its own), to
    be deleted."""
    ends: dict[tuple[VnetId, str], LinkInfo] = {}
    strays: list[LinkInfo] = []
    for link in found.values():
        tag = parse_alias(link.alias)
        if tag is None or link.kind != "veth":
            continue
        if tag in ends:
            strays.append(link)
        else:
            ends[tag] = link
    ports: dict[VnetId, KernelPort] = {}
    for (vid, end), p in ends.items():
        if end != PORT_END:
            continue
        q = ends.get((vid, PEER_END))
        if q is not None and p.link == q.index and q.link == p.index:
            ports[vid] = KernelPort(vid, p.name, p.index, q.name, q.index, p.master, p.mtu)
    paired = {i for port in ports.values() for i in (port.p_index, port.q_index)}
    strays.extend(link for link in ends.values() if link.index not in paired)
    return ports, strays


def _offloads(p_name: str, q_name: str) -> None:
    """GRO on P; TCP segmentation off on Q (veth's GRO path needs both)."""
    from pyroute2.ethtool import Ethtool

    with Ethtool() as et:
        f = et.get_features(p_name)
        if "rx-gro" in f.features and not f.features["rx-gro"].enable:
            f.features["rx-gro"].enable = True
            et.set_features(p_name, f)
        f = et.get_features(q_name)
        tso = [n for n in f.features if n.startswith("tx-tcp") and n.endswith("-segmentation")]
        if any(f.features[n].enable for n in tso):
            for n in tso:
                f.features[n].enable = False
            et.set_features(q_name, f)


def offloads(p_name: str, q_name: str) -> dict[str, bool]:
    """What the port's offloads are: ``gro`` on P, ``tso`` on Q."""
    from pyroute2.ethtool import Ethtool

    with Ethtool() as et:
        p = et.get_features(p_name).features
        q = et.get_features(q_name).features
    return {"gro": bool(p.get("rx-gro") and p["rx-gro"].enable),
            "tso": any(f.enable for n, f in q.items()
                       if n.startswith("tx-tcp") and n.endswith("-segmentation"))}


def _settle(ipr, port: KernelPort, mtu: int) -> None:
    """The settings of both ends (also of a port taken over): no IPv6
    address, the TAP's MTU, the offloads, up."""
    af_spec = {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE",
                                                   IN6_ADDR_GEN_MODE_NONE]]}]]}
    for index in (port.p_index, port.q_index):
        ipr.link("set", index=index, af_spec=af_spec)
        if mtu:
            ipr.link("set", index=index, mtu=mtu)
    _offloads(port.p_name, port.q_name)
    for index in (port.q_index, port.p_index):
        ipr.link("set", index=index, state="up")
    port.mtu = mtu or port.mtu


def make_port(ipr, vid: VnetId, mtu: int, found: dict[int, LinkInfo]) -> tuple[KernelPort, bool]:
    """The kernel port of ``vid``: ours already there (from ``found``, a link
    dump) or made now; (port, made now).  PortError when a name is held by
    something not ours."""
    p_name, q_name = port_names(vid)
    by_name = {link.name: link for link in found.values()}
    ours, strays = find_ports({link.index: link for link in found.values()
                               if link.name in (p_name, q_name)})
    port = ours.get(vid)
    if port is None or (port.p_name, port.q_name) != (p_name, q_name):
        for name, end in ((p_name, PORT_END), (q_name, PEER_END)):
            link = by_name.get(name)
            if link is None:
                continue
            problem = not_ours(name, link.kind, link.alias, port_alias(vid, end))
            if problem:
                raise PortError(errno.EEXIST, problem)
        for link in strays:
            _delete_index(ipr, link.index)
        port = None
    made = False
    try:
        if port is None:
            ipr.link("add", ifname=p_name, kind="veth", peer=q_name)
            made = True
            p_index = ipr.link_lookup(ifname=p_name)[0]
            q_index = ipr.link_lookup(ifname=q_name)[0]
            # The kernel ignores IFLA_IFALIAS in a link creation: set it now.
            ipr.link("set", index=p_index, ifalias=port_alias(vid, PORT_END),
                     address=PORT_MAC)
            ipr.link("set", index=q_index, ifalias=port_alias(vid, PEER_END))
            port = KernelPort(vid, p_name, p_index, q_name, q_index)
        _settle(ipr, port, mtu)
    except PortError:
        raise
    except Exception as e:  # noqa: BLE001 -- NetlinkError, IndexError, OSError of ethtool
        if made:
            for name in (p_name,):
                for index in ipr.link_lookup(ifname=name):
                    _delete_index(ipr, index)
        raise PortError(_code(e), f"cannot make the kernel port {p_name}/{q_name}: {e}") \
            from None
    return port, made


def enslave(ipr, port: KernelPort, master: int) -> None:
    """Put P on bridge ``master`` with its port settings: down while it
    joins, so the bridge floods it nothing before flooding is off."""
    try:
        ipr.link("set", index=port.p_index, state="down")
        ipr.link("set", index=port.p_index, master=master)
        ipr.brport("set", index=port.p_index, **BRPORT_SETTINGS)
        ipr.link("set", index=port.p_index, state="up")
    except Exception as e:  # noqa: BLE001
        raise PortError(_code(e), f"cannot put {port.p_name} on bridge ifindex {master}: "
                        f"{os.strerror(_code(e))}") from None
    port.master = master


def release(ipr, port: KernelPort) -> None:
    """Take P off its bridge (its fdb entries go with it)."""
    try:
        ipr.link("set", index=port.p_index, master=0)
    except Exception as e:  # noqa: BLE001
        if _code(e) != errno.ENODEV:
            raise PortError(_code(e), f"cannot take {port.p_name} off its bridge: "
                            f"{os.strerror(_code(e))}") from None
    port.master = 0


def set_mtu(ipr, port: KernelPort, mtu: int) -> None:
    try:
        for index in (port.p_index, port.q_index):
            ipr.link("set", index=index, mtu=mtu)
    except Exception as e:  # noqa: BLE001
        raise PortError(_code(e), f"cannot set the MTU of {port.p_name}/{port.q_name}: "
                        f"{os.strerror(_code(e))}") from None
    port.mtu = mtu


def _delete_index(ipr, index: int) -> None:
    try:
        ipr.link("del", index=index)
    except Exception as e:  # noqa: BLE001
        if _code(e) != errno.ENODEV:
            raise


def delete_port(ipr, port: KernelPort) -> bool:
    """Delete the pair if P is still ours (deleting one end deletes both);
    False when it is gone or the name now belongs to something else."""
    try:
        msgs = ipr.get_links(port.p_index)
    except Exception:  # noqa: BLE001 -- ENODEV: gone already
        return False
    if not msgs:
        return False
    link = _link_info(msgs[0])
    if parse_alias(link.alias) != (port.vid, PORT_END) or link.kind != "veth":
        return False
    try:
        _delete_index(ipr, port.p_index)
    except Exception as e:  # noqa: BLE001
        raise PortError(_code(e), f"cannot delete the kernel port {port.p_name}: "
                        f"{os.strerror(_code(e))}") from None
    return True


def delete_tagged(ipr, link: LinkInfo) -> None:
    """Delete one device of ours (checked by its tag in a link dump)."""
    if parse_alias(link.alias) is None or link.kind != "veth":
        raise ValueError(f"not one of our kernel port ends: {link.name}")
    try:
        _delete_index(ipr, link.index)
    except Exception as e:  # noqa: BLE001
        raise PortError(_code(e), f"cannot delete {link.name}: {os.strerror(_code(e))}") \
            from None
