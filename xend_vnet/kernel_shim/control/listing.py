"""Listing texts of the control socket, in the exact era-C layout (protocol.md 7, 8.5).

Ids are always the full 39-character form (the 3.3+ truncation bug of
protocol.md 8.6 is not reproduced), times are jiffies at HZ=1000 as vnetd
printed them.  Two legacy bugs of the peer listing are fixed: rx_packets
prints the rx counter and the port prints as stored.  ``vnet.stats`` is
ours, in the same one-child-per-line style; a vnet on the kernel path
(design.md 1.1) adds the programs' counters as ``kernel_*``, with
``(kernel_to_user (REASON N) ...)`` saying why each frame the kernel did
not carry went to the engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ... import sxp
from ...vnet_id import VnetId
from ..wire.codec import mac_text
from ..core.engine import EngineCore, Vnet
from ..security.secure_codec import OVERHEAD as SECURE_OVERHEAD
from ..security.secure_codec import SUITE_NAMES
from ..core.varp_cache import STATE_NAMES
from ..datapath.vxlan.table import VXLAN_OVERHEAD, VxlanTable, VxlanVnet

HZ = 1000
# Header room of UDP mode (outer IP 20 + UDP 8 + VnetMsgHdr 4 + etherip 18 +
# slack), as the module printed it (protocol.md 8.5).
UDP_HEADER_ROOM = 64


def jiffies(seconds: float) -> int:
    return int(seconds * HZ)


def _block(head: str, lines: Iterable[str], indent: str = " ") -> str:
    return head + "\n" + "".join(f"{indent}{line}\n" for line in lines) + ")\n"


def vnet_list(core: EngineCore, vxlan: VxlanTable | None = None,
              owners: Mapping[VnetId, str] | None = None) -> str:
    """``(vnet.list)``: one line per vnet of either data path, sorted by id.
    A secured vnet also lists its key generations and states, never key
    material; a VXLAN vnet its VNI, control plane, group (or local address
    under EVPN), port and MTU (docs/vxlan.md, docs/fleet.md).  A
    vnet with an owner ends in ``(owner NAME)``, after every legacy field
    (design.md 6)."""
    lines = [(v.vid, _vnet_line(v)) for v in core.vnets()]
    if vxlan is not None:
        lines += [(v.vid, _vxlan_line(v, core.mcaddr, vxlan)) for v in vxlan.vnets()]
    owners = owners or {}
    return "".join(_owned(line, owners.get(vid)) for vid, line in sorted(lines))


def _owned(line: str, owner: str | None) -> str:
    return line if owner is None else f"{line[:-2]} (owner {owner}))\n"


def _vxlan_line(v: VxlanVnet, group: str, vxlan: VxlanTable) -> str:
    plane = (f"(control-plane evpn) (local {vxlan.local})" if vxlan.evpn
             else f"(control-plane multicast) (group {group})")
    return (f"(vnet (id {v.vid.canonical}) (vnetif {v.ifname}) (security none)"
            f" (data-path vxlan) (vni {v.vni}) {plane} (vxlan-port {vxlan.port})"
            f" (mtu {v.mtu}) (header {VXLAN_OVERHEAD}))\n")


def _vnet_line(v: Vnet) -> str:
    head = (f"(vnet (id {v.vid.canonical}) (vnetif {v.ifname}) (security {v.security})"
            " (data-path vnetd)")
    if v.keys is None:
        return f"{head} (header {UDP_HEADER_ROOM}))\n"
    gens = "".join(f" (gen {gen} {state})" for gen, state, _ in v.keys.listing())
    return f"{head} (header {UDP_HEADER_ROOM + SECURE_OVERHEAD}) (keys{gens}))\n"


def key_list(vnet: Vnet, gen: int | None = None) -> str:
    """``(vnet.key (id ..) (list))``: one line per key generation (or only
    ``gen``): number, state, SPI and suite (design.md 7); never key material."""
    suite = SUITE_NAMES[vnet.keys.suite]
    return "".join(
        f"(vnet_key (vnet {vnet.vid.canonical}) (gen {g}) (state {state})"
        f" (spi 0x{spi:08x}) (suite {suite}))\n"
        for g, state, spi in vnet.keys.listing() if gen is None or g == gen)


def vif_list(core: EngineCore, now: float) -> str:
    """``(vif.list)``: the table parameters, then one block per vif."""
    opts = core.options
    out = [_block("(viftable", [
        f"(table_ttl {jiffies(opts.sweep_every)})",
        f"(entry_ttl {jiffies(opts.vif_ttl)})",
        f"(sweeps {core.vifs.sweeps})",
    ])]
    for vnet, mac, seen in core.vifs.entries():
        out.append(_block("(vif", [
            f"(vnet {VnetId(vnet).canonical})",
            f"(vmac {mac_text(mac)})",
            f"(age {jiffies(now - seen)})",
        ]))
    return "".join(out)


def varp_list(core: EngineCore, now: float, device: str) -> str:
    """``(varp.list)``: parameters, then one ``ventry`` per cache entry.
    ``(varp `` and ``(ventry `` keep legacy's trailing space."""
    out = [_block("(varp ", [
        f"(device {sxp.to_string(device)})",
        f"(mcast_addr {core.mcaddr})",
        f"(ucast_addr {core.self_address or '0.0.0.0'})",
        f"(port {core.port})",
        "(encapsulation etherip_in_udp)",
        f"(entry_ttl {jiffies(core.options.varp_ttl)})",
    ])]
    for vnet, mac, entry in core.varp.entries():
        out.append(_block("(ventry ", [
            "(ref 1)",
            f"(state {STATE_NAMES.get(entry.state, 'unknown')})",
            "(flags -)",                 # nothing probes in era C (protocol.md 3.5)
            f"(addr {entry.addr or '0.0.0.0'})",
            "(queue 0)",
            f"(age {jiffies(now - entry.timestamp)})",
            f"(vmac {mac_text(mac)})",
            f"(vnet {VnetId(vnet).canonical})",
        ]))
    return "".join(out)


def peer_list(core: EngineCore) -> str:
    """``(peer.list)``: one ``vnet_peer`` block per peer, sorted by address."""
    return "".join(_block("(vnet_peer", [
        f"(addr {p.addr})",
        f"(port {p.port})",
        f"(tx_packets {p.tx_packets})",
        f"(rx_packets {p.rx_packets})",
    ], indent="  ") for p in core.peers.sorted())


def varp_print(core: EngineCore, now: float, device: str,
               vxlan: VxlanTable | None = None,
               owners: Mapping[VnetId, str] | None = None) -> str:
    """``(varp.print)``: vnets, vifs and varp together."""
    return (vnet_list(core, vxlan, owners) + vif_list(core, now)
            + varp_list(core, now, device))


def _with_reasons(name: str, table: dict[str, int]) -> str:
    """``(dropped (reason N) ...)``, reasons sorted; ``(dropped)`` when none."""
    return "(" + " ".join([name] + [f"({r} {n})" for r, n in sorted(table.items())]) + ")"


TO_USER = "to_user_"


def _kernel_lines(kernel: Mapping[str, int]) -> list[str]:
    """The kernel path's counters of a vnet: ``(kernel_NAME N)``, and the
    frames it left to the engine by reason (only reasons counted)."""
    lines = [f"(kernel_{name} {n})" for name, n in kernel.items()
             if not name.startswith(TO_USER)]
    to_user = {name[len(TO_USER):]: n for name, n in kernel.items()
               if name.startswith(TO_USER) and n}
    return lines + [_with_reasons("kernel_to_user", to_user)]


def vnet_stats_block(vnet: Vnet, kernel: Mapping[str, int] | None = None) -> str:
    c = vnet.counters
    return _block("(vnet_stats", [
        f"(vnet {vnet.vid.canonical})",
        f"(vnetif {vnet.ifname})",
        *(f"({name} {value})" for name, value in c.fields()),
        _with_reasons("dropped", c.dropped),
        _with_reasons("refused", c.refused),
        *(_kernel_lines(kernel) if kernel is not None else ()),
    ])


def engine_stats_block(core: EngineCore) -> str:
    c = core.counters
    return _block("(engine_stats", [
        *(f"({name} {value})" for name, value in c.fields()),
        f"(vfwd_window_full {core.duplicates.overflows})",
        _with_reasons("rx_dropped", c.rx_dropped),
        _with_reasons("tap_dropped", c.tap_dropped),
        _with_reasons("kernel_ignored", c.kernel_ignored),
        _with_reasons("refused", core.refused()),
    ])


def vnet_stats(core: EngineCore, vnets: list[Vnet] | None = None,
               kernel: Mapping[VnetId, Mapping[str, int]] | None = None) -> str:
    """``(vnet.stats)``: the engine block and one block per vnet; with given
    vnets (``(vnet.stats (id ..))``) only theirs.  ``kernel``: the kernel
    path's counters of the vnets it carries."""
    kernel = kernel or {}
    blocks = "".join(vnet_stats_block(v, kernel.get(v.vid))
                     for v in (core.vnets() if vnets is None else vnets))
    return blocks if vnets is not None else engine_stats_block(core) + blocks
