"""Daemon plumbing shared by vnetd and xend-vnet (xend_vnet.process, design.md 5)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import psutil
import pytest

from xend_vnet import process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_control_path(monkeypatch):
    monkeypatch.delenv("VNETD_SOCKET", raising=False)
    assert process.default_control_path() == process.DEFAULT_CONTROL == "/var/run/vnetd.sock"
    monkeypatch.setenv("VNETD_SOCKET", "/run/x.sock")
    assert process.default_control_path() == "/run/x.sock"


def test_pid_file_written_read_and_removed_only_if_ours(tmp_path):
    path = str(tmp_path / "d.pid")
    process.write_pid_file(path)
    assert open(path).read() == f"{os.getpid()}\n"
    assert process.read_pid_file(path) == os.getpid()
    assert os.listdir(tmp_path) == ["d.pid"]            # no temporary file left
    with open(path, "w") as f:
        f.write("1\n")
    process.remove_pid_file(path)                       # a successor's: kept
    assert os.path.exists(path)
    process.write_pid_file(path)
    process.remove_pid_file(path)
    assert not os.path.exists(path)
    process.remove_pid_file(path)                       # already gone: no error


@pytest.mark.parametrize("text", ["", "x\n", "-5", "0", " \n"])
def test_junk_pid_files(tmp_path, text):
    path = tmp_path / "d.pid"
    path.write_text(text)
    assert process.read_pid_file(str(path)) is None
    assert process.live_pid(str(path), "vnetd", "m") is None


class _Proc:
    def __init__(self, cmdline):
        self._cmdline = cmdline

    def cmdline(self):
        if self._cmdline is None:
            raise psutil.AccessDenied(1)
        return self._cmdline


@pytest.mark.parametrize("cmdline,expected", [
    (["/usr/bin/python3", "/usr/local/bin/xend-vnet", "start"], True),
    (["/usr/sbin/xend-vnet", "stop"], True),
    (["python3", "-m", "xend_vnet.xmlrpc.cli", "start"], True),
    (["python3", "-m", "cProfile", "-m", "xend_vnet.xmlrpc.cli"], True),
    (["python3", "-m", "xend_vnet.kernel_shim.daemon"], False),    # vnetd names the package too
    (["vi", "notes", "/tmp/xend-vnet"], False),
    ([], False),
    (None, False)])
def test_runs_command(cmdline, expected):
    assert process.runs_command(_Proc(cmdline), "xend-vnet", "xend_vnet.xmlrpc.cli") is expected


def test_live_pid_only_for_our_live_process(tmp_path):
    path = str(tmp_path / "d.pid")
    process.write_pid_file(path)
    assert process.live_pid(path, "xend-vnet", "xend_vnet.xmlrpc.cli") is None   # pytest
    me = os.path.basename(psutil.Process().cmdline()[1])
    assert process.live_pid(path, me, "x") == os.getpid()


def test_setup_logging_format_and_levels(tmp_path):
    log_file = str(tmp_path / "sub" / "d.log")          # the directory is made
    saved = logging.getLogger().handlers[:], logging.getLogger().level
    try:
        process.setup_logging("vnetd-test", logging.DEBUG, log_file)
        logging.getLogger("vnetd-test").debug("hello %s", "there")
        logging.getLogger("vnetd-test.child").info("child")
        logging.getLogger("pyroute2-test").info("library noise")
        logging.getLogger("pyroute2-test").warning("library warning")
        for h in logging.getLogger().handlers:
            h.flush()
        lines = open(log_file).read().splitlines()
    finally:
        logging.getLogger().handlers[:], level = saved
        logging.getLogger().setLevel(level)
    assert [line.split(" ", 2)[2] for line in lines] == [
        f"vnetd-test[{os.getpid()}] DEBUG hello there",
        f"vnetd-test[{os.getpid()}] INFO child",
        f"vnetd-test[{os.getpid()}] WARNING library warning"]


DETACHER = textwrap.dedent("""\
    import os, sys, time
    from xend_vnet import process
    verdict, log = sys.argv[1], sys.argv[2]
    os.environ["NOTIFY_SOCKET"] = "/nonexistent"
    session = os.getsid(0)
    in_daemon, fd = process.detach(stdio_log=log)
    if not in_daemon:
        text, ended = process.wait_ready(fd, float(sys.argv[3]))
        print(repr((text, ended)))
        sys.exit(0)
    print("daemon", os.getsid(0) != session, os.getcwd(), "NOTIFY_SOCKET" in os.environ)
    sys.stdout.flush()
    if verdict == "die":
        os._exit(3)
    if verdict == "hang":
        time.sleep(3)
        os._exit(0)
    process.report_ready(fd, None if verdict == "ok" else verdict)
    """)


@pytest.mark.parametrize("verdict,timeout,expected", [
    ("ok", 10, ("ok\n", True)),
    ("vnetd: no TAP", 10, ("vnetd: no TAP\n", True)),
    ("die", 10, ("", True)),
    ("hang", 0.3, ("", False))])
def test_detach_reports_readiness(tmp_path, verdict, timeout, expected):
    script = tmp_path / "detacher.py"
    script.write_text(DETACHER)
    log = tmp_path / "out.log"
    done = subprocess.run([sys.executable, str(script), verdict, str(log), str(timeout)],
                          capture_output=True, text=True, timeout=30, check=False,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr
    assert done.stdout == repr(expected) + "\n"
    assert oct(os.stat(log).st_mode & 0o777) == oct(0o640 & ~_umask())
    # Own session, in /, no readiness claim; its stdout is the log.
    assert open(log).read().startswith("daemon True / False")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_pid_file_symlink_at_the_temp_path_is_not_followed(tmp_path):
    path = tmp_path / "vnetd.pid"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(victim, f"{path}.{os.getpid()}.tmp")
    with pytest.raises(OSError, match="symbolic link"):
        process.write_pid_file(str(path))
    assert victim.read_text() == "precious\n"


def test_pid_file_mode_is_0644_under_umask_000(tmp_path):
    path = tmp_path / "vnetd.pid"
    old = os.umask(0)
    try:
        process.write_pid_file(str(path))
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert process.read_pid_file(str(path)) == os.getpid()
