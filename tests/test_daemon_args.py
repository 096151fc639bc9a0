"""vnetd's command line (no root): defaults, legacy aliases, $VNETD_SOCKET, refusals."""

from __future__ import annotations

import pytest

from xend_vnet.kernel_shim import daemon


def test_defaults(monkeypatch):
    monkeypatch.delenv("VNETD_SOCKET", raising=False)
    o = daemon.parse_args([])
    assert (o.control, o.pid_file) == ("/var/run/vnetd.sock", "/var/run/vnetd.sock.pid")
    assert (o.port, o.mcaddr, o.mcast_ttl, o.mtu, o.varp_ttl) == (1798, "224.10.0.1", 1,
                                                                  1500, 60.0)
    assert not o.no_default_vnets and not o.daemon and not o.allow_foreign_netns


def test_environment_and_legacy_aliases(monkeypatch):
    monkeypatch.setenv("VNETD_SOCKET", "/run/x/e.sock")
    o = daemon.parse_args(["-a", "224.10.0.3", "--varp_device", "xen-br0", "-V"])
    assert o.control == "/run/x/e.sock" and o.pid_file == "/run/x/e.sock.pid"
    assert (o.mcaddr, o.device, o.verbose) == ("224.10.0.3", "xen-br0", True)
    assert daemon.parse_args(["--varp_mcaddr", "224.10.0.4"]).mcaddr == "224.10.0.4"
    assert daemon.parse_args(["--control", "/c", "--pid-file", "/p"]).pid_file == "/p"


@pytest.mark.parametrize("argv", [["--port", "70000"], ["--address", "1.2.3"],
                                  ["--mcaddr", "x"], ["--mcaddr", "192.0.2.1"],
                                  ["--mtu", "67"], ["--varp-ttl", "0"],
                                  ["--log-level", "loud"], ["--bogus"]])
def test_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        daemon.parse_args(argv)
    assert e.value.code == 2
    assert "vnetd" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        daemon.parse_args(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("vnetd 1.0 (xend-vnet ")


def test_vxlan_port_default_and_refusals(capsys):
    assert daemon.parse_args([]).vxlan_port == 4789
    assert daemon.parse_args(["--vxlan-port", "8472"]).vxlan_port == 8472
    for argv in (["--vxlan-port", "1798"], ["--port", "2000", "--vxlan-port", "2000"],
                 ["--vxlan-port", "0"]):
        with pytest.raises(SystemExit) as e:
            daemon.parse_args(argv)
        assert e.value.code == 2, argv
        err = capsys.readouterr().err
        assert "invalid --vxlan-port" in err, argv


def test_file_options_say_path():
    """The launcher compares options with the metavar PATH as paths (engine_launcher)."""
    actions = {a.dest: a for a in daemon.build_parser()._actions}
    for dest in ("control", "pid_file", "file", "log_file", "epoch_file"):
        assert actions[dest].metavar == "PATH", dest
    assert {a.metavar for d, a in actions.items() if d in ("mtu", "device", "mcaddr")} == {None}


def test_first_refusal_is_reported(capsys):
    with pytest.raises(SystemExit):
        daemon.parse_args(["--port", "0", "--mtu", "1"])
    assert "invalid --port 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        daemon.parse_args(["--address", "x", "--mcaddr", "192.0.2.1"])
    assert "invalid --address 'x'" in capsys.readouterr().err
