"""Writing FRR's configuration files for ``xend-vnet evpn-config`` (docs/fleet.md).

``frr.conf`` and ``daemons`` under ``<root>/etc/frr``, each written whole
or not at all (atomic_file), mode 0640 and owned like FRR's directory
(frr:frr on Debian), so the distribution's ``frr.service`` reads them.  An
existing ``frr.conf`` is replaced only when this tool wrote it or when it
is the distribution's stock file (nothing but logging): anyone else's
configuration is refused unless forced, and then kept beside it.  The
password file named in xend-config.sxp is read here; the text of the
files comes from frr_conf.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import atomic_file, frr_conf
from .evpn_settings import EvpnSettings, password_from_file

FRR_DIR = "etc/frr"
MODE = 0o640
SAVED_SUFFIX = ".before-xend-vnet"


class FrrFilesError(Exception):
    """A file cannot be read or written; the message says which and why."""


@dataclass(frozen=True)
class Written:
    """What one run changed."""

    path: str
    changed: bool
    saved: str | None = None     # where an operator's file was kept


def read_password(settings: EvpnSettings) -> str | None:
    """The session password, from ``xend-vnet-evpn-password-file``; None without one."""
    path = settings.password_file
    if path is None:
        return None
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as f:
            text = f.read(4096)
    except (OSError, UnicodeDecodeError) as e:
        raise FrrFilesError(f"cannot read the BGP password file {path}: {e}") from None
    if st.st_mode & 0o077:
        raise FrrFilesError(f"the BGP password file {path} is readable by others (mode "
                            f"{st.st_mode & 0o777:04o}): make it 0600 (chmod 600 {path})")
    return password_from_file(text, path)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise FrrFilesError(f"cannot read {path}: {e}") from None


def _write(path: str, text: str, owner: tuple[int, int] | None) -> None:
    """Atomically, mode 0640, given to ``owner`` before it is renamed into place."""
    atomic_file.write_atomically(path, text.encode("utf-8"), MODE, owner=owner)


def _owner(directory: str) -> tuple[int, int] | None:
    """FRR's directory's owner, given to the files when we are root."""
    if os.geteuid() != 0:
        return None
    st = os.stat(directory)
    return st.st_uid, st.st_gid


def write_frr_files(settings: EvpnSettings, root: str = "/", force: bool = False,
                    source: str = "xend-config.sxp") -> list[Written]:
    """Write frr.conf and daemons for ``settings``; FrrFilesError (or
    frr_conf.FrrConfigError) when they cannot be."""
    conf = frr_conf.frr_conf(settings, read_password(settings), source)
    directory = os.path.join(root, FRR_DIR)
    try:
        os.makedirs(directory, mode=0o750, exist_ok=True)
        owner = _owner(directory)
    except OSError as e:
        raise FrrFilesError(f"cannot make {directory}: {e}") from None
    out = []
    conf_path = os.path.join(directory, "frr.conf")
    existing = _read(conf_path)
    saved = None
    if existing is not None and not (frr_conf.is_ours(existing) or frr_conf.is_stock(existing)):
        if not force:
            raise FrrFilesError(
                f"{conf_path} holds a configuration that xend-vnet did not write; merge "
                "the EVPN part by hand (xend-vnet evpn-config --print shows it), or run "
                f"with --force to replace it (it is kept as frr.conf{SAVED_SUFFIX})")
        saved = conf_path + SAVED_SUFFIX
    daemons_path = os.path.join(directory, "daemons")
    daemons_before = _read(daemons_path)
    daemons = frr_conf.daemons_file(daemons_before)
    try:
        if saved is not None:
            _write(saved, existing, owner)
        if existing != conf:
            _write(conf_path, conf, owner)
        if daemons_before != daemons:
            _write(daemons_path, daemons, owner)
    except OSError as e:
        raise FrrFilesError(f"cannot write FRR's configuration in {directory}: {e}") from None
    out.append(Written(conf_path, existing != conf, saved))
    out.append(Written(daemons_path, daemons_before != daemons))
    return out
