"""xend-vnet start|stop|status|restart from other processes (design.md 5, 9).

The server runs with --no-engine and an engine socket nobody listens on, so
it never touches the host's interfaces.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from vnet_server_harness import legacy_proxy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def env():
    d = tempfile.mkdtemp(prefix="xvm-")
    e = {
        "dir": d,
        "sock": os.path.join(d, "run", "xmlrpc.sock"),
        "state": os.path.join(d, "state"),
        "log": os.path.join(d, "xend-vnet.log"),
        "env": dict(os.environ, PYTHONPATH=ROOT, XEND_CONFIG=os.path.join(d, "none.sxp")),
    }
    yield e
    xend_vnet(e, "stop")
    shutil.rmtree(d, ignore_errors=True)


def xend_vnet(e, command, *extra, timeout=60):
    argv = [sys.executable, "-m", "xend_vnet.xmlrpc.cli", command]
    if command != "import":
        argv += ["--socket", e["sock"], "--engine-control", os.path.join(e["dir"], "vnetd.sock"),
                 "--no-engine", "--log-file", e["log"]]
    argv += ["--state-dir", e["state"], *extra]
    return subprocess.run(argv, env=e["env"], capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_start_status_stop(env):
    done = xend_vnet(env, "start")
    assert done.returncode == 0, done.stderr
    assert legacy_proxy(env["sock"]).xend_vnets() == []
    assert os.stat(os.path.dirname(env["sock"])).st_mode & 0o777 == 0o700
    pid = int(Path(env["sock"] + ".pid").read_text())
    assert pid != os.getpid()
    status = xend_vnet(env, "status")
    assert status.returncode == 0
    assert f"running (pid {pid})" in status.stdout and "vnets: (none)" in status.stdout
    again = xend_vnet(env, "start")
    assert again.returncode == 0 and "already running" in again.stdout
    other = xend_vnet(env, "start", "--pid-file", os.path.join(env["dir"], "other.pid"))
    assert other.returncode == 1 and "already accepts connections" in other.stderr
    assert legacy_proxy(env["sock"]).xend_vnets() == []
    assert xend_vnet(env, "stop").returncode == 0
    assert not os.path.exists(env["sock"]) and not os.path.exists(env["sock"] + ".pid")
    status = xend_vnet(env, "status")
    assert status.returncode == 3 and "not running" in status.stdout
    done = xend_vnet(env, "stop")
    assert done.returncode == 0 and "not running" in done.stdout
    log = Path(env["log"]).read_text()
    assert "serving" in log and "stopping" in log


def test_restart_and_stored_vnet_reported(env):
    os.makedirs(os.path.join(env["state"], "vnet"))
    with open(os.path.join(env["state"], "vnet",
                           "0000-0000-0000-0000-0000-0000-0000-0097.sxp"), "w") as f:
        f.write("(vnet (id 97) (bridge xvmcli97) (vnetif xvmtap97))\n")
    assert xend_vnet(env, "start").returncode == 0
    first = int(Path(env["sock"] + ".pid").read_text())
    status = xend_vnet(env, "status")
    assert "vnets: 97" in status.stdout
    assert "not up: vnet 97: vnetd is not running" in status.stdout
    assert legacy_proxy(env["sock"]).xend_vnet("97")[1] == ["id", "97"]
    assert xend_vnet(env, "restart").returncode == 0
    second = int(Path(env["sock"] + ".pid").read_text())
    assert second != first
    assert legacy_proxy(env["sock"]).xend_vnets() == ["97"]


def test_foreground_stops_on_sigterm(env):
    argv = [sys.executable, "-m", "xend_vnet.xmlrpc.cli", "start", "--foreground",
            "--socket", env["sock"], "--state-dir", env["state"], "--no-engine",
            "--engine-control", os.path.join(env["dir"], "vnetd.sock")]
    proc = subprocess.Popen(argv, env=env["env"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(env["sock"] + ".pid"):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        while True:
            try:
                assert legacy_proxy(env["sock"]).xend_vnets() == []
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "serving" in proc.stderr.read()
    assert not os.path.exists(env["sock"])


def test_bad_config_is_reported(env):
    with open(env["env"]["XEND_CONFIG"], "w") as f:
        f.write("(xend-tcp-xmlrpc-server perhaps)\n")
    done = xend_vnet(env, "start")
    assert done.returncode == 1
    assert "invalid xend config xend-tcp-xmlrpc-server: expected bool: perhaps" in done.stderr
    with open(env["env"]["XEND_CONFIG"], "w") as f:
        f.write("(xend-unix-xmlrpc-server yes\n")
    done = xend_vnet(env, "status")
    assert done.returncode == 1 and "unexpected EOF" in done.stderr


def test_start_failure_names_the_log_destination(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, XEND_CONFIG=str(tmp_path / "none.sxp"))
    bad_log = "/dev/null/xend-vnet.log"
    done = subprocess.run(
        [sys.executable, "-m", "xend_vnet.xmlrpc.cli", "start", "--socket",
         str(tmp_path / "x.sock"), "--engine-control", str(tmp_path / "vnetd.sock"),
         "--no-engine", "--log-file", bad_log, "--state-dir", str(tmp_path / "state")],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert f"cannot open the log file {bad_log}" in done.stderr
    pid_file = tmp_path / "x.sock.pid"
    if pid_file.exists():
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
