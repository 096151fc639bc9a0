"""Files written whole or not at all: a temporary file beside the target,
synced, renamed over it (design.md 4).

The temporary file is created with O_EXCL|O_NOFOLLOW at an explicit mode
whatever the umask, so a symbolic link or a file planted at its name by
another local user is never followed or written through; a stale one left
by a crash is removed first only when it is a regular file of ours, and
anything else is a clear error (docs/security.md, management plane limits).
"""

from __future__ import annotations

import errno
import os
import stat

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class TempFileError(OSError):
    """Something that is not ours stands at a temporary file's name."""


def _remove_stale(temp: str) -> None:
    st = os.lstat(temp)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        kind = "symbolic link" if stat.S_ISLNK(st.st_mode) else (
            "regular file" if stat.S_ISREG(st.st_mode) else "special file")
        raise TempFileError(errno.EEXIST,
                            f"{temp} is in the way of a temporary file: a {kind} of uid "
                            f"{st.st_uid}, not a leftover of ours; not following or "
                            "removing it (remove it if it is safe to)")
    os.unlink(temp)


def open_temp(temp: str, mode: int = 0o600) -> int:
    """Create ``temp`` for writing, exclusively and without following a link
    (O_EXCL refuses any existing name, a dangling link too); its mode is
    ``mode`` whatever the umask."""
    try:
        fd = os.open(temp, _FLAGS, mode)
    except FileExistsError:
        _remove_stale(temp)
        try:
            fd = os.open(temp, _FLAGS, mode)
        except FileExistsError:
            raise TempFileError(errno.EEXIST, f"{temp} appeared again while it was being "
                                "replaced; is another process writing it?") from None
    try:
        os.fchmod(fd, mode)    # the umask only narrows: set exactly what was asked
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_atomically(path: str, data: bytes, mode: int = 0o600, temp: str | None = None,
                     sync: bool = True, owner: tuple[int, int] | None = None) -> None:
    """Write ``data`` to ``path`` through ``temp`` (default ``<path>.<pid>.tmp``):
    a reader sees the old file or the new one, never a part.  ``owner``
    (uid, gid) is given to the file before it is renamed into place."""
    temp = temp or f"{path}.{os.getpid()}.tmp"
    fd = open_temp(temp, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.rename(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
