"""The ``EngineHost`` of the control commands (commands.py): vnets on their
data path, the VARP group, the engine's status (design.md 4-6).

A ``(data-path vnetd)`` vnet is a core vnet with a TAP on the user-space
path, its known unicast carried by the kernel path when it is clear and
that path is loaded (datapath/kernel/path.py, design.md 1.1); a
``(data-path vxlan)`` vnet is a kernel VXLAN device the core never sees.
The data paths raise their own ``DataPathError``; here it becomes the
``CommandError`` the caller reads, with the command's name where legacy
gave one.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ...vnet_id import VnetId
from ..core.engine import EngineCore
from ..datapath.addresses import HostAddresses
from ..datapath.interface import DataPath, DataPathError
from ..datapath.kernel.path import KernelPath
from ..datapath.kernel.shim import KernelPathUnavailable
from ..datapath.userspace import UserSpacePath
from ..datapath.vxlan.table import VxlanTable
from ..datapath.vxlan.vnets import VxlanVnets
from .commands import CommandError

log = logging.getLogger("vnetd")


@contextmanager
def _refused_as_command(prefix: str = "") -> Iterator[None]:
    """A data path's refusal as the command's error: ``prefix`` + its message."""
    try:
        yield
    except DataPathError as e:
        raise CommandError(e.errno, prefix + e.message) from None


class DataPathHost:
    """What the commands act on: the core and the three data paths."""

    def __init__(self, core: EngineCore, userspace: UserSpacePath, vxlan_vnets: VxlanVnets,
                 kernel: KernelPath, addresses: HostAddresses, *, version: str, control: str,
                 mtu: int, varp_ttl: float):
        self.core = core
        self.userspace = userspace
        self.vxlan_vnets = vxlan_vnets
        self.kernel = kernel
        self.addresses = addresses
        self.version = version
        self.control = control      # the control socket's path (engine.status)
        self.mtu = mtu
        self.varp_ttl = varp_ttl
        self.owners: dict[VnetId, str] = {}     # who manages a vnet (design.md 6)
        self.started_wall = time.time()
        self.started = time.monotonic()

    @property
    def paths(self) -> tuple[DataPath, ...]:
        return (self.kernel, self.userspace, self.vxlan_vnets)

    @property
    def device(self) -> str:
        return self.addresses.device

    @property
    def vxlan(self) -> VxlanTable:
        return self.vxlan_vnets.table

    def now(self) -> float:
        """The clock the core is driven with."""
        return time.monotonic()

    def has_vnet(self, vid: VnetId) -> bool:
        """On either data path."""
        return self.core.has_vnet(vid) or self.vxlan.get(vid) is not None

    def create_vnet(self, vid: VnetId, ifname: str, security: str,
                    key: bytes | None) -> None:
        """Create or reattach the vnet's persistent TAP, add the vnet to the
        core, then put it on the kernel path if it goes there (never refused:
        otherwise it stays in user space, and the status says why)."""
        with _refused_as_command():
            self.userspace.attach(vid, ifname)
        try:
            self.core.add_vnet(vid, ifname, security, key)
        except ValueError as e:
            self.userspace.undo_attach(vid)
            raise CommandError(errno.EINVAL, f"vnet.add: {e}") from None
        except BaseException:
            self.userspace.undo_attach(vid)
            raise
        self.kernel.attach(vid, ifname)
        log.info("vnet %s up on %s, security %s, %s", vid.canonical, ifname, security,
                 self.vnet_path(vid))

    def create_vxlan_vnet(self, vid: VnetId, ifname: str) -> None:
        """Create (or take over) the vnet's kernel VXLAN device (docs/vxlan.md)."""
        with _refused_as_command("vnet.add: "):
            self.vxlan_vnets.attach(vid, ifname)

    def delete_vnet(self, vid: VnetId) -> None:
        """Remove the vnet and delete its device (design.md 5)."""
        if self.vxlan_vnets.status(vid) is not None:
            with _refused_as_command("vnet.del: "):
                self.vxlan_vnets.detach(vid)
            return
        self.kernel.detach(vid)
        self.core.remove_vnet(vid)
        with _refused_as_command():
            self.userspace.detach(vid)

    def peers_changed(self) -> None:
        """Sync every VXLAN vnet's flood entries with the peers; a failure is
        logged and retried at the refresh."""
        self.vxlan_vnets.sync_floods()

    def set_mcaddr(self, addr: str, ttl: int | None) -> None:
        """Move to another VARP group (varp.mcaddr, protocol.md 3.1)."""
        with _refused_as_command():
            self.userspace.set_group(addr, ttl)
        self.core.set_mcaddr(addr)
        with _refused_as_command("varp.mcaddr: "):
            self.vxlan_vnets.move_group(addr)

    def vnet_path(self, vid: VnetId) -> str:
        """``kernel``, or ``user space: <why not the kernel>`` (vn status)."""
        if self.kernel.status(vid) is not None:
            return "kernel"
        return "user space: " + self.kernel.why_not(vid)

    def kernel_counters(self) -> dict[VnetId, dict[str, int]]:
        return self.kernel.vnet_counters()

    def purge_kernel(self) -> None:
        """Remove what the kernel path left in the kernel (vn rmmod --purge)."""
        try:
            self.kernel.purge()
        except KernelPathUnavailable as e:
            raise CommandError(errno.EIO, f"engine.purge: {e.reason}") from None

    def _kernel_status(self) -> list:
        kernel = self.kernel
        if kernel.loaded:
            state = "loaded" + (", adopted from the previous engine" if kernel.adopted else "")
        else:
            state = "unavailable: " + kernel.reason
        paths = [["vnet-path", ["id", v.vid.canonical], ["vnetif", v.ifname],
                  ["path", self.vnet_path(v.vid)]] for v in self.core.vnets()]
        paths += [["vnet-path", ["id", v.vid.canonical], ["vnetif", v.ifname],
                   ["path", "kernel VXLAN device (data-path vxlan)"]]
                  for v in self.vxlan.vnets()]
        paths.sort(key=lambda p: p[1][1])
        totals = [[name, str(n)] for name, n in kernel.counters().items()]
        return [["kernel-path", state], *totals, *paths]

    def status(self) -> list:
        """Children of the (engine.status) reply (design.md 6)."""
        now = time.monotonic()
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_wall))
        path = self.userspace
        udp = path.udp
        core = self.core
        return [
            ["pid", str(os.getpid())],
            ["version", self.version],
            ["started", started],
            ["uptime", str(int(now - self.started))],
            ["group-joined", "yes" if udp.joined else "no"],
            ["mcaddr", udp.mcaddr],
            ["port", str(udp.port)],
            ["address", core.self_address or ""],
            ["vnets", str(len(core.vnets()) + len(self.vxlan))],
            ["vxlan-vnets", str(len(self.vxlan))],
            ["vxlan-port", str(self.vxlan.port)],
            ["vxlan-control-plane", self.vxlan.control_plane],
            *([["vxlan-local", self.vxlan.local],
               ["vxlan-neigh-suppress",
                "yes" if self.vxlan_vnets.port_flags.neigh_suppress else "no"],
               ["vxlan-max-macs", str(self.vxlan_vnets.max_macs)],
               ["vxlan-stale-removed", str(self.vxlan_vnets.stale_removed)]]
              if self.vxlan.evpn else []),
            ["peers", str(len(core.peers))],
            ["remulticast", "yes" if path.raw is not None else "no"],
            ["etherip-receive", "yes" if path.etherip is not None else "no"],
            ["offload", "yes" if core.options.offload else "no"],
            ["tap-offload", "yes" if path.tap_offload else "no"],
            ["coalesced", str(path.counters()["coalesced"])],
            ["fast-peers"] + core.caps.addresses(now),
            ["control", self.control],
            ["mtu", str(self.mtu)],
            ["mcast-ttl", str(udp.mcast_ttl)],
            ["varp-ttl", f"{self.varp_ttl:g}"],
            ["rcvbuf", str(udp.rcvbuf)],
            ["sndbuf", str(udp.sndbuf)],
            ["io-dropped"] + [[k, str(v)] for k, v in sorted(core.counters.io_dropped.items())],
            *self._kernel_status(),
        ]
