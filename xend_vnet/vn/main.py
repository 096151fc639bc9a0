"""``vn``: the legacy vnet control utility, talking to vnetd (protocol.md 13).

Subcommands, options and listing layouts follow the legacy tool: getopt
parsing (options before positionals), ``-`` and ``_`` alike in subcommand
names, listings pretty-printed as s-expressions, errors as ``vn: <message>``
with exit status 1, no arguments meaning ``help``.  Differences, all on
purpose: ``--help`` and ``-h`` are ``help`` too (the legacy tool refused
them); it talks to the engine's control socket (``$VNETD_SOCKET``, default
/var/run/vnetd.sock, or ``--control PATH``) and reports the engine's errors;
``peer-add -p`` takes a value (the legacy flag sent ``(port True)``);
``vnet-create`` keeps the TAP's own MAC (the legacy tool copied eth0's);
interface views come from netlink (pyroute2) in ifconfig's layout instead of
running ifconfig and brctl; ``insmod``/``rmmod`` start and stop vnetd;
``stats``, ``status`` and ``key-gen`` are new (design.md 6-7).

The command table is ``commands.py``; the commands live by job in
``listings.py``, ``links.py`` (interface views), ``manage.py`` (vnets, vifs,
peers), ``keys.py`` and ``module.py`` (insmod, rmmod).
"""

from __future__ import annotations

import getopt
import sys
from collections.abc import Sequence
from typing import TextIO

from .. import bridges
from .. import engine_launcher as launcher
from ..engine_client import EngineError
from ..process import default_control_path
from ..vnet_id import VnetIdError
from .commands import COMMANDS
from .session import PROG, UsageError, Vn


def run(argv: Sequence[str], out: TextIO) -> int:
    """vn with ``argv`` (without the program name); the exit status."""
    try:
        pairs, rest = getopt.getopt(list(argv), "h", ["control=", "help"])
    except getopt.GetoptError as e:
        raise UsageError(e.msg) from None
    control = default_control_path()
    for flag, value in pairs:
        if flag == "--control":
            control = value
    if not rest or any(flag in ("-h", "--help") for flag, _ in pairs):
        rest = ["help", *rest]      # vn --help is vn help, as no arguments are
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
