"""``vn`` commands that print what the engine reports: vnets, vifs, the VARP
cache, peers, counters and status (protocol.md 8.5)."""

from __future__ import annotations

import sys

from .. import engine_launcher as launcher
from .. import sxp
from ..engine_client import EngineUnavailable
from .formatting import (
    canonical_or_none,
    fdb_form,
    format_stats,
    format_status,
    vxlan_summary,
    vxlan_vnets,
)
from .links import read_vxlan_fdb, show_vnif
from .session import EXIT_NOT_RUNNING, PROG, Opts, Vn


def op_status(vn: Vn, opts: Opts, args: list[str]) -> int:
    try:
        status = vn.call(["engine.status"])
    except EngineUnavailable as e:
        vn.write("not running\n")
        pid = launcher.engine_pid(vn.control_path)
        if pid is not None:
            print(f"{PROG}: vnetd pid {pid} is alive but does not answer: {e}",
                  file=sys.stderr)
        return EXIT_NOT_RUNNING
    form = next((f for f in status if isinstance(f, list)), ["engine.status"])
    vn.write(format_status(form))
    vxlan = vxlan_vnets(vn.vnet_list())
    if vxlan:
        fdb = read_vxlan_fdb([str(sxp.child_value(v, "vnetif")) for v in vxlan])
        vn.write("vxlan vnets:\n" + "".join(
            vxlan_summary(v, fdb.get(str(sxp.child_value(v, "vnetif")))) for v in vxlan))
    return 0


def op_fdb(vn: Vn, opts: Opts, args: list[str]) -> int:
    vxlan = vxlan_vnets(vn.selected(args))
    fdb = read_vxlan_fdb([str(sxp.child_value(v, "vnetif")) for v in vxlan])
    vn.print_forms([fdb_form(v, fdb.get(str(sxp.child_value(v, "vnetif")))) for v in vxlan])
    return 0


def op_vnets(vn: Vn, opts: Opts, args: list[str]) -> int:
    vnets = vn.selected(args)
    for v in vnets:
        vn.write(sxp.pretty(v, 50) + "\n")
        vnif = sxp.child_value(v, "vnetif")
        if opts["long"] and vnif:
            show_vnif(vn, vnif)
    if opts["all"]:
        ids = {canonical_or_none(str(sxp.child_value(v, "id"))) for v in vnets}
        vn.print_forms([f for f in vn.call(["vif.list"])
                          if sxp.child_value(f, "vnet") is not None
                          and canonical_or_none(str(sxp.child_value(f, "vnet"))) in ids])
        vn.print_forms(vn.call(["varp.list"]))
    return 0


def op_vifs(vn: Vn, opts: Opts, args: list[str]) -> int:
    vn.print_forms(vn.call(["vif.list"]))
    return 0


def op_varp(vn: Vn, opts: Opts, args: list[str]) -> int:
    vn.print_forms(vn.call(["varp.list"]))
    return 0


def op_varp_flush(vn: Vn, opts: Opts, args: list[str]) -> int:
    vn.call(["varp.flush"])
    return 0


def op_peers(vn: Vn, opts: Opts, args: list[str]) -> int:
    vn.print_forms(vn.call(["peer.list"]))
    return 0


def op_stats(vn: Vn, opts: Opts, args: list[str]) -> int:
    if args:
        forms = []
        for v in vn.selected(args):
            forms += vn.call(["vnet.stats", ["id", sxp.child_value(v, "id")]])
    else:
        forms = vn.call(["vnet.stats"])
    vn.write(format_stats(forms))
    return 0
