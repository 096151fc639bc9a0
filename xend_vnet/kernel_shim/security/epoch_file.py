"""The engine's epoch state file (design.md 7): the last epoch handed out,
written (atomically, synced) before the epoch is used, so epochs only grow
across restarts even when the wall clock steps back.  One decimal number and
a newline."""

from __future__ import annotations

import os

from ... import atomic_file


def load(path: str) -> int:
    """The last epoch saved, 0 when there is no file; ValueError on a damaged one."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return 0
    except UnicodeDecodeError:
        raise ValueError(f"epoch file {path} is damaged") from None
    if not (text.isascii() and text.isdigit() and int(text) < 1 << 64):
        raise ValueError(f"epoch file {path} is damaged")   # epochs are 64-bit
    return int(text)


def save(path: str, epoch: int) -> None:
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    atomic_file.write_atomically(path, f"{epoch}\n".encode("ascii"), mode=0o600)
