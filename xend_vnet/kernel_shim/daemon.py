"""vnetd: the tunnel engine daemon (protocol.md 9.1, design.md 4-6).

The process around the engine (engine.py): options, one engine per network
namespace, pid file, logging, detaching, and the engine's life from start
to a clean shutdown on SIGTERM that keeps the persistent TAPs on their
bridges for the next start (design.md 5).
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import resource
import sys
from collections.abc import Iterator

from .. import process, sdnotify
from ..vnet_rules import is_host_address
from ..process import DEFAULT_CONTROL, default_control_path
from .datapath.tap import DEFAULT_MTU
from .security.keystore import EPOCH_LIFETIME, EPOCH_MAX_AGE
from .wire.codec import VARP_MCADDR, VARP_PORT, is_multicast, parse_ipv4
from .wire.offload import MIN_GSO_SIZE
from .datapath.vxlan.table import (
    CONTROL_PLANES,
    DEFAULT_CONTROL_PLANE,
    DEFAULT_MAX_MACS,
    DEFAULT_VXLAN_PORT,
)
from .engine import VERSION_TEXT, Engine, StartupError

log = logging.getLogger("vnetd")

DEFAULT_EPOCH_FILE = "/var/lib/xend-vnet/vnetd.epoch"
# A frame plus the largest encapsulation (VFWD of a secured message) must fit
# in one UDP datagram (65,507 bytes).
MAX_MTU = 65000
LOCK_DIR = process.RUN_DIR         # root-owned: per-namespace engine locks
DETACH_TIMEOUT = 30.0      # --daemon: how long the caller waits for the engine


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
    g.add_argument("--vxlan-control-plane", choices=CONTROL_PLANES,
                   default=DEFAULT_CONTROL_PLANE,
                   help="who fills the VXLAN devices' forwarding tables: multicast (the group "
                        "and a flood entry per peer, the default) or evpn (FRR's BGP EVPN; "
                        "docs/fleet.md)")
    g.add_argument("--vxlan-local", metavar="ADDR",
                   help="with --vxlan-control-plane evpn: this host's underlay address, the "
                        "VXLAN devices' source and the VTEP address FRR advertises")
    g.add_argument("--vxlan-neigh-suppress", action="store_true",
                   help="with --vxlan-control-plane evpn: ARP/ND suppression on the VXLAN "
                        "devices' bridge ports")
    g.add_argument("--vxlan-max-macs", type=int, default=DEFAULT_MAX_MACS, metavar="N",
                   help="with --vxlan-control-plane evpn: at most N forwarding entries per "
                        f"VXLAN device (default {DEFAULT_MAX_MACS}); beyond, frames to "
                        "further MACs are flooded")
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
    g.add_argument("--min-gso-size", type=int, default=MIN_GSO_SIZE, metavar="BYTES",
                   help="drop TCP super-frames cut smaller than this, from a TAP or "
                        f"another engine (default {MIN_GSO_SIZE}; docs/security.md)")
    g.add_argument("--no-kernel-path", action="store_true",
                   help="carry every vnet in user space: do not load the TC eBPF programs "
                        "that carry known unicast of clear vnets (design.md 1.1)")
    g.add_argument("--kernel-object", metavar="PATH",
                   help="the kernel path's compiled BPF object (default: the package's own)")
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
    if not 1 <= opts.vxlan_max_macs <= 1 << 20:
        yield f"invalid --vxlan-max-macs {opts.vxlan_max_macs}: expected 1 to {1 << 20}"
    if not 0 <= opts.mcast_ttl <= 255:
        yield f"invalid --mcast-ttl {opts.mcast_ttl}: expected 0 to 255"
    if not 68 <= opts.mtu <= MAX_MTU:
        yield f"invalid --mtu {opts.mtu}: expected 68 to {MAX_MTU}"
    if not 64 <= opts.min_gso_size <= 65535:
        yield f"invalid --min-gso-size {opts.min_gso_size}: expected 64 to 65535"
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
    yield from _evpn_problems(opts)


def _evpn_problems(opts: argparse.Namespace) -> Iterator[str]:
    """--vxlan-local and --vxlan-neigh-suppress belong to the EVPN control plane,
    which needs the address it advertises (docs/fleet.md)."""
    if opts.vxlan_control_plane != "evpn":
        for given, option in ((opts.vxlan_local, "--vxlan-local"),
                              (opts.vxlan_neigh_suppress, "--vxlan-neigh-suppress")):
            if given:
                yield f"{option} needs --vxlan-control-plane evpn"
        return
    if opts.vxlan_local is None:
        yield ("--vxlan-control-plane evpn needs --vxlan-local ADDR: the underlay address "
               "this host's VXLAN devices send from and FRR advertises")
        return
    try:
        opts.vxlan_local = parse_ipv4(opts.vxlan_local)
    except ValueError:
        yield f"invalid --vxlan-local {opts.vxlan_local!r}: expected a dotted-quad IPv4 address"
        return
    if not is_host_address(opts.vxlan_local):
        yield (f"invalid --vxlan-local {opts.vxlan_local}: expected this host's unicast "
               "IPv4 address (not 0/8, loopback, multicast or reserved)")


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
    if opts.kernel_object:
        opts.kernel_object = os.path.abspath(opts.kernel_object)
    ready = _detach(opts) if opts.daemon else -1
    process.setup_logging("vnetd", _log_level(opts), opts.log_file)
    engine = None
    try:
        lock = take_netns_lock()
        raise_fd_limit()
        engine = Engine(opts)
        engine.start()
        process.write_pid_file(opts.pid_file)    # beside the control socket (design.md 5)
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
        process.remove_pid_file(opts.pid_file)
        lock.close()
    if engine.failure:
        sys.stderr.write(f"vnetd: {engine.failure}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
