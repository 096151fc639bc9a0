"""The XML-RPC server's unix socket on disk (design.md 9, docs/security.md).

Its parent directory made as xend makes it, a stale socket replaced but one
that still accepts connections never, and its mode set explicitly whatever
the umask: 0600, or 0660 with the group named by ``xend-vnet-unix-group``
(``--socket-group``) so that group's members may call.
"""

from __future__ import annotations

import grp
import os
import socket
import stat


class ServerError(Exception):
    """The server cannot listen where it was asked to."""


def socket_answers(path: str) -> bool:
    """True if something accepts connections on the unix socket ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2.0)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def prepare_unix_path(path: str, group: int | None = None) -> None:
    """Create the parent directory (mode 0700, as xend; 0710 for a socket
    ``group`` to reach through) and remove a stale socket."""
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)
        if group is not None:
            os.chown(parent, -1, group)
            os.chmod(parent, 0o710)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ServerError(f"{path} exists and is not a socket; not touching it")
    if socket_answers(path):
        raise ServerError(f"{path} already accepts connections (is another xend or "
                          "xend-vnet running?); not taking it over")
    os.unlink(path)


def unix_group_id(name: str | None) -> int | None:
    """The gid of the group that may use the unix socket (mode 0660), None for 0600."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ServerError(f"unknown group {name!r} for the XML-RPC unix socket "
                          "(xend-vnet-unix-group, --socket-group): name a group in "
                          "/etc/group, or leave it unset for mode 0600") from None


def set_socket_mode(path: str, group: int | None) -> None:
    """Mode 0600, or 0660 with ``group``, whatever the umask (docs/security.md)."""
    mode = 0o600 if group is None else 0o660
    try:
        if group is not None:
            os.chown(path, -1, group)
        os.chmod(path, mode)
        st = os.lstat(path)
    except OSError as e:
        raise ServerError(f"cannot set the mode of {path}: {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode) or stat.S_IMODE(st.st_mode) != mode:
        raise ServerError(f"{path} changed under us while it was being set up; not serving")
