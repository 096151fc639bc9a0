"""The rules of a vnet config, one home for xend-vnet and the engine alike.

``config.py`` (the xend side) and the engine's ``control/commands.py``
apply the same rules, and the sans-IO core uses the host-address rule on
every datagram, so this module is pure: no sockets, no netlink.  Each rule
is a ``*_problem`` function that returns None or the reason, quoting the bad
value and saying what is accepted; the caller adds its context (the config
key, the command name) and raises its own error type.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from .ifnames import ifname_problem
from .vnet_id import VnetId

__all__ = [
    "DATA_PATHS", "DEFAULT_DATA_PATH", "MAX_VNI", "SECURED_LEVELS", "SECURITY_LEVELS",
    "data_path_problem", "host_address_problem", "ifname_problem", "is_host_address",
    "key_file_problem", "name_owner", "security_problem", "vni_of", "vxlan_id_problem",
    "vxlan_security_problem",
]

SECURITY_LEVELS = ("none", "auth", "conf")
SECURED_LEVELS = ("auth", "conf")     # design.md 7: these need a key file
# vnetd: the engine carries the frames (wire-compatible with legacy hosts);
# vxlan: the kernel's VXLAN device does, between new hosts only (docs/vxlan.md).
DATA_PATHS = ("vnetd", "vxlan")
DEFAULT_DATA_PATH = "vnetd"
MAX_VNI = 0xFFFFFF                    # a VXLAN VNI is 24 bits

T = TypeVar("T")


def security_problem(level: str) -> str | None:
    """Why ``level`` is not a security level, or None."""
    if level in SECURITY_LEVELS:
        return None
    return f"{level!r} is not a security level; use none, auth or conf"


def key_file_problem(security: str, key_file: str | None) -> str | None:
    """Why ``key_file`` does not fit a vnet of ``security``, or None: secured
    vnets need one, given as an absolute path; others take none."""
    if security in SECURED_LEVELS:
        if key_file is None:
            # design.md 7: never a key made silently (each host's would differ).
            return (f"security {security!r} needs (key-file /ABSOLUTE/PATH): make one with "
                    "'vn key-gen PATH' on one host and copy it to every host of the vnet")
        if not key_file.startswith("/"):
            return f"key file {key_file!r} must be an absolute path"
    elif key_file is not None:
        return "(key-file ...) is only for security auth or conf"
    return None


def data_path_problem(path: str) -> str | None:
    """Why ``path`` is not a data path, or None."""
    if path in DATA_PATHS:
        return None
    return (f"{path!r} is not a data path; use vnetd (the default, works with legacy "
            "hosts) or vxlan (the kernel's VXLAN device)")


def vni_of(vid: VnetId) -> int:
    """The VXLAN network identifier of a vnet: the id's low 24 bits (the whole
    id, for the ids ``vxlan_id_problem`` accepts)."""
    return vid.value & MAX_VNI


def vxlan_id_problem(vid: VnetId, shown: str | None = None) -> str | None:
    """Why vnet ``vid`` (written ``shown``) cannot use the VXLAN data path, or None.

    The VNI is the id itself, so only ids up to ffffff (24 bits) are
    accepted: a larger id would silently share its VNI with the id of its
    low 24 bits on another host (0:0:0:0:0:0:100:9c and 9c both VNI 156).
    """
    if vid.value <= MAX_VNI:
        return None
    vni = vni_of(vid)
    return (f"vnet {shown or vid.canonical} cannot use data-path vxlan: its VNI is the id, "
            "and a VXLAN VNI is 24 bits, so only ids up to 0:0:0:0:0:0:ff:ffff can (a "
            f"larger id would share VNI {vni} with vnet {vni:x}); use data-path vnetd "
            "or a smaller id")


def vxlan_security_problem(security: str) -> str | None:
    """Why a vnet of ``security`` cannot use the VXLAN data path, or None."""
    if security == "none":
        return None
    return (f"security {security!r} cannot use data-path vxlan: the kernel VXLAN device "
            "neither authenticates nor encrypts; use data-path vnetd for a secured vnet")


def name_owner(name: str, taken: Iterable[tuple[str, T]]) -> T | None:
    """Who already has interface ``name`` among ``taken`` (name, owner) pairs, or None.

    design.md 4: an interface belongs to one vnet, whatever its data path,
    and bridges and vnet interfaces share one namespace (the kernel's).
    """
    return next((owner for used, owner in taken if used == name), None)


def is_host_address(addr: str) -> bool:
    """True when dotted quad ``addr`` can be another host's unicast address:
    not in 0/8, loopback (127/8), multicast (224/4) or reserved (240/4,
    broadcast included).  Called per datagram: one split, no parsing."""
    first = int(addr[:addr.index(".")])
    return 0 < first < 224 and first != 127


def host_address_problem(addr: str) -> str | None:
    """Why dotted quad ``addr`` cannot be another host's address, or None.

    The rule for peers, announced care-of addresses and forwarded sources
    alike: an address learned or configured here is one frames are sent to,
    and re-multicast from (protocol.md 3.3, 7).
    """
    if is_host_address(addr):
        return None
    first = int(addr[:addr.index(".")])
    if first == 0:
        kind = "is in 0.0.0.0/8 (this host on this network)"
    elif first == 127:
        kind = "is a loopback address"
    elif first < 240:
        kind = "is a multicast address"
    else:
        kind = "is reserved (240.0.0.0/4, the broadcast address included)"
    return f"{addr} {kind}; expected the unicast IPv4 address of another host"
