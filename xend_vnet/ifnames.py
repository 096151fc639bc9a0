"""The one rule for interface names (bridges, vnet interfaces), used everywhere.

Linux accepts almost any printable name below IFNAMSIZ, but names travel
through s-expression listings and shell scripts, and ``%`` makes the kernel
pick a number (a template).  So a name is 1 to 15 characters from letters,
digits, ``.``, ``_`` and ``-`` (enough for ``vnif0097``, ``xenbr0``,
``vif1.0``, ``br-lan``), and never ``.`` or ``..``.
"""

from __future__ import annotations

IFNAMSIZ = 16
IFNAME_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def ifname_problem(name: str) -> str | None:
    """Why ``name`` is not an acceptable interface name, or None when it is."""
    if not name:
        return "empty interface name"
    if len(name) >= IFNAMSIZ:
        return (f"interface name {name!r} is {len(name)} characters; "
                f"at most {IFNAMSIZ - 1} are allowed")
    if name in (".", ".."):
        return f"{name!r} is not a valid interface name"
    bad = sorted({c for c in name if c not in IFNAME_CHARS})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        return (f"interface name {name!r} contains {shown}; use letters, digits, "
                "'.', '_' and '-'")
    return None
