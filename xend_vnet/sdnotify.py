"""sd_notify(3) without libsystemd: readiness for ``Type=notify`` units.

The units ``xend-vnet install`` writes are ``Type=notify`` so that a domain
started at boot finds its bridge: systemd starts what comes after
vnetd and xend-vnet only once they say ``READY=1``.  Outside systemd
(``NOTIFY_SOCKET`` unset) every call is a no-op that returns False.
"""

from __future__ import annotations

import os
import socket

ENV = "NOTIFY_SOCKET"


def socket_address(value: str) -> str | bytes | None:
    """The address ``NOTIFY_SOCKET`` names: a path, or an abstract name (``@name``)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None    # vsock or garbage: not something a local daemon can use


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; True if it was sent."""
    address = socket_address(os.environ.get(ENV, ""))
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(state.encode())
    except OSError:
        return False
    return True
