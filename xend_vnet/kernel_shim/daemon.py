"""vnetd: the tunnel engine daemon (protocol.md 9.1, design.md 4-6).

Owns every file descriptor of the engine (TAPs, the UDP socket, the raw
sockets for re-multicast and proto-97 receive, the control socket) and
runs one ``selectors`` event loop that moves bytes between them and the
sans-IO ``EngineCore``.  It also implements the
``EngineHost`` that control commands act on, and the daemon's life: one
engine per network namespace, pid file, startup file (``-f``) with
reconciliation on SIGHUP, clean shutdown on SIGTERM that keeps the
persistent TAPs on their bridges for the next start (design.md 5).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import resource
import selectors
import signal
import socket
import sys
import time
from collections.abc import Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .. import __version__, process, sdnotify, sxp
from ..engine_client import error_of
from ..process import DEFAULT_CONTROL, default_control_path
# Vnetd's pid file (design.md 5): the shared implementation.
from ..process import remove_pid_file as _remove_pid_file
from ..process import write_pid_file as _write_pid_file
from ..vnet_id import VnetId, VnetIdError
from .control import commands
from .wire.codec import ETH_HEADER_LEN, VARP_MCADDR, VARP_PORT, is_multicast, parse_ipv4
from .control.commands import CommandError
from .datapath.coalesce import coalesce
from .control.server import ControlServer, ControlSocketError
from .core.engine import (
    CoreOptions,
    DeliverFrame,
    DeliverOffload,
    EngineCore,
    SendFast,
    SendRaw,
    SendTrain,
    SendUdp,
)
from .wire.segments import (
    BYTES_PER_SEND,
    SEGMENT_HEADER_LEN,
    SEGMENTS_PER_SEND,
    UDP_IP_OVERHEAD,
    chunk_size,
    segment_sends,
)
from .wire.offload import MAX_PACKET, VNET_HDR_LEN, ZERO_VNET_HDR
from .datapath.raw import EtheripSocket, RawSender
from .datapath.tap import DEFAULT_MTU, TapDevice, TapError, delete_tap, open_tap
from .security import epoch_file
from .security.keystore import EPOCH_LIFETIME, EPOCH_MAX_AGE, SecurityContext
from .datapath.udp import EngineSocket
from .datapath.vxlan.table import DEFAULT_VXLAN_PORT
from .datapath.vxlan.vnets import VxlanVnets

log = logging.getLogger("vnetd")

VERSION_TEXT = f"vnetd 1.0 (xend-vnet {__version__})"
DEFAULT_EPOCH_FILE = "/var/lib/xend-vnet/vnetd.epoch"
# A frame plus the largest encapsulation (VFWD of a secured message) must fit
# in one UDP datagram (65,507 bytes).
MAX_MTU = 65000
LOCK_DIR = "/run/xend-vnet"        # root-owned: per-namespace engine locks
DEFAULT_VNETS = (2, 3, 4)          # protocol.md 1.3, design.md 4
FILE_COMMANDS = ("vnet.add", "peer.add", "varp.mcaddr")  # protocol.md 8.3
BATCH = 64                 # datagrams or frames drained per wakeup
# A wait longer than this leaves the engine's code out of the CPU caches, and
# the read that only meets EAGAIN then costs as much as the frame's own turn
# (~35 us here, docs/performance.md): after such a wait one frame is read per
# source, and the loop comes back at once, warm, if more are waiting.
IDLE_WAIT = 0.0005
ADDRESS_REFRESH = 5.0      # seconds between looks at the host's addresses
JOIN_RETRY = 1.0           # while the group is not joined (design.md 5)
DROP_LOG_INTERVAL = 1.0    # drop reasons are logged at most this often
DETACH_TIMEOUT = 30.0      # --daemon: how long the caller waits for the engine


class StartupError(Exception):
    """vnetd cannot start; the message is for the operator."""


def build_parser() -> argparse.ArgumentParser:
    """vnetd's command line; the launcher (engine_launcher) derives the
    ``vn insmod`` parameters from it.  Options that name files have the
    metavar PATH (the launcher compares those as paths)."""
    p = argparse.ArgumentParser(
        prog="vnetd", description="The xend-vnet tunnel engine (user-space vnet_module).")
    _network_options(p.add_argument_group("network"))
    _engine_options(p.add_argument_group("engine"))
    _process_options(p.add_argument_group("process"))
    return p


def _network_options(g) -> None:
    g.add_argument("--port", type=int, default=VARP_PORT, help="UDP port (default 1798)")
    g.add_argument("--vxlan-port", type=int, default=DEFAULT_VXLAN_PORT,
                   help="UDP port of vnets on the kernel VXLAN data path (default 4789; "
                        "docs/vxlan.md)")
    g.add_argument("-a", "--mcaddr", "--varp_mcaddr", dest="mcaddr", default=VARP_MCADDR,
                   help="VARP multicast group (default 224.10.0.1)")
    g.add_argument("--mcast-ttl", type=int, default=1, help="multicast TTL (default 1)")
    g.add_argument("--address", help="care-of address to announce (default: from the host); "
                   "behind NAT, the address peers should use")
    g.add_argument("--device", "--varp_device", dest="device",
                   help="interface whose address the engine uses and joins the group on")


def _engine_options(g) -> None:
    g.add_argument("--mtu", type=int, default=DEFAULT_MTU,
                   help="MTU of the vnet TAPs (default 1500; guests do best with 1436, "
                        "or the legacy advice 1400, to avoid fragmented outer packets)")
    g.add_argument("--no-offload", action="store_true",
                   help="legacy framing only: one frame per datagram with plain checksums, "
                        "no fast framing toward other engines (docs/performance.md)")
    g.add_argument("--no-tap-offload", action="store_true",
                   help="TAPs without offloads: one frame per read and per write, no "
                        "receive coalescing (implies --no-offload)")
    g.add_argument("--no-default-vnets", action="store_true",
                   help="do not create vnets 2, 3 and 4 at start")
    g.add_argument("--varp-ttl", type=float, default=60.0, metavar="SECONDS",
                   help="VARP cache and vif entry lifetime (default 60)")
    g.add_argument("--epoch-file", metavar="PATH",
                   help="where secured vnets keep their last epoch (default "
                        f"{DEFAULT_EPOCH_FILE}, or <control>.epoch for another control socket)")
    g.add_argument("--epoch-max-age", type=float, default=EPOCH_MAX_AGE, metavar="SECONDS",
                   help="secured traffic of older epochs is refused (default 900)")
    g.add_argument("--epoch-lifetime", type=float, default=EPOCH_LIFETIME, metavar="SECONDS",
                   help="senders start a new epoch this often (default 600)")
    g.add_argument("-f", "--file", metavar="PATH",
                   help="startup file: vnet.add, peer.add, varp.mcaddr forms")


def _process_options(g) -> None:
    g.add_argument("--control", metavar="PATH", default=default_control_path(),
                   help="control socket (default $VNETD_SOCKET or %(default)s)")
    g.add_argument("--pid-file", metavar="PATH", help="pid file (default <control>.pid)")
    g.add_argument("--daemon", action="store_true",
                   help="detach; return once the control socket answers")
    g.add_argument("--log-file", metavar="PATH",
                   help="log here (default stderr; /dev/null with --daemon)")
    g.add_argument("-V", "--verbose", action="store_true", help="debug logging")
    g.add_argument("--log-level", default=None,
                   choices=["debug", "info", "warning", "error"], help="log level")
    g.add_argument("--allow-foreign-netns", action="store_true",
                   help="accept control callers from other network namespaces")
    g.add_argument("-v", "--version", action="version", version=VERSION_TEXT)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    opts = p.parse_args(argv)
    for problem in (*_number_problems(opts), *_address_problems(opts)):
        p.error(problem)
    if opts.pid_file is None:
        opts.pid_file = opts.control + ".pid"
    if opts.epoch_file is None:
        # The default engine keeps its epoch where reboots do not clear it
        # (/var/run is a tmpfs); engines with their own socket keep it beside it.
        opts.epoch_file = (DEFAULT_EPOCH_FILE if opts.control == DEFAULT_CONTROL
                           else opts.control + ".epoch")
    return opts


def _number_problems(opts: argparse.Namespace) -> Iterator[str]:
    if not 0 < opts.port < 65536:
        yield f"invalid --port {opts.port}: expected 1 to 65535"
    if not 0 < opts.vxlan_port < 65536:
        yield f"invalid --vxlan-port {opts.vxlan_port}: expected 1 to 65535"
    if opts.vxlan_port in (opts.port, VARP_PORT):
        # The kernel would take the vnet datagrams of every host (legacy ones too).
        yield (f"invalid --vxlan-port {opts.vxlan_port}: it is the vnet port; "
               f"choose another (default {DEFAULT_VXLAN_PORT})")
    if not 0 <= opts.mcast_ttl <= 255:
        yield f"invalid --mcast-ttl {opts.mcast_ttl}: expected 0 to 255"
    if not 68 <= opts.mtu <= MAX_MTU:
        yield f"invalid --mtu {opts.mtu}: expected 68 to {MAX_MTU}"
    if not opts.varp_ttl > 0:
        yield f"invalid --varp-ttl {opts.varp_ttl}: expected a positive number of seconds"
    if not 0 < opts.epoch_lifetime < opts.epoch_max_age:
        yield "invalid --epoch-lifetime/--epoch-max-age: expected 0 < lifetime < max age"


def _address_problems(opts: argparse.Namespace) -> Iterator[str]:
    """Checks --mcaddr and --address, leaving them in canonical form."""
    for name in ("mcaddr", "address"):
        value = getattr(opts, name)
        if value is not None:
            try:
                setattr(opts, name, parse_ipv4(value))
            except ValueError:
                yield f"invalid --{name} {value!r}: expected a dotted-quad IPv4 address"
                return
    if not is_multicast(opts.mcaddr):
        yield (f"invalid --mcaddr {opts.mcaddr}: expected a multicast address "
               "(224.0.0.0 to 239.255.255.255)")


class NetnsLock:
    """One engine per network namespace (design.md 5).

    An flock on a root-owned file named after the namespace's inode: unlike
    an abstract socket name, which any local user may bind first, nobody
    without root can take it, and the kernel drops it when vnetd dies."""

    def __init__(self, fd: int, path: str):
        self.fd = fd
        self.path = path

    def close(self) -> None:
        if self.fd >= 0:
            # Unlink while still holding it: a vnetd that opened the old file
            # meanwhile sees it is no longer the path's file and tries again.
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = -1


def take_netns_lock(lock_dir: str = LOCK_DIR) -> NetnsLock:
    try:
        ns = os.stat("/proc/self/ns/net")
        os.makedirs(lock_dir, mode=0o755, exist_ok=True)
        if os.lstat(lock_dir).st_uid != os.geteuid():
            raise StartupError(f"cannot take the engine lock: {lock_dir} is not owned by "
                               "this user; remove it")
        path = os.path.join(lock_dir, f"vnetd-netns-{ns.st_dev}-{ns.st_ino}.lock")
    except OSError as e:
        raise StartupError(f"cannot take the engine lock in {lock_dir}: {e.strerror}") from None
    for _attempt in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise StartupError(f"cannot take the engine lock {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            shown = f" (pid {holder})" if holder.isdigit() else ""
            raise StartupError("another vnetd is already running in this network namespace"
                               + shown) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)     # the holder unlinked it as we opened it: take the new one
    else:
        raise StartupError(f"cannot take the engine lock {path}: it keeps changing")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return NetnsLock(fd, path)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Vnetd:
    """The engine: event loop, adapters, and the EngineHost of commands.py."""

    def __init__(self, opts: argparse.Namespace):
        self.opts = opts
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
        self.offload = not (opts.no_offload or opts.no_tap_offload)
        self.tap_offload = not opts.no_tap_offload
        self.core = EngineCore(CoreOptions(mcaddr=opts.mcaddr, port=opts.port,
                                           varp_ttl=opts.varp_ttl, vif_ttl=opts.varp_ttl,
                                           offload=self.offload),
                               security)
        self.selector = selectors.DefaultSelector()
        self.taps: dict[VnetId, TapDevice] = {}
        # Vnets on the kernel VXLAN data path (vxlan_vnets.py); ``vxlan`` is their
        # table, the EngineHost's view of them.
        self.vxlan_vnets = VxlanVnets(
            opts.vxlan_port, opts.mtu,
            group=lambda: self.core.mcaddr, mcast_ttl=lambda: self.udp.mcast_ttl,
            device=lambda: self.device, underlay_mtu=lambda: self.underlay_mtu,
            peers=lambda: [p.addr for p in self.core.peers])
        self.vxlan = self.vxlan_vnets.table
        self.lost_taps: dict[VnetId, str] = {}     # deleted from outside, to recreate
        self.udp: EngineSocket | None = None
        self.raw: RawSender | None = None
        self.etherip: EtheripSocket | None = None
        self.control: ControlServer | None = None
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.io_dropped: dict[str, int] = {}
        self.coalesced = 0          # frames that reached a TAP inside a merged one
        self.batch = BATCH          # reads per source this turn (1 after an idle wait)
        self.file_vnets: set[VnetId] = set()
        self.file_peers: set[str] = set()
        self._stopping = False
        self._signal_r = -1
        self._next_refresh = 0.0
        self._next_drop_log = 0.0
        self._next_error_log = 0.0
        self._next_refresh_error_log = 0.0
        self._drop_snapshot: dict[str, int] = {}
        self._device_index = 0
        self.device = opts.device or ""   # shown as (device ...) by varp.list
        self.max_frame = opts.mtu + ETH_HEADER_LEN + 4   # room for one 802.1Q tag
        self.underlay_mtu = DEFAULT_MTU   # of the device the group is on; sizes segments
        self._udp_segment_works = True
        self._chunk = chunk_size(DEFAULT_MTU)

    def now(self) -> float:
        """The clock the core is driven with."""
        return time.monotonic()

    def _persist_epoch(self, epoch: int) -> None:
        """Written before a new epoch is used (design.md 7); a failure is
        logged and the epoch used anyway, as the wall clock keeps it growing."""
        try:
            epoch_file.save(self.opts.epoch_file, epoch)
        except OSError as e:
            log.error("cannot save the epoch to %s: %s", self.opts.epoch_file, e.strerror)

    # -- EngineHost ----------------------------------------------------------

    def create_vnet(self, vid: VnetId, ifname: str, security: str,
                    key: bytes | None) -> None:
        """Create or reattach the vnet's persistent TAP, then add the vnet to the core."""
        try:
            # Offloads at every security level unless --no-tap-offload (wire/offload.py).
            tap = open_tap(ifname, self.opts.mtu, self.tap_offload)
        except TapError as e:
            raise CommandError(e.errno, e.message) from None
        try:
            self.core.add_vnet(vid, ifname, security, key)
        except ValueError as e:
            self._discard_new_tap(tap)
            raise CommandError(errno.EINVAL, f"vnet.add: {e}") from None
        except BaseException:
            self._discard_new_tap(tap)
            raise
        self._watch_tap(vid, tap)
        log.info("vnet %s up on %s, security %s", vid.canonical, ifname, security)

    @staticmethod
    def _discard_new_tap(tap: TapDevice) -> None:
        """A failed vnet.add leaves nothing behind (design.md 4): a TAP this
        call created goes, one that was reattached stays for its owner."""
        if tap.created:
            try:
                delete_tap(tap)
            except TapError as e:
                log.warning("%s", e.message)
        else:
            tap.close()

    def _watch_tap(self, vid: VnetId, tap: TapDevice) -> None:
        self.taps[vid] = tap
        self.selector.register(tap.fd, selectors.EVENT_READ,
                               lambda mask, now, vid=vid, tap=tap: self._on_tap(vid, tap, now))

    def _tap_lost(self, vid: VnetId, tap: TapDevice, error: TapError) -> None:
        """The device was deleted from outside: stop reading it, keep the vnet,
        and make the TAP again at the next refresh (xend-vnet re-enslaves it)."""
        self.selector.unregister(tap.fd)
        tap.close()
        self.taps.pop(vid, None)
        self.lost_taps[vid] = tap.ifname
        self._io_drop("tap_lost")
        log.warning("vnet %s: %s; recreating it", vid.canonical, error.message)

    def _recreate_lost_taps(self) -> None:
        for vid, ifname in list(self.lost_taps.items()):
            if not self.core.has_vnet(vid):
                del self.lost_taps[vid]
                continue
            try:
                tap = open_tap(ifname, self.opts.mtu, self.tap_offload)
            except TapError as e:
                log.warning("vnet %s: cannot recreate %s yet: %s", vid.canonical, ifname,
                            e.message)
                continue
            del self.lost_taps[vid]
            self._watch_tap(vid, tap)
            log.info("vnet %s: %s recreated", vid.canonical, ifname)

    def delete_vnet(self, vid: VnetId) -> None:
        """Remove the vnet from the core and delete its TAP (design.md 5)."""
        if self.vxlan.get(vid) is not None:
            self.vxlan_vnets.delete(vid)
            return
        self.core.remove_vnet(vid)
        tap = self.taps.pop(vid, None)
        if tap is None:
            return
        self.selector.unregister(tap.fd)
        try:
            delete_tap(tap)
        except TapError as e:
            raise CommandError(e.errno, e.message) from None
        log.info("vnet %s deleted with %s", vid.canonical, tap.ifname)

    def set_mcaddr(self, addr: str, ttl: int | None) -> None:
        """Move to another VARP group (varp.mcaddr, protocol.md 3.1)."""
        try:
            joined = self.udp.set_group(addr, ttl)
        except OSError as e:
            raise CommandError(errno.EINVAL, f"invalid multicast group {addr!r}: {e}") from None
        self.core.set_mcaddr(addr)
        if joined:
            log.info("joined VARP group %s", addr)
        else:
            log.warning("cannot join VARP group %s yet (%s); retrying", addr, self.udp.join_error)
        self.vxlan_vnets.move_group(addr)

    # -- the kernel VXLAN data path (vxlan_vnets.py, docs/vxlan.md) -----------------

    def _has_vnet(self, vid: VnetId) -> bool:
        return self.core.has_vnet(vid) or self.vxlan.get(vid) is not None

    def create_vxlan_vnet(self, vid: VnetId, ifname: str) -> None:
        """Create (or take over) the vnet's kernel VXLAN device (vxlan_vnets.py)."""
        self.vxlan_vnets.create(vid, ifname)

    def peers_changed(self) -> None:
        """Sync every VXLAN vnet's flood entries with the peers; a failure is
        logged and retried at the refresh."""
        self.vxlan_vnets.sync_floods()

    def status(self) -> list:
        """Children of the (engine.status) reply (design.md 6)."""
        now = time.monotonic()
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_wall))
        udp = self.udp
        return [
            ["pid", str(os.getpid())],
            ["version", VERSION_TEXT],
            ["started", started],
            ["uptime", str(int(now - self.started))],
            ["group-joined", "yes" if udp.joined else "no"],
            ["mcaddr", udp.mcaddr],
            ["port", str(udp.port)],
            ["address", self.core.self_address or ""],
            ["vnets", str(len(self.core.vnets()) + len(self.vxlan))],
            ["vxlan-vnets", str(len(self.vxlan))],
            ["vxlan-port", str(self.vxlan.port)],
            ["peers", str(len(self.core.peers))],
            ["remulticast", "yes" if self.raw is not None else "no"],
            ["etherip-receive", "yes" if self.etherip is not None else "no"],
            ["offload", "yes" if self.offload else "no"],
            ["tap-offload", "yes" if self.tap_offload else "no"],
            ["coalesced", str(self.coalesced)],
            ["fast-peers"] + self.core.caps.addresses(now),
            ["control", self.opts.control],
            ["mtu", str(self.opts.mtu)],
            ["mcast-ttl", str(udp.mcast_ttl)],
            ["varp-ttl", f"{self.opts.varp_ttl:g}"],
            ["rcvbuf", str(udp.rcvbuf)],
            ["sndbuf", str(udp.sndbuf)],
            ["io-dropped"] + [[k, str(v)] for k, v in sorted(self.io_dropped.items())],
        ]

    # -- start and stop ----------------------------------------------------------

    def start(self) -> None:
        opts = self.opts
        self._setup_signals()   # a signal during startup waits for the loop
        self._refresh_addresses()
        try:
            self.udp = EngineSocket(opts.port, opts.mcaddr, opts.mcast_ttl, self._device_index,
                                    gro=self.tap_offload)
            if opts.address:
                self._pin_source()
        except OSError as e:
            raise StartupError(f"cannot open UDP port {opts.port}: {e.strerror}") from None
        self.selector.register(self.udp.sock, selectors.EVENT_READ, self._on_udp)
        self._open_raw_sockets()
        if self.udp.try_join():
            log.info("joined VARP group %s", opts.mcaddr)
        else:
            log.warning("cannot join VARP group %s yet (%s); retrying",
                        opts.mcaddr, self.udp.join_error)
        self.control = ControlServer(opts.control, self.handle_request, self.selector,
                                     opts.allow_foreign_netns)
        try:
            self.control.listen()
        except (ControlSocketError, OSError) as e:
            raise StartupError(str(e)) from None
        if not opts.no_default_vnets:
            for n in DEFAULT_VNETS:
                self._command(["vnet.add", ["id", f"{n:x}"]], f"default vnet {n}")
        if opts.file:
            self.load_file(initial=True)
        _write_pid_file(opts.pid_file)
        log.info("%s started: port %d, group %s, address %s, control %s", VERSION_TEXT,
                 opts.port, opts.mcaddr, self.core.self_address, opts.control)

    def shutdown(self) -> None:
        """Close every socket and detach the TAPs; the devices stay (design.md 5)."""
        if self.control is not None:
            self.control.close()
        if self.udp is not None:
            self.udp.close()
        for raw in (self.raw, self.etherip):
            if raw is not None:
                raw.close()
        for tap in self.taps.values():
            tap.close()
        self.taps.clear()
        _remove_pid_file(self.opts.pid_file)
        log.info("vnetd stopped")

    def _setup_signals(self) -> None:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._signal_r = r
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, _ignore_signal)  # the wakeup fd carries the number
        self.selector.register(r, selectors.EVENT_READ, self._on_signal)

    def _on_signal(self, _mask: int, _now: float) -> None:
        try:
            data = os.read(self._signal_r, 64)
        except BlockingIOError:
            return
        for sig in data:
            if sig in (signal.SIGTERM, signal.SIGINT):
                log.info("signal %s: shutting down", signal.Signals(sig).name)
                self._stopping = True
            elif sig == signal.SIGHUP:
                if self.opts.file:
                    log.info("SIGHUP: re-reading %s", self.opts.file)
                    self.load_file(initial=False)
                else:
                    log.info("SIGHUP: no startup file (-f) to re-read")

    # -- control -----------------------------------------------------------------

    def handle_request(self, text: str) -> str:
        return commands.execute(self, text)

    def _command(self, form: list, what: str) -> bool:
        """Run one command as if from the control socket; log a failure."""
        reply = commands.execute(self, sxp.to_string(form))
        try:
            forms = sxp.parse_all(reply)
        except sxp.ParseError:
            forms = []
        for f in forms:
            err = error_of(f)
            if err is not None:
                log.error("%s: %s failed: %s", what, sxp.to_string(form), err.message)
                return False
        return True

    def load_file(self, initial: bool) -> None:
        """Apply the -f file; on reload add what is new, remove what it no longer lists."""
        path = self.opts.file
        try:
            with open(path, encoding="utf-8") as f:
                forms = sxp.parse_all(f.read())
        except (OSError, UnicodeDecodeError, sxp.ParseError) as e:
            if initial:
                raise StartupError(f"cannot read {path}: {e}") from None
            log.error("cannot read %s: %s; nothing changed", path, e)
            return
        listed_vnets: set[VnetId] = set()
        listed_peers: set[str] = set()
        for form in forms:
            name = form[0] if isinstance(form, list) and form else None
            if name not in FILE_COMMANDS:
                log.error("%s: %s ignored: only %s are accepted here", path,
                          sxp.to_string(form), ", ".join(FILE_COMMANDS))
                continue
            if name == "varp.mcaddr":
                self._command(form, path)
            elif name == "vnet.add":
                try:
                    vid = VnetId.parse(str(sxp.child_value(form, "id", "")))
                except VnetIdError as e:
                    log.error("%s: %s ignored: %s", path, sxp.to_string(form), e)
                    continue
                listed_vnets.add(vid)
                if not self._has_vnet(vid) and self._command(form, path):
                    self.file_vnets.add(vid)
            else:
                try:
                    addr = parse_ipv4(str(sxp.child_value(form, "addr", "")))
                except ValueError as e:
                    log.error("%s: %s ignored: %s", path, sxp.to_string(form), e)
                    continue
                known = self.core.peers.get(addr) is not None
                if self._command(form, path):
                    listed_peers.add(addr)
                    if not known:
                        self.file_peers.add(addr)
        for vid in sorted(self.file_vnets - listed_vnets):
            self.file_vnets.discard(vid)
            if self._has_vnet(vid):
                self._command(["vnet.del", ["id", vid.canonical]], path)
        for addr in sorted(self.file_peers - listed_peers):
            self.file_peers.discard(addr)
            self._command(["peer.del", ["addr", addr]], path)

    # -- event loop ----------------------------------------------------------------

    def run(self) -> None:
        select = self.selector.select
        control = self.control
        while not self._stopping:
            now = time.monotonic()
            deadline = self._next_refresh
            timer = self.core.next_timer()
            if timer is not None and timer < deadline:
                deadline = timer
            conn_deadline = control.next_deadline()
            if conn_deadline is not None and conn_deadline < deadline:
                deadline = conn_deadline
            events = select(max(0.0, deadline - now))
            before, now = now, time.monotonic()
            self.batch = 1 if now - before > IDLE_WAIT else BATCH
            for key, mask in events:
                key.data(mask, now)
            timer = self.core.next_timer()
            if timer is not None and timer <= now:
                self._perform(self.core.handle_timer(now))
            conn_deadline = control.next_deadline()
            if conn_deadline is not None and conn_deadline <= now:
                control.expire(now)
            if now >= self._next_refresh:
                self._refresh(now)

    def _on_udp(self, _mask: int, now: float) -> None:
        """A batch of receives.  With TAP offloads, the frames of a UDP_GRO train,
        or of single datagrams read in a row, are coalesced like GRO would
        (coalesce.py) before they are written; a train is written before the
        next receive is looked at, so nothing waits for the whole batch."""
        receive = self.core.receive_udp
        receive_train = self.core.receive_train
        pending: list = []       # actions of single datagrams, not yet performed
        for payload, src, dst, gso in self.udp.recv_batch(self.batch):
            try:
                if gso:
                    self._perform_coalesced(pending)
                    pending = []
                    self._perform_coalesced(receive_train(payload, gso, src, dst, now))
                else:
                    pending += receive(payload, src, dst, now)
            except Exception:  # noqa: BLE001 -- one bad datagram must not stop the engine
                self._engine_error("datagram from " + src)
        self._perform_coalesced(pending)

    def _perform_coalesced(self, actions: list) -> None:
        """``_perform`` after merging what coalesce.py can merge."""
        if len(actions) > 1 and self.tap_offload:
            try:
                actions, merged = coalesce(actions, self.max_frame)
            except Exception:  # noqa: BLE001 -- then the frames go unmerged
                self._engine_error("batch to coalesce", "written unmerged")
            else:
                self.coalesced += merged
        if actions:
            self._perform(actions)

    def _open_raw_sockets(self) -> None:
        """Re-multicast of VFWD and proto-97 receive (protocol.md 4.3, 7); without
        CAP_NET_RAW the engine runs on and the status says so."""
        try:
            self.raw = RawSender(self._device_index)
        except OSError as e:
            log.warning("no raw socket for re-multicasting peer traffic (%s): hosts on "
                        "this link learn forwarded senders only through this engine",
                        e.strerror)
        try:
            self.etherip = EtheripSocket()
        except OSError as e:
            log.warning("no raw socket for etherip (IP protocol 97) receive: %s", e.strerror)
            return
        self.selector.register(self.etherip.sock, selectors.EVENT_READ, self._on_etherip)

    def _on_etherip(self, _mask: int, now: float) -> None:
        receive = self.core.receive_etherip
        for packet, src, dst in self.etherip.recv_batch(self.batch):
            try:
                actions = receive(packet, src, dst, now)
            except Exception:  # noqa: BLE001 -- one bad packet must not stop the engine
                self._engine_error("proto-97 packet from " + src)
                continue
            if actions:
                self._perform(actions)

    def _on_tap(self, vid: VnetId, tap: TapDevice, now: float) -> None:
        receive = self.core.receive_tap
        perform = self._perform
        try:
            frames = tap.read_batch(self.batch)
        except TapError as e:
            self._tap_lost(vid, tap, e)
            return
        if tap.vnet_hdr:
            self._on_offload_frames(vid, tap, frames, now)
            return
        for frame in frames:
            try:
                actions = receive(vid, frame, now)
            except Exception:  # noqa: BLE001 -- one bad frame must not stop the engine
                self._engine_error("frame from " + tap.ifname)
                continue
            if actions:
                perform(actions)

    def _on_offload_frames(self, vid: VnetId, tap: TapDevice, packets: list[bytes],
                           now: float) -> None:
        """Frames behind a virtio_net_hdr: an all-zero header is a plain frame,
        any other goes to the core with it (wire/offload.py)."""
        receive = self.core.receive_tap
        perform = self._perform
        for packet in packets:
            try:
                if packet.startswith(ZERO_VNET_HDR):
                    actions = receive(vid, packet[VNET_HDR_LEN:], now)
                else:
                    actions = receive(vid, packet[VNET_HDR_LEN:], now, packet)
            except Exception:  # noqa: BLE001 -- one bad frame must not stop the engine
                self._engine_error("frame from " + tap.ifname)
                continue
            if actions:
                perform(actions)

    def _perform(self, actions: list) -> None:
        sendto = self.udp.send_to
        port = self.udp.port
        max_frame = self.max_frame
        for action in actions:
            if action.__class__ is SendUdp:
                try:
                    sendto(action.payload, (action.dst_ip, port))
                except OSError as e:
                    self._io_error("udp_send_", e)
            elif action.__class__ is DeliverFrame:
                if len(action.frame) > max_frame:
                    self._io_drop("frame_too_big")   # larger than the vnet's MTU allows
                    continue
                tap = self.taps.get(action.vid)
                if tap is None:
                    self._io_drop("tap_missing")
                    continue
                try:
                    if tap.vnet_hdr:
                        os.writev(tap.fd, (ZERO_VNET_HDR, action.frame))
                    else:
                        os.write(tap.fd, action.frame)
                except OSError as e:
                    self._io_error("tap_write_", e)
            elif action.__class__ is SendTrain:
                self._send_train(action)
            elif action.__class__ is SendFast:
                self._send_fast(action)
            elif action.__class__ is DeliverOffload:
                tap = self.taps.get(action.vid)
                if tap is None or not tap.vnet_hdr:
                    self._io_drop("tap_missing" if tap is None else "offload_on_plain_tap")
                    continue
                if len(action.packet) > MAX_PACKET:
                    self._io_drop("frame_too_big")
                    continue
                try:
                    os.write(tap.fd, action.packet)
                except OSError as e:
                    self._io_error("tap_write_", e)
            elif action.__class__ is SendRaw:
                if self.raw is None:
                    self._io_drop("raw_unavailable")
                    continue
                try:
                    self.raw.send(action.packet, action.dst_ip)
                except OSError as e:
                    self._io_error("raw_send_", e)
            else:
                log.error("unknown engine action %r", action)

    def _send_train(self, action: SendTrain) -> None:
        """Plain datagrams of one super-frame: trains of equal ones that fit the
        underlay go with one sendmsg each (UDP_SEGMENT), others one by one."""
        payloads = action.payloads
        size = len(payloads[0])
        at = 0
        if size + UDP_IP_OVERHEAD <= self.underlay_mtu and self._udp_segment_works:
            per_send = min(SEGMENTS_PER_SEND, BYTES_PER_SEND // size)
            send = self.udp.send_segments
            while at < len(payloads):
                chunk = payloads[at:at + per_send]
                try:
                    send(chunk, action.dst_ip, size)
                except OSError as e:
                    if e.errno == errno.EINVAL or e.errno == errno.EMSGSIZE:
                        break     # the path to it is narrower: this train one by one
                    if e.errno in (errno.ENOPROTOOPT, errno.EIO):
                        log.warning("UDP_SEGMENT refused (%s): plain trains go one "
                                    "datagram at a time", e.strerror)
                        self._udp_segment_works = False
                        break
                    for _ in chunk:
                        self._io_error("udp_send_", e)
                at += len(chunk)
        sendto = self.udp.send_to
        addr = (action.dst_ip, self.udp.port)
        for payload in payloads[at:]:
            try:
                sendto(payload, addr)
            except OSError as e:
                self._io_error("udp_send_", e)

    def _send_fast(self, action: SendFast) -> None:
        """The segments of one frame, one sendmsg per UDP_SEGMENT train."""
        chunk = self._chunk
        send = self.udp.send_segments
        try:
            for iov in segment_sends(action.vid_raw, action.frame_id, action.packet, chunk,
                                     action.opcode):
                send(iov, action.dst_ip, chunk + SEGMENT_HEADER_LEN)
        except ValueError:
            self._io_drop("fast_too_big")
        except OSError as e:
            self._io_error("udp_send_", e)

    def _io_error(self, what: str, e: OSError) -> None:
        """Count a failed send or write under ``what`` + the errno name (udp_send_enobufs)."""
        self._io_drop(what + errno.errorcode.get(e.errno, "error").lower())

    def _io_drop(self, reason: str) -> None:
        self.io_dropped[reason] = self.io_dropped.get(reason, 0) + 1

    def _engine_error(self, what: str, outcome: str = "dropped") -> None:
        """Count a core failure; log the first of each second with its traceback."""
        self._io_drop("engine_error")
        now = time.monotonic()
        if now >= self._next_error_log:
            self._next_error_log = now + DROP_LOG_INTERVAL
            log.exception("engine error on a %s (%s)", what, outcome)

    # -- periodic work -------------------------------------------------------------

    def _refresh_step(self, what: str, step) -> None:
        """One step of the refresh: an unexpected failure (OSError EMFILE from
        IPRoute(), a bug) is logged, at most once a minute, and never stops the engine."""
        try:
            step()
        except Exception:
            now = time.monotonic()
            if now >= self._next_refresh_error_log:
                self._next_refresh_error_log = now + 60.0
                log.exception("refresh: %s failed (retried at the next refresh)", what)

    def _refresh(self, now: float) -> None:
        self._refresh_step("reading the addresses", self._refresh_addresses)
        if self.lost_taps:
            self._refresh_step("recreating the TAPs", self._recreate_lost_taps)
        if len(self.vxlan):
            self._refresh_step("checking the VXLAN devices", self.vxlan_vnets.refresh)
        udp = self.udp
        if udp.joined and not udp.check_membership():
            log.warning("lost VARP group %s (its device went away); rejoining", udp.mcaddr)
        if self.raw is not None:
            self._refresh_step("choosing the raw socket's interface",
                               lambda: self.raw.set_interface(self._device_index))
        if not udp.joined:
            udp.ifindex = self._device_index
            if udp.try_join():
                log.info("joined VARP group %s", udp.mcaddr)
            self._next_refresh = now + (ADDRESS_REFRESH if udp.joined else JOIN_RETRY)
        else:
            self._next_refresh = now + ADDRESS_REFRESH
        if log.isEnabledFor(logging.DEBUG) and now >= self._next_drop_log:
            self._log_drops()
            self._next_drop_log = now + DROP_LOG_INTERVAL
            self._next_refresh = min(self._next_refresh, self._next_drop_log)

    def _refresh_addresses(self) -> None:
        """Own addresses (own packets are ignored) and the care-of address (protocol.md 3.4).

        The care-of address is ``--address``, else the first address of
        ``--device``, else of the interface the group is routed on.
        """
        opts = self.opts
        mcaddr = self.udp.mcaddr if self.udp is not None else opts.mcaddr
        try:
            with IPRoute() as ipr:
                addrs = [(a["index"], a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS"))
                         for a in ipr.get_addr(family=socket.AF_INET)]
                if opts.device:
                    found = ipr.link_lookup(ifname=opts.device)
                    index = found[0] if found else 0
                else:
                    try:
                        index = ipr.route("get", dst=mcaddr)[0].get_attr("RTA_OIF") or 0
                    except NetlinkError:
                        index = 0  # no route to the group yet
                links = ipr.link("get", index=index) if index else []
        except (OSError, NetlinkError) as e:
            log.warning("cannot read the host's addresses: %s", e)
            return
        if opts.device:
            self._device_index = index
        else:
            self.device = links[0].get_attr("IFLA_IFNAME") if links else ""
        mtu = links[0].get_attr("IFLA_MTU") if links else None
        if mtu and mtu != self.underlay_mtu and mtu >= 576:
            self.underlay_mtu = self.core.underlay_mtu = mtu
            self._chunk = chunk_size(mtu)
        self.core.own_addresses = {a for _, a in addrs if a}
        if opts.address:
            address = opts.address
            self._pin_source()
        else:
            preferred = [a for i, a in addrs if i == index and a]
            others = [a for _, a in addrs if a and not a.startswith("127.")]
            address = (preferred or others or [None])[0]
        if address != self.core.self_address:
            log.info("care-of address %s", address or "(none yet)")
            self.core.self_address = address

    def _pin_source(self) -> None:
        """Send from ``--address`` when it is one of ours; behind NAT (not a
        local address) the routing table picks and the NAT rewrites
        (docs/peering.md)."""
        address = self.opts.address
        pinned = address if address in self.core.own_addresses else None
        if self.udp is not None and pinned != self.udp.source:
            self.udp.pin_source(pinned)
            log.info("sending from %s", pinned or "the address the routing table picks")

    def _log_drops(self) -> None:
        """One debug line per drop reason that grew since the last look (rate-limited)."""
        counters = self.core.counters
        current: dict[str, int] = {}
        for reason, n in counters.rx_dropped.items():
            current["rx " + reason] = n
        for reason, n in counters.tap_dropped.items():
            current["tap " + reason] = n
        for v in self.core.vnets():
            for reason, n in v.counters.dropped.items():
                current[f"vnet {v.vid.canonical} {reason}"] = n
        for reason, n in self.io_dropped.items():
            current["io " + reason] = n
        for key, n in current.items():
            delta = n - self._drop_snapshot.get(key, 0)
            if delta:
                where, _, reason = key.rpartition(" ")
                log.debug("dropped where=%s reason=%s count=%d", where, reason, delta)
        self._drop_snapshot = current


def _ignore_signal(_signum, _frame) -> None:
    """Python-level handler so the signal only wakes the loop through the wakeup fd."""


def _log_level(opts: argparse.Namespace) -> int:
    if opts.log_level:
        return getattr(logging, opts.log_level.upper())
    return logging.DEBUG if opts.verbose else logging.INFO


def _detach(opts: argparse.Namespace) -> int:
    """Detach (process.detach); the caller waits for the engine's verdict and
    exits with it.  Returns, in the daemon, the fd to report readiness on."""
    in_daemon, fd = process.detach(stdio_log=opts.log_file)
    if in_daemon:
        return fd
    verdict, ended = process.wait_ready(fd, DETACH_TIMEOUT)
    if verdict.startswith("ok"):
        os._exit(0)
    if not verdict:
        verdict = ("vnetd: the engine died while starting" if ended else
                   f"vnetd: the engine did not report ready within {DETACH_TIMEOUT:g} s")
        verdict += f"; see {opts.log_file or 'its log (--log-file)'}\n"
    sys.stderr.write(verdict)
    os._exit(1)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    opts.control = os.path.abspath(opts.control)
    opts.pid_file = os.path.abspath(opts.pid_file)
    if opts.file:
        opts.file = os.path.abspath(opts.file)
    ready = _detach(opts) if opts.daemon else -1
    process.setup_logging("vnetd", _log_level(opts), opts.log_file)
    engine = None
    try:
        lock = take_netns_lock()
        raise_fd_limit()
        engine = Vnetd(opts)
        engine.start()
    except StartupError as e:
        if opts.log_file:
            log.error("%s", e)
        if ready >= 0:
            process.report_ready(ready, f"vnetd: {e}")
        else:
            sys.stderr.write(f"vnetd: {e}\n")
        if engine is not None:
            engine.shutdown()
        return 1
    if ready >= 0:
        process.report_ready(ready, None)
    sdnotify.notify("READY=1")        # systemd Type=notify: the control socket answers
    try:
        engine.run()
    finally:
        sdnotify.notify("STOPPING=1")
        engine.shutdown()
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
