"""The ``vn`` command table: each command's options, arguments and help, in
the legacy tool's getopt style (protocol.md 13), and ``vn help``."""

from __future__ import annotations

import getopt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import keys, links, listings, manage, module
from .session import PROG, Opts, UsageError, Vn


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
    # Words that are not the command's own options are positionals, options
    # or not, in their order (insmod: vnetd's own options, ``--no-kernel-path``,
    # beside ``name=value``); for commands whose own options take no value.
    pass_options: bool = False

    def usage(self) -> str:
        parts = [o.usage() for o in self.options] + [f"<{a}>" for a in self.args]
        if self.more:
            parts.append(f"[{self.more} ...]")
        return " ".join(parts)

    def parse(self, argv: Sequence[str]) -> tuple[Opts, list[str]]:
        shortopts = "".join(o.short + (":" if o.value else "") for o in self.options)
        longopts = [o.long + ("=" if o.value else "") for o in self.options]
        argv = list(argv)
        passed: list[str] = []
        if self.pass_options:
            # In their order, after the command's own options (getopt sees those only).
            own = {f"--{o.long}" for o in self.options}
            passed = [w for w in argv if w.split("=", 1)[0] not in own
                      and not (len(w) == 2 and w[0] == "-" and w[1] in shortopts)]
            argv = [w for w in argv if w not in passed]
        try:
            pairs, rest = getopt.getopt(argv, shortopts, longopts)
        except getopt.GetoptError as e:
            raise UsageError(f"{self.name}: {e.msg}") from None
        rest += passed
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


def op_help(vn: Vn, opts: Opts, args: list[str]) -> int:
    names = sorted(COMMANDS, key=lambda n: n.replace("-", "_"))
    if opts["long"]:
        vn.write(f"{PROG} [--control PATH] <command> <options>\n{LONG_HELP}")
        for n in names:
            c = COMMANDS[n]
            vn.write(f"\n  {n} {c.usage()}\n{c.help or c.use}\n")
    else:
        vn.write(f"{PROG}:\n")
        for n in names:
            c = COMMANDS[n]
            vn.write(f"  {n} {c.usage()}".rstrip() + f"\n\t\t{c.use}\n")
    vn.write("\n")
    return 0


LONG_HELP = """Control utility for vnets (virtual networking), talking to vnetd on its
control socket ($VNETD_SOCKET, default /var/run/vnetd.sock).
"""


_LONG = Option("long", "l")


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("help", op_help, "Print help.",
            "Print help, long help if the option -l or --long is given.", (_LONG,)),
    Command("insmod", module.op_insmod,
            "Start vnetd (the vnet module) if it is not running, optionally with parameters.",
            """Start vnetd if it is not running; return once its control socket answers.
Parameters name=value: varp_mcaddr (multicast group, default 224.10.0.1),
varp_device (interface whose address is the care-of address), vnet_encaps=udp
(etherip is not supported), and every vnetd option in the same form: mtu, port,
vxlan_port, mcast_ttl, varp_ttl, address, file, log_file, log_level, no_default_vnets,
allow_foreign_netns and more (--list-params names them all).
With systemd as PID 1 and vnetd.service installed, the default engine is
started with systemctl. When vnetd already runs, a different varp_mcaddr or
mcast_ttl is applied to it; any other parameter that differs is an error
(stop it first with vn rmmod).  vnetd's options may be given as they are
too: vn insmod --no-kernel-path is vn insmod no_kernel_path=yes.
    -L, --list-params  Print the parameter names, one a line, and exit.""",
            (Option("list-params", "L"),), more="param=value", pass_options=True),
    Command("rmmod", module.op_rmmod, "Stop vnetd.",
            """Stop vnetd. Its TAP and VXLAN devices stay for the next start, unless
    -p, --purge        Delete every vnet first, so its device goes too.""",
            (Option("purge", "p"),)),
    Command("status", listings.op_status, "Say whether vnetd runs (exit 0) or not (exit 3).",
            """Print 'running (pid N, up T, group G joined, N vnets)' and the other
engine facts, exit 0; or 'not running', exit 3."""),
    Command("vnets", listings.op_vnets, "Print vnets.",
            """Print vnet information, where options are:
    -a, --all          Print vnets, vifs and varp info.
    -l, --long         Print the interface, bridge and bridged interfaces.""",
            (Option("all", "a"), _LONG), more="vnet"),
    Command("vnifs", links.op_vnifs, "Print the vnet network interfaces.", more="vnet"),
    Command("vifs", listings.op_vifs, "Print vifs."),
    Command("varp", listings.op_varp, "Print varp info and entries in the varp cache."),
    Command("varp-flush", listings.op_varp_flush, "Flush the varp cache."),
    Command("fdb", listings.op_fdb, "Print the forwarding tables of vxlan vnets.",
            """Print each vxlan vnet's flood list and remote MACs, as the kernel holds
them: learnt from the network (multicast control plane) or installed by FRR
(evpn; docs/fleet.md).""", more="vnet"),
    Command("stats", listings.op_stats, "Print per-vnet counters and drop reasons.",
            "Print packet and byte counters and drops by reason, per vnet.", more="vnet"),
    Command("vnet-create", manage.op_vnet_create, "Create a vnet.",
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
    Command("vnet-delete", manage.op_vnet_delete, "Delete a vnet.",
            """Delete a vnet (given by id or interface).
    -b, --bridge       Delete the bridge the vnet interface is attached to.
    -f, --force        Delete it even when xend-vnet stores it (xm vnet-delete
                       is the way to delete such a vnet for good).""",
            (Option("bridge", "b"), Option("force", "f")), ("vnet",)),
    Command("vif-add", manage.op_vif_add, "Add a vif to a vnet.",
            """Add a vif to a vnet. Not usually needed as vifs
are added automatically.
    -i, --interface    The vmac is the name of an interface to get the mac from.""",
            (Option("interface", "i"),), ("vnet", "vmac")),
    Command("vif-delete", manage.op_vif_delete, "Delete a vif from a vnet.",
            """Delete a vif from a vnet. Not usually needed as vifs
are removed periodically.
    -i, --interface    The vmac is the name of an interface to get the mac from.""",
            (Option("interface", "i"),), ("vnet", "vmac")),
    Command("peer-add", manage.op_peer_add, "Add a peer.",
            """Add a peer: <addr> (a host name or address), -p PORT optional.
Vnets use multicast to discover interfaces, but networks are often configured
not to forward multicast. Vnets forward multicasts to peers using UDP.
Only add peers if multicasts are not working.
Only add peers at one machine in a subnet, otherwise you may cause forwarding
loops.""", (Option("port", "p", "PORT"),), ("addr",)),
    Command("peer-delete", manage.op_peer_delete, "Delete a peer.", "Delete a peer: <addr>",
            args=("addr",)),
    Command("peers", listings.op_peers, "List peers."),
    Command("bridges", links.op_bridges, "Print bridges.",
            """Print bridges and their interfaces.
    -l, --long         Print the bridge interfaces too.""", (_LONG,)),
    Command("key-gen", keys.op_key_gen, "Write a new vnet key file.",
            """Write 32 random bytes as 64 hex characters to <path>, mode 0600.
An existing file is never overwritten. Copy the file to every host of the vnet.""",
            args=("path",)),
    Command("key-add", keys.op_key_add, "Add a key generation to a secured vnet.",
            """Rotation step 1 (on every host): accept traffic under the key in <path>
and print its generation number (the same on every host).""", args=("vnet", "path")),
    Command("key-activate", keys.op_key_activate, "Send with a key generation.",
            """Rotation step 2, once every host has added the generation: send with it.
The generation used before stays accepted.""", args=("vnet", "gen")),
    Command("key-retire", keys.op_key_retire, "Retire a key generation.",
            """Rotation step 3, once every host sends with the new generation: stop
accepting <gen>. The active generation cannot be retired.""", args=("vnet", "gen")),
    Command("keys", keys.op_keys, "Print a secured vnet's key generations.",
            """Print each key generation of <vnet>: number, state (added, active,
retired), SPI and suite. Key material is never shown.""", args=("vnet",)),
)}
