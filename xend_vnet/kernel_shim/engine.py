"""The engine assembled: the core, its data paths, the control socket and
the startup file on one event loop (protocol.md 9.1, design.md 4-6).

``Engine(opts)`` builds everything without opening a socket; ``start``
opens them, loads the kernel path (or adopts what the last engine left,
design.md 1.1), applies the default vnets and the ``-f`` file; ``run``
serves until SIGTERM or SIGINT (SIGHUP re-reads the file); ``shutdown``
closes every socket and leaves the persistent TAPs on their bridges and the
kernel path's programs in the kernel (design.md 5).  A periodic refresh
follows the host's addresses, the VARP group, lost TAPs, the kernel path
and the VXLAN devices.

``XEND_VNET_REQUIRE_KERNEL_PATH=1`` in the environment makes a kernel path
that cannot load fatal instead of a fall back to user space (``make test``).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import time
from collections.abc import Callable

from .. import __version__, sxp
from .control import commands
from .control.commands import CommandError
from .control.config_file import StartupFile
from .control.drop_log import DropLog
from .control.host import DataPathHost
from .control.server import ControlServer, ControlSocketError
from .core.engine import CoreOptions, EngineCore
from .datapath.addresses import HostAddresses
from .datapath.kernel.path import KernelPath
from .datapath.kernel.shim import KernelShim, ShimConfig
from .datapath.loop import EventLoop
from .datapath.userspace import UserSpacePath
from .datapath.vxlan.vnets import VxlanVnets
from .datapath.vxlan.watch import NetlinkWatch
from .security import epoch_file
from .security.keystore import SecurityContext

log = logging.getLogger("vnetd")

VERSION_TEXT = f"vnetd 1.0 (xend-vnet {__version__})"
DEFAULT_VNETS = (2, 3, 4)          # protocol.md 1.3, design.md 4
ADDRESS_REFRESH = 5.0      # seconds between looks at the host's addresses
JOIN_RETRY = 1.0           # while the group is not joined (design.md 5)
DROP_LOG_INTERVAL = 1.0    # drop reasons are logged at most this often
REFRESH_ERROR_LOG_INTERVAL = 60.0
REQUIRE_KERNEL_PATH = "XEND_VNET_REQUIRE_KERNEL_PATH"


class StartupError(Exception):
    """vnetd cannot start; the message is for the operator."""


class Engine:
    """The engine of one network namespace, built from vnetd's options."""

    def __init__(self, opts: argparse.Namespace):
        self.opts = opts
        offload = not (opts.no_offload or opts.no_tap_offload)
        self.core = EngineCore(CoreOptions(mcaddr=opts.mcaddr, port=opts.port,
                                           varp_ttl=opts.varp_ttl, vif_ttl=opts.varp_ttl,
                                           offload=offload,
                                           min_gso_size=opts.min_gso_size),
                               self._security_context())
        self.loop = EventLoop()
        self.addresses = HostAddresses(self.core, opts.device, opts.address)
        self.userspace = UserSpacePath(self.core, self.loop, port=opts.port,
                                       mcast_ttl=opts.mcast_ttl, mtu=opts.mtu,
                                       tap_offload=not opts.no_tap_offload)
        self.vxlan_vnets = VxlanVnets(
            opts.vxlan_port, opts.mtu,
            group=lambda: self.core.mcaddr, mcast_ttl=lambda: self.userspace.udp.mcast_ttl,
            device=lambda: self.addresses.device,
            underlay_mtu=lambda: self.addresses.underlay_mtu,
            peers=lambda: [p.addr for p in self.core.peers],
            control_plane=opts.vxlan_control_plane, local=opts.vxlan_local,
            neigh_suppress=opts.vxlan_neigh_suppress, max_macs=opts.vxlan_max_macs)
        self.netlink_watch = NetlinkWatch() if self.vxlan_vnets.table.evpn else None
        self.kernel = KernelPath(
            self.core, self.loop, self.userspace,
            functools.partial(KernelShim.open, object_path=opts.kernel_object),
            off_reason="--no-kernel-path" if opts.no_kernel_path else None)
        self.kernel_required = (os.environ.get(REQUIRE_KERNEL_PATH) == "1"
                                and not opts.no_kernel_path)
        self.failure: str | None = None     # why the engine stopped on its own
        self.host = DataPathHost(self.core, self.userspace, self.vxlan_vnets, self.kernel,
                                 self.addresses, version=VERSION_TEXT, control=opts.control,
                                 mtu=opts.mtu, varp_ttl=opts.varp_ttl)
        self.startup_file = StartupFile()
        self.drop_log = DropLog()
        self.control: ControlServer | None = None
        self._next_refresh = 0.0
        self._next_drop_log = 0.0
        self._next_refresh_error_log = 0.0

    def _security_context(self) -> SecurityContext:
        opts = self.opts
        try:
            last_epoch = epoch_file.load(opts.epoch_file)
        except (OSError, ValueError) as e:
            # The wall clock still makes epochs grow (docs/security.md).
            log.warning("%s; epochs continue from the wall clock", e)
            last_epoch = 0
        security = SecurityContext.system(last_epoch, self._persist_epoch,
                                          opts.epoch_max_age, opts.epoch_lifetime)
        ahead = security.epoch_ahead_of_clock()
        if ahead > opts.epoch_max_age:
            log.error("the last epoch in %s is %.0f s ahead of the clock: hosts with a right "
                      "clock refuse this host's secured traffic as from the future; if the "
                      "clock is right now, stop vnetd and remove that file", opts.epoch_file,
                      ahead)
        return security

    def _persist_epoch(self, epoch: int) -> None:
        """Written before a new epoch is used (design.md 7); a failure is
        logged and the epoch used anyway, as the wall clock keeps it growing."""
        try:
            epoch_file.save(self.opts.epoch_file, epoch)
        except OSError as e:
            log.error("cannot save the epoch to %s: %s", self.opts.epoch_file, e.strerror)

    # -- start and stop ----------------------------------------------------------

    def start(self) -> None:
        opts = self.opts
        # A signal during startup waits for the loop.
        self.loop.watch_signals((signal.SIGTERM, signal.SIGINT, signal.SIGHUP),
                                self._on_signal)
        self._refresh_addresses()
        path = self.userspace
        try:
            path.open_udp(self.addresses.device_index)
            if opts.address:
                path.pin_source(self.addresses.source())
        except OSError as e:
            raise StartupError(f"cannot open UDP port {opts.port}: {e.strerror}") from None
        path.open_raw(self.addresses.device_index)
        path.join_group()
        if not self._configure_kernel(time.monotonic()):
            raise StartupError(self._kernel_fatal())
        self.loop.add_timer(self.kernel.pending, self.kernel.sync)
        self.control = ControlServer(opts.control, self.handle_request, self.loop.selector,
                                     opts.allow_foreign_netns)
        try:
            self.control.listen()
        except (ControlSocketError, OSError) as e:
            raise StartupError(str(e)) from None
        if self.netlink_watch is not None:
            try:
                self.loop.register(self.netlink_watch.open(), self._on_netlink)
            except OSError as e:
                raise StartupError("cannot watch the kernel's forwarding entries (EVPN): "
                                   f"{e.strerror}") from None
        self.loop.add_timer(self.core.next_timer, self._on_core_timer)
        self.loop.add_timer(self.control.next_deadline, self.control.expire)
        self.loop.add_timer(lambda: self._next_refresh, self._refresh)
        if not opts.no_default_vnets:
            for n in DEFAULT_VNETS:
                self._command(["vnet.add", ["id", f"{n:x}"]], f"default vnet {n}")
        if opts.file:
            self.load_file(initial=True)
        log.info("%s started: port %d, group %s, address %s, control %s", VERSION_TEXT,
                 opts.port, opts.mcaddr, self.core.self_address, opts.control)

    def run(self) -> None:
        self.loop.run()

    def shutdown(self) -> None:
        """Close every socket and detach the TAPs; the devices stay (design.md 5),
        and the kernel path's programs, maps and kernel ports stay in the
        kernel, so known unicast flows on until the next engine adopts them
        (docs/kernel-path.md 4).  The kernel path closes last: its last look
        at the bridges puts back on the kernel ports the entries the frames
        written into the TAPs moved to the TAPs' ports."""
        if self.control is not None:
            self.control.close()
        self.userspace.close()          # the last TAP write is behind us
        self.vxlan_vnets.close()
        self.kernel.close()
        if self.netlink_watch is not None:
            self.netlink_watch.close()
        self.loop.close()
        log.info("vnetd stopped")

    def _on_signal(self, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            log.info("signal %s: shutting down", signal.Signals(sig).name)
            self.loop.stop()
        elif sig == signal.SIGHUP:
            if self.opts.file:
                log.info("SIGHUP: re-reading %s", self.opts.file)
                self.load_file(initial=False)
            else:
                log.info("SIGHUP: no startup file (-f) to re-read")

    def _kernel_config(self) -> ShimConfig | None:
        """What the kernel path is loaded for; None while the host has no
        underlay device or address yet."""
        addresses = self.addresses
        if not addresses.device or not addresses.local_address:
            return None
        return ShimConfig(underlay=addresses.device, local_addr=addresses.local_address,
                          port=self.opts.port, mtu=self.opts.mtu)

    def _configure_kernel(self, now: float) -> bool:
        """Load the kernel path (again, when the underlay changed); False when
        it cannot load and XEND_VNET_REQUIRE_KERNEL_PATH=1 forbids running
        without it."""
        loaded = self.kernel.configure(self._kernel_config(), now)
        return loaded or not self.kernel_required

    def _kernel_fatal(self) -> str:
        return (f"the kernel path cannot load: {self.kernel.reason} "
                f"({REQUIRE_KERNEL_PATH}=1 forbids running in user space only; "
                "unset it, or start vnetd with --no-kernel-path)")

    def _on_netlink(self, _mask: int, _now: float) -> None:
        watch = self.netlink_watch
        events = watch.read()
        overflowed, watch.overflowed = watch.overflowed, False
        self.vxlan_vnets.netlink_events(events, overflowed)

    def _on_core_timer(self, now: float) -> None:
        self.userspace.perform(self.core.handle_timer(now))

    # -- control -----------------------------------------------------------------

    def handle_request(self, text: str) -> str:
        return commands.execute(self.host, text)

    def _command(self, form: sxp.Sxpr, what: str) -> bool:
        """Run one command as if from the control socket; log a failure."""
        try:
            commands.evaluate(self.host, form)
        except CommandError as e:
            log.error("%s: %s failed: %s", what, sxp.to_string(form), e.message)
            return False
        return True

    def load_file(self, initial: bool) -> None:
        """Apply the -f file; on reload add what is new, remove what it no longer
        lists (control/config_file.py)."""
        path = self.opts.file
        try:
            with open(path, encoding="utf-8") as f:
                forms = sxp.parse_all(f.read())
        except (OSError, UnicodeDecodeError, sxp.ParseError) as e:
            if initial:
                raise StartupError(f"cannot read {path}: {e}") from None
            log.error("cannot read %s: %s; nothing changed", path, e)
            return
        has_vnet = self.host.has_vnet
        plan = self.startup_file.plan(forms, has_vnet,
                                      lambda addr: self.core.peers.get(addr) is not None)
        succeeded = []
        for step in plan.steps:
            if step.problem is not None:
                log.error("%s: %s ignored: %s", path, sxp.to_string(step.form), step.problem)
            elif self._command(step.form, path):
                succeeded.append(step)
        for form in self.startup_file.settle(plan, succeeded, has_vnet):
            self._command(form, path)

    # -- periodic work -------------------------------------------------------------

    def _refresh_step(self, what: str, step: Callable[[], None]) -> None:
        """One step of the refresh: an unexpected failure (OSError EMFILE from
        IPRoute(), a bug) is logged, at most once a minute, and never stops the engine."""
        try:
            step()
        except Exception:  # noqa: BLE001 -- retried at the next refresh
            now = time.monotonic()
            if now >= self._next_refresh_error_log:
                self._next_refresh_error_log = now + REFRESH_ERROR_LOG_INTERVAL
                log.exception("refresh: %s failed (retried at the next refresh)", what)

    def _refresh(self, now: float) -> None:
        path = self.userspace
        self._refresh_step("reading the addresses", self._refresh_addresses)
        if path.taps.lost:
            self._refresh_step("recreating the TAPs",
                               lambda: path.taps.recreate_lost(self.core.has_vnet))
        if not self._configure_kernel(now):
            self.failure = self._kernel_fatal()
            log.error("%s", self.failure)
            self.loop.stop()
        self._refresh_step("refreshing the kernel path", lambda: self.kernel.refresh(now))
        if len(self.vxlan_vnets.table):
            self._refresh_step("checking the VXLAN devices", self.vxlan_vnets.refresh)
        path.check_group()
        index = self.addresses.device_index
        if path.raw is not None:
            self._refresh_step("choosing the raw socket's interface",
                               lambda: path.raw.set_interface(index))
        joined = path.rejoin(index)
        self._next_refresh = now + (ADDRESS_REFRESH if joined else JOIN_RETRY)
        if log.isEnabledFor(logging.DEBUG) and now >= self._next_drop_log:
            self.drop_log.log_growth(self.core)
            self._next_drop_log = now + DROP_LOG_INTERVAL
            self._next_refresh = min(self._next_refresh, self._next_drop_log)

    def _refresh_addresses(self) -> None:
        """Own addresses, care-of address and underlay MTU (datapath/addresses.py);
        with ``--address``, send from it when it is one of ours."""
        if self.addresses.refresh():
            self.userspace.set_underlay_mtu(self.addresses.underlay_mtu)
        if self.opts.address:
            self.userspace.pin_source(self.addresses.source())
