"""``vn insmod`` and ``vn rmmod``: the legacy module's load and unload,
starting and stopping vnetd (engine_launcher, design.md 5)."""

from __future__ import annotations

from collections.abc import Sequence

from .. import engine_launcher as launcher
from .session import Opts, UsageError, Vn


def parse_params(words: Sequence[str]) -> dict[str, str]:
    """``insmod`` parameters ``name=value`` (as for the legacy module), or
    vnetd's own options: ``--flag``, ``--name=value`` or ``--name value``."""
    params: dict[str, str] = {}
    words = list(words)
    while words:
        w = words.pop(0)
        if w.startswith("--"):
            name, eq, value = w[2:].partition("=")
            key = name.replace("-", "_")
            if not eq:
                takes = launcher.takes_value(key)
                if takes is None:
                    raise UsageError(f"unknown vnetd option {w} (vn insmod --list-params "
                                     "names them, as name=value)")
                if takes and not words:
                    raise UsageError(f"vnetd option {w} needs a value")
                value = words.pop(0) if takes else "yes"
            params[key] = value
            continue
        name, eq, value = w.partition("=")
        if not eq or not name:
            raise UsageError(f"invalid parameter {w!r}: expected name=value")
        params[name] = value
    return params


def op_insmod(vn: Vn, opts: Opts, args: list[str]) -> int:
    if opts["list-params"]:
        # One name a line: network-vnet picks the engine's parameters with it.
        vn.write("".join(f"{name}\n" for name in launcher.param_names()))
        return 0
    launcher.ensure_engine(vn.control_path, parse_params(args))
    return 0


def op_rmmod(vn: Vn, opts: Opts, args: list[str]) -> int:
    if not launcher.stop_engine(vn.control_path, purge=bool(opts["purge"])):
        raise UsageError(f"vnetd is not running (no engine for {vn.control_path})")
    return 0
