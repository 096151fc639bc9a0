"""``vn`` key files and key rotation of secured vnets (design.md 7)."""

from __future__ import annotations

import os

from .. import sxp
from .session import Opts, UsageError, Vn

KEY_BYTES = 32  # design.md 7: 32 random bytes, 64 hex characters


def write_key_file(path: str) -> None:
    """A new key file (design.md 7): 64 hex characters and a newline, mode 0600,
    never overwriting an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise UsageError(f"key file {path} exists: not overwriting it") from None
    except OSError as e:
        raise UsageError(f"cannot create key file {path}: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (os.urandom(KEY_BYTES).hex() + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_generation(text: str) -> str:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise UsageError(f"invalid key generation {text!r}: expected a number 1 to 65535")
    return str(int(text))


def format_keys(forms: list[sxp.Sxpr]) -> str:
    """``vn keys``: one line per generation (state, SPI, suite), never key material."""
    lines = [f"{'gen':>5}  {'state':<8} {'spi':<10}  suite"]
    for f in forms:
        lines.append(f"{sxp.child_value(f, 'gen', ''):>5}  {sxp.child_value(f, 'state', ''):<8} "
                     f"{sxp.child_value(f, 'spi', ''):<10}  {sxp.child_value(f, 'suite', '')}")
    return "\n".join(lines) + "\n"


def op_key_gen(vn: Vn, opts: Opts, args: list[str]) -> int:
    write_key_file(args[0])
    return 0


def _key_form(vn: Vn, key: str, *op: sxp.Sxpr) -> list[sxp.Sxpr]:
    return ["vnet.key", ["id", sxp.child_value(vn.lookup(key), "id")], *op]


def op_key_add(vn: Vn, opts: Opts, args: list[str]) -> int:
    vnet, path = args
    for form in vn.call(_key_form(vn, vnet, ["add", os.path.abspath(path)])):
        vn.write(f"generation {sxp.child_value(form, 'gen')} added\n")
    return 0


def op_key_activate(vn: Vn, opts: Opts, args: list[str]) -> int:
    vn.call(_key_form(vn, args[0], ["activate", parse_generation(args[1])]))
    return 0


def op_key_retire(vn: Vn, opts: Opts, args: list[str]) -> int:
    vn.call(_key_form(vn, args[0], ["retire", parse_generation(args[1])]))
    return 0


def op_keys(vn: Vn, opts: Opts, args: list[str]) -> int:
    vn.write(format_keys(vn.call(_key_form(vn, args[0], ["list"]))))
    return 0
