"""``xend-vnet import``: bring in the vnets a legacy xend kept (design.md 4).

Sources (protocol.md 11.1): xenstore ``/vnet/<dbid>/config`` (Xen 3.x),
read with the xenstore command-line tools, or the files of a Xen 2.0
``xend-db/vnet`` directory (a ``# path date`` comment line, then the
config).  Every config is validated like a new one; what is skipped is
reported with the reason.  Import writes the store only: a running
xend-vnet brings the new vnets up when it is restarted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import ConfigError, VnetConfig, check_collisions
from ..store import StoreError, VnetStore

XEN2_DB_DIR = "/var/lib/xen/xend-db/vnet"
MAX_FILE = 1024 * 1024
TOOL_TIMEOUT = 30.0


class ImportSourceError(Exception):
    """The legacy source cannot be read at all."""


@dataclass
class ImportResult:
    imported: list[str] = field(default_factory=list)     # ids as written
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)


@dataclass(frozen=True)
class LegacyEntry:
    """One vnet of the legacy store: its config text, or why it could not be read."""

    source: str
    text: str | None = None
    error: str | None = None


Runner = Callable[[list[str]], str]


def run_tool(argv: list[str]) -> str:
    """Run a xenstore tool; its stdout, or ImportSourceError with its stderr."""
    if shutil.which(argv[0]) is None:
        raise ImportSourceError(f"{argv[0]} not found: is this a Xen host with xenstored?")
    try:
        done = subprocess.run(argv, check=False, capture_output=True, text=True,
                              timeout=TOOL_TIMEOUT, errors="replace")
    except subprocess.TimeoutExpired:
        raise ImportSourceError(f"{' '.join(argv)}: no answer within {TOOL_TIMEOUT:g} s "
                                "(is xenstored running?)") from None
    except OSError as e:
        raise ImportSourceError(f"cannot run {argv[0]}: {e.strerror or e}") from None
    if done.returncode != 0:
        raise ImportSourceError(f"{' '.join(argv)}: {done.stderr.strip() or 'failed'}")
    return done.stdout


def read_xenstore(run: Runner = run_tool) -> list[LegacyEntry]:
    """The entry of every ``/vnet/<dbid>`` in xenstore."""
    try:
        names = run(["xenstore-list", "/vnet"]).split()
    except ImportSourceError as e:
        # xenstore-list says "could not list path /vnet" when it does not exist.
        if "could not list path" in str(e) or "No such file" in str(e):
            return []
        raise
    entries = []
    for name in names:
        source = f"xenstore /vnet/{name}"
        try:
            text = run(["xenstore-read", f"/vnet/{name}/config"])
        except ImportSourceError as e:
            entries.append(LegacyEntry(source, error=str(e)))
            continue
        entries.append(LegacyEntry(source, text))
    return entries


def read_xend_db(directory: str = XEN2_DB_DIR) -> list[LegacyEntry]:
    """The entry of every file of a Xen 2.0 ``xend-db/vnet`` directory."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise ImportSourceError(f"cannot read {directory}: {e.strerror}") from None
    entries = []
    for name in names:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE + 1)
            if len(data) > MAX_FILE:
                raise ValueError(f"larger than {MAX_FILE} bytes")
            entries.append(LegacyEntry(path, data.decode("utf-8")))
        except (OSError, ValueError) as e:
            entries.append(LegacyEntry(path, error=str(e)))
    return entries


def import_configs(store: VnetStore, entries: list[LegacyEntry]) -> ImportResult:
    """Validate and store each entry; skip (with the reason) what cannot be used.
    StoreError when the store itself cannot be read."""
    result = ImportResult()
    existing, _ = store.load_all()
    for entry in entries:
        source = entry.source
        if entry.text is None:
            result.skipped.append((source, entry.error or "unreadable"))
            continue
        try:
            config = VnetConfig.from_text(entry.text)
        except ConfigError as e:
            result.skipped.append((source, str(e)))
            continue
        if any(c.vid == config.vid for c in existing):
            result.skipped.append((source, f"vnet {config.id_text} is already stored"))
            continue
        try:
            check_collisions(config, existing)
            store.save(config)
        except (ConfigError, StoreError) as e:
            result.skipped.append((source, str(e)))
            continue
        existing.append(config)
        result.imported.append(config.id_text)
    return result
