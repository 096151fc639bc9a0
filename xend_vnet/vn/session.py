"""One ``vn`` invocation: the engine's control socket, the output, and the
lookups every command shares (a vnet by id or interface name)."""

from __future__ import annotations

from typing import TextIO

from .. import sxp
from ..engine_client import EngineClient
from .formatting import find_vnet, sort_vnets

PROG = "vn"
EXIT_NOT_RUNNING = 3  # LSB status code for "program is not running"


Opts = dict[str, object]


class UsageError(Exception):
    """A command line vn cannot act on; the message is shown as ``vn: <message>``."""


class Vn:
    """One vn invocation: the control path, the output stream, the engine client."""

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

    def print_forms(self, forms: list[sxp.Sxpr], width: int = 80) -> None:
        for f in forms:
            self.write(sxp.pretty(f, width) + "\n")
