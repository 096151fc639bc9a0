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
from vnet_server_harness import Harness, legacy_proxy

from xend_vnet import sxp
from xend_vnet.xmlrpc import cli

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


# -- xend-vnet delete (design.md 4) -----------------------------------------------------

VNET97 = "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))"
FAULT97 = (
    "vnet 97 has domain interfaces attached to bridge vnet97: vif1.0; detach them first "
    "(xm network-detach DOMAIN DEVID, or shut their domains down), or delete it anyway "
    "with xend-vnet delete --force 97 on this host (or xend-vnet's xm vnet-delete --force 97)")


def with_vif_attached(service, net) -> None:
    service.create(sxp.parse_one(VNET97))
    net.add_link("vif1.0", "vif")
    net.enslave("vnet97", "vif1.0")


def test_delete_asks_the_running_server(tmp_path, capsys):
    h = Harness()
    try:
        with_vif_attached(h.service, h.net)
        common = ["--config", str(tmp_path / "none.sxp"), "--socket", h.sock]
        assert cli.main(["delete", *common, "97"]) == 1
        assert capsys.readouterr().err == f"xend-vnet delete: {FAULT97}\n"
        assert h.service.ids() == ["97"]
        assert cli.main(["delete", "--force", *common, "97"]) == 0
        assert h.service.ids() == [] and "vnet97" not in h.net.links
        assert h.engine.vnets == {}
        assert cli.main(["delete", *common, "97"]) == 1
        assert capsys.readouterr().err == "xend-vnet delete: No such vnet 97\n"
    finally:
        h.close()


def test_delete_without_a_server_works_on_the_store(tmp_path, capsys):
    h = Harness()
    try:
        with_vif_attached(h.service, h.net)
        h.engine.close()
        h.servers.close()
        args = cli.parse_args(["delete", "--config", str(tmp_path / "none.sxp"),
                               "--socket", h.sock, "--state-dir", h.store.state_dir,
                               "--engine-control", h.engine.path, "97"])
        settings, _ = cli.settings_of(args)
        pid_file = cli.pid_file_of(args, settings)
        assert cli.cmd_delete(args, settings, pid_file, net=h.net) == 1
        assert capsys.readouterr().err == f"xend-vnet delete: {FAULT97}\n"
        args.force = True
        assert cli.cmd_delete(args, settings, pid_file, net=h.net) == 0
        out = capsys.readouterr().out
        assert out.startswith("deleted vnet 97; vnetd is not running (control socket ")
        assert out.endswith("; xend-vnet removes its TAP vnif97 when it next finds vnetd "
                            "answering\n")
        assert h.store.load_all() == ([], []) and "vnet97" not in h.net.links
        assert [r.vnetif for r in h.store.pending_removals()[0]] == ["vnif97"]
    finally:
        h.close()


def test_delete_bad_input_gets_a_clear_error(env):
    def delete(*argv):
        return subprocess.run(
            [sys.executable, "-m", "xend_vnet.xmlrpc.cli", "delete", "--socket", env["sock"],
             "--state-dir", env["state"], "--engine-control",
             os.path.join(env["dir"], "vnetd.sock"), *argv],
            env=env["env"], capture_output=True, text=True, timeout=60, check=False)

    done = delete("98")
    assert (done.returncode, done.stderr) == (1, "xend-vnet delete: No such vnet 98\n")
    done = delete("not-an-id")
    assert (done.returncode, done.stderr) == (1, "xend-vnet delete: No such vnet not-an-id\n")
    done = delete()
    assert done.returncode == 2 and "the following arguments are required: ID" in done.stderr


def test_delete_through_a_server_with_the_engine_down_is_shown_pending(env):
    os.makedirs(os.path.join(env["state"], "vnet"))
    with open(os.path.join(env["state"], "vnet",
                           "0000-0000-0000-0000-0000-0000-0000-0097.sxp"), "w") as f:
        f.write("(vnet (id 97) (bridge xvmdel97) (vnetif xvmdeltap97))\n")
    assert xend_vnet(env, "start").returncode == 0
    done = subprocess.run(
        [sys.executable, "-m", "xend_vnet.xmlrpc.cli", "delete", "--force", "--socket",
         env["sock"], "97"], env=env["env"], capture_output=True, text=True, timeout=60,
        check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    status = xend_vnet(env, "status")
    assert "vnets: (none)" in status.stdout
    assert ("removal pending until vnetd answers: vnet "
            "0000:0000:0000:0000:0000:0000:0000:0097: TAP xvmdeltap97") in status.stdout
    assert "xend-vnet removes its TAP xvmdeltap97 when it next finds vnetd" in Path(
        env["log"]).read_text()
