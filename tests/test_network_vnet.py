"""network-vnet start/stop/status as xend runs it (protocol.md 14.1, 14.3;.

xend gives scripts PATH=/sbin:/usr/sbin:/bin:/usr/bin and nothing else, so
every run here is ``env -i PATH=...``: the copy ``xend-vnet install``
writes must reach vn by absolute path.  Stand-ins for vn and network-bridge
record their arguments in one log, which also shows the order of the calls;
a root test runs the real vn in a network namespace.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from xend_vnet import install
from xend_vnet import engine_launcher as launcher

MINIMAL_PATH = "/sbin:/usr/sbin:/bin:/usr/bin"

# Both stand-ins log to one file (the order of calls shows); the exit status
# of a call comes from the file rc.<name>.<op> in the same directory (default 0).
# `vn insmod --list-params` answers with the launcher's table (params.txt), unlogged.
STAND_IN = """#!/bin/sh
name=$(basename "$0")
[ "$*" = "insmod --list-params" ] && exec cat {dir}/params.txt
echo "$name $*" >> {dir}/calls.log
[ -f {dir}/rc.$name.$1 ] && exit "$(cat {dir}/rc.$name.$1)"
exit 0
"""


class Setup:
    def __init__(self, tmp_path, bridge_script=True):
        self.dir = tmp_path
        self.tools = tmp_path / "tools"        # not on any PATH
        self.scripts = tmp_path / "scripts"    # XEN_SCRIPT_DIR
        self.tools.mkdir()
        self.scripts.mkdir()
        stand_in = STAND_IN.format(dir=tmp_path)
        (tmp_path / "params.txt").write_text("".join(f"{n}\n" for n in launcher.param_names()))
        self.write(self.tools / "vn", stand_in)
        if bridge_script:
            self.write(self.scripts / "network-bridge", stand_in)
        with open(install.NETWORK_VNET_SOURCE, encoding="utf-8") as f:
            text = install.network_vnet_script(f.read(), str(self.tools / "vn"))
        self.script = self.write(self.scripts / "network-vnet", text)

    @staticmethod
    def write(path, text):
        path.write_text(text)
        path.chmod(0o755)
        return path

    def rc(self, name, op, code):
        (self.dir / f"rc.{name}.{op}").write_text(str(code))

    def calls(self):
        log = self.dir / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def run(self, *args, script=None):
        env = ["env", "-i", f"PATH={MINIMAL_PATH}", f"XEN_SCRIPT_DIR={self.scripts}"]
        return subprocess.run([*env, str(script or self.script), *args],
                              capture_output=True, text=True, timeout=60)


@pytest.fixture
def setup(tmp_path):
    return Setup(tmp_path)


def test_start_runs_the_engine_with_its_parameters_then_network_bridge(setup):
    args = ["start", "netdev=eth1", "bridge=xenbr1", "varp_mcaddr=224.10.0.9", "mtu=1400",
            "antispoof=no", "varp_device=eth1"]
    done = setup.run(*args)
    assert done.returncode == 0, done.stderr
    assert setup.calls() == [
        "vn insmod varp_mcaddr=224.10.0.9 mtu=1400 varp_device=eth1",
        "network-bridge " + " ".join(args),      # every argument, unchanged
    ]


def test_every_parameter_the_launcher_knows_goes_to_vn_insmod(setup):
    """The names come from `vn insmod --list-params`, not a list kept in the script."""
    engine = [f"{name}=x" for name in launcher.param_names()] + ["mcast-ttl=2"]
    args = ["start", "vifnum=0", "bridge=xenbr0", *engine, "netdev=eth0", "antispoof=no",
            "other=1"]
    done = setup.run(*args)
    assert done.returncode == 0, done.stderr
    assert setup.calls() == ["vn insmod " + " ".join(engine),
                             "network-bridge " + " ".join(args)]
    assert "file=x" in setup.calls()[0], "the startup file that keeps peers"


def test_a_mistyped_engine_parameter_reaches_vn_insmod(setup):
    """varp_mcadr= must not go to network-bridge only: vn insmod refuses it by name."""
    setup.rc("vn", "insmod", 1)
    done = setup.run("start", "varp_mcadr=239.1.1.1", "vnet_encap=udp", "bridge=xenbr0")
    assert done.returncode == 1
    assert "could not start the vnet engine" in done.stderr
    assert setup.calls() == [
        "vn insmod varp_mcadr=239.1.1.1 vnet_encap=udp",
        "network-bridge start varp_mcadr=239.1.1.1 vnet_encap=udp bridge=xenbr0"]


def test_start_without_engine_parameters(setup):
    assert setup.run("start").returncode == 0
    assert setup.calls() == ["vn insmod", "network-bridge start"]


def test_a_failed_engine_start_still_brings_up_the_bridge_and_fails(setup):
    setup.rc("vn", "insmod", 1)
    done = setup.run("start", "bridge=xenbr0")
    assert done.returncode == 1
    assert "could not start the vnet engine" in done.stderr
    assert setup.calls() == ["vn insmod", "network-bridge start bridge=xenbr0"]


def test_a_failed_network_bridge_is_reported(setup):
    setup.rc("network-bridge", "start", 2)
    done = setup.run("start")
    assert done.returncode == 1
    assert "network-bridge start failed" in done.stderr


def test_stop_runs_network_bridge_first_then_stops_the_engine(setup):
    done = setup.run("stop", "bridge=xenbr0")
    assert done.returncode == 0, done.stderr
    assert setup.calls() == ["network-bridge stop bridge=xenbr0", "vn status", "vn rmmod"]


def test_stop_when_the_engine_does_not_run_is_not_a_failure(setup):
    setup.rc("vn", "status", 3)
    done = setup.run("stop")
    assert done.returncode == 0, done.stderr
    assert "was not running" in done.stdout
    assert "vn rmmod" not in setup.calls()


def test_stop_reports_an_engine_that_will_not_stop(setup):
    setup.rc("vn", "rmmod", 1)
    done = setup.run("stop")
    assert done.returncode == 1
    assert "could not stop the vnet engine" in done.stderr


def test_status_reports_both_with_lsb_codes(setup):
    done = setup.run("status")
    assert done.returncode == 0
    assert setup.calls() == ["vn status", "network-bridge status"]
    setup.rc("vn", "status", 3)
    assert setup.run("status").returncode == 3, "engine not running: LSB 3"
    setup.rc("vn", "status", 0)
    setup.rc("network-bridge", "status", 1)
    assert setup.run("status").returncode == 1


def test_unknown_or_missing_command(setup):
    for args in (["restart"], ["bridge=xenbr0"], []):
        done = setup.run(*args)
        assert done.returncode == 1
        assert "Valid commands are: start, stop, status" in done.stderr
    assert setup.calls() == []


def test_without_network_bridge_says_so_and_starts_the_engine(tmp_path):
    s = Setup(tmp_path, bridge_script=False)
    done = s.run("start", "mtu=1400")
    assert done.returncode == 0, done.stderr
    assert "no " + str(s.scripts / "network-bridge") in done.stderr
    assert s.calls() == ["vn insmod mtu=1400"]


def test_a_network_bridge_that_is_not_executable_is_a_failure(setup):
    (setup.scripts / "network-bridge").chmod(0o644)
    for op in ("start", "stop", "status"):
        done = setup.run(op)
        assert done.returncode != 0, op
        assert "network-bridge exists but is not executable" in done.stderr
        assert "xl-era" not in done.stderr
    assert setup.calls()[:1] == ["vn insmod"], "the engine is still started"


def test_the_uninstalled_script_fails_loudly_under_xends_path(setup):
    """The source copy calls plain `vn`, which xend's PATH does not find:
    that is why `xend-vnet install` writes an absolute path."""
    done = setup.run("start", script=install.NETWORK_VNET_SOURCE)
    assert done.returncode == 1
    assert "could not start the vnet engine" in done.stderr


# -- the real engine --------------------------------------------------------------

@pytest.mark.root
def test_real_engine_start_status_stop_in_a_namespace(tmp_path):
    from netns import Lab, sh

    lab = Lab("xv6-nv-")
    control = str(tmp_path / "vnetd.sock")
    ns = lab.prefix + "h"
    try:
        lab.host("h", "192.0.2.1", underlay=lab.underlay())
        scripts = tmp_path / "scripts"
        scripts.mkdir()
        vn = install.find_tools().vn
        with open(install.NETWORK_VNET_SOURCE, encoding="utf-8") as f:
            Setup.write(scripts / "network-vnet", install.network_vnet_script(f.read(), vn))

        def run(*args):
            # VNETD_SOCKET only keeps this test's engine off the host's default socket.
            return sh(["ip", "netns", "exec", ns, "env", "-i", f"PATH={MINIMAL_PATH}",
                       f"VNETD_SOCKET={control}", f"XEN_SCRIPT_DIR={scripts}",
                       str(scripts / "network-vnet"), *args], check=False)

        done = run("start", "varp_mcaddr=224.10.0.1", "mtu=1400")
        assert done.returncode == 0, done.stderr
        assert "no " + str(scripts / "network-bridge") in done.stderr
        status = run("status")
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith("running (pid")
        assert "mtu 1400" in status.stdout
        pid = launcher.running_pid(control)
        assert pid is not None
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{ns}").st_ino
        again = run("start")
        assert again.returncode == 0 and launcher.running_pid(control) == pid, "idempotent"
        other = run("start", "mtu=1500")   # design.md 5: not a silent no-op
        assert other.returncode == 1 and "mtu: running 1400, asked 1500" in other.stderr
        stop = run("stop")
        assert stop.returncode == 0, stop.stderr
        assert run("status").returncode == 3
        assert run("stop").returncode == 0
    finally:
        if launcher.running_pid(control) is not None:
            sh(["ip", "netns", "exec", ns, "env", f"VNETD_SOCKET={control}",
                install.find_tools().vn, "rmmod", "--purge"], check=False)
        lab.close()
