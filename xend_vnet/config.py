"""Vnet configs: the validated form of ``(vnet (id ..) (bridge ..) ...)``.

Legacy xend checked nothing (protocol.md 11.2, 12.1); this module applies
the rules of design.md section 4: ids in the short or the full form, names
that are valid Linux interface names, defaults that match what the engine
really creates, and secured levels only with a key file (design.md 7).  The
config is kept exactly as written (``sxpr``), because ``xend_vnet(id)``
returns it verbatim (protocol.md 10.1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from . import sxp
from .vnet_id import VnetId, VnetIdError, parse_usable
from .vnet_rules import (
    DEFAULT_DATA_PATH,
    data_path_problem,
    ifname_problem,
    key_file_problem,
    name_owner,
    security_problem,
    vxlan_id_problem,
    vxlan_security_problem,
)

KNOWN_KEYS = ("id", "bridge", "vnetif", "security", "key-file", "data-path")
# protocol.md 12.1: the legacy docs promised "at most 14" characters.
NAME_WARN_LENGTH = 14


class ConfigError(ValueError):
    """A config that cannot be used; ``field`` names the offending key."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"invalid vnet config: {field}: {reason}")


def _check(field: str, problem: str | None) -> None:
    """Raise the rule's problem (vnet_rules) as a ConfigError of ``field``."""
    if problem:
        raise ConfigError(field, problem)


def _single_value(sxpr: list, key: str) -> object | None:
    """Value of the ``(key value)`` child; refuse a key given twice or with extra values."""
    found = [c for c in sxp.children(sxpr) if isinstance(c, list) and c[:1] == [key]]
    if not found:
        return None
    if len(found) > 1:
        raise ConfigError(key, f"given {len(found)} times; give it once")
    entry = found[0]
    if len(entry) == 1:
        return None
    if len(entry) > 2:
        raise ConfigError(key, f"expected one value, found {sxp.to_string(entry)}")
    return entry[1]


def _text_value(sxpr: list, key: str) -> str | None:
    value = _single_value(sxpr, key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(key, f"expected a single value, found the list {sxp.to_string(value)}")
    return value


@dataclass(frozen=True)
class VnetConfig:
    """One vnet, validated; ``sxpr`` is the config exactly as the user wrote it."""

    sxpr: list = field(compare=False)
    id_text: str
    vid: VnetId
    bridge: str
    vnetif: str
    security: str
    key_file: str | None
    data_path: str = "vnetd"

    @classmethod
    def from_sxpr(cls, sxpr: object) -> VnetConfig:
        """Validate a parsed config."""
        if not isinstance(sxpr, list) or not sxpr:
            raise ConfigError("vnet", "the config must be one (vnet ...) list")
        if sxpr[0] != "vnet":
            raise ConfigError(
                "vnet", f"the config must start with 'vnet', found {sxp.to_string(sxpr[0])}")
        for element in sxp.children(sxpr):
            if not isinstance(element, list) or not element or not isinstance(element[0], str):
                raise ConfigError(
                    "vnet", f"element {sxp.to_string(element)} is not a (key value) list")
        id_text = _text_value(sxpr, "id")
        if id_text is None:
            raise ConfigError("id", "missing: every vnet needs (id ...), e.g. (id 97)")
        try:
            vid = parse_usable(id_text)
        except VnetIdError as e:
            raise ConfigError("id", str(e)) from None
        id_text = id_text.strip()

        bridge = _text_value(sxpr, "bridge")
        if bridge is None:
            # design.md 4: vnet<id as written> keeps domain configs' 'bridge=vnet97';
            # at most 4 hex digits, so the name is always valid.
            bridge = f"vnet{id_text}" if ":" not in id_text else f"vnet{vid.last_field:04x}"
        _check("bridge", ifname_problem(bridge))
        vnetif = _text_value(sxpr, "vnetif")
        vnetif = vid.default_vnetif if vnetif is None else vnetif
        _check("vnetif", ifname_problem(vnetif))
        if bridge == vnetif:
            raise ConfigError("bridge", f"{bridge!r} is also the vnetif; they must differ")

        security = _text_value(sxpr, "security")
        security = "none" if security is None else security
        _check("security", security_problem(security))
        key_file = _text_value(sxpr, "key-file")
        _check("key-file", key_file_problem(security, key_file))
        data_path = _text_value(sxpr, "data-path")
        data_path = DEFAULT_DATA_PATH if data_path is None else data_path
        _check("data-path", data_path_problem(data_path))
        if data_path == "vxlan":
            _check("data-path", vxlan_security_problem(security))
            _check("data-path", vxlan_id_problem(vid, id_text))
        return cls(sxpr, id_text, vid, bridge, vnetif, security, key_file, data_path)

    @classmethod
    def from_text(cls, text: str) -> VnetConfig:
        """Parse config text (one s-expression, '#' comments allowed)."""
        try:
            form = sxp.parse_one(text)
        except sxp.ParseError as e:
            raise ConfigError("vnet", f"cannot parse the config: {e}") from None
        return cls.from_sxpr(form)

    @property
    def canonical(self) -> str:
        return self.vid.canonical

    @property
    def extra_keys(self) -> list[str]:
        """Keys this project does not use (kept and returned verbatim)."""
        return [c[0] for c in sxp.children(self.sxpr) if c[0] not in KNOWN_KEYS]

    def to_string(self) -> str:
        """The config on one line, as stored (protocol.md 12.3)."""
        return sxp.to_string(self.sxpr)

    def warnings(self) -> list[str]:
        out = []
        for what, name in (("bridge", self.bridge), ("vnetif", self.vnetif)):
            if len(name) > NAME_WARN_LENGTH:
                out.append(f"vnet {self.id_text}: {what} name {name!r} is 15 characters; "
                           "some legacy tools allow only 14")
        return out


def check_collisions(config: VnetConfig, existing: Iterable[VnetConfig]) -> None:
    """Refuse names already used by another vnet (design.md 4), naming both ids."""
    taken = [(name, (other, what)) for other in existing if other.vid != config.vid
             for what, name in (("bridge", other.bridge), ("vnetif", other.vnetif))]
    for field_name, name in (("bridge", config.bridge), ("vnetif", config.vnetif)):
        owner = name_owner(name, taken)
        if owner is not None:
            other, what = owner
            raise ConfigError(
                field_name, f"{name!r} of vnet {config.id_text} is already the "
                f"{what} of vnet {other.id_text}")


class NameIndex:
    """``check_collisions`` against many configs at once (loading a large store):
    the names in a dict instead of a scan of every other vnet."""

    def __init__(self):
        self.owners: dict[str, tuple[VnetConfig, str]] = {}

    def check(self, config: VnetConfig) -> None:
        for field_name, name in (("bridge", config.bridge), ("vnetif", config.vnetif)):
            owner = self.owners.get(name)
            if owner is not None and owner[0].vid != config.vid:
                other, what = owner
                raise ConfigError(
                    field_name, f"{name!r} of vnet {config.id_text} is already the "
                    f"{what} of vnet {other.id_text}")

    def add(self, config: VnetConfig) -> None:
        # The first owner of a name is the one named, as check_collisions does.
        self.owners.setdefault(config.bridge, (config, "bridge"))
        self.owners.setdefault(config.vnetif, (config, "vnetif"))
