"""The kernel path's TAPs kept attached while the engine restarts (design.md 5).

A TAP whose last file descriptor closes loses its carrier, and its bridge
port stops forwarding: the kernel path, which encapsulates at the TAP's
egress and delivers into its ingress (datapath/kernel/path.py), would stop
with the engine although its programs stay.  So a stopping engine hands the
TAPs of the vnets the kernel path carries to a keeper (``hand_over``): this
module run as a process of its own, which holds them until the next engine
of the network namespace takes them (``take_over``), whatever its control
socket, through a SOCK_SEQPACKET unix socket named after the namespace
beside the engines' locks (``/run/xend-vnet/vnetd-netns-DEV-INODE.taps``,
mode 0600), or at most KEEP_TIME seconds.
Meanwhile what the kernel leaves to user space waits in the TAP's queue, or
is dropped when that is full, as when the engine is busy.

Both ends check the other: same user, same network namespace (SO_PEERCRED
and /proc/<pid>/ns/net); the taker checks every descriptor is the TAP it is
named after (``tap.adopt_tap``).
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import time

log = logging.getLogger("vnetd")

KEEP_TIME = 60.0          # a restart takes seconds; then the TAPs go down as they used to
READY_TIMEOUT = 5.0       # for the keeper to listen
TAKE_TIMEOUT = 2.0
FDS_PER_MESSAGE = 250     # SCM_MAX_FD is 253
MAX_MESSAGE = 65536
_UCRED = struct.Struct("3i")


def keeper_path(directory: str) -> str:
    """The keeper's socket of this network namespace in ``directory``."""
    dev, ino = _netns("self")
    return os.path.join(directory, f"vnetd-netns-{dev}-{ino}.taps")


def _netns(pid: int | str) -> tuple[int, int]:
    st = os.stat(f"/proc/{pid}/ns/net")
    return st.st_dev, st.st_ino


def _same_side(sock: socket.socket) -> bool:
    """The peer runs as our user in our network namespace."""
    pid, uid, _gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    try:
        return uid == os.geteuid() and pid > 0 and _netns(pid) == _netns("self")
    except OSError:
        return False


def _child_env() -> dict[str, str]:
    """The keeper imports this same package, wherever the engine found it."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    return env


def hand_over(directory: str, taps: dict[str, int],
              keep_time: float = KEEP_TIME) -> str | None:
    """Start a keeper holding ``taps`` (TAP name -> fd) for the next engine of
    this network namespace; None once it listens, else why not."""
    r, w = os.pipe2(os.O_CLOEXEC)
    command = [sys.executable, "-m", __name__, keeper_path(directory), f"{keep_time:g}",
               str(w), *(f"{name}={fd}" for name, fd in taps.items())]
    try:
        subprocess.Popen(command, pass_fds=(w, *taps.values()), start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=_child_env(), close_fds=True)
    except OSError as e:
        os.close(r)
        os.close(w)
        return f"cannot start the TAP keeper: {e.strerror or e}"
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], READY_TIMEOUT)
        answer = os.read(r, 512).decode("utf-8", "replace") if ready else ""
    finally:
        os.close(r)
    if answer == "ok":
        return None
    return answer or f"the TAP keeper did not listen within {READY_TIMEOUT:g} s"


def take_over(directory: str) -> dict[str, int]:
    """The TAPs a keeper holds for us (name -> fd), if one does; {} otherwise."""
    path = keeper_path(directory)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {}
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
        log.warning("%s is not a TAP keeper's socket of this user: ignored", path)
        return {}
    taps: dict[str, int] = {}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(TAKE_TIMEOUT)
        try:
            sock.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)       # a keeper that was killed: nothing was kept for us
            return {}
        if not _same_side(sock):
            log.warning("the TAP keeper on %s is not ours: ignored", path)
            return {}
        while True:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, FDS_PER_MESSAGE)
            if not data:
                break
            names = json.loads(data)
            if not isinstance(names, list) or len(names) != len(fds):
                for fd in fds:
                    os.close(fd)
                raise ValueError("names and descriptors do not match")
            taps.update(zip(map(str, names), fds))
    except (OSError, ValueError) as e:
        log.warning("cannot take the TAPs the last engine kept (%s): they are opened anew",
                    e)
        for fd in taps.values():
            os.close(fd)
        return {}
    finally:
        sock.close()
    if taps:
        log.info("took over %d TAPs the last engine kept attached", len(taps))
    return taps


def _listen(path: str) -> socket.socket:
    try:
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.geteuid():
            os.unlink(path)       # a keeper before us died without removing it
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(4)
    return sock


def _stop(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def keep(path: str, taps: dict[str, int], keep_time: float, ready_fd: int) -> int:
    """The keeper: listen, tell the engine, give the TAPs to the first caller
    of our side, or end after ``keep_time``."""
    try:
        listener = _listen(path)
    except OSError as e:
        os.write(ready_fd, f"cannot listen on {path}: {e.strerror}".encode())
        return 1
    inode = os.lstat(path).st_ino
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop)       # killed: the socket goes too (finally, below)
    os.write(ready_fd, b"ok")
    os.close(ready_fd)
    deadline = time.monotonic() + keep_time
    try:
        while (left := deadline - time.monotonic()) > 0:
            listener.settimeout(left)
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                break
            with conn:
                if not _same_side(conn):
                    continue
                items = list(taps.items())
                for at in range(0, len(items), FDS_PER_MESSAGE):
                    part = items[at:at + FDS_PER_MESSAGE]
                    socket.send_fds(conn, [json.dumps([n for n, _ in part]).encode()],
                                    [fd for _, fd in part])
                return 0
        return 0
    finally:
        listener.close()
        try:
            if os.lstat(path).st_ino == inode:
                os.unlink(path)
        except FileNotFoundError:
            pass


def main(argv: list[str]) -> int:
    path, keep_time, ready_fd, *pairs = argv
    taps = {}
    for pair in pairs:
        name, _, fd = pair.partition("=")
        taps[name] = int(fd)
    return keep(path, taps, float(keep_time), int(ready_fd))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
