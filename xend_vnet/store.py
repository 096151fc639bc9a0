"""Persistent vnet configs: ``<state-dir>/vnet/<dbid>.sxp`` (design.md 4).

One file per vnet holding the config as one s-expression line, written
atomically (temp file, fsync, rename, fsync of the directory) so a crash
leaves either the old or the new file.  A file that cannot be read back is
moved aside to ``<name>.corrupt`` and reported, never deleted.  Beside it,
``<dbid>.bridge`` names the bridge when xend-vnet created it (so delete
removes only bridges it made, never one it adopted).  Key files for vnets
created over TCP live under ``<state-dir>/keys`` (design.md 7).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .config import ConfigError, VnetConfig
from .vnet_id import VnetId

DEFAULT_STATE_DIR = "/var/lib/xend"
SUFFIX = ".sxp"
BRIDGE_SUFFIX = ".bridge"
TEMP_MARK = ".tmp-"
CORRUPT = ".corrupt"
MAX_FILE = 1024 * 1024


@dataclass(frozen=True)
class StoreProblem:
    """A stored file that could not be used, and where it went."""

    path: str
    reason: str
    moved_to: str | None

    def __str__(self) -> str:
        where = f"; moved aside to {self.moved_to}" if self.moved_to else ""
        return f"{self.path}: {self.reason}{where}"


class StoreError(OSError):
    """The store could not be written."""


class VnetStore:
    """The vnet configs of one state directory."""

    def __init__(self, state_dir: str = DEFAULT_STATE_DIR):
        self.state_dir = state_dir
        self.dir = os.path.join(state_dir, "vnet")
        self.key_dir = os.path.join(state_dir, "keys")

    def path_of(self, vid: VnetId) -> str:
        return os.path.join(self.dir, vid.dbid + SUFFIX)

    def bridge_record_of(self, vid: VnetId) -> str:
        return os.path.join(self.dir, vid.dbid + BRIDGE_SUFFIX)

    def exists(self, vid: VnetId) -> bool:
        return os.path.exists(self.path_of(vid))

    def save(self, config: VnetConfig) -> str:
        """Write one config atomically; return its path."""
        final = self.path_of(config.vid)
        try:
            self._write(final, config.to_string() + "\n")
        except OSError as e:
            raise StoreError(e.errno, f"cannot store vnet {config.id_text} in {self.dir}: "
                             f"{e.strerror or e}") from None
        return final

    def record_bridge(self, vid: VnetId, bridge: str | None) -> None:
        """Remember that xend-vnet created ``bridge`` for this vnet (None: it did not)."""
        path = self.bridge_record_of(vid)
        try:
            if bridge is None:
                if os.path.exists(path):
                    os.unlink(path)
                    self._sync_dir()
            else:
                self._write(path, bridge + "\n")
        except OSError as e:
            raise StoreError(e.errno, f"cannot record the bridge of vnet {vid} in {path}: "
                             f"{e.strerror or e}") from None

    def created_bridge(self, vid: VnetId) -> str | None:
        """The bridge xend-vnet created for this vnet, if it recorded one."""
        try:
            with open(self.bridge_record_of(vid), encoding="utf-8") as f:
                return f.read(64).strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def _write(self, final: str, text: str) -> None:
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        temp = os.path.join(self.dir, f".{os.path.basename(final)}{TEMP_MARK}{os.getpid()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.rename(temp, final)
        except BaseException:
            _unlink_quietly(temp)
            raise
        self._sync_dir()

    def delete(self, vid: VnetId) -> bool:
        """Remove a stored config and its bridge record; False if there was none."""
        try:
            os.unlink(self.path_of(vid))
        except FileNotFoundError:
            _unlink_quietly(self.bridge_record_of(vid))
            return False
        except OSError as e:
            raise StoreError(e.errno, f"cannot delete {self.path_of(vid)}: "
                             f"{e.strerror or e}") from None
        _unlink_quietly(self.bridge_record_of(vid))
        self._sync_dir()
        return True

    def load_all(self) -> tuple[list[VnetConfig], list[StoreProblem]]:
        """Every readable config (sorted by id) and the problems found on the way."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return [], []
        except OSError as e:
            raise StoreError(e.errno, f"cannot read the store {self.dir}: "
                             f"{e.strerror or e}") from None
        configs: list[VnetConfig] = []
        problems: list[StoreProblem] = []
        for name in names:
            path = os.path.join(self.dir, name)
            if name.startswith(".") and TEMP_MARK in name:
                # Left by a write that crashed before its rename: the old
                # file (if any) is intact, the temp file is ours to drop.
                _unlink_quietly(path)
                continue
            if not name.endswith(SUFFIX):
                continue
            try:
                config = self._read(path, name)
            except (ConfigError, OSError, UnicodeDecodeError) as e:
                problems.append(StoreProblem(path, _reason(e), self._move_aside(path)))
                continue
            configs.append(config)
        configs.sort(key=lambda c: c.vid)
        return configs, problems

    def _read(self, path: str, name: str) -> VnetConfig:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
        if len(data) > MAX_FILE:
            raise ConfigError("vnet", f"file larger than {MAX_FILE} bytes")
        # Stored configs may be secured ones written by a later version; the
        # service refuses to bring those up, the store only reads them.
        config = VnetConfig.from_text(data.decode("utf-8"))
        if name != config.vid.dbid + SUFFIX:
            raise ConfigError("id", f"the file name does not match the id {config.id_text!r} "
                              f"(expected {config.vid.dbid + SUFFIX})")
        return config

    def _move_aside(self, path: str) -> str | None:
        target = path + CORRUPT
        n = 1
        while os.path.exists(target):
            target = f"{path}{CORRUPT}.{n}"
            n += 1
        try:
            os.rename(path, target)
        except OSError:
            return None
        self._sync_dir()
        return target

    def _sync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reason(e: Exception) -> str:
    if isinstance(e, OSError):
        return e.strerror or str(e)
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8 text"
    return str(e)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
