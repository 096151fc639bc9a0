"""vn: argument parsing, the bytes it sends, output formats and errors
(protocol.md 13), against the fake engine (the real control server and
commands without the kernel); root tests against a real
vnetd in a network namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from fake_engine import run_vn

from xend_vnet import sxp
from xend_vnet.bridges import BridgeError
from xend_vnet import engine_launcher as launcher
from xend_vnet.vn import links, manage
from xend_vnet.vn import main as vn

ID97 = "0000:0000:0000:0000:0000:0000:0000:0097"
ID2 = "0000:0000:0000:0000:0000:0000:0000:0002"


@pytest.fixture
def fake_bridges(monkeypatch):
    """Record the bridge calls vn makes instead of touching netlink."""
    calls = []

    def recorder(name, result=None):
        def call(*args):
            calls.append((name, *args))
            return result
        return call

    for name in ("set_up", "ensure_bridge", "enslave", "release", "delete_bridge"):
        monkeypatch.setattr(vn.bridges, name, recorder(name))
    monkeypatch.setattr(vn.bridges, "link_exists", lambda n: True)
    monkeypatch.setattr(vn.bridges, "master_of", lambda n: "vnet97")
    return calls


# -- parsing and help -----------------------------------------------------------------

def test_no_arguments_is_help(engine, capsys):
    status, out, _ = run_vn(engine, capsys)
    assert status == 0
    assert out.startswith("vn:\n")
    assert "  vnet-create [-s | --security LEVEL] [-k | --key-file PATH]" in out
    assert "\t\tCreate a vnet.\n" in out
    assert engine.requests == []


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_option_is_help(engine, capsys, flag):
    assert run_vn(engine, capsys, flag) == run_vn(engine, capsys, "help")
    assert engine.requests == []


def test_help_lists_every_subcommand_sorted(engine, capsys):
    _, out, _ = run_vn(engine, capsys, "help")
    names = [line.split()[0] for line in out.splitlines()[1:] if line.startswith("  ")]
    assert names == sorted(names, key=lambda n: n.replace("-", "_"))
    for name in ("help", "insmod", "rmmod", "vnets", "vnifs", "vifs", "varp", "varp-flush",
                 "vnet-create", "vnet-delete", "vif-add", "vif-delete", "peer-add",
                 "peer-delete", "peers", "bridges", "stats", "status", "key-gen",
                 "key-add", "key-activate", "key-retire", "keys"):
        assert name in names


def test_long_help(engine, capsys):
    status, out, _ = run_vn(engine, capsys, "help", "--long")
    assert status == 0
    assert out.startswith("vn [--control PATH] <command> <options>\n")
    assert "own MAC address" in out  # the legacy eth0 MAC copy is not done


def test_unknown_command(engine, capsys):
    status, out, err = run_vn(engine, capsys, "frobnicate")
    assert (status, out, err) == (1, "", "vn: unknown command: frobnicate\n")


@pytest.mark.parametrize("name", ["varp-flush", "varp_flush"])
def test_dash_and_underscore(engine, capsys, name):
    assert run_vn(engine, capsys, name)[0] == 0
    assert engine.requests == [["varp.flush"]]


def test_insufficient_arguments(engine, capsys):
    status, _, err = run_vn(engine, capsys, "vif-add", "97")
    assert (status, err) == (1, "vn: insufficient arguments for vif-add\n")


def test_options_come_before_positionals(engine, capsys):
    # getopt like legacy: an option after the vnet is a positional.
    status, _, err = run_vn(engine, capsys, "vnet-delete", "97", "-b")
    assert status == 1
    assert err == "vn: too many arguments for vnet-delete: -b\n"
    assert engine.requests == []


def test_unknown_option(engine, capsys):
    status, _, err = run_vn(engine, capsys, "vnets", "-x")
    assert (status, err) == (1, "vn: vnets: option -x not recognized\n")


def test_unknown_global_option(engine, capsys):
    status, _, err = run_vn(engine, capsys, "--frob")
    assert status == 1 and err.startswith("vn: option --frob")


def test_control_path_from_environment(engine, capsys, monkeypatch):
    monkeypatch.setenv("VNETD_SOCKET", engine.path)
    assert vn.main(["varp-flush"]) == 0
    assert engine.requests == [["varp.flush"]]


def test_engine_error_is_reported(engine, capsys):
    engine.execute("(vnet.add (id 97))")
    status, out, err = run_vn(engine, capsys, "vnet-create", "97")
    assert (status, out, err) == (1, "", f"vn: vnet.add: vnet {ID97} already exists\n")


# -- listings --------------------------------------------------------------------------

@pytest.fixture
def listing(engine):
    assert engine.execute("(vnet.add (id 97)) (vnet.add (id 2)) "
                          "(vnet.add (id 3) (vnetif vnet3if))") == ""
    return engine


def test_vnets_sorted_pretty_width_50(listing, capsys):
    status, out, _ = run_vn(listing, capsys, "vnets")
    assert status == 0
    blocks = out.split("\n\n")
    assert blocks[-1] == ""
    first = (f"(vnet\n    (id {ID2})\n    (vnetif vnif0002)\n"
             "    (security none)\n    (data-path vnetd)\n    (header 64)\n)")
    assert blocks[0] == first
    ids = [sxp.child_value(sxp.parse_one(b), "id") for b in blocks[:-1]]
    assert ids == sorted(ids) and len(ids) == 3
    assert listing.requests == [["vnet.list"]]


@pytest.mark.parametrize("key", ["97", "0097", "0:0:0:0:0:0:0:97", ID97, "vnif0097"])
def test_vnets_filter_by_id_or_vnetif(listing, capsys, key):
    _, out, _ = run_vn(listing, capsys, "vnets", key)
    assert out == sxp.pretty(listing.listed("97"), 50) + "\n"


def test_vnets_filter_unknown(listing, capsys):
    status, out, err = run_vn(listing, capsys, "vnets", "98")
    assert (status, out, err) == (1, "", "vn: vnet not found: 98\n")


def test_vnets_all_adds_vifs_of_listed_vnets_and_varp(listing, capsys):
    listing.execute("(vif.add (vnet 97) (vmac 00:16:3e:00:00:01)) "
                    "(vif.add (vnet 2) (vmac 00:16:3e:00:00:02))")
    (varp,) = sxp.parse_all(listing.execute("(varp.list)"))
    assert sxp.child_value(varp, "device") == "eth0"
    _, out, _ = run_vn(listing, capsys, "vnets", "-a", "97")
    assert "00:16:3e:00:00:01" in out
    assert "00:16:3e:00:00:02" not in out and "viftable" not in out
    assert out.endswith(sxp.pretty(varp) + "\n")


@pytest.mark.parametrize("cmd,request_name", [
    ("vifs", "vif.list"), ("varp", "varp.list"), ("peers", "peer.list")])
def test_listings_pretty_print_every_form(engine, capsys, cmd, request_name):
    long_form = ("(vnet_peer (addr 192.0.2.1) (port 1798) (tx_packets 1) (rx_packets 2) "
                 "(something-long-enough to-wrap-the-line))")
    engine.replies[request_name] = "(a (b 1))\n" + long_form
    status, out, _ = run_vn(engine, capsys, cmd)
    assert status == 0
    assert out == ("(a (b 1))\n\n"
                   + sxp.pretty(sxp.parse_one(long_form)) + "\n")
    assert engine.requests == [[request_name]]


def test_stats_table(engine, capsys):
    # The engine's layout (listing.py): an engine block, then one per vnet.
    engine.replies["vnet.stats"] = (
        "(engine_stats (rx_datagrams 17) (tx_datagrams 4) (rx_dropped (short-header 2)))\n"
        f"(vnet_stats (vnet {ID2}) (vnetif vnif0002) (rx_packets 10) (tx_packets 4) "
        "(dropped (bad-version 3) (unknown-dest 1)))\n"
        f"(vnet_stats (vnet {ID97}) (vnetif vnif0097) (rx_packets 123456) (tx_packets 0) "
        "(dropped))\n")
    status, out, _ = run_vn(engine, capsys, "stats")
    assert status == 0
    engine_part, table = out.split("\n\n", 1)
    assert engine_part.splitlines() == [
        "engine_stats:",
        "  rx_datagrams             17",
        "  tx_datagrams              4",
        "  rx_dropped short-header   2"]
    lines = table.splitlines()
    assert lines[0].split() == ["counter", "vnif0002", "vnif0097"]
    assert lines[1].split() == ["rx_packets", "10", "123456"]
    assert lines[3].split() == ["dropped", "bad-version", "3", "0"]
    assert len({len(line) for line in lines[:5]}) == 1  # columns line up
    assert lines[-2:] == [f"vnif0002  {ID2}", f"vnif0097  {ID97}"]


def test_stats_of_one_vnet(listing, capsys):
    listing.replies["vnet.stats"] = f"(vnet_stats (vnet {ID97}) (rx_packets 1))"
    status, out, _ = run_vn(listing, capsys, "stats", "97")
    assert status == 0
    assert listing.sent("vnet.stats") == [["vnet.stats", ["id", ID97]]]
    assert "rx_packets" in out


def test_status_running(engine, capsys):
    engine.replies["engine.status"] = (
        "(engine.status (pid 4242) (started 1700000000.5) (uptime 192.4) (group-joined yes) "
        "(mcaddr 224.10.0.1) (port 1798) (address 192.0.2.1) (vnets 4) (peers 0))")
    status, out, _ = run_vn(engine, capsys, "status")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "running (pid 4242, up 3m12s, group 224.10.0.1 joined, 4 vnets)"
    assert "    port 1798" in lines and "    address 192.0.2.1" in lines


def test_status_says_which_path_carries_each_vnet(engine, capsys):
    """design.md 1.1: kernel, or user space and why."""
    engine.replies["engine.status"] = (
        "(engine.status (pid 1) (uptime 5) (group-joined yes) (mcaddr 224.10.0.1) (vnets 3)"
        " (kernel-path loaded)"
        " (vnet-path (id 0000:0000:0000:0000:0000:0000:0000:0002) (vnetif vnif0002)"
        " (path kernel))"
        " (vnet-path (id 0000:0000:0000:0000:0000:0000:0000:0097) (vnetif vnif0097)"
        " (path 'user space: secured vnet'))"
        " (vnet-path (id 0000:0000:0000:0000:0000:0000:0000:0098) (vnetif vnet98x)"
        " (path 'kernel VXLAN device (data-path vxlan)')))")
    _, out, _ = run_vn(engine, capsys, "status")
    assert out.splitlines()[1:] == [
        "    mcaddr 224.10.0.1",
        "    kernel-path loaded",
        "    vnet paths:",
        "      vnif0002  kernel",
        "      vnif0097  user space: secured vnet",
        "      vnet98x   kernel VXLAN device (data-path vxlan)"]


def test_status_group_not_joined(engine, capsys):
    engine.replies["engine.status"] = (
        "(engine.status (pid 1) (uptime 5) (group-joined no) (mcaddr 224.10.0.9) (vnets 1))")
    _, out, _ = run_vn(engine, capsys, "status")
    assert out.splitlines()[0] == "running (pid 1, up 5s, group 224.10.0.9 not joined, 1 vnet)"


def test_status_refused(engine, capsys):
    engine.replies["engine.status"] = '(err (errno 1) (message "caller refused"))'
    status, out, err = run_vn(engine, capsys, "status")
    assert (status, out, err) == (1, "", "vn: caller refused\n")


# -- commands ----------------------------------------------------------------------------

def test_vnet_create_sends_legacy_form_and_brings_up(engine, capsys, fake_bridges):
    status, out, _ = run_vn(engine, capsys, "vnet-create", "-s", "none", "-v", "vnif0097", "97")
    assert (status, out) == (0, "")
    assert engine.sent("vnet.add") == [
        ["vnet.add", ["id", "97"], ["vnetif", "vnif0097"], ["security", "none"]]]
    assert engine.vnets == {ID97: ("vnif0097", "none")}
    assert fake_bridges == [("set_up", "vnif0097")]


def test_vnet_create_on_the_kernel_vxlan_data_path(engine, capsys, fake_bridges):
    status, out, _ = run_vn(engine, capsys, "vnet-create", "--data-path", "vxlan", "97")
    assert (status, out) == (0, "")
    assert engine.sent("vnet.add") == [["vnet.add", ["id", "97"], ["data-path", "vxlan"]]]
    assert sxp.child_value(engine.listed("97"), "data-path") == "vxlan"
    assert run_vn(engine, capsys, "vnet-create", "-d", "vnetd", "98")[0] == 0
    assert engine.sent("vnet.add")[-1] == ["vnet.add", ["id", "98"], ["data-path", "vnetd"]]
    assert sxp.child_value(engine.listed("98"), "data-path") == "vnetd"


def test_vnet_create_with_bridge(engine, capsys, fake_bridges):
    assert run_vn(engine, capsys, "vnet-create", "-b", "vnet97", "97")[0] == 0
    assert engine.sent("vnet.add") == [["vnet.add", ["id", "97"]]]
    assert fake_bridges == [("set_up", "vnif0097"), ("ensure_bridge", "vnet97"),
                            ("enslave", "vnet97", "vnif0097")]


def test_vnet_create_rolls_back_when_the_bridge_fails(engine, capsys, fake_bridges,
                                                      monkeypatch):
    def refuse(name):
        raise BridgeError(name, "exists and is not a bridge")
    monkeypatch.setattr(vn.bridges, "ensure_bridge", refuse)
    status, _, err = run_vn(engine, capsys, "vnet-create", "-b", "eth0", "97")
    assert (status, err) == (1, "vn: eth0: exists and is not a bridge\n")
    assert engine.sent("vnet.del") == [["vnet.del", ["id", "97"]]]
    assert engine.vnets == {}


def test_vnet_delete_releases_and_deletes_bridge(listing, capsys, fake_bridges):
    assert run_vn(listing, capsys, "vnet-delete", "-b", "vnif0097")[0] == 0
    assert fake_bridges == [("release", "vnif0097"), ("delete_bridge", "vnet97")]
    assert listing.sent("vnet.del") == [["vnet.del", ["id", ID97]]]


def test_vnet_delete_keeps_bridge_without_b(listing, capsys, fake_bridges):
    assert run_vn(listing, capsys, "vnet-delete", "0:0:0:0:0:0:0:97")[0] == 0
    assert fake_bridges == [("release", "vnif0097")]


def test_vnet_delete_unknown(listing, capsys, fake_bridges):
    status, _, err = run_vn(listing, capsys, "vnet-delete", "98")
    assert (status, err) == (1, "vn: vnet not found: 98\n")
    assert listing.sent("vnet.del") == [] and fake_bridges == []


@pytest.mark.parametrize("cmd,name", [("vif-add", "vif.add"), ("vif-delete", "vif.del")])
def test_vif_commands_send_full_id(listing, capsys, cmd, name):
    if name == "vif.del":
        listing.execute("(vif.add (vnet 97) (vmac 00:16:3e:00:00:01))")
    assert run_vn(listing, capsys, cmd, "97", "00:16:3E:00:00:01")[0] == 0
    assert listing.sent(name) == [[name, ["vnet", ID97], ["vmac", "00:16:3E:00:00:01"]]]


def test_vif_add_interface_mac(listing, capsys, monkeypatch):
    monkeypatch.setattr(links, "link_info", lambda n: {"address": "02:aa:bb:cc:dd:ee"}
                        if n == "veth0" else None)
    assert run_vn(listing, capsys, "vif-add", "-i", "97", "veth0")[0] == 0
    assert listing.sent("vif.add") == [
        ["vif.add", ["vnet", ID97], ["vmac", "02:aa:bb:cc:dd:ee"]]]
    status, _, err = run_vn(listing, capsys, "vif-add", "-i", "97", "nosuch0")
    assert (status, err) == (1, "vn: interface not found: nosuch0\n")


def test_peer_add_with_port_value(engine, capsys, monkeypatch):
    # The legacy -p was a flag that sent (port True); here it takes a value.
    # A host name is resolved to its IPv4 address before it is sent.
    real = manage.socket.getaddrinfo
    monkeypatch.setattr(manage.socket, "getaddrinfo", lambda host, *a: [
        (2, 2, 17, "", ("192.0.2.8", 0))] if host == "peer8.example" else real(host, *a))
    assert run_vn(engine, capsys, "peer-add", "-p", "1799", "192.0.2.7")[0] == 0
    assert run_vn(engine, capsys, "peer-add", "peer8.example")[0] == 0
    assert engine.sent("peer.add") == [
        ["peer.add", ["addr", "192.0.2.7"], ["port", "1799"]],
        ["peer.add", ["addr", "192.0.2.8"]]]
    # The engine refuses what no peer can have (design.md 4, vnet_rules.py).
    status, _, err = run_vn(engine, capsys, "peer-add", "localhost")
    assert status == 1 and "127.0.0.1" in err


@pytest.mark.parametrize("port", ["0", "65536", "x", "-1"])
def test_peer_add_bad_port(engine, capsys, port):
    status, _, err = run_vn(engine, capsys, "peer-add", "-p", port, "192.0.2.7")
    assert status == 1 and err.startswith(f"vn: invalid port '{port}'")
    assert engine.requests == []


def test_peer_delete_and_unresolvable_host(engine, capsys):
    engine.execute("(peer.add (addr 192.0.2.7))")
    assert run_vn(engine, capsys, "peer-delete", "192.0.2.7")[0] == 0
    assert engine.sent("peer.del") == [["peer.del", ["addr", "192.0.2.7"]]]
    status, _, err = run_vn(engine, capsys, "peer-add", "no-such-host.invalid")
    assert status == 1 and err.startswith("vn: cannot resolve host no-such-host.invalid")


def test_bridges_short_form(engine, capsys, monkeypatch):
    monkeypatch.setattr(vn.bridges, "list_bridges",
                        lambda: {"vnet97": ["vif1.0", "vnif0097"], "empty": []})
    status, out, _ = run_vn(engine, capsys, "bridges")
    assert (status, out) == (0, "empty\nvnet97 : vif1.0, vnif0097\n")


def test_insmod_bad_parameters(engine, capsys):
    status, _, err = run_vn(engine, capsys, "insmod", "varp_mcaddr")
    assert (status, err) == (1, "vn: invalid parameter 'varp_mcaddr': expected name=value\n")
    status, _, err = run_vn(engine, capsys, "insmod", "bogus=1")
    assert status == 1 and err.startswith("vn: unknown parameter bogus")


def test_insmod_takes_vnetd_options_as_they_are(monkeypatch, engine, capsys):
    """vn insmod --no-kernel-path is vn insmod no_kernel_path=yes (design.md 1.1)."""
    asked = []
    monkeypatch.setattr(launcher, "ensure_engine",
                        lambda control, params: asked.append(params))
    assert run_vn(engine, capsys, "insmod", "--no-kernel-path", "--mtu", "1400",
                  "--kernel-object=/x.o", "port=1799")[0] == 0
    assert asked == [{"no_kernel_path": "yes", "mtu": "1400", "kernel_object": "/x.o",
                      "port": "1799"}]
    status, _, err = run_vn(engine, capsys, "insmod", "--bogus")
    assert status == 1 and "unknown vnetd option --bogus" in err
    status, _, err = run_vn(engine, capsys, "insmod", "--mtu")
    assert status == 1 and "needs a value" in err


RUNNING = ("(engine.status (pid 1) (mcaddr 224.10.0.1) (port 1798) (address 192.0.2.1) "
           "(mtu 1500) (mcast-ttl 1) (varp-ttl 60))")


def test_insmod_when_running_with_no_or_equal_parameters_does_nothing(engine, capsys):
    engine.replies["engine.status"] = RUNNING
    assert run_vn(engine, capsys, "insmod")[0] == 0
    assert run_vn(engine, capsys, "insmod", "varp_mcaddr=224.10.0.1", "port=1798",
                  "mtu=1500", "varp_ttl=60.0", "address=192.0.2.1", "vnet_encaps=udp")[0] == 0
    assert engine.sent("varp.mcaddr") == []


def test_insmod_when_running_changes_the_group_at_run_time(engine, capsys):
    """design.md 5: vn insmod varp_mcaddr=A beside a running engine is not a silent no-op."""
    engine.replies["engine.status"] = RUNNING
    assert run_vn(engine, capsys, "insmod", "varp_mcaddr=239.1.1.1")[0] == 0
    assert engine.sent("varp.mcaddr") == [["varp.mcaddr", ["addr", "239.1.1.1"]]]
    assert run_vn(engine, capsys, "insmod", "mcast_ttl=4")[0] == 0
    assert engine.sent("varp.mcaddr")[1] == ["varp.mcaddr", ["addr", "224.10.0.1"],
                                             ["ttl", "4"]]


def test_insmod_when_running_refuses_other_parameters_naming_each(engine, capsys):
    engine.replies["engine.status"] = RUNNING
    status, _, err = run_vn(engine, capsys, "insmod", "varp_mcaddr=239.1.1.1", "mtu=1400",
                            "port=1799", "varp_ttl=60")
    assert status == 1
    assert "mtu: running 1500, asked 1400" in err
    assert "port: running 1798, asked 1799" in err
    assert "varp_ttl" not in err and "varp_mcaddr" not in err
    assert "vn rmmod" in err
    assert engine.sent("varp.mcaddr") == [], "nothing applied when something is refused"


def test_insmod_when_running_compares_the_command_line_options(engine, capsys, monkeypatch):
    """device, file, log_* and flags are not in the status: read from vnetd's argv."""
    engine.replies["engine.status"] = RUNNING

    class Proc:
        def __init__(self, pid):
            assert pid == 1

        def cmdline(self):
            return ["/usr/bin/python3", "/usr/sbin/vnetd", "--varp_device", "eth1",
                    "-f", "/etc/xen/vnetd.conf", "--no-default-vnets"]

    monkeypatch.setattr(vn.launcher.psutil, "Process", Proc)
    assert run_vn(engine, capsys, "insmod", "varp_device=eth1", "file=/etc/xen/vnetd.conf",
                  "no_default_vnets=yes", "allow_foreign_netns=no")[0] == 0
    status, _, err = run_vn(engine, capsys, "insmod", "device=eth0", "file=/etc/other",
                            "no_default_vnets=no", "log_level=debug")
    assert status == 1
    for part in ("device: running eth1, asked eth0",
                 "file: running /etc/xen/vnetd.conf, asked /etc/other",
                 "no_default_vnets: running yes, asked no",
                 "log_level: running not set, asked debug"):
        assert part in err


def test_insmod_list_params_is_the_launchers_table(engine, capsys):
    status, out, _ = run_vn(engine, capsys, "insmod", "--list-params")
    assert status == 0 and out.split() == vn.launcher.param_names()
    assert {"varp_mcaddr", "varp_device", "file", "mcast_ttl"} <= set(out.split())
    assert engine.requests == []


# -- root: a real vnetd in a namespace ------------------------------------------------

NETNS = "xv3-vn"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns(tmp_path):
    if shutil.which("ip") is None:
        pytest.skip("ip not installed")
    subprocess.run(["ip", "netns", "del", NETNS], check=False, capture_output=True)
    _ip("netns", "add", NETNS)
    ns = ["ip", "netns", "exec", NETNS]
    _ip("netns", "exec", NETNS, "ip", "link", "set", "lo", "up")
    control = str(tmp_path / "vnetd.sock")
    env = dict(os.environ, PYTHONPATH=REPO)

    def run(*argv, check=True):
        done = subprocess.run(ns + [sys.executable, "-m", "xend_vnet.vn.main",
                                    "--control", control, *argv],
                              check=False, capture_output=True, text=True, env=env, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"vn {' '.join(argv)}: {done.returncode} {done.stderr}")
        return done

    run.control = control
    yield run
    # Only the engine this test started, found by its own pid file.
    if run("rmmod", "--purge", check=False).returncode != 0:
        launcher.stop_engine(control, purge=False)
    subprocess.run(["ip", "netns", "del", NETNS], check=False, capture_output=True)


@pytest.mark.root
def test_real_engine_life_cycle(netns, capsys):
    assert netns("status", check=False).returncode == 3
    netns("insmod", "no_default_vnets=yes", "varp_ttl=5")
    status = netns("status")
    assert status.stdout.startswith("running (pid ")
    assert "0 vnets" in status.stdout
    netns("vnet-create", "-b", "xv3br97", "97")
    out = netns("vnets", "97").stdout
    assert f"(id {ID97})" in out and "(vnetif vnif0097)" in out
    out = netns("vnets", "-l", "97").stdout
    assert "          Bridge: xv3br97" in out
    assert "xv3br97 : vnif0097" in netns("bridges").stdout
    netns("vif-add", "97", "00:16:3e:00:00:01")
    assert "00:16:3e:00:00:01" in netns("vifs").stdout
    netns("peer-add", "-p", "1798", "192.0.2.9")
    assert "192.0.2.9" in netns("peers").stdout
    netns("peer-delete", "192.0.2.9")
    assert "192.0.2.9" not in netns("peers").stdout
    assert netns("stats").returncode == 0
    assert netns("varp").returncode == 0
    netns("insmod")  # already running: returns at once
    netns("insmod", "varp_ttl=5")  # the same value: fine
    refused = netns("insmod", "varp_ttl=7", check=False)
    assert refused.returncode == 1 and "varp_ttl: running 5, asked 7" in refused.stderr
    netns("insmod", "varp_mcaddr=239.1.1.1")  # applied at run time
    assert "239.1.1.1" in netns("status").stdout
    # vn in another network namespace (here: the test's) is refused.
    assert vn.main(["--control", netns.control, "vnets"]) == 1
    assert "another network namespace" in capsys.readouterr().err
    netns("rmmod", "--purge")
    assert netns("status", check=False).returncode == 3
    links = subprocess.run(["ip", "netns", "exec", NETNS, "ip", "-o", "link"],
                           check=False, capture_output=True, text=True).stdout
    assert "vnif0097" not in links  # purged with its vnet
