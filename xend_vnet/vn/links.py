"""Interface views of ``vn`` (vnifs, bridges, vnets -l): netlink facts in the
layout of net-tools ifconfig, which the legacy tool ran (protocol.md 13)."""

from __future__ import annotations

import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .. import bridges, sxp
from ..kernel_shim.datapath.vxlan.device import DeviceFdb, read_fdb
from .session import Opts, Vn


_IFF_NAMES = ((0x1, "UP"), (0x2, "BROADCAST"), (0x8, "LOOPBACK"), (0x10, "POINTOPOINT"),
              (0x40, "RUNNING"), (0x80, "NOARP"), (0x100, "PROMISC"), (0x200, "ALLMULTI"),
              (0x1000, "MULTICAST"))


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return ""


def format_link(info: dict[str, object]) -> str:
    """An interface in the layout of net-tools ``ifconfig`` (what legacy vn ran)."""
    name = str(info["ifname"])
    pad = " " * 10
    head = f"{name:<9} Link encap:Ethernet  HWaddr {info.get('address') or '-'}"
    lines = [head]
    for addr, prefix, brd in info.get("inet", []):  # type: ignore[union-attr]
        mask = socket.inet_ntoa(((0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF).to_bytes(4, "big"))
        bcast = f"  Bcast:{brd}" if brd else ""
        lines.append(f"{pad}inet addr:{addr}{bcast}  Mask:{mask}")
    flags = int(info.get("flags", 0))  # type: ignore[arg-type]
    names = " ".join(n for bit, n in _IFF_NAMES if flags & bit)
    lines.append(f"{pad}{names}  MTU:{info.get('mtu', 0)}  Metric:1")
    st: dict[str, int] = info.get("stats", {})  # type: ignore[assignment]
    lines.append(f"{pad}RX packets:{st.get('rx_packets', 0)} errors:{st.get('rx_errors', 0)} "
                 f"dropped:{st.get('rx_dropped', 0)} overruns:{st.get('rx_fifo_errors', 0)} "
                 f"frame:{st.get('rx_frame_errors', 0)}")
    lines.append(f"{pad}TX packets:{st.get('tx_packets', 0)} errors:{st.get('tx_errors', 0)} "
                 f"dropped:{st.get('tx_dropped', 0)} overruns:{st.get('tx_fifo_errors', 0)} "
                 f"carrier:{st.get('tx_carrier_errors', 0)}")
    lines.append(f"{pad}collisions:{st.get('collisions', 0)} txqueuelen:{info.get('txqlen', 0)}")
    rx, tx = int(st.get("rx_bytes", 0)), int(st.get("tx_bytes", 0))
    lines.append(f"{pad}RX bytes:{rx} ({_human_bytes(rx)})  TX bytes:{tx} ({_human_bytes(tx)})")
    return "\n".join(lines) + "\n\n"


def link_info(name: str) -> dict[str, object] | None:
    """Facts ifconfig showed about an interface, or None if there is none."""
    with IPRoute() as ipr:
        try:
            link = ipr.link("get", ifname=name)[0]
        except NetlinkError:
            return None
        stats = link.get("stats64")
        inet = [(a.get("address"), a["prefixlen"], a.get("broadcast"))
                for a in ipr.get_addr(index=link["index"], family=socket.AF_INET)]
    return {"ifname": name, "address": link.get("address"), "flags": link["flags"],
            "mtu": link.get("mtu"), "txqlen": link.get("txqlen"),
            "stats": dict(stats) if stats else {}, "inet": inet}


def show_vnif(vn: Vn, dev: str) -> None:
    info = link_info(dev)
    if info is None:
        vn.write(f"{dev}: no such interface\n\n")
        return
    vn.write(format_link(info))
    bridge = bridges.master_of(dev)
    if bridge:
        vn.write(f"          Bridge: {bridge}\n")
        others = [i for i in bridges.bridge_ports(bridge) if i != dev]
        if others:
            vn.write(f"          Interfaces: {', '.join(others)}\n")
        vn.write("\n")


def op_vnifs(vn: Vn, opts: Opts, args: list[str]) -> int:
    for v in vn.selected(args):
        vnif = sxp.child_value(v, "vnetif")
        if vnif:
            show_vnif(vn, vnif)
    return 0


def op_bridges(vn: Vn, opts: Opts, args: list[str]) -> int:
    found = bridges.list_bridges()
    for br in sorted(found):
        ports = sorted(found[br])
        if opts["long"]:
            info = link_info(br)
            if info is not None:
                vn.write(format_link(info))
            if ports:
                vn.write(f"          Interfaces: {', '.join(ports)}\n\n")
        elif ports:
            vn.write(f"{br} : {', '.join(ports)}\n")
        else:
            vn.write(f"{br}\n")
    return 0


def read_vxlan_fdb(ifnames: list[str]) -> dict[str, DeviceFdb]:
    """The forwarding tables of VXLAN devices by name (one FDB dump): what the
    kernel learnt or a control plane (FRR under EVPN) installed; a device that
    is not there is left out."""
    with IPRoute() as ipr:
        indexes = {}
        for name in ifnames:
            try:
                link = ipr.link("get", ifname=name)[0]
            except NetlinkError:
                continue
            indexes[link["index"]] = (name, link.get_attr("IFLA_MASTER") or 0)
    if not indexes:
        return {}
    fdb = read_fdb({i: m for i, (_, m) in indexes.items()})
    return {indexes[i][0]: view for i, view in fdb.items()}
