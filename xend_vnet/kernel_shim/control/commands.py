"""Control commands of the engine (protocol.md 8.2-8.5, design.md 4 and 6).

``execute(host, request)`` evaluates every form of one request in order and
returns the reply text: the listings the forms produced, or, at the first
error, only ``(err (errno N) (message "..."))``.  Arguments are found by
child name, in any order, unknown children ignored (protocol.md 8.2); xend's
``(vnet.del 97)`` shape is accepted too (protocol.md 8.4).  The host (the
daemon) owns TAPs and sockets; this module validates and decides.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable
from typing import Protocol

from ... import sxp
from ...vnet_id import VnetId, VnetIdError
from ...vnet_rules import (
    DEFAULT_DATA_PATH,
    data_path_problem,
    host_address_problem,
    ifname_problem,
    key_file_problem,
    name_owner,
    security_problem,
    vxlan_id_problem,
    vxlan_security_problem,
)
from . import listing
from ..wire.codec import is_multicast, parse_ipv4, parse_mac
from ..core.engine import EngineCore
from ..security import keys
from ..datapath.vxlan.table import VxlanTable

ENOENT = _errno.ENOENT   # 2
EIO = _errno.EIO         # 5
EEXIST = _errno.EEXIST   # 17
EINVAL = _errno.EINVAL   # 22
EBUSY = _errno.EBUSY     # 16
ENOSPC = _errno.ENOSPC   # 28

# Who may manage a vnet besides the operator (design.md 6): xend-vnet stores
# the vnets it creates and re-adds them, so removing one behind its back only
# lasts until its next reconcile.
OWNERS = ("xend-vnet",)


class CommandError(Exception):
    """A command refused, with the errno legacy would give and a message
    quoting the bad value."""

    def __init__(self, errno: int, message: str):
        self.errno = errno
        self.message = message
        super().__init__(message)


class EngineHost(Protocol):
    """What the daemon provides to the commands."""

    core: EngineCore
    device: str     # the interface whose address is the care-of address (varp listing)
    vxlan: VxlanTable   # vnets on the kernel VXLAN data path (outside the core)
    owners: dict[VnetId, str]   # (owner ...) of vnet.add, per vnet; kept by the commands

    def create_vnet(self, vid: VnetId, ifname: str, security: str,
                    key: bytes | None) -> None:
        """Create or reattach the TAP, then ``core.add_vnet`` (``key``: the file
        key of a secured vnet, already read); CommandError on failure."""

    def create_vxlan_vnet(self, vid: VnetId, ifname: str) -> None:
        """Create or take over the kernel VXLAN device, with a flood entry per
        peer, and add it to ``vxlan``; CommandError on failure."""

    def delete_vnet(self, vid: VnetId) -> None:
        """``core.remove_vnet`` and remove the TAP, or remove a VXLAN vnet and
        its device."""

    def peers_changed(self) -> None:
        """Make every VXLAN vnet's flood entries match ``core.peers``; never
        raises: a failure is logged and retried at the periodic refresh."""

    def set_mcaddr(self, addr: str, ttl: int | None) -> None:
        """Leave the old group, join ``addr``, ``core.set_mcaddr``."""

    def status(self) -> list:
        """The children of the ``(engine.status ...)`` reply form."""

    def now(self) -> float:
        """The clock the core is driven with (for ages in listings)."""

    def kernel_counters(self) -> dict[VnetId, dict[str, int]]:
        """The kernel path's counters of each vnet it carries (design.md 1.1)."""

    def purge_kernel(self) -> None:
        """Remove what the kernel path left in the kernel; CommandError on failure."""


def error_reply(errno: int, message: str) -> str:
    return sxp.to_string(["err", ["errno", str(errno)], ["message", message]]) + "\n"


def execute(host: EngineHost, request: str) -> str:
    """Evaluate every form of ``request``; never raises."""
    try:
        forms = sxp.parse_all(request)
    except sxp.ParseError as e:
        return error_reply(EINVAL, f"cannot parse request: {e}")
    out: list[str] = []
    for form in forms:
        try:
            out.append(evaluate(host, form))
        except CommandError as e:
            return error_reply(e.errno, e.message)
    return "".join(out)


def evaluate(host: EngineHost, form: sxp.Sxpr) -> str:
    """Evaluate one form: its reply text; CommandError for any failure, a
    host's OSError or bug included, as ``execute`` would answer it."""
    try:
        return _evaluate(host, form)
    except CommandError:
        raise
    except OSError as e:
        raise CommandError(e.errno or EIO, f"{_name(form)}: {e.strerror or e}") from e
    except Exception as e:  # noqa: BLE001 -- a host failure must still answer the caller
        raise CommandError(EIO, f"{_name(form)}: internal error: {e!r}") from e


def _name(form: sxp.Sxpr) -> str:
    return form[0] if isinstance(form, list) and form and isinstance(form[0], str) else "?"


def _evaluate(host: EngineHost, form: sxp.Sxpr) -> str:
    if not isinstance(form, list) or not form or not isinstance(form[0], str):
        raise CommandError(EINVAL, f"not a command: {sxp.to_string(form)}")
    handler = _COMMANDS.get(form[0])
    if handler is None:
        raise CommandError(EINVAL, f"unknown command {form[0]!r}; known: "
                           + ", ".join(sorted(_COMMANDS)))
    return handler(host, form)


# -- argument helpers -------------------------------------------------------------

def _arg(form: list, name: str, required: bool = True) -> str | None:
    value = sxp.child_value(form, name)
    if value is None:
        if sxp.child(form, name) is not None or required:
            raise CommandError(EINVAL, f"{form[0]}: missing ({name} ...)")
        return None
    if not isinstance(value, str):
        raise CommandError(EINVAL, f"{form[0]}: ({name} ...) must be an atom, "
                           f"not {sxp.to_string(value)}")
    return value


def _vid(form: list, name: str = "id", bare_ok: bool = False) -> VnetId:
    text = sxp.child_value(form, name)
    if text is None and bare_ok and len(form) > 1 and isinstance(form[1], str):
        text = form[1]    # xend's (vnet.del 97)
    if text is None:
        text = _arg(form, name)
    if not isinstance(text, str):
        raise CommandError(EINVAL, f"{form[0]}: ({name} ...) must be an atom")
    try:
        vid = VnetId.parse(text)
        vid.check_usable(text)
    except VnetIdError as e:
        raise CommandError(EINVAL, f"{form[0]}: {e}") from None
    return vid


def _existing(host: EngineHost, form: list, name: str = "id", bare_ok: bool = False):
    vid = _vid(form, name, bare_ok)
    vnet = host.core.vnet(vid)
    if vnet is None:
        if host.vxlan.get(vid) is not None:
            # Its frames never reach the engine: the kernel's counters are in
            # `ip -s link show IFNAME`, its MACs in `bridge fdb show dev IFNAME`.
            raise CommandError(EINVAL, f"{form[0]}: vnet {vid.canonical} uses the kernel "
                               "VXLAN data path: the engine has no vifs, keys or counters "
                               "for it")
        raise CommandError(ENOENT, f"{form[0]}: no such vnet {vid.canonical}")
    return vnet


def _mac(form: list) -> bytes:
    try:
        return parse_mac(_arg(form, "vmac"))
    except ValueError as e:
        raise CommandError(EINVAL, f"{form[0]}: {e}") from None


def _ipv4(form: list, name: str = "addr") -> str:
    try:
        return parse_ipv4(_arg(form, name))
    except ValueError as e:
        raise CommandError(EINVAL, f"{form[0]}: {e}") from None


def _int(form: list, name: str, low: int, high: int) -> int | None:
    text = _arg(form, name, required=False)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise CommandError(EINVAL, f"{form[0]}: invalid {name} {text!r}: "
                           f"expected a decimal number {low} to {high}")
    return int(text)


def _check(form: list, problem: str | None) -> None:
    """Refuse with the rule's problem (vnet_rules), EINVAL."""
    if problem:
        raise CommandError(EINVAL, f"{form[0]}: {problem}")


# -- commands -------------------------------------------------------------------

def _vnet_add(host: EngineHost, form: list) -> str:
    text = _arg(form, "id")
    try:
        vid = VnetId.parse(text)
    except VnetIdError as e:
        raise CommandError(EINVAL, f"vnet.add: {e}") from None
    if vid.is_zero:
        raise CommandError(EINVAL, f"vnet.add: invalid vnet id {text!r}: id 0 is not a vnet")
    if vid.is_physical:
        # Legacy inserts id 1 at load, so adding it fails EEXIST (protocol.md 1.3).
        raise CommandError(EEXIST, f"vnet.add: vnet {text!r} is reserved "
                           "for the physical network")
    owner = _owner(form)
    core = host.core
    if core.has_vnet(vid) or host.vxlan.get(vid) is not None:
        if owner is not None and _same_vnet(host, vid, form):
            host.owners[vid] = owner      # xend-vnet adopting what it stores (design.md 6)
        raise CommandError(EEXIST, f"vnet.add: vnet {vid.canonical} already exists")
    # An empty value is refused as in a config, not taken for the default.
    ifname = _arg(form, "vnetif", required=False)
    ifname = vid.default_vnetif if ifname is None else ifname
    _check(form, ifname_problem(ifname))
    user = name_owner(ifname, ((v.ifname, v.vid) for v in [*core.vnets(), *host.vxlan.vnets()]))
    if user is not None:
        raise CommandError(EEXIST, f"vnet.add: interface {ifname} of vnet "
                           f"{vid.canonical} is already used by vnet {user.canonical}")
    security = _arg(form, "security", required=False)
    security = "none" if security is None else security
    _check(form, security_problem(security))
    data_path = _arg(form, "data-path", required=False)
    data_path = DEFAULT_DATA_PATH if data_path is None else data_path
    _check(form, data_path_problem(data_path))
    key_file = _arg(form, "key-file", required=False)
    if data_path == "vxlan":
        _check(form, vxlan_id_problem(vid))      # the VNI is the id: 24 bits, never shared
        _check(form, vxlan_security_problem(security))
        _check(form, key_file_problem(security, key_file))
        host.create_vxlan_vnet(vid, ifname)
    else:
        _check(form, key_file_problem(security, key_file))
        key = None if key_file is None else _read_key(form, key_file)
        host.create_vnet(vid, ifname, security, key)
    _set_owner(host, vid, owner)
    return ""


def _owner(form: list) -> str | None:
    """The ``(owner NAME)`` of vnet.add and vnet.del, checked (design.md 6)."""
    owner = _arg(form, "owner", required=False)
    if owner is not None and owner not in OWNERS:
        raise CommandError(EINVAL, f"{form[0]}: invalid owner {owner!r}: expected "
                           + " or ".join(OWNERS))
    return owner


def _set_owner(host: EngineHost, vid: VnetId, owner: str | None) -> None:
    if owner is None:
        host.owners.pop(vid, None)
    else:
        host.owners[vid] = owner


def _same_vnet(host: EngineHost, vid: VnetId, form: list) -> bool:
    """Whether the existing vnet has the vnetif, security and data path asked
    for (design.md 5: such a re-add counts as success)."""
    ifname = sxp.child_value(form, "vnetif", vid.default_vnetif)
    security = sxp.child_value(form, "security", "none")
    data_path = sxp.child_value(form, "data-path", DEFAULT_DATA_PATH)
    vnet = host.core.vnet(vid)
    if vnet is not None:
        return (vnet.ifname, vnet.security, "vnetd") == (ifname, security, data_path)
    vx = host.vxlan.get(vid)
    return vx is not None and (vx.ifname, "none", "vxlan") == (ifname, security, data_path)


def _read_key(form: list, path: str) -> bytes:
    try:
        return keys.read_key_file(path)
    except keys.KeyFileError as e:
        raise CommandError(EINVAL, f"{form[0]}: {e}") from None


_KEY_OPS = ("add", "activate", "retire", "list")


def _vnet_key(host: EngineHost, form: list) -> str:
    """Key generations of a secured vnet: rotation in three steps (design.md 7)."""
    vnet = _existing(host, form)
    if vnet.keys is None:
        raise CommandError(EINVAL, f"vnet.key: vnet {vnet.vid.canonical} has security "
                           "none: it has no keys")
    ops = [op for op in _KEY_OPS if sxp.child(form, op) is not None]
    if len(ops) != 1:
        raise CommandError(EINVAL, "vnet.key: expected exactly one of (add /ABSOLUTE/PATH), "
                           "(activate GEN), (retire GEN) or (list)")
    op = ops[0]
    core = host.core
    if op == "list":
        return listing.key_list(vnet)
    if op == "add":
        key = _read_key(form, _arg(form, "add"))
        try:
            gen = core.key_add(vnet.vid, key)
        except KeyError as e:
            raise CommandError(EEXIST, f"vnet.key: {e.args[0]}") from None
        except ValueError as e:
            raise CommandError(EINVAL, f"vnet.key: {e}") from None
        return listing.key_list(vnet, gen)
    gen = _int(form, op, 1, 65535)
    try:
        if op == "activate":
            core.key_activate(vnet.vid, gen)
        else:
            core.key_retire(vnet.vid, gen)
    except KeyError as e:
        raise CommandError(ENOENT, f"vnet.key: {e.args[0]} in vnet {vnet.vid.canonical}") from None
    except ValueError as e:
        raise CommandError(EBUSY, f"vnet.key: {e}") from None
    return ""


def _vnet_del(host: EngineHost, form: list) -> str:
    vid = _vid(form, bare_ok=True)
    if not host.core.has_vnet(vid) and host.vxlan.get(vid) is None:
        raise CommandError(ENOENT, f"vnet.del: no such vnet {vid.canonical}")
    asked = _owner(form)
    owner = host.owners.get(vid)
    if owner is not None and asked != owner and sxp.child(form, "force") is None:
        # EBUSY, "resource busy", as rmmod of a module in use: held by another
        # party.  EPERM would say the caller lacks a privilege (design.md 6).
        shown = f"{vid.last_field:x}" if vid.short else vid.canonical
        raise CommandError(EBUSY, f"vnet.del: vnet {vid.canonical} is stored by {owner}: "
                           f"delete it with 'xm vnet-delete {shown}' (its bridge and stored "
                           "config go too), or add (force) to delete it from the engine "
                           f"only (vn vnet-delete --force), which {owner} re-adds at its "
                           "next reconcile")
    host.delete_vnet(vid)
    host.owners.pop(vid, None)
    return ""


def _vnet_list(host: EngineHost, form: list) -> str:
    return listing.vnet_list(host.core, host.vxlan, host.owners)


def _vnet_stats(host: EngineHost, form: list) -> str:
    vnets = None if sxp.child(form, "id") is None else [_existing(host, form)]
    return listing.vnet_stats(host.core, vnets, host.kernel_counters())


def _vif_add(host: EngineHost, form: list) -> str:
    vnet = _existing(host, form, "vnet")
    if not host.core.vif_add(vnet.vid, _mac(form), host.now()):
        raise CommandError(ENOSPC, f"vif.add: vnet {vnet.vid} has as many vifs as its "
                           "bound allows (docs/security.md, resource limits): "
                           f"{_arg(form, 'vmac')} is not recorded")
    return ""


def _vif_del(host: EngineHost, form: list) -> str:
    vid = _vid(form, "vnet")
    mac = _mac(form)
    try:
        host.core.vif_del(vid, mac)
    except KeyError:
        raise CommandError(ENOENT, f"vif.del: no vif {_arg(form, 'vmac')} "
                           f"in vnet {vid.canonical}") from None
    return ""


def _vif_list(host: EngineHost, form: list) -> str:
    return listing.vif_list(host.core, host.now())


def _peer_add(host: EngineHost, form: list) -> str:
    addr = _ipv4(form)
    problem = host_address_problem(addr)
    if problem:
        raise CommandError(EINVAL, f"peer.add: invalid peer address {addr!r}: {problem}")
    port = _int(form, "port", 1, 65535)
    host.core.peer_add(addr, host.core.port if port is None else port)
    host.peers_changed()
    return ""


def _peer_del(host: EngineHost, form: list) -> str:
    addr = _ipv4(form)
    try:
        host.core.peer_del(addr)
    except KeyError:
        raise CommandError(ENOENT, f"peer.del: no peer {addr}") from None
    host.peers_changed()
    return ""


def _peer_list(host: EngineHost, form: list) -> str:
    return listing.peer_list(host.core)


def _varp_flush(host: EngineHost, form: list) -> str:
    host.core.varp_flush()
    return ""


def _varp_list(host: EngineHost, form: list) -> str:
    return listing.varp_list(host.core, host.now(), host.device)


def _varp_print(host: EngineHost, form: list) -> str:
    return listing.varp_print(host.core, host.now(), host.device, host.vxlan,
                              host.owners)


def _varp_mcaddr(host: EngineHost, form: list) -> str:
    addr = _ipv4(form)
    if not is_multicast(addr):
        raise CommandError(EINVAL, f"varp.mcaddr: {addr!r} is not a multicast address "
                           "(224.0.0.0 to 239.255.255.255)")
    ttl = _int(form, "ttl", 1, 255)
    host.set_mcaddr(addr, ttl)
    return ""


def _engine_status(host: EngineHost, form: list) -> str:
    return sxp.to_string(["engine.status", *host.status()]) + "\n"


def _engine_purge(host: EngineHost, form: list) -> str:
    """Remove what outlives the engine in the kernel: the kernel path's
    programs and maps (``vn rmmod --purge``, after its vnet.del of every vnet)."""
    host.purge_kernel()
    return ""


_COMMANDS: dict[str, Callable[[EngineHost, list], str]] = {
    "vnet.add": _vnet_add,
    "vnet.del": _vnet_del,
    "vnet.list": _vnet_list,
    "vnet.stats": _vnet_stats,
    "vnet.key": _vnet_key,
    "vif.add": _vif_add,
    "vif.del": _vif_del,
    "vif.list": _vif_list,
    "peer.add": _peer_add,
    "peer.del": _peer_del,
    "peer.list": _peer_list,
    "varp.flush": _varp_flush,
    "varp.list": _varp_list,
    "varp.print": _varp_print,
    "varp.mcaddr": _varp_mcaddr,
    "engine.status": _engine_status,
    "engine.purge": _engine_purge,
}
