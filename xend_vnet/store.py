"""Persistent vnet configs: ``<state-dir>/vnet/<dbid>.sxp`` (design.md 4).

One file per vnet holding the config as one s-expression line, written
atomically (temp file, fsync, rename, fsync of the directory) so a crash
leaves either the old or the new file.  A file that cannot be read back is
moved aside to ``<name>.corrupt`` and reported, never deleted.  Beside it,
``<dbid>.bridge`` names the bridge when xend-vnet created it (so delete
removes only bridges it made, never one it adopted), and ``<dbid>.deleted``
a removal still owed to the engine: the vnet was deleted while vnetd was
down, so its persistent TAP must go when the engine answers (design.md 5).
Key files for vnets created over TCP live under ``<state-dir>/keys``
(design.md 7).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from . import atomic_file, sxp
from .config import ConfigError, VnetConfig
from .ifnames import ifname_problem
from .vnet_id import VnetId, VnetIdError
from .vnet_rules import data_path_problem

DEFAULT_STATE_DIR = "/var/lib/xend"
SUFFIX = ".sxp"
BRIDGE_SUFFIX = ".bridge"
DELETED_SUFFIX = ".deleted"
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


@dataclass(frozen=True)
class PendingRemoval:
    """A vnet deleted while the engine was down: what finds its device later."""

    vid: VnetId
    vnetif: str
    data_path: str

    def to_string(self) -> str:
        return sxp.to_string(["vnet.deleted", ["id", self.vid.canonical],
                              ["vnetif", self.vnetif], ["data-path", self.data_path]])

    @classmethod
    def from_text(cls, text: str) -> PendingRemoval:
        """Parse a ``<dbid>.deleted`` record; ValueError says what is wrong."""
        form = sxp.parse_one(text)
        if not (isinstance(form, list) and form[:1] == ["vnet.deleted"]):
            raise ValueError("not a (vnet.deleted ...) record")
        values = [sxp.child_value(form, k) for k in ("id", "vnetif", "data-path")]
        if not all(isinstance(v, str) for v in values):
            raise ValueError("id, vnetif and data-path must each be given as text")
        id_text, vnetif, data_path = values
        try:
            vid = VnetId.parse(id_text)
        except VnetIdError as e:
            raise ValueError(f"id: {e}") from None
        problem = ifname_problem(vnetif) or data_path_problem(data_path)
        if problem:
            raise ValueError(problem)
        return cls(vid, vnetif, data_path)


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

    def removal_record_of(self, vid: VnetId) -> str:
        return os.path.join(self.dir, vid.dbid + DELETED_SUFFIX)

    def exists(self, vid: VnetId) -> bool:
        return os.path.exists(self.path_of(vid))

    def had_config(self, vid: VnetId) -> bool:
        """Whether a config of ``vid`` is stored or was moved aside as unreadable:
        either way the vnet is the operator's, never an orphan to delete."""
        path = self.path_of(vid)
        return os.path.exists(path) or os.path.exists(path + CORRUPT)

    def save(self, config: VnetConfig) -> str:
        """Write one config atomically; return its path."""
        final = self.path_of(config.vid)
        problem = size_problem(config)
        if problem:
            raise StoreError(27, problem)   # EFBIG: never written, so never lost later
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

    def record_bridges(self, records: list[tuple[VnetId, str]]) -> None:
        """Several bridge records with one flush to disk (a restore makes many
        bridges at once): each written to a temporary file, the file system synced
        once, then each renamed and the directory synced, so every record is still
        either absent or whole after a crash."""
        if not records:
            return
        temps: list[tuple[str, str]] = []
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
            for vid, bridge in records:
                final = self.bridge_record_of(vid)
                temp = os.path.join(self.dir,
                                    f".{os.path.basename(final)}{TEMP_MARK}{os.getpid()}")
                fd = atomic_file.open_temp(temp, 0o600)    # O_EXCL|O_NOFOLLOW
                temps.append((temp, final))
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(bridge + "\n")
            _syncfs(self.dir)
            for temp, final in temps:
                os.rename(temp, final)
            self._sync_dir()
        except OSError as e:
            for temp, _ in temps:
                _unlink_quietly(temp)
            raise StoreError(e.errno, f"cannot record the bridges of {len(records)} vnets in "
                             f"{self.dir}: {e.strerror or e}") from None

    def created_bridge(self, vid: VnetId) -> str | None:
        """The bridge xend-vnet created for this vnet, if it recorded one."""
        try:
            with open(self.bridge_record_of(vid), encoding="utf-8") as f:
                return f.read(64).strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def record_removal(self, removal: PendingRemoval) -> None:
        """Write the ``<dbid>.deleted`` record atomically (design.md 5)."""
        path = self.removal_record_of(removal.vid)
        try:
            self._write(path, removal.to_string() + "\n")
        except OSError as e:
            raise StoreError(e.errno, f"cannot record the removal of vnet {removal.vid} in "
                             f"{path}: {e.strerror or e}") from None

    def drop_removal(self, vid: VnetId) -> None:
        """Forget a pending removal: done, or cancelled by a new create."""
        path = self.removal_record_of(vid)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise StoreError(e.errno, f"cannot remove {path}: {e.strerror or e}") from None
        self._sync_dir()

    def pending_removals(self) -> tuple[list[PendingRemoval], list[StoreProblem]]:
        """Every readable ``.deleted`` record; unreadable ones are moved aside."""
        names = [n for n in self._names() if n.endswith(DELETED_SUFFIX)]
        removals: list[PendingRemoval] = []
        problems: list[StoreProblem] = []
        for name in names:
            path = os.path.join(self.dir, name)
            try:
                with open(path, "rb") as f:
                    removal = PendingRemoval.from_text(f.read(MAX_FILE).decode("utf-8"))
                if name != removal.vid.dbid + DELETED_SUFFIX:
                    raise ValueError(f"the file name does not match the id "
                                     f"(expected {removal.vid.dbid + DELETED_SUFFIX})")
            except (ValueError, OSError) as e:
                problems.append(StoreProblem(path, _reason(e), self._move_aside(path)))
                continue
            removals.append(removal)
        return removals, problems

    def _write(self, final: str, text: str) -> None:
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        temp = os.path.join(self.dir, f".{os.path.basename(final)}{TEMP_MARK}{os.getpid()}")
        atomic_file.write_atomically(final, text.encode("utf-8"), mode=0o600, temp=temp)
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
        names = self._names()
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
            except OSError as e:
                # A read that failed (EIO, EMFILE...) says nothing about the
                # file: it stays where it is, to be read at the next start.
                problems.append(StoreProblem(path, _reason(e), None))
                continue
            except (ConfigError, UnicodeDecodeError) as e:
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

    def _names(self) -> list[str]:
        """The store directory's file names, sorted; none when it does not exist."""
        try:
            return sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StoreError(e.errno, f"cannot read the store {self.dir}: "
                             f"{e.strerror or e}") from None

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


def size_problem(config: VnetConfig) -> str | None:
    """Why the config cannot be stored: its printed form (where DEL and U+0080-U+00A0
    take 4 characters and a backslash 2, protocol.md 12.3) is larger than what
    ``load_all`` reads back; None when it fits (design.md 4)."""
    size = len((config.to_string() + "\n").encode("utf-8"))
    if size <= MAX_FILE:
        return None
    return (f"vnet {config.id_text}: its stored form would take {size} bytes, more than "
            f"the store's limit of {MAX_FILE} bytes (the config may be at most {MAX_FILE} "
            "bytes as stored; DEL, U+0080 to U+00A0 and other escaped characters take 4 "
            "bytes each, a backslash 2)")


def _reason(e: Exception) -> str:
    if isinstance(e, OSError):
        return e.strerror or str(e)
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(e, sxp.ParseError):
        return f"cannot parse: {e}"
    return str(e)


def _syncfs(path: str) -> None:
    """syncfs(2) of the file system holding ``path``: one flush for many files."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
