"""The engine launcher of ``vn insmod``/``vn rmmod`` (design.md 5): parameter
mapping, pid-file checks (never signal a process that is not vnetd), start
and wait, stop and purge.  The engine is a small fake process named vnetd."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from fake_engine import FakeEngine

from xend_vnet.process import DEFAULT_CONTROL
from xend_vnet import engine_launcher as launcher
from xend_vnet.kernel_shim import daemon
from xend_vnet.engine_launcher import LauncherError

# A stand-in for vnetd: its command line names a file called vnetd.  With a
# control path it detaches like ``vnetd --daemon``: the child writes the pid
# file, answers every request with (engine.status ...), and exits on SIGTERM.
FAKE_VNETD = textwrap.dedent("""\
    import os, signal, socket, sys, time
    if len(sys.argv) < 2:
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        time.sleep(60)
        sys.exit(0)
    control = sys.argv[1]
    if os.fork():
        while not os.path.exists(control + ".pid"):
            time.sleep(0.02)
        sys.exit(0)
    os.setsid()
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(control)
    s.listen(8)
    with open(control + ".pid", "w") as f:
        f.write(str(os.getpid()) + "\\n")
    while True:
        c, _ = s.accept()
        while c.recv(4096):
            pass
        c.sendall(("(engine.status (pid %d))" % os.getpid()).encode())
        c.close()
    """)


@pytest.fixture
def fake_vnetd(tmp_path):
    path = tmp_path / "vnetd"
    path.write_text(FAKE_VNETD)
    return str(path)


@pytest.fixture
def sleeper(fake_vnetd):
    """A running process named vnetd, ended at teardown."""
    procs = []

    def start(script=fake_vnetd):
        p = subprocess.Popen([sys.executable, script])
        procs.append(p)
        # Until the exec, the child still shows pytest's command line.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if script in psutil.Process(p.pid).cmdline():
                    break
            except psutil.Error:
                pass
            time.sleep(0.01)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


# -- parameters ----------------------------------------------------------------------

def test_legacy_parameters():
    assert launcher.parse_params({"varp_mcaddr": "224.10.0.9", "varp_device": "eth1",
                                  "vnet_encaps": "udp"}) == [
        "--mcaddr", "224.10.0.9", "--device", "eth1"]


def test_engine_options_in_parameter_form():
    assert launcher.parse_params({"mtu": "1400", "port": "1799", "mcast-ttl": "2",
                                  "address": "192.0.2.1", "no_default_vnets": "yes",
                                  "allow_foreign_netns": "no"}) == [
        "--mtu", "1400", "--port", "1799", "--mcast-ttl", "2", "--address", "192.0.2.1",
        "--no-default-vnets"]


def test_etherip_refused():
    with pytest.raises(LauncherError, match="vnet_encaps=etherip is not supported"):
        launcher.parse_params({"vnet_encaps": "etherip"})
    with pytest.raises(LauncherError, match="invalid vnet_encaps 'gre'"):
        launcher.parse_params({"vnet_encaps": "gre"})


def test_unknown_parameters_named():
    with pytest.raises(LauncherError, match="unknown parameters frob, knob"):
        launcher.parse_params({"frob": "1", "varp_mcaddr": "224.10.0.1", "knob": "2"})


@pytest.mark.parametrize("params,message", [
    ({"varp_mcaddr": ""}, "needs a value"),
    ({"no_default_vnets": "maybe"}, "expected yes or no")])
def test_bad_parameter_values(params, message):
    with pytest.raises(LauncherError, match=message):
        launcher.parse_params(params)


def test_daemon_command(tmp_path):
    control = str(tmp_path / "c.sock")
    cmd = launcher.daemon_command(control, ["--mcaddr", "224.10.0.9"])
    assert cmd[:4] == [sys.executable, "-m", "xend_vnet.kernel_shim.daemon", "--daemon"]
    assert cmd[4:] == ["--control", control, "--log-file", control + ".log",
                       "--mcaddr", "224.10.0.9"]
    assert launcher.default_log_file(DEFAULT_CONTROL) == "/var/log/vnetd.log"
    assert "--log-file" not in launcher.daemon_command(control, ["--log-file", "x"])[4:-2]


def test_parameters_follow_vnetd_options():
    """Every vnetd option but those the launcher sets itself is a parameter,
    under each long spelling (so the legacy aliases are the module's names)."""
    parser = daemon.build_parser()
    owned = {"help", "version", "control", "pid_file", "daemon"}
    for action in parser._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        for spelling in longs:
            key = spelling[2:].replace("-", "_")
            assert (key in launcher.param_names()) is (action.dest not in owned), key
            if action.dest in owned:
                continue
            expected = [longs[0]] if action.nargs == 0 else [longs[0], "7"]
            assert launcher.parse_params({key: "yes" if action.nargs == 0 else "7"}) == expected
    assert launcher.parse_params({"varp_device": "eth1", "no_offload": "no"}) == [
        "--device", "eth1"]
    # vn insmod no_kernel_path=yes: user space only (design.md 1.1).
    assert launcher.parse_params({"no_kernel_path": "yes", "kernel_object": "/x.o"}) == [
        "--no-kernel-path", "--kernel-object", "/x.o"]


def test_a_new_vnetd_option_is_a_parameter_at_once():
    parser = daemon.build_parser()
    parser.add_argument("--queue-depth", type=int, metavar="N")
    table = launcher._parameter_table(parser)
    assert table["queue_depth"].option_strings == ["--queue-depth"]
    assert set(table) - {"queue_depth"} == set(launcher.param_names()) - {"vnet_encaps"}


# -- pid file ----------------------------------------------------------------------------

def test_engine_pid(tmp_path, sleeper):
    control = str(tmp_path / "c.sock")
    assert launcher.engine_pid(control) is None
    pid_file = launcher.pid_file_of(control)
    for junk in ("", "x\n", "-5", "0"):
        with open(pid_file, "w") as f:
            f.write(junk)
        assert launcher.engine_pid(control) is None
    with open(pid_file, "w") as f:
        f.write(f"{os.getpid()}\n")
    assert launcher.engine_pid(control) is None  # alive, but not a vnetd
    p = sleeper()
    with open(pid_file, "w") as f:
        f.write(f"{p.pid}\n")
    assert launcher.engine_pid(control) == p.pid


class _Proc:
    def __init__(self, cmdline):
        self._cmdline = cmdline

    def cmdline(self):
        return self._cmdline


@pytest.mark.parametrize("cmdline,expected", [
    (["/usr/bin/python3", "/usr/local/bin/vnetd", "--daemon"], True),
    (["/usr/local/sbin/vnetd"], True),
    (["python3", "-m", "xend_vnet.kernel_shim.daemon", "--control", "x"], True),
    (["python3", "-m", "cProfile", "-o", "p", "-m", "xend_vnet.kernel_shim.daemon"], True),
    (["python3", "-m", "pytest"], False),
    (["vi", "notes", "/tmp/vnetd"], False),
    (["sleep", "60"], False),
    ([], False)])
def test_is_vnetd(cmdline, expected):
    assert launcher.is_vnetd(_Proc(cmdline)) is expected
    assert launcher.is_vnetd(psutil.Process()) is False


def test_stop_never_signals_another_process(tmp_path, sleeper, tmp_path_factory):
    other = tmp_path_factory.mktemp("other") / "sleeper"
    other.write_text("import time\ntime.sleep(60)\n")
    p = sleeper(str(other))
    control = str(tmp_path / "c.sock")
    with open(launcher.pid_file_of(control), "w") as f:
        f.write(f"{p.pid}\n")
    assert launcher.stop_engine(control, purge=False) is False
    time.sleep(0.2)
    assert p.poll() is None


def test_stop_sends_sigterm_and_waits(tmp_path, sleeper):
    p = sleeper()
    control = str(tmp_path / "c.sock")
    with open(launcher.pid_file_of(control), "w") as f:
        f.write(f"{p.pid}\n")
    time.sleep(0.3)  # let the fake install its SIGTERM handler
    assert launcher.stop_engine(control, purge=False) is True
    assert p.wait(5) == 0


def test_stop_with_purge_deletes_every_vnet_first(tmp_path, sleeper):
    control = str(tmp_path / "c.sock")
    engine = FakeEngine(control).start()
    try:
        engine.execute("(vnet.add (id 97) (owner xend-vnet))")   # one xend-vnet stores
        engine.execute("(vnet.add (id 2))")
        p = sleeper()
        with open(launcher.pid_file_of(control), "w") as f:
            f.write(f"{p.pid}\n")
        time.sleep(0.3)
        assert launcher.stop_engine(control, purge=True) is True
        assert [f[1][1][-4:] for f in engine.sent("vnet.del")] == ["0002", "0097"]
        assert engine.vnets == {}
        # Then what the kernel path left in the kernel (design.md 1.1).
        assert engine.sent("engine.purge") == [["engine.purge"]]
        assert p.wait(5) == 0
    finally:
        engine.close()


def test_stop_purge_error_reported(tmp_path, sleeper):
    control = str(tmp_path / "c.sock")
    engine = FakeEngine(control).start()
    try:
        engine.execute("(vnet.add (id 2))")
        engine.replies["vnet.del"] = '(err (errno 16) (message "device busy"))'
        p = sleeper()
        with open(launcher.pid_file_of(control), "w") as f:
            f.write(f"{p.pid}\n")
        with pytest.raises(LauncherError, match="cannot purge the vnets .*device busy"):
            launcher.stop_engine(control, purge=True)
        assert p.poll() is None
    finally:
        engine.close()


def test_stop_when_nothing_runs(tmp_path):
    assert launcher.stop_engine(str(tmp_path / "c.sock"), purge=True) is False


# -- start ---------------------------------------------------------------------------------

def test_ensure_engine_already_running(tmp_path, monkeypatch):
    engine = FakeEngine(str(tmp_path / "c.sock")).start()
    try:
        monkeypatch.setattr(launcher, "_run", lambda *a: pytest.fail("must not start"))
        engine.execute("(varp.mcaddr (addr 224.10.0.9))")
        launcher.ensure_engine(engine.path, {"varp_mcaddr": "224.10.0.9"})
        assert engine.sent("varp.mcaddr") == []
    finally:
        engine.close()


def test_ensure_engine_refused_by_a_running_engine(tmp_path, monkeypatch):
    # Something serves the socket but refuses us: starting another engine
    # on the same path would not help.
    engine = FakeEngine(str(tmp_path / "c.sock")).start()
    try:
        engine.replies["engine.status"] = (
            '(err (errno 1) (message "caller from another network namespace refused"))')
        monkeypatch.setattr(launcher, "_run", lambda *a: pytest.fail("must not start"))
        with pytest.raises(LauncherError, match="does not serve us: caller from another"):
            launcher.ensure_engine(engine.path, {})
    finally:
        engine.close()


def test_ensure_engine_checks_params_first(tmp_path):
    with pytest.raises(LauncherError, match="unknown parameter"):
        launcher.ensure_engine(str(tmp_path / "c.sock"), {"bogus": "1"})


def test_ensure_engine_starts_detached_daemon_and_stop(tmp_path, fake_vnetd, monkeypatch):
    control = str(tmp_path / "c.sock")
    seen = []

    def command(path, options):
        seen.append(options)
        return [sys.executable, fake_vnetd, path, "--log-file", path + ".log"]
    monkeypatch.setattr(launcher, "daemon_command", command)
    launcher.ensure_engine(control, {"varp_mcaddr": "224.10.0.9"})
    try:
        assert seen == [["--mcaddr", "224.10.0.9"]]
        pid = launcher.engine_pid(control)
        assert pid is not None and launcher.engine_answers(control)
        # The daemon has its own session: not a child of this process.
        assert os.getsid(pid) == pid
    finally:
        assert launcher.stop_engine(control, purge=False) is True
    assert not launcher.engine_answers(control)


def test_ensure_engine_start_failure_points_at_log(tmp_path, monkeypatch):
    script = tmp_path / "vnetd"
    script.write_text("import sys\nsys.stderr.write('vnetd: bad option --frob\\n')\nsys.exit(2)\n")
    monkeypatch.setattr(launcher, "daemon_command", lambda path, options: [
        sys.executable, str(script), "--log-file", "/tmp/xv3-somewhere.log"])
    with pytest.raises(LauncherError, match=r"vnetd failed to start: vnetd: bad option --frob; "
                                            r"see /tmp/xv3-somewhere.log"):
        launcher.ensure_engine(str(tmp_path / "c.sock"), {})


def test_ensure_engine_timeout_points_at_log(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, "daemon_command", lambda path, options: [
        sys.executable, "-c", "pass", "--log-file", path + ".log"])
    control = str(tmp_path / "c.sock")
    with pytest.raises(LauncherError, match=f"did not answer within 0.5 s; see {control}.log"):
        launcher.ensure_engine(control, {}, timeout=0.5)


def test_systemd_used_for_the_default_engine(monkeypatch):
    runs = []
    answers = iter([False, True])
    monkeypatch.setattr(launcher, "engine_answers", lambda path, **kw: next(answers))
    monkeypatch.setattr(launcher, "systemd_booted", lambda: True)
    monkeypatch.setattr(launcher, "systemd_unit_installed", lambda: True)
    monkeypatch.setattr(launcher, "_run", lambda cmd, timeout: runs.append(cmd) or
                        subprocess.CompletedProcess(cmd, 0, "", ""))
    launcher.ensure_engine(DEFAULT_CONTROL, {})
    assert runs == [["systemctl", "start", "vnetd.service"]]


def test_systemd_not_used_with_parameters(monkeypatch):
    # The unit's command line cannot take insmod parameters: detached daemon.
    runs = []
    answers = iter([False, True])
    monkeypatch.setattr(launcher, "engine_answers", lambda path, **kw: next(answers))
    monkeypatch.setattr(launcher, "systemd_booted", lambda: True)
    monkeypatch.setattr(launcher, "systemd_unit_installed", lambda: True)
    monkeypatch.setattr(launcher, "_run", lambda cmd, timeout: runs.append(cmd) or
                        subprocess.CompletedProcess(cmd, 0, "", ""))
    launcher.ensure_engine(DEFAULT_CONTROL, {"varp_mcaddr": "224.10.0.9"})
    assert runs[0][1:5] == ["-m", "xend_vnet.kernel_shim.daemon", "--daemon", "--control"]


def test_systemctl_failure(monkeypatch):
    monkeypatch.setattr(launcher, "engine_answers", lambda path, **kw: False)
    monkeypatch.setattr(launcher, "systemd_booted", lambda: True)
    monkeypatch.setattr(launcher, "systemd_unit_installed", lambda: True)
    monkeypatch.setattr(launcher, "_run", lambda cmd, timeout: subprocess.CompletedProcess(
        cmd, 5, "", "Unit vnetd.service failed"))
    with pytest.raises(LauncherError, match="systemctl start vnetd.service failed .*journalctl"):
        launcher.ensure_engine(DEFAULT_CONTROL, {})


def test_reconcile_reads_what_the_status_lacks_on_the_command_line(tmp_path, monkeypatch):
    """An option the status does not report (here the VXLAN port, and the
    epoch file, a PATH compared as a path) is read from vnetd's argv."""
    engine = FakeEngine(str(tmp_path / "c.sock")).start()
    try:
        engine.replies["engine.status"] = "(engine.status (pid 1) (mcaddr 224.10.0.1))"

        class Proc:
            def __init__(self, pid):
                assert pid == 1

            def cmdline(self):
                return ["vnetd", "--vxlan-port=8472", "--epoch-file", f"{tmp_path}/e/../epoch"]

        monkeypatch.setattr(launcher.psutil, "Process", Proc)
        launcher.reconcile_running(engine.path, {"vxlan_port": "8472",
                                                 "epoch_file": f"{tmp_path}/epoch"})
        with pytest.raises(LauncherError, match="vxlan_port: running 8472, asked 4789"):
            launcher.reconcile_running(engine.path, {"vxlan_port": "4789"})
    finally:
        engine.close()
