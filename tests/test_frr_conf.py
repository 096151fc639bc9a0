"""The EVPN control plane's configuration (docs/fleet.md), without root: the
keys of xend-config.sxp (evpn_settings.py), FRR's configuration made from
them (frr_conf.py, golden texts and properties) and the files written
(frr_files.py)."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xend_vnet import frr_conf, frr_files
from xend_vnet.evpn_settings import (
    EvpnSettings,
    evpn_settings,
    password_from_file,
    password_problem,
)
from xend_vnet.xend_config import XendConfig, XendConfigError

HOST = """
(xend-vnet-control-plane evpn)
(xend-vnet-evpn-address 192.0.2.11)
(xend-vnet-evpn-as 65000)
(xend-vnet-evpn-reflectors 192.0.2.1 198.51.100.1)
"""
REFLECTOR = """
(xend-vnet-evpn-address 192.0.2.1)
(xend-vnet-evpn-as 65000)
(xend-vnet-evpn-listen 192.0.2.0/24 198.51.100.0/24)
(xend-vnet-evpn-reflectors 192.0.2.1 198.51.100.1)
"""


def parse(text: str) -> EvpnSettings:
    return evpn_settings(XendConfig.from_text(text))


# -- the keys ---------------------------------------------------------------------

def test_without_keys_the_host_stays_on_multicast_and_the_engine_gets_no_option():
    s = parse("(xend-vnet-state-dir /var/lib/xend)")
    assert (s.control_plane, s.vtep, s.reflector) == ("multicast", False, False)
    assert s.engine_params() == {}


def test_a_host_key_set_and_what_the_engine_gets():
    s = parse(HOST + "(xend-vnet-evpn-neigh-suppress yes) (xend-vnet-evpn-max-macs 100)")
    assert s.vtep and not s.reflector
    assert s.peers == ("192.0.2.1", "198.51.100.1")
    assert (s.connect_retry, s.hold_time, s.keepalive) == (2, 9, 3)
    assert s.engine_params() == {"vxlan_control_plane": "evpn", "vxlan_local": "192.0.2.11",
                                 "vxlan_max_macs": "100", "vxlan_neigh_suppress": "yes"}


def test_a_reflector_does_not_peer_with_itself():
    s = parse(REFLECTOR)
    assert s.reflector and not s.vtep and s.peers == ("198.51.100.1",)
    assert s.listen == ("192.0.2.0/24", "198.51.100.0/24")
    assert s.engine_params() == {}


@pytest.mark.parametrize("text, message", [
    ("(xend-vnet-control-plane bgp)", "expected multicast or evpn"),
    ("(xend-vnet-control-plane evpn) (xend-vnet-evpn-as 1) (xend-vnet-evpn-reflectors 192.0.2.1)",
     "needs xend-vnet-evpn-address"),
    ("(xend-vnet-control-plane evpn) (xend-vnet-evpn-address 192.0.2.9) "
     "(xend-vnet-evpn-reflectors 192.0.2.1)", "needs xend-vnet-evpn-as"),
    ("(xend-vnet-control-plane evpn) (xend-vnet-evpn-address 192.0.2.9) (xend-vnet-evpn-as 1)",
     "needs xend-vnet-evpn-reflectors"),
    ("(xend-vnet-control-plane evpn) (xend-vnet-evpn-address 192.0.2.9) (xend-vnet-evpn-as 1)"
     " (xend-vnet-evpn-reflectors 192.0.2.9)", "needs xend-vnet-evpn-reflectors"),
    (HOST + "(xend-vnet-evpn-address 224.0.0.1)", None),    # the first one wins, as in xend
    ("(xend-vnet-evpn-address 224.0.0.1)", "a host's unicast IPv4 address"),
    ("(xend-vnet-evpn-address 192.0.2)", "a dotted-quad IPv4 address"),
    ("(xend-vnet-evpn-as 0)", "1 to 4294967295"),
    ("(xend-vnet-evpn-as 65x)", "expected int"),
    (REFLECTOR.replace("65000", "23456"), "AS_TRANS"),
    ("(xend-vnet-evpn-listen 192.0.2.1/24)", "host bits set"),
    ("(xend-vnet-evpn-listen 0.0.0.0/0)", "/8 or longer"),
    ("(xend-vnet-evpn-listen 192.0.2.0/24 192.0.2.0/24)", "each value once"),
    ("(xend-vnet-evpn-listen (192.0.2.0/24))", "expected values"),
    ("(xend-vnet-evpn-reflectors 192.0.2.1 192.0.2.1)", "each value once"),
    ("(xend-vnet-evpn-reflectors " + " ".join(f"192.0.2.{i}" for i in range(1, 18)) + ")",
     "at most 16"),
    ("(xend-vnet-evpn-password-file relative/path)", "an absolute path"),
    ("(xend-vnet-evpn-ttl-security 255)", "1 to 254"),
    ("(xend-vnet-evpn-connect-retry 0)", "1 to 65535"),
    ("(xend-vnet-evpn-hold-time 2)", "3 to 65535"),
    ("(xend-vnet-evpn-listen-limit 70000)", "1 to 65535"),
    ("(xend-vnet-evpn-max-macs 0)", "1 to 1048576"),
    ("(xend-vnet-evpn-neigh-suppress maybe)", "expected bool"),
])
def test_wrong_keys_are_named(text, message):
    if message is None:
        assert parse(text).address == "192.0.2.11"
        return
    with pytest.raises(XendConfigError, match=message):
        parse(text)


def test_get_list_reads_every_value():
    cfg = XendConfig.from_text("(a 1 2 3) (a 4) (b)")
    assert cfg.get_list("a") == ["1", "2", "3"] and cfg.get_list("b") == []
    assert cfg.get_list("c") == []


# -- passwords ----------------------------------------------------------------------

@pytest.mark.parametrize("password, problem", [
    ("s3cret", None), ("a" * 80, None), ("", "empty"), ("a" * 81, "longer than 80"),
    ("two words", "cannot carry"), ("quo'te", "cannot carry"), ("bang!", "cannot carry"),
    ("hash#", "cannot carry"), ("back\\slash", "cannot carry"), ("tab\t", "printable ASCII"),
    ("caf\u00e9", "printable ASCII"), ("bell\x07", "printable ASCII"),
])
def test_password_rules(password, problem):
    found = password_problem(password)
    assert (found is None) == (problem is None)
    if problem:
        assert problem in found


def test_password_file_is_its_first_line():
    assert password_from_file("s3cret\nignored\n", "/p") == "s3cret"
    assert password_from_file("s3cret\r\n", "/p") == "s3cret"
    with pytest.raises(XendConfigError, match="invalid BGP password in /p: it is empty"):
        password_from_file("\nsecond\n", "/p")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_any_password_file_text_is_refused_or_one_word_of_the_config(text):
    """A password file holds what an operator typed: it is refused with a reason,
    or it lands in the configuration as one word on its own line."""
    try:
        password = password_from_file(text, "/p")
    except XendConfigError as e:
        assert "invalid BGP password in /p" in str(e)
        return
    conf = frr_conf.frr_conf(parse(HOST), password)
    lines = [line.split() for line in conf.splitlines() if " password " in line]
    assert lines == [["neighbor", "REFLECTORS", "password", password]]


# -- FRR's configuration: golden texts -------------------------------------------------

HOST_CONF = """\
! Written by xend-vnet evpn-config from /etc/xen/xend-config.sxp (docs/fleet.md).
! Changes made here are overwritten: change that file and run
! `xend-vnet evpn-config` again.
!
log syslog informational
ip nht resolve-via-default
!
router bgp 65000
 bgp router-id 192.0.2.11
 no bgp default ipv4-unicast
 coalesce-time 200
 neighbor REFLECTORS peer-group
 neighbor REFLECTORS remote-as 65000
 neighbor REFLECTORS update-source 192.0.2.11
 neighbor REFLECTORS timers 3 9
 neighbor REFLECTORS timers connect 2
 neighbor 192.0.2.1 peer-group REFLECTORS
 neighbor 198.51.100.1 peer-group REFLECTORS
 !
 address-family l2vpn evpn
  neighbor REFLECTORS activate
  advertise-all-vni
 exit-address-family
exit
!
"""

REFLECTOR_BGPD = """\
router bgp 65000
 bgp router-id 192.0.2.1
 no bgp default ipv4-unicast
 coalesce-time 200
 neighbor REFLECTORS peer-group
 neighbor REFLECTORS remote-as 65000
 neighbor REFLECTORS update-source 192.0.2.1
 neighbor REFLECTORS timers 1 5
 neighbor REFLECTORS timers connect 7
 neighbor REFLECTORS password pw
 neighbor REFLECTORS ttl-security hops 2
 neighbor 198.51.100.1 peer-group REFLECTORS
 bgp listen limit 300
 neighbor HOSTS peer-group
 neighbor HOSTS remote-as 65000
 neighbor HOSTS update-source 192.0.2.1
 neighbor HOSTS timers 1 5
 neighbor HOSTS password pw
 neighbor HOSTS ttl-security hops 2
 bgp listen range 192.0.2.0/24 peer-group HOSTS
 bgp listen range 198.51.100.0/24 peer-group HOSTS
 !
 address-family l2vpn evpn
  neighbor REFLECTORS activate
  neighbor HOSTS activate
  neighbor HOSTS route-reflector-client
 exit-address-family
exit
"""


def test_a_hosts_frr_conf():
    assert frr_conf.frr_conf(parse(HOST), None, "/etc/xen/xend-config.sxp") == HOST_CONF


def test_a_reflectors_bgpd_config_with_every_option():
    s = parse(REFLECTOR + "(xend-vnet-evpn-hold-time 5) (xend-vnet-evpn-connect-retry 7)"
                          " (xend-vnet-evpn-ttl-security 2) (xend-vnet-evpn-listen-limit 300)")
    assert frr_conf.bgpd_config(s, "pw") == REFLECTOR_BGPD
    assert frr_conf.zebra_config(s) == "ip nht resolve-via-default\n"


def test_a_pure_reflector_with_no_other_reflector_has_no_reflectors_group():
    s = parse("(xend-vnet-evpn-address 192.0.2.1) (xend-vnet-evpn-as 7)"
              " (xend-vnet-evpn-listen 192.0.2.0/24)")
    conf = frr_conf.bgpd_config(s)
    assert "REFLECTORS" not in conf and "advertise-all-vni" not in conf
    assert " neighbor HOSTS route-reflector-client\n" in conf


def test_a_host_that_is_also_a_reflector_advertises_and_reflects():
    conf = frr_conf.bgpd_config(parse(REFLECTOR + "(xend-vnet-control-plane evpn)"))
    assert "  advertise-all-vni\n" in conf and "route-reflector-client" in conf


def test_no_role_no_configuration():
    with pytest.raises(frr_conf.FrrConfigError, match="no EVPN role"):
        frr_conf.frr_conf(parse(""))


def test_a_bad_password_is_refused_by_the_generator_too():
    with pytest.raises(frr_conf.FrrConfigError, match="invalid BGP password"):
        frr_conf.bgpd_config(parse(HOST), "two words")


@settings(max_examples=200, deadline=None)
@given(hosts=st.lists(st.integers(1, 253), min_size=1, max_size=6, unique=True),
       asn=st.integers(1, 4294967295).filter(lambda n: n != 23456),
       me=st.integers(1, 253), listen=st.booleans(), vtep=st.booleans(),
       hold=st.integers(3, 65535), retry=st.integers(1, 65535))
def test_every_valid_setting_makes_a_consistent_configuration(hosts, asn, me, listen, vtep,
                                                              hold, retry):
    text = (f"(xend-vnet-evpn-address 10.0.0.{me}) (xend-vnet-evpn-as {asn})"
            f" (xend-vnet-evpn-reflectors {' '.join(f'10.0.0.{h}' for h in hosts)})"
            f" (xend-vnet-evpn-hold-time {hold}) (xend-vnet-evpn-connect-retry {retry})")
    if listen:
        text += " (xend-vnet-evpn-listen 10.0.0.0/24)"
    if vtep:
        text += " (xend-vnet-control-plane evpn)"
    try:
        s = parse(text)
    except XendConfigError as e:
        assert vtep and not listen and hosts == [me] and "needs" in str(e)
        return
    if not (vtep or listen):
        with pytest.raises(frr_conf.FrrConfigError):
            frr_conf.frr_conf(s)
        return
    conf = frr_conf.frr_conf(s)
    peers = [line.split()[1] for line in conf.splitlines()
             if line.endswith("peer-group REFLECTORS")]
    assert peers == [f"10.0.0.{h}" for h in hosts if h != me]
    assert ("advertise-all-vni" in conf) == vtep
    assert ("bgp listen range 10.0.0.0/24 peer-group HOSTS" in conf) == listen
    assert conf.count("router bgp") == 1 and f"router bgp {asn}\n" in conf
    assert all(f"timers {max(1, hold // 3)} {hold}" in line
               for line in conf.splitlines() if " timers " in line and "connect" not in line)
    assert frr_conf.is_ours(conf) and not frr_conf.is_stock(conf)


# -- daemons and recognising files ---------------------------------------------------

DEBIAN_DAEMONS = """\
# This file tells the frr package which daemons to start.
bgpd=no
ospfd=no
#bgpd=maybe
vtysh_enable=yes
zebra_options="  -A 127.0.0.1 -s 90000000"
bgpd_options="   -A 127.0.0.1"
"""


def test_daemons_file_turns_bgpd_on_and_keeps_the_rest():
    assert frr_conf.daemons_file(DEBIAN_DAEMONS) == DEBIAN_DAEMONS.replace("bgpd=no", "bgpd=yes")
    assert frr_conf.daemons_file("ospfd=no\n") == "ospfd=no\nbgpd=yes\n"
    assert frr_conf.daemons_file("bgpd = no\nbgpd=no\n") == "bgpd=yes\n"
    assert "bgpd=yes" in frr_conf.daemons_file(None)


def test_stock_ours_and_someone_elses():
    stock = "# default to using syslog.\n!\nlog syslog informational\n"
    assert frr_conf.is_stock(stock) and not frr_conf.is_ours(stock)
    theirs = stock + "router ospf\n"
    assert not frr_conf.is_stock(theirs) and not frr_conf.is_ours(theirs)
    assert frr_conf.is_ours(HOST_CONF)


# -- the files ----------------------------------------------------------------------

def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_are_written_whole_and_a_second_run_changes_nothing(tmp_path):
    etc = tmp_path / "etc" / "frr"
    etc.mkdir(parents=True)
    (etc / "frr.conf").write_text("! stock\nlog syslog informational\n")
    (etc / "daemons").write_text(DEBIAN_DAEMONS)
    written = frr_files.write_frr_files(parse(HOST), str(tmp_path), source="/x.sxp")
    assert [(os.path.basename(w.path), w.changed, w.saved) for w in written] == [
        ("frr.conf", True, None), ("daemons", True, None)]
    assert (etc / "frr.conf").read_text() == frr_conf.frr_conf(parse(HOST), None, "/x.sxp")
    assert "bgpd=yes" in (etc / "daemons").read_text()
    assert _mode(etc / "frr.conf") == 0o640 and _mode(etc / "daemons") == 0o640
    again = frr_files.write_frr_files(parse(HOST), str(tmp_path), source="/x.sxp")
    assert [w.changed for w in again] == [False, False]
    assert sorted(os.listdir(etc)) == ["daemons", "frr.conf"]       # no temporary left


def test_someone_elses_frr_conf_is_refused_unless_forced_and_then_kept(tmp_path):
    etc = tmp_path / "etc" / "frr"
    etc.mkdir(parents=True)
    theirs = "router ospf\n ospf router-id 192.0.2.5\n"
    (etc / "frr.conf").write_text(theirs)
    with pytest.raises(frr_files.FrrFilesError, match="did not write"):
        frr_files.write_frr_files(parse(HOST), str(tmp_path))
    assert (etc / "frr.conf").read_text() == theirs
    written = frr_files.write_frr_files(parse(HOST), str(tmp_path), force=True)
    assert written[0].saved == str(etc / "frr.conf.before-xend-vnet")
    assert (etc / "frr.conf.before-xend-vnet").read_text() == theirs
    assert frr_conf.is_ours((etc / "frr.conf").read_text())


def test_the_password_comes_from_a_private_file(tmp_path):
    pw = tmp_path / "bgp.password"
    pw.write_text("s3cret\n")
    pw.chmod(0o644)
    s = parse(HOST + f"(xend-vnet-evpn-password-file {pw})")
    with pytest.raises(frr_files.FrrFilesError, match="readable by others.*chmod 600"):
        frr_files.write_frr_files(s, str(tmp_path))
    pw.chmod(0o600)
    frr_files.write_frr_files(s, str(tmp_path))
    conf = (tmp_path / "etc" / "frr" / "frr.conf").read_text()
    assert " neighbor REFLECTORS password s3cret\n" in conf
    missing = parse(HOST + f"(xend-vnet-evpn-password-file {tmp_path}/none)")
    with pytest.raises(frr_files.FrrFilesError, match="cannot read the BGP password file"):
        frr_files.write_frr_files(missing, str(tmp_path))


# -- the commands: xend-vnet evpn-config, xend-vnet engine, the launch ----------------

def test_evpn_config_command_writes_and_prints(tmp_path, capsys):
    from xend_vnet.xmlrpc import cli
    config = tmp_path / "xend-config.sxp"
    config.write_text(HOST)
    assert cli.main(["evpn-config", "--config", str(config), "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path}/etc/frr/frr.conf: written" in out
    assert "this host advertises its EVPN vnets" in out
    assert frr_conf.is_ours((tmp_path / "etc" / "frr" / "frr.conf").read_text())
    assert cli.main(["evpn-config", "--config", str(config), "--print"]) == 0
    assert capsys.readouterr().out == frr_conf.frr_conf(parse(HOST), None, str(config))
    config.write_text("(xend-vnet-state-dir /x)")
    assert cli.main(["evpn-config", "--config", str(config), "--root", str(tmp_path)]) == 1
    assert "no EVPN role" in capsys.readouterr().err


def test_engine_command_becomes_vnetd_with_the_hosts_options(tmp_path, monkeypatch):
    from xend_vnet.xmlrpc import cli
    config = tmp_path / "xend-config.sxp"
    config.write_text(HOST + f"(xend-vnet-engine-control {tmp_path}/v.sock)")
    became = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: became.append(argv))
    cli.main(["engine", "--config", str(config)])
    assert became[0][1:] == ["-m", "xend_vnet.kernel_shim.daemon", "--control",
                             f"{tmp_path}/v.sock", "--vxlan-control-plane", "evpn",
                             "--vxlan-local", "192.0.2.11", "--vxlan-max-macs", "4096"]
    config.write_text("(xend-vnet-control-plane evpn)")
    assert cli.main(["engine", "--config", str(config)]) == 1


def test_xend_vnet_start_launches_the_engine_with_the_hosts_options(monkeypatch):
    from xend_vnet import engine_launcher as launcher
    from xend_vnet.xmlrpc import cli
    calls = []
    monkeypatch.setattr(launcher, "ensure_engine", lambda c, p: calls.append(("ensure", p)))
    monkeypatch.setattr(launcher, "reconcile_running", lambda c, p: calls.append(("check", p)))
    params = parse(HOST).engine_params()
    monkeypatch.setattr(launcher, "unit_serves", lambda c: False)
    assert cli.ensure_engine("/x.sock", params) is None
    assert calls == [("ensure", params)]
    calls.clear()
    # vnetd.service runs `xend-vnet engine`, which reads the options itself
    monkeypatch.setattr(launcher, "unit_serves", lambda c: True)
    assert cli.ensure_engine("/var/run/vnetd.sock", params) is None
    assert calls == [("ensure", {}), ("check", params)]


def test_a_wrong_evpn_key_stops_a_start_but_not_a_stop(tmp_path, capsys):
    from xend_vnet.xmlrpc import cli
    config = tmp_path / "xend-config.sxp"
    config.write_text("(xend-vnet-control-plane evpn)")
    sock = str(tmp_path / "x.sock")
    assert cli.main(["stop", "--config", str(config), "--socket", sock]) == 0
    assert "not running" in capsys.readouterr().out
    assert cli.main(["start", "--config", str(config), "--socket", sock]) == 1
    assert "needs xend-vnet-evpn-address" in capsys.readouterr().err
