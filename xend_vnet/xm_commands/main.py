"""``xm vnet-create``, ``xm vnet-delete``, ``xm vnet-list`` as Xen 3.x printed them.

Outputs, errors and exit codes follow protocol.md 10.2-10.3: a Fault prints
``Error: <message>`` on stderr and the subcommand's usage on stdout, exit 1;
``vnet-list -l`` prints one error line per failing id and carries on;
``-h``/``--help`` prints the usage, exit 1; a unique prefix longer than one
character names its vnet subcommand, as in Xen's xm.  The
server is ``$XM_SERVER`` (default ``httpu:///var/run/xend/xmlrpc.sock``).
Every other subcommand is handed to the next real ``xm`` on PATH, never to
an ``xm`` already run in the same chain (``$XEND_VNET_XM_SEEN``).
"""

from __future__ import annotations

import getopt
import http.client
import os
import shutil
import sys
import textwrap
import xml.parsers.expat
import xmlrpc.client

from .. import sxp
from ..httpu import DEFAULT_URI, server_proxy

VNET_COMMANDS = ("vnet-create", "vnet-delete", "vnet-list")
# Xen's xm (3.3 on) has vncviewer too: a prefix it shares goes to Xen's xm.
OTHER_XM_COMMANDS = ("vncviewer",)
HELP_OPTIONS = ("-h", "--help")
# Real paths of the xm programs a pass-through chain already ran (os.pathsep-separated).
SEEN_ENV = "XEND_VNET_XM_SEEN"

# (arguments, description, options) as xm's SUBCOMMAND_HELP/SUBCOMMAND_OPTIONS.
HELP = {
    "vnet-create": ("<ConfigFile>", "Create a vnet from ConfigFile.", ()),
    "vnet-delete": ("<VnetId>", "Delete a Vnet.",
                    (("", "--force", "Delete even if domain interfaces are attached"),)),
    "vnet-list": ("[-l|--long]", "List Vnets.", (("-l", "--long", "List Vnets as SXP"),)),
}


class Usage(Exception):
    """Wrong command line: print the message, then the usage, exit 1."""


def usage_text(cmd: str) -> str:
    """xm's cmdHelp layout: usage line, blank, description, option lines, blank."""
    args, desc, options = HELP[cmd]
    lines = [f"Usage: xm {cmd} {args}", "", desc]
    if options:
        for short, long_, text in options:
            optdesc = f"{short}, {long_}" if short and long_ else (short or long_)
            wrapped = textwrap.wrap(text, 43) or [""]
            lines.append(f"  {optdesc:<30} {wrapped[0]:<43}")
            lines.extend(" " * 33 + line for line in wrapped[1:])
        lines.append("")
    return "\n".join(lines) + "\n"


def err(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr)


def arg_check(args: list[str], name: str, count: int) -> None:
    # Xen 3.0.3 on says "requires 1 arguments." (protocol.md 10.2).
    if len([a for a in args if a != "--"]) != count:
        raise Usage(f"'xm {name}' requires {count} arguments.\n")


def vnet_commands_named(name: str) -> list[str]:
    """The vnet subcommands ``name`` stands for: itself, or those it is a prefix of when
    it is longer than one character and no other xm subcommand starts with it, as
    Xen's xm matches prefixes (protocol.md 10.3)."""
    if name in VNET_COMMANDS:
        return [name]
    if len(name) < 2 or any(other.startswith(name) for other in OTHER_XM_COMMANDS):
        return []
    return [cmd for cmd in VNET_COMMANDS if cmd.startswith(name)]


def not_found(name: str, matches: list[str], out) -> int:
    """An ambiguous prefix: Xen's message, then the subcommands it could mean."""
    err(f"Subcommand {name} not found!")
    out.write("Usage: xm <subcommand> [args]\n\nvnet subcommands starting with "
              f"{name!r}:\n\n")
    for cmd in matches:
        out.write(f" {cmd:<20} {HELP[cmd][1]:<50}\n")
    out.write("\n")
    out.flush()
    return 1


def vnet_list(server, args: list[str], out) -> None:
    try:
        options, params = getopt.gnu_getopt(args, "l", ["long"])
    except getopt.GetoptError as e:
        raise Usage(str(e)) from None
    use_long = any(k in ("-l", "--long") for k, _ in options)
    if params:
        use_long = True
        vnets = params
    else:
        vnets = server.xend_vnets()
    for vnet in vnets:
        if not use_long:
            print(vnet, file=out)
            continue
        try:
            out.write(sxp.pretty(server.xend_vnet(vnet)))
        except Exception as e:  # noqa: BLE001 - protocol.md 10.2: every exception, per id
            # Long mode reports per id and carries on, as legacy xm did.
            print(vnet, _legacy_str(e), file=out)


def _legacy_str(e: Exception) -> str:
    """str() of a Fault as Python 2's xmlrpclib printed it."""
    if isinstance(e, xmlrpc.client.Fault):
        return f"<Fault {e.faultCode}: {e.faultString!r}>"
    return str(e)


def vnet_create(server, args: list[str], out) -> None:
    arg_check(args, "vnet-create", 1)
    conf = next(a for a in args if a != "--")
    if not os.access(conf, os.R_OK):
        print(f"File not found: {conf}", file=out)
        raise SystemExit(1)
    server.xend_vnet_create(conf)


def vnet_delete(server, args: list[str], out) -> None:
    try:
        options, params = getopt.gnu_getopt(args, "", ["force"])
    except getopt.GetoptError as e:
        raise Usage(str(e)) from None
    arg_check(params, "vnet-delete", 1)
    if options:
        server.xend_vnet_delete(params[0], True)
    else:
        # Exactly what an unmodified xm sends.
        server.xend_vnet_delete(params[0])


COMMANDS = {"vnet-create": vnet_create, "vnet-delete": vnet_delete, "vnet-list": vnet_list}


def run_vnet_command(cmd: str, args: list[str], uri: str, out=None) -> int:
    out = sys.stdout if out is None else out
    try:
        server = server_proxy(uri)
        COMMANDS[cmd](server, args, out)
    except Usage as e:
        err(str(e))
        out.write(usage_text(cmd))
        return 1
    except xmlrpc.client.Fault as e:
        err(e.faultString)
        out.write(usage_text(cmd))
        return 1
    except xmlrpc.client.ProtocolError as e:
        print(f"Xend has probably crashed!  ProtocolError({e.errcode}, {e.errmsg}).",
              file=sys.stderr)
        return 1
    except (http.client.HTTPException, xmlrpc.client.ResponseError,
            xml.parsers.expat.ExpatError):
        print("Xend has probably crashed!  Invalid or missing HTTP status code.",
              file=sys.stderr)
        return 1
    except ValueError as e:
        err(str(e))
        return 1
    except OSError as e:
        if os.geteuid() != 0:
            err("Most commands need root access.  Please try again as root.")
        else:
            err(f"Unable to connect to xend: {e.strerror or e}. Is xend running?")
        return 1
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        out.flush()
    return 0


def own_path(argv0: str) -> str:
    """The real path of this program."""
    return os.path.realpath(shutil.which(argv0) or argv0)


def seen_xms() -> set[str]:
    """Real paths of the ``xm`` programs this pass-through chain already ran."""
    return {p for p in os.environ.get(SEEN_ENV, "").split(os.pathsep) if p}


def next_xm(argv0: str, path: str | None = None, seen: set[str] | None = None) -> str | None:
    """The first ``xm`` on PATH that is neither this program nor one already run in
    this chain (compared by real path)."""
    skip = {own_path(argv0)} | (seen or set())
    for directory in (path if path is not None else os.environ.get("PATH", "")).split(
            os.pathsep):
        candidate = os.path.join(directory or ".", "xm")
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        if os.path.realpath(candidate) not in skip:
            return candidate
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    cmd = argv[1] if len(argv) > 1 else None
    matches = vnet_commands_named(cmd) if cmd else []
    if len(matches) > 1:
        return not_found(cmd, matches, sys.stdout)
    if matches:
        if any(h in argv[2:] for h in HELP_OPTIONS):
            # Xen's xm looks for -h and --help anywhere before parsing (protocol.md 10.3).
            sys.stdout.write(usage_text(matches[0]))
            sys.stdout.flush()
            return 1
        return run_vnet_command(matches[0], argv[2:],
                                os.environ.get("XM_SERVER") or DEFAULT_URI)
    seen = seen_xms()
    other = next_xm(argv[0], seen=seen)
    if other is not None:
        # Two xend-vnet xm wrappers on PATH would otherwise hand the command to
        # each other forever: the next one skips every xm already run.
        seen |= {own_path(argv[0]), os.path.realpath(other)}
        env = dict(os.environ, **{SEEN_ENV: os.pathsep.join(sorted(seen))})
        os.execve(other, [other] + argv[1:], env)
    what = f"'xm {cmd}'" if cmd else "xm without a subcommand"
    err(f"{what} is not provided by xend-vnet, which serves only "
        f"{', '.join(VNET_COMMANDS)}, and no other xm was found on PATH; "
        "on an xl-era host use xl for domain commands")
    return 1


if __name__ == "__main__":
    sys.exit(main())
