"""The startup file (``vnetd -f``) as pure logic: forms in, commands out
(protocol.md 8.3, design.md 5).

The file lists ``vnet.add``, ``peer.add`` and ``varp.mcaddr`` forms.  At
start they are all applied; at a reload (SIGHUP) what is new is added and
what the file added before but no longer lists is removed, never what an
operator added by hand.  ``StartupFile`` remembers what the file added;
``plan`` says what to run for the forms just read and ``settle``, given
what succeeded, what to remove.  The engine reads the file and runs the
commands (engine.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ... import sxp
from ...vnet_id import VnetId, VnetIdError
from ..wire.codec import parse_ipv4

FILE_COMMANDS = ("vnet.add", "peer.add", "varp.mcaddr")  # protocol.md 8.3


class FileStep(NamedTuple):
    """One form of the file: a command to run, or a form ignored and why."""

    form: sxp.Sxpr
    problem: str | None = None   # set: the form is ignored (logged), nothing runs
    vnet: VnetId | None = None   # a vnet.add: the file's vnet once it succeeds
    peer: str | None = None      # a peer.add: listed once it succeeds
    new_peer: bool = False       # and the file's peer: it was not one before


class FilePlan(NamedTuple):
    steps: list[FileStep]
    listed_vnets: set[VnetId]    # every vnet the file lists, existing ones too


class StartupFile:
    """The vnets and peers the file added, so that a reload removes only those."""

    def __init__(self) -> None:
        self.vnets: set[VnetId] = set()
        self.peers: set[str] = set()

    def plan(self, forms: list[sxp.Sxpr], vnet_exists: Callable[[VnetId], bool],
             peer_exists: Callable[[str], bool]) -> FilePlan:
        """The steps for ``forms`` in file order: a vnet that exists (or that an
        earlier line adds) is listed but not added again."""
        steps: list[FileStep] = []
        listed: set[VnetId] = set()
        for form in forms:
            name = form[0] if isinstance(form, list) and form else None
            if name not in FILE_COMMANDS:
                steps.append(FileStep(form, "only " + ", ".join(FILE_COMMANDS)
                                      + " are accepted here"))
            elif name == "varp.mcaddr":
                steps.append(FileStep(form))
            elif name == "vnet.add":
                try:
                    vid = VnetId.parse(str(sxp.child_value(form, "id", "")))
                except VnetIdError as e:
                    steps.append(FileStep(form, str(e)))
                    continue
                if vid not in listed and not vnet_exists(vid):
                    steps.append(FileStep(form, vnet=vid))
                listed.add(vid)
            else:
                try:
                    addr = parse_ipv4(str(sxp.child_value(form, "addr", "")))
                except ValueError as e:
                    steps.append(FileStep(form, str(e)))
                    continue
                steps.append(FileStep(form, peer=addr, new_peer=not peer_exists(addr)))
        return FilePlan(steps, listed)

    def settle(self, plan: FilePlan, succeeded: list[FileStep],
               vnet_exists: Callable[[VnetId], bool]) -> list[sxp.Sxpr]:
        """Record what the file added (``succeeded``: the steps whose command
        succeeded); the commands that remove what it added before and no
        longer lists.  A peer whose peer.add failed is not listed."""
        listed_peers: set[str] = set()
        for step in succeeded:
            if step.vnet is not None:
                self.vnets.add(step.vnet)
            if step.peer is not None:
                listed_peers.add(step.peer)
                if step.new_peer:
                    self.peers.add(step.peer)
        removals: list[sxp.Sxpr] = []
        for vid in sorted(self.vnets - plan.listed_vnets):
            self.vnets.discard(vid)
            if vnet_exists(vid):
                removals.append(["vnet.del", ["id", vid.canonical]])
        for addr in sorted(self.peers - listed_peers):
            self.peers.discard(addr)
            removals.append(["peer.del", ["addr", addr]])
        return removals
