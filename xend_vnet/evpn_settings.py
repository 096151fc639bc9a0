"""A host's EVPN settings, from xend-config.sxp (docs/fleet.md).

Which control plane serves the host's ``(data-path vxlan)`` vnets is a
per-host choice: ``(xend-vnet-control-plane multicast)``, the default
(the group and a flood entry per peer, docs/vxlan.md), or
``(xend-vnet-control-plane evpn)``: FRR's BGP EVPN fills the VXLAN devices'
forwarding tables.  A host may also serve as a route reflector
(``xend-vnet-evpn-listen``).  This module reads and checks the keys (pure:
the config is already parsed) and says what they mean for the engine
(``engine_params``, vnetd's options through the launcher); frr_conf.py
turns them into FRR's configuration.

=================================  ==========================================
key                                meaning
=================================  ==========================================
xend-vnet-control-plane            multicast (default) or evpn
xend-vnet-evpn-address A           this host's underlay address: VXLAN source,
                                   VTEP, BGP router-id and session source
xend-vnet-evpn-as N                the fleet's AS number (one AS, iBGP)
xend-vnet-evpn-reflectors A ...    the route reflectors (two in production)
xend-vnet-evpn-listen P ...        serve as a reflector for hosts in prefixes P
xend-vnet-evpn-listen-limit N      at most N hosts per reflector (1024)
xend-vnet-evpn-password-file F     TCP-MD5 password of every session
xend-vnet-evpn-ttl-security N      accept sessions from at most N hops away
xend-vnet-evpn-connect-retry S     seconds between connection attempts (2)
xend-vnet-evpn-hold-time S         a silent session is down after S seconds (9)
xend-vnet-evpn-neigh-suppress B    ARP/ND suppression on the VXLAN ports (no)
xend-vnet-evpn-max-macs N          forwarding entries per vnet device (4096)
=================================  ==========================================
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from .kernel_shim.datapath.vxlan.table import DEFAULT_MAX_MACS
from .vnet_rules import is_host_address
from .xend_config import XendConfig, XendConfigError

CONTROL_PLANE = "xend-vnet-control-plane"
CONTROL_PLANES = ("multicast", "evpn")
DEFAULT_LISTEN_LIMIT = 1024
DEFAULT_CONNECT_RETRY = 2
DEFAULT_HOLD_TIME = 9
MAX_REFLECTORS = 16
MAX_LISTEN_RANGES = 64
SHORTEST_LISTEN_PREFIX = 8    # a wider range is a typo or an open door
MAX_PASSWORD = 80             # TCP-MD5 keys: the kernel's TCP_MD5SIG_MAXKEYLEN
# A password is one word of FRR's configuration: no blank, no quote, no
# backslash, no comment characters.
_PASSWORD_REFUSED = set(" \t\r\n\"'\\!#")


@dataclass(frozen=True)
class EvpnSettings:
    """The EVPN keys of one host, checked."""

    control_plane: str = "multicast"
    address: str | None = None
    asn: int | None = None
    reflectors: tuple[str, ...] = ()
    listen: tuple[str, ...] = ()
    listen_limit: int = DEFAULT_LISTEN_LIMIT
    password_file: str | None = None
    ttl_security: int | None = None
    connect_retry: int = DEFAULT_CONNECT_RETRY
    hold_time: int = DEFAULT_HOLD_TIME
    neigh_suppress: bool = False
    max_macs: int = DEFAULT_MAX_MACS

    @property
    def vtep(self) -> bool:
        """The host's vxlan vnets are served by EVPN: it advertises their MACs."""
        return self.control_plane == "evpn"

    @property
    def reflector(self) -> bool:
        """The host reflects the routes of the hosts in its listen ranges."""
        return bool(self.listen)

    @property
    def peers(self) -> tuple[str, ...]:
        """The reflectors this host opens sessions to: all but itself."""
        return tuple(r for r in self.reflectors if r != self.address)

    @property
    def keepalive(self) -> int:
        return max(1, self.hold_time // 3)

    def engine_params(self) -> dict[str, str]:
        """vnetd's options for this control plane, as ``vn insmod`` parameters
        (engine_launcher); none under multicast, the engine's default."""
        if not self.vtep:
            return {}
        params = {"vxlan_control_plane": "evpn", "vxlan_local": self.address,
                  "vxlan_max_macs": str(self.max_macs)}
        if self.neigh_suppress:
            params["vxlan_neigh_suppress"] = "yes"
        return params


def _problem(key: str, value: object, expected: str) -> XendConfigError:
    return XendConfigError(f"invalid xend config {key}: {value!r}: expected {expected}")


def _int(cfg: XendConfig, key: str, default: int | None, low: int, high: int) -> int | None:
    if not cfg.has(key):
        return default
    value = cfg.get_int(key, 0)
    if not low <= value <= high:
        raise _problem(key, value, f"{low} to {high}")
    return value


def _address(key: str, text: str) -> str:
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError:
        raise _problem(key, text, "a dotted-quad IPv4 address") from None
    if not is_host_address(str(addr)):
        raise _problem(key, text, "a host's unicast IPv4 address")
    return str(addr)


def _prefix(key: str, text: str) -> str:
    try:
        net = ipaddress.IPv4Network(text)
    except ValueError as e:
        raise _problem(key, text, f"an IPv4 prefix such as 192.0.2.0/24 ({e})") from None
    if net.prefixlen < SHORTEST_LISTEN_PREFIX:
        raise _problem(key, text, f"a prefix of /{SHORTEST_LISTEN_PREFIX} or longer: a "
                       "reflector accepts sessions only from the hosts' subnets")
    return str(net)


def _unique(key: str, values: list[str], most: int) -> tuple[str, ...]:
    if len(values) > most:
        raise _problem(key, " ".join(values), f"at most {most} values")
    seen: list[str] = []
    for v in values:
        if v in seen:
            raise _problem(key, v, "each value once")
        seen.append(v)
    return tuple(seen)


def evpn_settings(cfg: XendConfig) -> EvpnSettings:
    """The host's EVPN settings; XendConfigError names a wrong or missing key."""
    plane = cfg.get(CONTROL_PLANE, "multicast")
    if plane not in CONTROL_PLANES:
        raise _problem(CONTROL_PLANE, plane, " or ".join(CONTROL_PLANES))
    key = "xend-vnet-evpn-listen"
    listen = _unique(key, [_prefix(key, p) for p in cfg.get_list(key)], MAX_LISTEN_RANGES)
    key = "xend-vnet-evpn-reflectors"
    reflectors = _unique(key, [_address(key, r) for r in cfg.get_list(key)], MAX_REFLECTORS)
    address = cfg.get("xend-vnet-evpn-address")
    if address is not None:
        address = _address("xend-vnet-evpn-address", address)
    password_file = cfg.get("xend-vnet-evpn-password-file")
    if password_file is not None and not os.path.isabs(password_file):
        raise _problem("xend-vnet-evpn-password-file", password_file, "an absolute path")
    settings = EvpnSettings(
        control_plane=plane,
        address=address,
        asn=_int(cfg, "xend-vnet-evpn-as", None, 1, 4294967295),
        reflectors=reflectors,
        listen=listen,
        listen_limit=_int(cfg, "xend-vnet-evpn-listen-limit", DEFAULT_LISTEN_LIMIT, 1, 65535),
        password_file=password_file,
        ttl_security=_int(cfg, "xend-vnet-evpn-ttl-security", None, 1, 254),
        connect_retry=_int(cfg, "xend-vnet-evpn-connect-retry", DEFAULT_CONNECT_RETRY,
                           1, 65535),
        hold_time=_int(cfg, "xend-vnet-evpn-hold-time", DEFAULT_HOLD_TIME, 3, 65535),
        neigh_suppress=cfg.get_bool("xend-vnet-evpn-neigh-suppress", False),
        max_macs=_int(cfg, "xend-vnet-evpn-max-macs", DEFAULT_MAX_MACS, 1, 1 << 20),
    )
    _check_roles(settings)
    return settings


def _check_roles(s: EvpnSettings) -> None:
    """What each role needs: an address and an AS for either, reflectors to
    talk to for a host that is not one itself."""
    if not (s.vtep or s.reflector):
        return
    role = "(xend-vnet-control-plane evpn)" if s.vtep else "xend-vnet-evpn-listen"
    for key, value in (("xend-vnet-evpn-address", s.address), ("xend-vnet-evpn-as", s.asn)):
        if value is None:
            raise XendConfigError(f"invalid xend config: {role} needs {key}")
    if s.asn == 23456:
        raise _problem("xend-vnet-evpn-as", s.asn, "an AS number other than 23456 "
                       "(AS_TRANS, reserved)")
    if s.vtep and not s.reflector and not s.peers:
        raise XendConfigError(
            "invalid xend config: (xend-vnet-control-plane evpn) needs "
            "xend-vnet-evpn-reflectors: the route reflectors this host peers with "
            "(two, so that losing one loses nothing; docs/fleet.md)")


def password_problem(password: str) -> str | None:
    """Why ``password`` cannot be a BGP session password, or None."""
    if not password:
        return "it is empty"
    if len(password.encode("utf-8")) > MAX_PASSWORD:
        return f"it is longer than {MAX_PASSWORD} bytes (the kernel's TCP-MD5 key limit)"
    if not password.isascii() or not password.isprintable():
        return "it has characters that are not printable ASCII"
    bad = sorted(set(password) & _PASSWORD_REFUSED)
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return f"it has characters FRR's configuration cannot carry in a password: {shown}"
    return None


def password_from_file(text: str, path: str) -> str:
    """The password in a password file's text: its first line, without the
    line end; XendConfigError when it cannot be one."""
    password = text.split("\n", 1)[0].rstrip("\r")
    problem = password_problem(password)
    if problem:
        raise XendConfigError(f"invalid BGP password in {path}: {problem}")
    return password
