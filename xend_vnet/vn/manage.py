"""``vn`` commands that change the engine: vnets (with their interface and
bridge), vifs and peers (protocol.md 8.4)."""

from __future__ import annotations

import os
import socket

from .. import bridges, sxp
from ..engine_client import EngineError
from . import links
from .session import Opts, UsageError, Vn


def resolve_host(host: str) -> str:
    """IPv4 address of a host name or dotted quad (the engine takes dotted quads)."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as e:
        raise UsageError(f"cannot resolve host {host}: {getattr(e, 'strerror', e)}") from None
    return infos[0][4][0]


def parse_port(text: str) -> str:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"invalid port {text!r}: expected a number from 1 to 65535")
    return str(int(text))


def op_vnet_create(vn: Vn, opts: Opts, args: list[str]) -> int:
    (vnet,) = args
    form: list[sxp.Sxpr] = ["vnet.add", ["id", vnet]]
    if opts["vnetif"]:
        form.append(["vnetif", opts["vnetif"]])
    if opts["security"]:
        form.append(["security", opts["security"]])
    if opts["key-file"]:
        form.append(["key-file", os.path.abspath(str(opts["key-file"]))])
    if opts["data-path"]:
        form.append(["data-path", opts["data-path"]])
    vn.call(form)
    try:
        created = vn.lookup(vnet)
        vnif = str(sxp.child_value(created, "vnetif"))
        bridges.set_up(vnif)
        if opts["bridge"]:
            bridges.ensure_bridge(opts["bridge"])
            bridges.enslave(opts["bridge"], vnif)
    except (bridges.BridgeError, UsageError, EngineError):
        # A create that fails leaves nothing behind (design.md 4).
        vn.call(["vnet.del", ["id", vnet]])
        raise
    return 0


def op_vnet_delete(vn: Vn, opts: Opts, args: list[str]) -> int:
    (key,) = args
    v = vn.lookup(key)
    vnif = sxp.child_value(v, "vnetif")
    if vnif and bridges.link_exists(vnif):
        bridge = bridges.master_of(vnif)
        if bridge:
            bridges.release(vnif)
            if opts["bridge"]:
                bridges.delete_bridge(bridge)
    form: list[sxp.Sxpr] = ["vnet.del", ["id", sxp.child_value(v, "id")]]
    if opts["force"]:
        form.append(["force"])      # even a vnet xend-vnet stores (design.md 6)
    vn.call(form)
    return 0


def _vif_mac(opts: Opts, text: str) -> str:
    if not opts["interface"]:
        return text
    info = links.link_info(text)
    if info is None or not info.get("address"):
        raise UsageError(f"interface not found: {text}")
    return str(info["address"])


def op_vif_add(vn: Vn, opts: Opts, args: list[str]) -> int:
    vnet, vmac = args
    vid = sxp.child_value(vn.lookup(vnet), "id")
    vn.call(["vif.add", ["vnet", vid], ["vmac", _vif_mac(opts, vmac)]])
    return 0


def op_vif_delete(vn: Vn, opts: Opts, args: list[str]) -> int:
    vnet, vmac = args
    vid = sxp.child_value(vn.lookup(vnet), "id")
    vn.call(["vif.del", ["vnet", vid], ["vmac", _vif_mac(opts, vmac)]])
    return 0


def op_peer_add(vn: Vn, opts: Opts, args: list[str]) -> int:
    form: list[sxp.Sxpr] = ["peer.add", ["addr", resolve_host(args[0])]]
    if opts["port"] is not None:
        form.append(["port", parse_port(str(opts["port"]))])
    vn.call(form)
    return 0


def op_peer_delete(vn: Vn, opts: Opts, args: list[str]) -> int:
    vn.call(["peer.del", ["addr", resolve_host(args[0])]])
    return 0
