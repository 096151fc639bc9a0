"""The engine commands xend-vnet sends and the listings it reads (design.md 5, 6).

Every ``vnet.add`` and ``vnet.del`` carries ``(owner xend-vnet)``: the engine
marks the vnets the server manages, lists the mark, and refuses a
``vnet.del`` of a marked vnet from anyone else unless forced, so a vnet
left in the engine by a create that did not finish is recognised.
"""

from __future__ import annotations

from ..config import VnetConfig
from ..vnet_id import VnetId, VnetIdError

EEXIST = 17
ENOENT = 2
OWNER = ["owner", "xend-vnet"]


def _fields(form: object) -> dict[str, object] | None:
    if not (isinstance(form, list) and form[:1] == ["vnet"]):
        return None
    return {c[0]: c[1] if len(c) > 1 else "" for c in form[1:]
            if isinstance(c, list) and c and isinstance(c[0], str)}


def _canonical(fields: dict[str, object]) -> str | None:
    try:
        return VnetId.parse(str(fields.get("id", ""))).canonical
    except VnetIdError:
        return None


def engine_vnets(reply: list[object]) -> dict[str, tuple[str, str, str]]:
    """``(vnet.list)`` reply forms -> {canonical id: (vnetif, security, data path)};
    an engine that lists no data path runs every vnet itself (vnetd)."""
    out: dict[str, tuple[str, str, str]] = {}
    for form in reply:
        fields = _fields(form)
        canonical = _canonical(fields) if fields is not None else None
        if fields is None or canonical is None:
            continue
        out[canonical] = (str(fields.get("vnetif", "")), str(fields.get("security", "none")),
                          str(fields.get("data-path", "vnetd")))
    return out


def owned_vnets(reply: list[object]) -> set[str]:
    """Canonical ids the engine lists with ``(owner xend-vnet)``."""
    out = set()
    for form in reply:
        fields = _fields(form)
        if fields is not None and fields.get(OWNER[0]) == OWNER[1]:
            canonical = _canonical(fields)
            if canonical is not None:
                out.add(canonical)
    return out


def add_form(config: VnetConfig) -> list:
    """The ``vnet.add`` command for a config (design.md 6; explicit vnetif, protocol.md 16)."""
    form = ["vnet.add", ["id", config.canonical], ["vnetif", config.vnetif],
            ["security", config.security]]
    if config.key_file:
        form.append(["key-file", config.key_file])
    if config.data_path != "vnetd":
        # Only when asked: an engine without the option still takes every other config.
        form.append(["data-path", config.data_path])
    form.append(list(OWNER))
    return form


def del_form(canonical: str) -> list:
    """The ``vnet.del`` command, marked as the server's."""
    return ["vnet.del", ["id", canonical], list(OWNER)]
