"""``vn``: the legacy vnet control utility, talking to vnetd (protocol.md 13).

Subcommands, options and listing layouts follow the legacy tool: getopt
parsing (options before positionals), ``-`` and ``_`` alike in subcommand
names, listings pretty-printed as s-expressions, errors as ``vn: <message>``
with exit status 1, no arguments meaning ``help``.  Differences, all on
purpose: it talks to the engine's control socket (``$VNETD_SOCKET``, default
/var/run/vnetd.sock, or ``--control PATH``) and reports the engine's errors;
``peer-add -p`` takes a value (the legacy flag sent ``(port True)``);
``vnet-create`` keeps the TAP's own MAC (the legacy tool copied eth0's);
interface views come from netlink (pyroute2) in ifconfig's layout instead of
running ifconfig and brctl; ``insmod``/``rmmod`` start and stop vnetd;
``stats``, ``status`` and ``key-gen`` are new (design.md 6-7).
"""

from __future__ import annotations

import getopt
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .. import bridges, sxp
from ..engine_client import EngineClient, EngineError, EngineUnavailable
from ..process import default_control_path
from ..vnet_id import VnetId, VnetIdError
from .. import engine_launcher as launcher

PROG = "vn"
EXIT_NOT_RUNNING = 3  # LSB status code for "program is not running"
KEY_BYTES = 32  # design.md 7: 32 random bytes, 64 hex characters


Opts = dict[str, object]


class UsageError(Exception):
    """A command line vn cannot act on; the message is shown as ``vn: <message>``."""


# -- command table ------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    name: str
    short: str
    value: str | None = None  # placeholder shown in help when it takes a value

    @property
    def long(self) -> str:
        return self.name

    def usage(self) -> str:
        tail = f" {self.value}" if self.value else ""
        return f"[-{self.short} | --{self.long}{tail}]"


@dataclass(frozen=True)
class Command:
    name: str
    run: Callable[[Vn, Opts, list[str]], int]
    use: str
    help: str = ""
    options: tuple[Option, ...] = ()
    args: tuple[str, ...] = ()  # required positionals
    more: str | None = None  # name of optional trailing positionals, if any

    def usage(self) -> str:
        parts = [o.usage() for o in self.options] + [f"<{a}>" for a in self.args]
        if self.more:
            parts.append(f"[{self.more} ...]")
        return " ".join(parts)

    def parse(self, argv: Sequence[str]) -> tuple[Opts, list[str]]:
        shortopts = "".join(o.short + (":" if o.value else "") for o in self.options)
        longopts = [o.long + ("=" if o.value else "") for o in self.options]
        try:
            pairs, rest = getopt.getopt(list(argv), shortopts, longopts)
        except getopt.GetoptError as e:
            raise UsageError(f"{self.name}: {e.msg}") from None
        opts: Opts = {o.name: (None if o.value else False) for o in self.options}
        for flag, value in pairs:
            for o in self.options:
                if flag in (f"-{o.short}", f"--{o.long}"):
                    opts[o.name] = value if o.value else True
        if len(rest) < len(self.args):
            raise UsageError(f"insufficient arguments for {self.name}")
        if len(rest) > len(self.args) and not self.more:
            extra = " ".join(rest[len(self.args):])
            raise UsageError(f"too many arguments for {self.name}: {extra}")
        return opts, rest


# -- pure helpers (formatting, lookups) ------------------------------------------

def canonical_or_none(text: str) -> str | None:
    try:
        return VnetId.parse(text).canonical
    except VnetIdError:
        return None


def find_vnet(vnets: list[sxp.Sxpr], key: str) -> sxp.Sxpr | None:
    """The vnet named by ``key``: an id in any accepted form, or its vnetif."""
    wanted = canonical_or_none(key)
    for v in vnets:
        vid = sxp.child_value(v, "id")
        if vid == key or (wanted is not None and isinstance(vid, str)
                          and canonical_or_none(vid) == wanted):
            return v
    for v in vnets:
        if sxp.child_value(v, "vnetif") == key:
            return v
    return None


def sort_vnets(vnets: list[sxp.Sxpr]) -> list[sxp.Sxpr]:
    """Legacy order: by the id string."""
    return sorted(vnets, key=lambda v: str(sxp.child_value(v, "id", "")))


def format_uptime(seconds: float) -> str:
    """``45s``, ``3m12s``, ``2h03m``, ``5d02h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


_JOINED_KEYS = ("group-joined", "group_joined", "joined")
_YES = ("yes", "true", "1", "joined")


def _count(form: sxp.Sxpr, name: str) -> int | None:
    found = sxp.child(form, name)
    if found is None:
        return None
    if len(found) == 2 and isinstance(found[1], str) and found[1].isdigit():
        return int(found[1])
    return len(found) - 1


def format_status(form: sxp.Sxpr) -> str:
    """``running (pid N, up 3m12s, group 224.10.0.1 joined, 4 vnets)`` and the
    other children of ``(engine.status ...)`` one per line."""
    summary = [f"pid {sxp.child_value(form, 'pid', '?')}"]
    uptime = sxp.child_value(form, "uptime")
    try:
        summary.append(f"up {format_uptime(float(uptime))}")
    except (TypeError, ValueError):
        pass
    joined = next((sxp.child_value(form, k) for k in _JOINED_KEYS
                   if sxp.child(form, k) is not None), None)
    group = sxp.child_value(form, "mcaddr", "")
    if joined is not None:
        state = "joined" if str(joined).lower() in _YES else "not joined"
        summary.append(f"group {group} {state}" if group else f"group {state}")
    vnets = _count(form, "vnets")
    if vnets is not None:
        summary.append(f"{vnets} vnet{'' if vnets == 1 else 's'}")
    lines = [f"running ({', '.join(summary)})"]
    shown = {"pid", "uptime", "vnets", *_JOINED_KEYS}
    for c in sxp.children(form):
        if isinstance(c, list) and c and isinstance(c[0], str) and c[0] not in shown:
            lines.append("    " + " ".join(sxp.to_string(x) for x in c))
    return "\n".join(lines) + "\n"


_STATS_ID_KEYS = ("id", "vnet")


def _stats_id(form: sxp.Sxpr) -> str | None:
    for key in _STATS_ID_KEYS:
        value = sxp.child_value(form, key)
        if isinstance(value, str):
            return value
    return None


def _stat_rows(form: sxp.Sxpr) -> list[tuple[str, str]]:
    """``(name N)`` children as rows; ``(name (reason N) ...)`` as ``name reason``."""
    rows = []
    for c in sxp.children(form):
        if not (isinstance(c, list) and c and isinstance(c[0], str)):
            continue
        if c[0] in _STATS_ID_KEYS or c[0] == "vnetif":
            continue
        if len(c) == 2 and isinstance(c[1], str):
            rows.append((c[0], c[1]))
            continue
        for sub in c[1:]:
            if isinstance(sub, list) and len(sub) == 2 and all(isinstance(x, str) for x in sub):
                rows.append((f"{c[0]} {sub[0]}", sub[1]))
    return rows


def _section(title: str, rows: list[tuple[str, str]]) -> str:
    """Counters that belong to no vnet (the engine's): one per line."""
    name_w = max([len(n) for n, _ in rows], default=0)
    value_w = max([len(v) for _, v in rows], default=0)
    return "".join([f"{title}:\n"] + [f"  {n:<{name_w}}  {v:>{value_w}}\n" for n, v in rows])


def format_stats(forms: list[sxp.Sxpr]) -> str:
    """The engine's counters, then one table with a row per counter (and per
    drop reason) and a column per vnet, named by its vnetif; a counter a vnet
    does not report is 0 (drop reasons are listed only once counted)."""
    sections = []
    columns: list[tuple[str, str, dict[str, str]]] = []
    row_names: list[str] = []
    for form in forms:
        if not (isinstance(form, list) and form and isinstance(form[0], str)):
            continue
        rows = _stat_rows(form)
        vid = _stats_id(form)
        if vid is None:
            sections.append(_section(form[0], rows))
            continue
        columns.append((str(sxp.child_value(form, "vnetif") or vid), vid, dict(rows)))
        row_names += [n for n, _ in rows if n not in row_names]
    if columns:
        first = max(len(n) for n in row_names + ["counter"])
        widths = [max([len(label)] + [len(v) for v in values.values()])
                  for label, _, values in columns]
        lines = [f"{'counter':<{first}}"
                 + "".join(f"  {label:>{w}}" for (label, _, _), w in zip(columns, widths))]
        for name in row_names:
            lines.append(f"{name:<{first}}" + "".join(
                f"  {values.get(name, '0'):>{w}}" for (_, _, values), w in zip(columns, widths)))
        lines.append("")
        lines += [f"{label}  {vid}" for label, vid, _ in columns]
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


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


def write_key_file(path: str) -> None:
    """A new key file (design.md 7): 64 hex characters and a newline, mode 0600,
    never overwriting an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise UsageError(f"key file {path} exists: not overwriting it") from None
    except OSError as e:
        raise UsageError(f"cannot create key file {path}: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (os.urandom(KEY_BYTES).hex() + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_generation(text: str) -> str:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise UsageError(f"invalid key generation {text!r}: expected a number 1 to 65535")
    return str(int(text))


def format_keys(forms: list[sxp.Sxpr]) -> str:
    """``vn keys``: one line per generation (state, SPI, suite), never key material."""
    lines = [f"{'gen':>5}  {'state':<8} {'spi':<10}  suite"]
    for f in forms:
        lines.append(f"{sxp.child_value(f, 'gen', ''):>5}  {sxp.child_value(f, 'state', ''):<8} "
                     f"{sxp.child_value(f, 'spi', ''):<10}  {sxp.child_value(f, 'suite', '')}")
    return "\n".join(lines) + "\n"


def parse_params(words: Sequence[str]) -> dict[str, str]:
    """``insmod`` parameters ``name=value`` (as for the legacy module)."""
    params: dict[str, str] = {}
    for w in words:
        name, eq, value = w.partition("=")
        if not eq or not name:
            raise UsageError(f"invalid parameter {w!r}: expected name=value")
        params[name] = value
    return params


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


# -- netlink views ----------------------------------------------------------------

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


# -- the tool -------------------------------------------------------------------

class Vn:
    """One vn invocation: the control path, the output stream, the commands."""

    def __init__(self, control_path: str, out: TextIO):
        self.control_path = control_path
        self.client = EngineClient(control_path)
        self.out = out

    def write(self, text: str) -> None:
        self.out.write(text)

    def call(self, form: sxp.Sxpr) -> list[sxp.Sxpr]:
        return self.client.call(form)

    def vnet_list(self) -> list[sxp.Sxpr]:
        return [v for v in self.call(["vnet.list"]) if isinstance(v, list) and v[:1] == ["vnet"]]

    def lookup(self, key: str, vnets: list[sxp.Sxpr] | None = None) -> sxp.Sxpr:
        found = find_vnet(self.vnet_list() if vnets is None else vnets, key)
        if found is None:
            raise UsageError(f"vnet not found: {key}")
        return found

    def selected(self, keys: list[str]) -> list[sxp.Sxpr]:
        vnets = self.vnet_list()
        if keys:
            vnets = [self.lookup(k, vnets) for k in keys]
        return sort_vnets(vnets)

    def show_vnif(self, dev: str) -> None:
        info = link_info(dev)
        if info is None:
            self.write(f"{dev}: no such interface\n\n")
            return
        self.write(format_link(info))
        bridge = bridges.master_of(dev)
        if bridge:
            self.write(f"          Bridge: {bridge}\n")
            others = [i for i in bridges.bridge_ports(bridge) if i != dev]
            if others:
                self.write(f"          Interfaces: {', '.join(others)}\n")
            self.write("\n")

    def print_forms(self, forms: list[sxp.Sxpr], width: int = 80) -> None:
        for f in forms:
            self.write(sxp.pretty(f, width) + "\n")

    # Each op_ method: (opts, positionals) -> exit status.

    def op_help(self, opts: Opts, args: list[str]) -> int:
        names = sorted(COMMANDS, key=lambda n: n.replace("-", "_"))
        if opts["long"]:
            self.write(f"{PROG} [--control PATH] <command> <options>\n{LONG_HELP}")
            for n in names:
                c = COMMANDS[n]
                self.write(f"\n  {n} {c.usage()}\n{c.help or c.use}\n")
        else:
            self.write(f"{PROG}:\n")
            for n in names:
                c = COMMANDS[n]
                self.write(f"  {n} {c.usage()}".rstrip() + f"\n\t\t{c.use}\n")
        self.write("\n")
        return 0

    def op_insmod(self, opts: Opts, args: list[str]) -> int:
        if opts["list-params"]:
            # One name a line: network-vnet picks the engine's parameters with it.
            self.write("".join(f"{name}\n" for name in launcher.param_names()))
            return 0
        launcher.ensure_engine(self.control_path, parse_params(args))
        return 0

    def op_rmmod(self, opts: Opts, args: list[str]) -> int:
        if not launcher.stop_engine(self.control_path, purge=bool(opts["purge"])):
            raise UsageError(f"vnetd is not running (no engine for {self.control_path})")
        return 0

    def op_status(self, opts: Opts, args: list[str]) -> int:
        try:
            status = self.call(["engine.status"])
        except EngineUnavailable as e:
            self.write("not running\n")
            pid = launcher.engine_pid(self.control_path)
            if pid is not None:
                print(f"{PROG}: vnetd pid {pid} is alive but does not answer: {e}",
                      file=sys.stderr)
            return EXIT_NOT_RUNNING
        form = next((f for f in status if isinstance(f, list)), ["engine.status"])
        self.write(format_status(form))
        return 0

    def op_vnets(self, opts: Opts, args: list[str]) -> int:
        vnets = self.selected(args)
        for v in vnets:
            self.write(sxp.pretty(v, 50) + "\n")
            vnif = sxp.child_value(v, "vnetif")
            if opts["long"] and vnif:
                self.show_vnif(vnif)
        if opts["all"]:
            ids = {canonical_or_none(str(sxp.child_value(v, "id"))) for v in vnets}
            self.print_forms([f for f in self.call(["vif.list"])
                              if sxp.child_value(f, "vnet") is not None
                              and canonical_or_none(str(sxp.child_value(f, "vnet"))) in ids])
            self.print_forms(self.call(["varp.list"]))
        return 0

    def op_vnifs(self, opts: Opts, args: list[str]) -> int:
        for v in self.selected(args):
            vnif = sxp.child_value(v, "vnetif")
            if vnif:
                self.show_vnif(vnif)
        return 0

    def op_vifs(self, opts: Opts, args: list[str]) -> int:
        self.print_forms(self.call(["vif.list"]))
        return 0

    def op_varp(self, opts: Opts, args: list[str]) -> int:
        self.print_forms(self.call(["varp.list"]))
        return 0

    def op_varp_flush(self, opts: Opts, args: list[str]) -> int:
        self.call(["varp.flush"])
        return 0

    def op_peers(self, opts: Opts, args: list[str]) -> int:
        self.print_forms(self.call(["peer.list"]))
        return 0

    def op_stats(self, opts: Opts, args: list[str]) -> int:
        if args:
            forms = []
            for v in self.selected(args):
                forms += self.call(["vnet.stats", ["id", sxp.child_value(v, "id")]])
        else:
            forms = self.call(["vnet.stats"])
        self.write(format_stats(forms))
        return 0

    def op_vnet_create(self, opts: Opts, args: list[str]) -> int:
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
        self.call(form)
        try:
            created = self.lookup(vnet)
            vnif = str(sxp.child_value(created, "vnetif"))
            bridges.set_up(vnif)
            if opts["bridge"]:
                bridges.ensure_bridge(opts["bridge"])
                bridges.enslave(opts["bridge"], vnif)
        except (bridges.BridgeError, UsageError, EngineError):
            # A create that fails leaves nothing behind (design.md 4).
            self.call(["vnet.del", ["id", vnet]])
            raise
        return 0

    def op_vnet_delete(self, opts: Opts, args: list[str]) -> int:
        (key,) = args
        v = self.lookup(key)
        vnif = sxp.child_value(v, "vnetif")
        if vnif and bridges.link_exists(vnif):
            bridge = bridges.master_of(vnif)
            if bridge:
                bridges.release(vnif)
                if opts["bridge"]:
                    bridges.delete_bridge(bridge)
        self.call(["vnet.del", ["id", sxp.child_value(v, "id")]])
        return 0

    def vif_mac(self, opts: Opts, text: str) -> str:
        if not opts["interface"]:
            return text
        info = link_info(text)
        if info is None or not info.get("address"):
            raise UsageError(f"interface not found: {text}")
        return str(info["address"])

    def op_vif_add(self, opts: Opts, args: list[str]) -> int:
        vnet, vmac = args
        vid = sxp.child_value(self.lookup(vnet), "id")
        self.call(["vif.add", ["vnet", vid], ["vmac", self.vif_mac(opts, vmac)]])
        return 0

    def op_vif_delete(self, opts: Opts, args: list[str]) -> int:
        vnet, vmac = args
        vid = sxp.child_value(self.lookup(vnet), "id")
        self.call(["vif.del", ["vnet", vid], ["vmac", self.vif_mac(opts, vmac)]])
        return 0

    def op_peer_add(self, opts: Opts, args: list[str]) -> int:
        form: list[sxp.Sxpr] = ["peer.add", ["addr", resolve_host(args[0])]]
        if opts["port"] is not None:
            form.append(["port", parse_port(str(opts["port"]))])
        self.call(form)
        return 0

    def op_peer_delete(self, opts: Opts, args: list[str]) -> int:
        self.call(["peer.del", ["addr", resolve_host(args[0])]])
        return 0

    def op_bridges(self, opts: Opts, args: list[str]) -> int:
        found = bridges.list_bridges()
        for br in sorted(found):
            ports = sorted(found[br])
            if opts["long"]:
                info = link_info(br)
                if info is not None:
                    self.write(format_link(info))
                if ports:
                    self.write(f"          Interfaces: {', '.join(ports)}\n\n")
            elif ports:
                self.write(f"{br} : {', '.join(ports)}\n")
            else:
                self.write(f"{br}\n")
        return 0

    def op_key_gen(self, opts: Opts, args: list[str]) -> int:
        write_key_file(args[0])
        return 0

    def key_form(self, key: str, *op: sxp.Sxpr) -> list[sxp.Sxpr]:
        return ["vnet.key", ["id", sxp.child_value(self.lookup(key), "id")], *op]

    def op_key_add(self, opts: Opts, args: list[str]) -> int:
        vnet, path = args
        for form in self.call(self.key_form(vnet, ["add", os.path.abspath(path)])):
            self.write(f"generation {sxp.child_value(form, 'gen')} added\n")
        return 0

    def op_key_activate(self, opts: Opts, args: list[str]) -> int:
        self.call(self.key_form(args[0], ["activate", parse_generation(args[1])]))
        return 0

    def op_key_retire(self, opts: Opts, args: list[str]) -> int:
        self.call(self.key_form(args[0], ["retire", parse_generation(args[1])]))
        return 0

    def op_keys(self, opts: Opts, args: list[str]) -> int:
        self.write(format_keys(self.call(self.key_form(args[0], ["list"]))))
        return 0


LONG_HELP = """Control utility for vnets (virtual networking), talking to vnetd on its
control socket ($VNETD_SOCKET, default /var/run/vnetd.sock).
"""

_LONG = Option("long", "l")

COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("help", Vn.op_help, "Print help.",
            "Print help, long help if the option -l or --long is given.", (_LONG,)),
    Command("insmod", Vn.op_insmod,
            "Start vnetd (the vnet module) if it is not running, optionally with parameters.",
            """Start vnetd if it is not running; return once its control socket answers.
Parameters name=value: varp_mcaddr (multicast group, default 224.10.0.1),
varp_device (interface whose address is the care-of address), vnet_encaps=udp
(etherip is not supported), and engine options mtu, port, vxlan_port, mcast_ttl, varp_ttl,
address, file, log_file, log_level, no_default_vnets, allow_foreign_netns.
With systemd as PID 1 and vnetd.service installed, the default engine is
started with systemctl. When vnetd already runs, a different varp_mcaddr or
mcast_ttl is applied to it; any other parameter that differs is an error
(stop it first with vn rmmod).
    -L, --list-params  Print the parameter names, one a line, and exit.""",
            (Option("list-params", "L"),), more="param=value"),
    Command("rmmod", Vn.op_rmmod, "Stop vnetd.",
            """Stop vnetd. Its TAP and VXLAN devices stay for the next start, unless
    -p, --purge        Delete every vnet first, so its device goes too.""",
            (Option("purge", "p"),)),
    Command("status", Vn.op_status, "Say whether vnetd runs (exit 0) or not (exit 3).",
            """Print 'running (pid N, up T, group G joined, N vnets)' and the other
engine facts, exit 0; or 'not running', exit 3."""),
    Command("vnets", Vn.op_vnets, "Print vnets.",
            """Print vnet information, where options are:
    -a, --all          Print vnets, vifs and varp info.
    -l, --long         Print the interface, bridge and bridged interfaces.""",
            (Option("all", "a"), _LONG), more="vnet"),
    Command("vnifs", Vn.op_vnifs, "Print the vnet network interfaces.", more="vnet"),
    Command("vifs", Vn.op_vifs, "Print vifs."),
    Command("varp", Vn.op_varp, "Print varp info and entries in the varp cache."),
    Command("varp-flush", Vn.op_varp_flush, "Flush the varp cache."),
    Command("stats", Vn.op_stats, "Print per-vnet counters and drop reasons.",
            "Print packet and byte counters and drops by reason, per vnet.", more="vnet"),
    Command("vnet-create", Vn.op_vnet_create, "Create a vnet.",
            """Create a vnet and bring its interface up, where options are:
    -s, --security     Security level: none (default), auth (authenticated) or
                       conf (authenticated and encrypted); not with legacy hosts.
    -k, --key-file     Key file of an auth or conf vnet (vn key-gen PATH, copied
                       to every host of the vnet).
    -b, --bridge       Create the bridge (or adopt an existing one) and add the
                       vnet interface to it.
    -v, --vnetif       Name of the vnet interface (default vnif%04x of the id).
    -d, --data-path    vnetd (default: the engine carries the frames, legacy hosts
                       included) or vxlan (the kernel's VXLAN device; every host
                       of the vnet must use it; security none only; docs/vxlan.md).
The vnet interface keeps its own MAC address (the legacy vn copied eth0's).""",
            (Option("security", "s", "LEVEL"), Option("key-file", "k", "PATH"),
             Option("bridge", "b", "BRIDGE"), Option("vnetif", "v", "VNETIF"),
             Option("data-path", "d", "vnetd|vxlan")), ("vnet",)),
    Command("vnet-delete", Vn.op_vnet_delete, "Delete a vnet.",
            """Delete a vnet (given by id or interface).
    -b, --bridge       Delete the bridge the vnet interface is attached to.""",
            (Option("bridge", "b"),), ("vnet",)),
    Command("vif-add", Vn.op_vif_add, "Add a vif to a vnet.",
            """Add a vif to a vnet. Not usually needed as vifs
are added automatically.
    -i, --interface    The vmac is the name of an interface to get the mac from.""",
            (Option("interface", "i"),), ("vnet", "vmac")),
    Command("vif-delete", Vn.op_vif_delete, "Delete a vif from a vnet.",
            """Delete a vif from a vnet. Not usually needed as vifs
are removed periodically.
    -i, --interface    The vmac is the name of an interface to get the mac from.""",
            (Option("interface", "i"),), ("vnet", "vmac")),
    Command("peer-add", Vn.op_peer_add, "Add a peer.",
            """Add a peer: <addr> (a host name or address), -p PORT optional.
Vnets use multicast to discover interfaces, but networks are often configured
not to forward multicast. Vnets forward multicasts to peers using UDP.
Only add peers if multicasts are not working.
Only add peers at one machine in a subnet, otherwise you may cause forwarding
loops.""", (Option("port", "p", "PORT"),), ("addr",)),
    Command("peer-delete", Vn.op_peer_delete, "Delete a peer.", "Delete a peer: <addr>",
            args=("addr",)),
    Command("peers", Vn.op_peers, "List peers."),
    Command("bridges", Vn.op_bridges, "Print bridges.",
            """Print bridges and their interfaces.
    -l, --long         Print the bridge interfaces too.""", (_LONG,)),
    Command("key-gen", Vn.op_key_gen, "Write a new vnet key file.",
            """Write 32 random bytes as 64 hex characters to <path>, mode 0600.
An existing file is never overwritten. Copy the file to every host of the vnet.""",
            args=("path",)),
    Command("key-add", Vn.op_key_add, "Add a key generation to a secured vnet.",
            """Rotation step 1 (on every host): accept traffic under the key in <path>
and print its generation number (the same on every host).""", args=("vnet", "path")),
    Command("key-activate", Vn.op_key_activate, "Send with a key generation.",
            """Rotation step 2, once every host has added the generation: send with it.
The generation used before stays accepted.""", args=("vnet", "gen")),
    Command("key-retire", Vn.op_key_retire, "Retire a key generation.",
            """Rotation step 3, once every host sends with the new generation: stop
accepting <gen>. The active generation cannot be retired.""", args=("vnet", "gen")),
    Command("keys", Vn.op_keys, "Print a secured vnet's key generations.",
            """Print each key generation of <vnet>: number, state (added, active,
retired), SPI and suite. Key material is never shown.""", args=("vnet",)),
)}


def run(argv: Sequence[str], out: TextIO) -> int:
    """vn with ``argv`` (without the program name); the exit status."""
    try:
        pairs, rest = getopt.getopt(list(argv), "", ["control="])
    except getopt.GetoptError as e:
        raise UsageError(e.msg) from None
    control = default_control_path()
    for _, value in pairs:
        control = value
    if not rest:
        rest = ["help"]
    name = rest[0].replace("_", "-")
    command = COMMANDS.get(name)
    if command is None:
        raise UsageError(f"unknown command: {rest[0]}")
    opts, args = command.parse(rest[1:])
    return command.run(Vn(control, out), opts, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``vn``."""
    try:
        return run(sys.argv[1:] if argv is None else argv, sys.stdout)
    except (UsageError, EngineError, launcher.LauncherError, bridges.BridgeError,
            VnetIdError) as e:
        sys.stdout.flush()
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
