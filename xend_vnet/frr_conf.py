"""FRR's configuration for a host's EVPN settings (docs/fleet.md): pure text.

One integrated ``frr.conf`` (zebra and bgpd, as FRR's distribution service
reads it with ``service integrated-vtysh-config``) made of two sections,
which a test bed may also give each daemon on its own
(``zebra_config``, ``bgpd_config``); and the ``daemons`` file with bgpd on.

A host whose vxlan vnets are served by EVPN (``settings.vtep``) opens one
iBGP session to each route reflector, in the peer-group REFLECTORS, and
advertises every VNI the kernel has (``advertise-all-vni``: zebra finds
the VXLAN devices and their bridges itself).  A reflector
(``settings.reflector``) accepts the hosts of its listen ranges into the
peer-group HOSTS, as route-reflector clients, and needs no VNI of its own.
Both resolve next hops through a default route (``ip nht resolve-via-default``:
hosts that reach other subnets only through one need it), retry a
connection every few seconds rather than FRR's 120, send the first updates
of a session after 0.2 s rather than up to 10 s (``COALESCE_MS``), and
declare a silent session down after ``hold_time`` seconds.
"""

from __future__ import annotations

from .evpn_settings import EvpnSettings, password_problem

REFLECTORS = "REFLECTORS"      # the peer-group of a host's sessions to the reflectors
HOSTS = "HOSTS"                # the peer-group of a reflector's hosts (listen ranges)
MARKER = "! Written by xend-vnet evpn-config"
# Updates to a newly established session wait this long (ms) for other
# sessions to join them.  FRR's own default starts at 1 s and grows by 0.2 s
# per session up to 10 s: a reflector restarted in front of a fleet would
# send nothing for 10 s.
COALESCE_MS = 200


class FrrConfigError(ValueError):
    """Settings FRR's configuration cannot be made from (no EVPN role)."""


def header(source: str) -> str:
    """The first lines of a file this module wrote: how to recognise and change it."""
    return (f"{MARKER} from {source} (docs/fleet.md).\n"
            "! Changes made here are overwritten: change that file and run\n"
            "! `xend-vnet evpn-config` again.\n")


def zebra_config(settings: EvpnSettings) -> str:
    """zebra's part: next hops may resolve through a default route."""
    _role(settings)
    return "ip nht resolve-via-default\n"


def _session(group: str, s: EvpnSettings, password: str | None, initiate: bool) -> list[str]:
    lines = [f" neighbor {group} peer-group",
             f" neighbor {group} remote-as {s.asn}",
             f" neighbor {group} update-source {s.address}",
             f" neighbor {group} timers {s.keepalive} {s.hold_time}"]
    if initiate:
        lines.append(f" neighbor {group} timers connect {s.connect_retry}")
    if password is not None:
        lines.append(f" neighbor {group} password {password}")
    if s.ttl_security is not None:
        lines.append(f" neighbor {group} ttl-security hops {s.ttl_security}")
    return lines


def bgpd_config(settings: EvpnSettings, password: str | None = None) -> str:
    """bgpd's part: the router, its sessions and the l2vpn evpn family."""
    s = settings
    _role(s)
    if password is not None:
        problem = password_problem(password)
        if problem:
            raise FrrConfigError(f"invalid BGP password: {problem}")
    lines = [f"router bgp {s.asn}",
             f" bgp router-id {s.address}",
             " no bgp default ipv4-unicast",
             f" coalesce-time {COALESCE_MS}"]
    peers = s.peers
    if peers:
        lines += _session(REFLECTORS, s, password, initiate=True)
        lines += [f" neighbor {addr} peer-group {REFLECTORS}" for addr in peers]
    if s.reflector:
        lines.append(f" bgp listen limit {s.listen_limit}")
        lines += _session(HOSTS, s, password, initiate=False)
        lines += [f" bgp listen range {prefix} peer-group {HOSTS}" for prefix in s.listen]
    lines += [" !", " address-family l2vpn evpn"]
    if peers:
        lines.append(f"  neighbor {REFLECTORS} activate")
    if s.reflector:
        lines += [f"  neighbor {HOSTS} activate",
                  f"  neighbor {HOSTS} route-reflector-client"]
    if s.vtep:
        lines.append("  advertise-all-vni")
    lines += [" exit-address-family", "exit"]
    return "\n".join(lines) + "\n"


def frr_conf(settings: EvpnSettings, password: str | None = None,
             source: str = "xend-config.sxp") -> str:
    """The integrated ``frr.conf``."""
    return (header(source) + "!\nlog syslog informational\n" + zebra_config(settings)
            + "!\n" + bgpd_config(settings, password) + "!\n")


def _role(s: EvpnSettings) -> None:
    if not (s.vtep or s.reflector):
        raise FrrConfigError(
            "this host has no EVPN role: set (xend-vnet-control-plane evpn) for a host whose "
            "vxlan vnets EVPN serves, or (xend-vnet-evpn-listen PREFIX ...) for a route "
            "reflector, in xend-config.sxp (docs/fleet.md)")


def is_ours(text: str) -> bool:
    """Whether a frr.conf was written by this module."""
    return text.startswith(MARKER)


def is_stock(text: str) -> bool:
    """Whether a frr.conf says nothing but where to log: the distribution's own,
    which may be replaced without losing anyone's configuration."""
    for line in text.splitlines():
        words = line.split()
        if words and not words[0].startswith(("!", "#")) and words[0] != "log":
            return False
    return True


def daemons_file(existing: str | None) -> str:
    """FRR's ``daemons`` file with bgpd enabled (zebra always runs); every other
    line of an existing file is kept as it is."""
    if existing is None:
        return ("# Written by xend-vnet evpn-config: the daemons FRR starts "
                "(docs/fleet.md).\nbgpd=yes\nvtysh_enable=yes\n")
    lines = existing.splitlines()
    out, found = [], False
    for line in lines:
        if line.strip().replace(" ", "").startswith("bgpd="):
            if not found:
                out.append("bgpd=yes")
                found = True
            continue
        out.append(line)
    if not found:
        out.append("bgpd=yes")
    return "\n".join(out) + "\n"
