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
import selectors
import sys
import time

from .. import sdnotify
from .wire.codec import VARP_MCADDR, VARP_PORT, is_multicast, parse_ipv4
from .datapath.tap import DEFAULT_MTU
from .security.keystore import EPOCH_LIFETIME, EPOCH_MAX_AGE
from .datapath.vxlan.table import DEFAULT_VXLAN_PORT
from .engine import VERSION_TEXT, Engine, StartupError

log = logging.getLogger("vnetd")

DEFAULT_CONTROL = "/var/run/vnetd.sock"
DEFAULT_EPOCH_FILE = "/var/lib/xend-vnet/vnetd.epoch"
# A frame plus the largest encapsulation (VFWD of a secured message) must fit
# in one UDP datagram (65,507 bytes).
MAX_MTU = 65000
LOCK_DIR = "/run/xend-vnet"        # root-owned: per-namespace engine locks
DETACH_TIMEOUT = 30.0      # --daemon: how long the caller waits for the engine


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="vnetd", description="The xend-vnet tunnel engine (user-space vnet_module).")
    p.add_argument("--control", metavar="PATH",
                   default=os.environ.get("VNETD_SOCKET") or DEFAULT_CONTROL,
                   help="control socket (default $VNETD_SOCKET or %(default)s)")
    p.add_argument("--port", type=int, default=VARP_PORT, help="UDP port (default 1798)")
    p.add_argument("--vxlan-port", type=int, default=DEFAULT_VXLAN_PORT,
                   help="UDP port of vnets on the kernel VXLAN data path (default 4789; "
                        "docs/vxlan.md)")
    p.add_argument("-a", "--mcaddr", "--varp_mcaddr", dest="mcaddr", default=VARP_MCADDR,
                   help="VARP multicast group (default 224.10.0.1)")
    p.add_argument("--mcast-ttl", type=int, default=1, help="multicast TTL (default 1)")
    p.add_argument("--mtu", type=int, default=DEFAULT_MTU,
                   help="MTU of the vnet TAPs (default 1500; guests do best with 1436, "
                        "or the legacy advice 1400, to avoid fragmented outer packets)")
    p.add_argument("--no-offload", action="store_true",
                   help="legacy framing only: one frame per datagram with plain checksums, "
                        "no fast framing toward other engines (docs/performance.md)")
    p.add_argument("--no-tap-offload", action="store_true",
                   help="TAPs without offloads: one frame per read and per write, no "
                        "receive coalescing (implies --no-offload)")
    p.add_argument("--no-default-vnets", action="store_true",
                   help="do not create vnets 2, 3 and 4 at start")
    p.add_argument("--varp-ttl", type=float, default=60.0, metavar="SECONDS",
                   help="VARP cache and vif entry lifetime (default 60)")
    p.add_argument("--address", help="care-of address to announce (default: from the host); "
                   "behind NAT, the address peers should use")
    p.add_argument("--epoch-file", metavar="PATH",
                   help="where secured vnets keep their last epoch (default "
                        f"{DEFAULT_EPOCH_FILE}, or <control>.epoch for another control socket)")
    p.add_argument("--epoch-max-age", type=float, default=EPOCH_MAX_AGE, metavar="SECONDS",
                   help="secured traffic of older epochs is refused (default 900)")
    p.add_argument("--epoch-lifetime", type=float, default=EPOCH_LIFETIME, metavar="SECONDS",
                   help="senders start a new epoch this often (default 600)")
    p.add_argument("--device", "--varp_device", dest="device",
                   help="interface whose address the engine uses and joins the group on")
    p.add_argument("-f", "--file", help="startup file: vnet.add, peer.add, varp.mcaddr forms")
    p.add_argument("--pid-file", help="pid file (default <control>.pid)")
    p.add_argument("--daemon", action="store_true",
                   help="detach; return once the control socket answers")
    p.add_argument("--log-file", help="log here (default stderr; /dev/null with --daemon)")
    p.add_argument("-V", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--log-level", default=None,
                   choices=["debug", "info", "warning", "error"], help="log level")
    p.add_argument("--allow-foreign-netns", action="store_true",
                   help="accept control callers from other network namespaces")
    p.add_argument("-v", "--version", action="version", version=VERSION_TEXT)
    opts = p.parse_args(argv)
    if not 0 < opts.port < 65536:
        p.error(f"invalid --port {opts.port}: expected 1 to 65535")
    if not 0 < opts.vxlan_port < 65536:
        p.error(f"invalid --vxlan-port {opts.vxlan_port}: expected 1 to 65535")
    if opts.vxlan_port in (opts.port, VARP_PORT):
        # The kernel would take the vnet datagrams of every host (legacy ones too).
        p.error(f"invalid --vxlan-port {opts.vxlan_port}: it is the vnet port; "
                f"choose another (default {DEFAULT_VXLAN_PORT})")
    if not 0 <= opts.mcast_ttl <= 255:
        p.error(f"invalid --mcast-ttl {opts.mcast_ttl}: expected 0 to 255")
    if not 68 <= opts.mtu <= MAX_MTU:
        p.error(f"invalid --mtu {opts.mtu}: expected 68 to {MAX_MTU}")
    if not opts.varp_ttl > 0:
        p.error(f"invalid --varp-ttl {opts.varp_ttl}: expected a positive number of seconds")
    for name in ("mcaddr", "address"):
        value = getattr(opts, name)
        if value is not None:
            try:
                setattr(opts, name, parse_ipv4(value))
            except ValueError:
                p.error(f"invalid --{name} {value!r}: expected a dotted-quad IPv4 address")
    if not is_multicast(opts.mcaddr):
        p.error(f"invalid --mcaddr {opts.mcaddr}: expected a multicast address "
                "(224.0.0.0 to 239.255.255.255)")
    if not 0 < opts.epoch_lifetime < opts.epoch_max_age:
        p.error("invalid --epoch-lifetime/--epoch-max-age: expected 0 < lifetime < max age")
    if opts.pid_file is None:
        opts.pid_file = opts.control + ".pid"
    if opts.epoch_file is None:
        # The default engine keeps its epoch where reboots do not clear it
        # (/var/run is a tmpfs); engines with their own socket keep it beside it.
        opts.epoch_file = (DEFAULT_EPOCH_FILE if opts.control == DEFAULT_CONTROL
                           else opts.control + ".epoch")
    return opts


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


class Vnetd(Engine):
    """The engine as the vnetd process runs it: with its pid file beside the
    control socket (design.md 5)."""

    def start(self) -> None:
        super().start()
        _write_pid_file(self.opts.pid_file)

    def shutdown(self) -> None:
        super().shutdown()
        _remove_pid_file(self.opts.pid_file)



def _write_pid_file(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.rename(tmp, path)


def _remove_pid_file(path: str) -> None:
    try:
        with open(path) as f:
            mine = f.read().strip() == str(os.getpid())
        if mine:
            os.unlink(path)
    except OSError:
        pass


def _setup_logging(opts: argparse.Namespace) -> None:
    level = logging.DEBUG if opts.verbose else logging.INFO
    if opts.log_level:
        level = getattr(logging, opts.log_level.upper())
    if opts.log_file:
        handler: logging.Handler = logging.FileHandler(opts.log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s vnetd[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # -V is about the engine: libraries (pyroute2's netlink traces) stay quiet.
    root.setLevel(logging.WARNING)
    log.setLevel(level)


def _detach(opts: argparse.Namespace) -> int:
    """Double fork and setsid; the first process waits for the engine's verdict.

    Returns, in the daemon, the fd to report readiness on.
    """
    r, w = os.pipe()
    if os.fork() > 0:
        os.close(w)
        chunks = []
        ended = False
        deadline = time.monotonic() + DETACH_TIMEOUT
        with selectors.DefaultSelector() as sel:
            sel.register(r, selectors.EVENT_READ)
            while not ended and sel.select(max(0.0, deadline - time.monotonic())):
                data = os.read(r, 4096)
                chunks.append(data)
                ended = not data
        verdict = b"".join(chunks).decode("utf-8", "replace")
        if verdict.startswith("ok"):
            os._exit(0)
        where = opts.log_file or "its log (--log-file)"
        if not verdict:
            verdict = ("vnetd: the engine died while starting" if ended else
                       f"vnetd: the engine did not report ready within {DETACH_TIMEOUT:g} s")
            verdict += f"; see {where}\n"
        sys.stderr.write(verdict)
        os._exit(1)
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    if opts.log_file:
        out = os.open(opts.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
    else:
        os.dup2(null, 1)
        os.dup2(null, 2)
    os.close(null)
    return w


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    opts.control = os.path.abspath(opts.control)
    opts.pid_file = os.path.abspath(opts.pid_file)
    if opts.file:
        opts.file = os.path.abspath(opts.file)
    ready = _detach(opts) if opts.daemon else -1
    _setup_logging(opts)
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
            os.write(ready, f"vnetd: {e}\n".encode())
        else:
            sys.stderr.write(f"vnetd: {e}\n")
        if engine is not None:
            engine.shutdown()
        return 1
    if ready >= 0:
        os.write(ready, b"ok\n")
        os.close(ready)
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
