"""128-bit vnet ids: parsing, canonical text and wire bytes (protocol.md 1, design.md 4).

Accepted text: the short form (1 to 4 hex digits, the last 16-bit field:
``97`` is 0x97) or the full form of exactly 8 colon-separated fields of 0 to
4 hex digits.  The legacy parser silently mis-read other colon forms
(``1:2`` became ``1:0:...:0``), so they are refused here.  Canonical text is
8 groups of ``%04x``; on the wire the id is the 8 fields big-endian.
"""

from __future__ import annotations

from dataclasses import dataclass

_HEXDIGITS = frozenset("0123456789abcdefABCDEF")


class VnetIdError(ValueError):
    """Text that is not a vnet id, with the reason and the accepted forms."""


def _field(text: str, part: str) -> int:
    if len(part) > 4 or not all(c in _HEXDIGITS for c in part):
        raise VnetIdError(
            f"invalid vnet id {text!r}: field {part!r} is not 0 to 4 hex digits")
    return int(part, 16) if part else 0


@dataclass(frozen=True, order=True)
class VnetId:
    """A vnet id as its 16 wire bytes (8 big-endian 16-bit fields)."""

    raw: bytes

    def __post_init__(self):
        if not isinstance(self.raw, bytes) or len(self.raw) != 16:
            raise VnetIdError("a vnet id is exactly 16 bytes")

    @classmethod
    def parse(cls, text: str) -> "VnetId":
        """Parse the short or the full form; raise VnetIdError quoting ``text``."""
        if not isinstance(text, str):
            raise VnetIdError(f"invalid vnet id {text!r}: expected text")
        stripped = text.strip()
        if not stripped:
            raise VnetIdError(f"invalid vnet id {text!r}: empty")
        if ":" not in stripped:
            if len(stripped) > 4:
                raise VnetIdError(
                    f"invalid vnet id {text!r}: the short form is 1 to 4 hex "
                    "digits (the last field); use 8 colon-separated fields "
                    "for a longer id")
            fields = [0] * 7 + [_field(text, stripped)]
        else:
            parts = stripped.split(":")
            if len(parts) != 8:
                raise VnetIdError(
                    f"invalid vnet id {text!r}: {len(parts)} colon-separated "
                    "fields; the long form has exactly 8 "
                    "(e.g. 0:0:0:0:0:0:0:97)")
            fields = [_field(text, p) for p in parts]
        return cls(b"".join(f.to_bytes(2, "big") for f in fields))

    @property
    def fields(self) -> tuple:
        r = self.raw
        return tuple((r[i] << 8) | r[i + 1] for i in range(0, 16, 2))

    @property
    def value(self) -> int:
        """The id as one 128-bit number."""
        return int.from_bytes(self.raw, "big")

    @property
    def last_field(self) -> int:
        return (self.raw[14] << 8) | self.raw[15]

    @property
    def canonical(self) -> str:
        """``0000:0000:0000:0000:0000:0000:0000:0097``: listings and lookups."""
        return ":".join(f"{f:04x}" for f in self.fields)

    @property
    def dbid(self) -> str:
        """The store key: canonical form with ``:`` replaced by ``-``."""
        return self.canonical.replace(":", "-")

    @property
    def short(self) -> bool:
        """True when only the last field is non-zero."""
        return not any(self.raw[:14])

    @property
    def default_vnetif(self) -> str:
        """The engine's TAP name: ``vnif%04x`` of the last field (protocol.md 1.4)."""
        return f"vnif{self.last_field:04x}"

    @property
    def is_zero(self) -> bool:
        return not any(self.raw)

    @property
    def is_physical(self) -> bool:
        """Id 1: the reserved "physical network" (protocol.md 1.3)."""
        return self.raw == b"\x00" * 15 + b"\x01"

    def check_usable(self, text: str = "") -> None:
        """Raise VnetIdError for 0 (invalid) and 1 (reserved)."""
        shown = text or self.canonical
        if self.is_zero:
            raise VnetIdError(f"invalid vnet id {shown!r}: id 0 is not a vnet")
        if self.is_physical:
            raise VnetIdError(
                f"invalid vnet id {shown!r}: id 1 is reserved for the physical network")

    def __str__(self) -> str:
        return self.canonical


def parse_usable(text: str) -> VnetId:
    """Parse ``text`` and refuse the ids no vnet may have (0 and 1)."""
    vid = VnetId.parse(text)
    vid.check_usable(text)
    return vid
