"""Who is calling, and reading a config file the way that caller would.

``xm vnet-create FILE`` sends the path exactly as typed, possibly relative
to xm's working directory (management.md 1.1, Q1).  On the unix socket
SO_PEERCRED gives the caller's pid, uid and gid; the file is opened
relative to ``/proc/<pid>/cwd`` (or ``/proc/<pid>/root`` for an absolute
path), never by rebuilding the path as a string, because the caller may
live in another mount namespace (design.md 4).  It is read only if that
uid/gid may read it: search permission on every directory of the path and
read permission on the file, checked from the permission bits (ACLs and
capabilities other than root's are not considered).  Over TCP there is no caller process: no paths.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from dataclasses import dataclass

MAX_CONFIG_FILE = 1024 * 1024


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


def may_access(st: os.stat_result, uid: int, gids: set[int], want: int) -> bool:
    """The permission-bit check the kernel makes for uid/gids; ``want`` is 4 (read)
    or 1 (search a directory)."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        shift = 6
    elif st.st_gid in gids:
        shift = 3
    else:
        shift = 0
    return bool((st.st_mode >> shift) & want)


def may_read(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    return may_access(st, uid, gids, 4)


def _open_as(dir_fd: int, path: str, uid: int, gids: set[int], absolute: bool) -> int:
    """Walk ``path`` from ``dir_fd`` checking search permission on every directory,
    then open the last component for reading."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        raise CallerFileError(f"{path} is not a regular file")
    fd = os.dup(dir_fd)
    depth = 0
    try:
        for part in parts[:-1]:
            if part == ".." and absolute and depth == 0:
                continue      # '..' at the caller's root stays there, as in the kernel
            if not may_access(os.fstat(fd), uid, gids, 1):
                raise CallerFileError(f"Permission denied: {path} is not readable by uid {uid}")
            next_fd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = next_fd
            depth += -1 if part == ".." else 1
        if not may_access(os.fstat(fd), uid, gids, 1):
            raise CallerFileError(f"Permission denied: {path} is not readable by uid {uid}")
        return os.open(parts[-1], os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def read_caller_file(path: str, caller: Caller) -> str:
    """The text of ``path`` as seen (and readable) by the calling process."""
    if caller.transport != "unix" or caller.pid is None:
        raise CallerFileError(
            f"over TCP only config text is accepted, not file paths ({path!r}); "
            "send the config itself, e.g. (vnet (id 97))")
    if not path or "\0" in path:
        raise CallerFileError(f"File not found: {path!r}")
    base = "root" if os.path.isabs(path) else "cwd"
    try:
        dir_fd = os.open(f"/proc/{caller.pid}/{base}", os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise CallerFileError(f"cannot find the calling process's {base} "
                              f"(pid {caller.pid}): {e.strerror}") from None
    gids = supplementary_groups(caller.pid) | {caller.gid}
    try:
        fd = _open_as(dir_fd, path, caller.uid, gids, base == "root")
    except FileNotFoundError:
        raise CallerFileError(f"File not found: {path}") from None
    except NotADirectoryError:
        raise CallerFileError(f"File not found: {path} (a path component is not a "
                              "directory)") from None
    except OSError as e:
        raise CallerFileError(f"cannot open {path}: {e.strerror}") from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CallerFileError(f"{path} is not a regular file")
        if not may_read(st, caller.uid, gids):
            raise CallerFileError(f"Permission denied: {path} is not readable by uid "
                                  f"{caller.uid}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_CONFIG_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_FILE:
        raise CallerFileError(f"{path} is larger than {MAX_CONFIG_FILE} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CallerFileError(f"{path} is not UTF-8 text") from None
