"""Daemon plumbing shared by vnetd and xend-vnet (design.md 5).

Pid files beside the socket, detaching (double fork, own session) with a
readiness pipe so the caller returns only once the daemon serves or with
its error, logging set-up, telling our own process from one that merely
reuses a pid, and the engine's default control path.
"""

from __future__ import annotations

import logging
import os
import selectors
import sys
import time

import psutil

from . import atomic_file, sdnotify

DEFAULT_CONTROL = "/var/run/vnetd.sock"
RUN_DIR = "/run/xend-vnet"      # root-owned: per-namespace engine locks


def default_control_path() -> str:
    """``$VNETD_SOCKET`` when set, else /var/run/vnetd.sock."""
    return os.environ.get("VNETD_SOCKET") or DEFAULT_CONTROL


# -- pid files -----------------------------------------------------------------------

def write_pid_file(path: str) -> None:
    """Write our pid, atomically: a reader never sees a partial file.  Mode
    0644 whatever the umask: ``status`` run by any user reads it."""
    atomic_file.write_atomically(path, f"{os.getpid()}\n".encode("ascii"), mode=0o644,
                                 sync=False)


def remove_pid_file(path: str) -> None:
    """Remove the pid file if it still names us (a successor may have replaced it)."""
    try:
        with open(path, encoding="ascii") as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass


def read_pid_file(path: str) -> int | None:
    """The pid a pid file names, or None (missing, empty, not a positive number)."""
    try:
        with open(path, encoding="ascii") as f:
            pid = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid > 0 else None


def runs_command(proc: psutil.Process, script: str, module: str) -> bool:
    """True when ``proc`` runs our console ``script`` (its path is argv[0], or
    the interpreter's argv[1]) or ``python -m module``, possibly under a
    profiler.  A pid file may be stale and its pid reused: never signal a
    process this does not recognise."""
    try:
        cmdline = proc.cmdline()
    except (psutil.Error, OSError):
        return False
    if any(os.path.basename(arg) == script for arg in cmdline[:2]):
        return True
    return any(cmdline[i] == "-m" and cmdline[i + 1] == module
               for i in range(len(cmdline) - 1))


def live_pid(pid_file: str, script: str, module: str) -> int | None:
    """The pid in ``pid_file`` if that process is alive and ours (``runs_command``)."""
    pid = read_pid_file(pid_file)
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return pid if runs_command(proc, script, module) else None


# -- logging -------------------------------------------------------------------------

def setup_logging(name: str, level: int, log_file: str | None) -> None:
    """Log to ``log_file`` (its directory made if needed), else stderr, one
    line per record: time, ``name[pid]``, level, message.  Logger ``name``
    and its children log at ``level``; libraries (pyroute2's netlink traces)
    only from WARNING."""
    handler: logging.Handler
    if log_file:
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        # Made 0640 at most, whatever the umask (docs/security.md); open() would ask 0666.
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                         0o640))
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s {name}[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger(name).setLevel(level)


# -- detaching -----------------------------------------------------------------------

def detach(stdio_log: str | None = None) -> tuple[bool, int]:
    """Double fork and setsid, with a readiness pipe from the daemon to the caller.

    Returns ``(True, write end)`` in the daemon, which reports with
    ``report_ready``; ``(False, read end)`` in the caller, which reads the
    verdict with ``wait_ready``.  The daemon's stdin is /dev/null, its
    stdout and stderr ``stdio_log`` (appended, mode 0640) or /dev/null.
    """
    r, w = os.pipe()
    child = os.fork()
    if child > 0:
        os.close(w)
        os.waitpid(child, 0)      # it exits as soon as the daemon is forked
        return False, r
    os.close(r)
    os.setsid()
    # A detached process is no unit's main process: it must not claim readiness.
    os.environ.pop(sdnotify.ENV, None)
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    out = null
    if stdio_log:
        out = os.open(stdio_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(out, 1)
    os.dup2(out, 2)
    if out != null:
        os.close(out)
    os.close(null)
    return True, w


def wait_ready(fd: int, timeout: float | None) -> tuple[str, bool]:
    """In the caller: what the daemon reported (``"ok..."`` when it serves), and
    whether the pipe was closed (the daemon finished reporting, or died);
    ``("", False)`` when nothing came within ``timeout`` seconds (None: no limit)."""
    chunks = []
    ended = False
    deadline = None if timeout is None else time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not ended and sel.select(
                None if deadline is None else max(0.0, deadline - time.monotonic())):
            data = os.read(fd, 4096)
            chunks.append(data)
            ended = not data
    os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace"), ended


def report_ready(fd: int, error: str | None) -> None:
    """In the daemon: tell the caller it serves (``error`` None) or why not."""
    os.write(fd, b"ok\n" if error is None else error.encode("utf-8") + b"\n")
    os.close(fd)
