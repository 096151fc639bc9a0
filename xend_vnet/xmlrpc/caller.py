"""Who is calling, and reading a config file the way that caller would.

``xm vnet-create FILE`` sends the path exactly as typed, possibly relative
to xm's working directory (protocol.md 10.1, design.md 4).  On the unix socket
SO_PEERCRED gives the caller's pid, uid and gid.  The file is opened by a
forked child that enters the caller's root and working directory
(``/proc/<pid>/root``, ``/proc/<pid>/cwd``: the caller may live in another
mount namespace, so the path is never rebuilt as a string) and then takes
the caller's uid, gid and groups, so the kernel itself resolves the path,
symlinks included, and checks the caller's permissions, ACLs included
(design.md 4).  The content comes back over a pipe, capped in size and
time.  Over TCP there is no caller process: no paths.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import stat
import struct
import time
from dataclasses import dataclass

MAX_CONFIG_FILE = 1024 * 1024
# A file system that never answers (FUSE, a dead NFS server) costs at most this.
READ_TIMEOUT = 10.0


class CallerFileError(Exception):
    """The caller's file cannot be read; the message is for the caller."""


@dataclass(frozen=True)
class Caller:
    """The process at the other end of a request (None fields over TCP)."""

    transport: str              # "unix" or "tcp"
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None


def peer_of(sock: socket.socket) -> Caller:
    """SO_PEERCRED of a connected AF_UNIX socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return Caller("unix", pid, uid, gid)


def supplementary_groups(pid: int) -> set[int]:
    """The caller's groups from /proc/<pid>/status."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:] if g.isdigit()}
    except OSError:
        pass
    return set()


def _child_read(w: int, caller: Caller, groups: list[int], path: str) -> None:
    """In the forked child: become the caller, open ``path``, send the result on ``w``.

    Replies: ``D`` + content, or ``E<stage> <errno>`` with stage ``proc``,
    ``creds``, ``open`` or ``type``.  Never returns.
    """
    stage = "proc"
    try:
        root = os.open(f"/proc/{caller.pid}/root", os.O_RDONLY | os.O_DIRECTORY)
        cwd = os.open(f"/proc/{caller.pid}/cwd", os.O_RDONLY | os.O_DIRECTORY)
        stage = "creds"
        os.fchdir(root)
        os.chroot(".")
        os.fchdir(cwd)
        os.setgroups(groups)
        os.setresgid(caller.gid, caller.gid, caller.gid)
        os.setresuid(caller.uid, caller.uid, caller.uid)
        stage = "open"
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.write(w, b"Etype 0")
            os._exit(0)
        data = b""
        while len(data) <= MAX_CONFIG_FILE:
            chunk = os.read(fd, MAX_CONFIG_FILE + 1 - len(data))
            if not chunk:
                break
            data += chunk
        _write_all(w, b"D" + data)
    except OSError as e:
        os.write(w, f"E{stage} {e.errno or 0}".encode("ascii"))
    finally:
        os._exit(0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _collect(r: int, child: int, path: str) -> bytes:
    """The child's reply, read within READ_TIMEOUT; the child is reaped either way."""
    deadline = time.monotonic() + READ_TIMEOUT
    chunks: list[bytes] = []
    with selectors.DefaultSelector() as sel:
        sel.register(r, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                # A stuck file system (FUSE, NFS) must not hold a server thread.
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
                raise CallerFileError(f"cannot open {path}: no answer within "
                                      f"{READ_TIMEOUT:g} s")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    os.waitpid(child, 0)
    return b"".join(chunks)


def _reply_error(reply: bytes, path: str, caller: Caller) -> CallerFileError:
    try:
        stage, number = reply[1:].decode("ascii").split()
        errno_ = int(number)
    except (UnicodeDecodeError, ValueError):
        return CallerFileError(f"cannot open {path}: the reading process failed")
    reason = os.strerror(errno_)
    if stage == "type":
        return CallerFileError(f"{path} is not a regular file")
    if stage == "proc":
        return CallerFileError(f"cannot find the calling process's directories "
                               f"(pid {caller.pid}): {reason}")
    if stage == "creds":
        return CallerFileError(f"cannot read {path} as uid {caller.uid}: {reason}")
    if errno_ == errno.ENOENT:
        return CallerFileError(f"File not found: {path}")
    if errno_ == errno.ENOTDIR:
        return CallerFileError(f"File not found: {path} (a path component is not a directory)")
    if errno_ in (errno.EACCES, errno.EPERM):
        return CallerFileError(f"Permission denied: {path} is not readable by uid {caller.uid}")
    return CallerFileError(f"cannot open {path}: {reason}")


def read_caller_file(path: str, caller: Caller) -> str:
    """The text of ``path`` as seen (and readable) by the calling process."""
    if caller.transport != "unix" or caller.pid is None:
        raise CallerFileError(
            f"over TCP only config text is accepted, not file paths ({path!r}); "
            "send the config itself, e.g. (vnet (id 97))")
    if not path or "\0" in path:
        raise CallerFileError(f"File not found: {path!r}")
    groups = sorted(supplementary_groups(caller.pid) | {caller.gid})
    r, w = os.pipe()
    try:
        child = os.fork()
    except OSError as e:
        os.close(r)
        os.close(w)
        raise CallerFileError(f"cannot read {path}: {e.strerror}") from None
    if child == 0:
        os.close(r)
        _child_read(w, caller, groups, path)
    os.close(w)
    try:
        reply = _collect(r, child, path)
    finally:
        os.close(r)
    if not reply.startswith(b"D"):
        raise _reply_error(reply, path, caller)
    data = reply[1:]
    if len(data) > MAX_CONFIG_FILE:
        raise CallerFileError(f"{path} is larger than {MAX_CONFIG_FILE} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CallerFileError(f"{path} is not UTF-8 text") from None
