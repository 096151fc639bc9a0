"""``xend-vnet install --root DIR`` and sd_notify readiness."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import stat
import subprocess
import sys

import pytest

from xend_vnet import install, sdnotify
from xend_vnet.evpn_settings import evpn_settings
from xend_vnet.xend_config import XendConfig, server_settings

TOOLS = install.Tools(vn="/opt/xv/bin/vn", vnetd="/opt/xv/bin/vnetd",
                      xend_vnet="/opt/xv/bin/xend-vnet")


def run_install(root, beside_xend=None):
    out = io.StringIO()
    written = install.install(str(root), beside_xend, TOOLS, out)
    return written, out.getvalue()


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_installs_script_units_and_config_into_an_empty_root(tmp_path):
    written, out = run_install(tmp_path)
    script = tmp_path / "etc/xen/scripts/network-vnet"
    units = tmp_path / "etc/systemd/system"
    config = tmp_path / "etc/xen/xend-config.sxp"
    assert sorted(written) == sorted(map(str, [script, units / "vnetd.service",
                                               units / "xend-vnet.service", config]))
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    text = read(script)
    assert "VN_DEFAULT=/opt/xv/bin/vn\n" in text
    assert "VN_DEFAULT=vn\n" not in text
    # Everything else is the source script unchanged.
    source = read(install.NETWORK_VNET_SOURCE)
    assert text.replace("VN_DEFAULT=/opt/xv/bin/vn", "VN_DEFAULT=vn") == source
    assert read(config) == read(install.find_sample_config())
    assert not (units / "xend.service.d").exists(), "no xend here: no drop-in"
    assert "systemctl enable --now vnetd xend-vnet" in out
    assert "standalone" in out


def unit_lines(path):
    return [line.strip() for line in read(path).splitlines()]


def test_units_order_engine_before_server_before_domains_with_readiness(tmp_path):
    run_install(tmp_path)
    units = tmp_path / "etc/systemd/system"
    vnetd = unit_lines(units / "vnetd.service")
    server = unit_lines(units / "xend-vnet.service")
    for lines in (vnetd, server):
        assert "Type=notify" in lines
        assert "LimitNOFILE=65536" in lines
        assert "WantedBy=multi-user.target" in lines
    assert "ExecStart=/opt/xv/bin/xend-vnet engine" in vnetd
    assert "ExecStart=/opt/xv/bin/xend-vnet start --foreground --no-engine" in server
    before_vnetd = next(x for x in vnetd if x.startswith("Before=")).split("=", 1)[1].split()
    assert {"xend-vnet.service", "xendomains.service", "xend.service"} <= set(before_vnetd)
    assert "After=vnetd.service network.target" in server
    assert "Wants=vnetd.service" in server
    before_server = next(x for x in server if x.startswith("Before=")).split("=", 1)[1].split()
    assert {"xendomains.service", "xend.service"} <= set(before_server)


def test_existing_config_is_never_overwritten(tmp_path):
    config = tmp_path / "etc/xen/xend-config.sxp"
    config.parent.mkdir(parents=True)
    config.write_text("(network-script network-bridge)\n")
    written, out = run_install(tmp_path)
    assert read(config) == "(network-script network-bridge)\n"
    example = str(config) + ".xend-vnet"
    assert example in written
    assert read(example) == read(install.find_sample_config())
    assert "was left as it is" in out and "(network-script network-vnet)" in out


def test_beside_xend_writes_the_drop_in_and_sets_the_upstream(tmp_path):
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/xend").write_text("#!/bin/sh\n")
    written, out = run_install(tmp_path)      # xend detected under the root
    dropin = tmp_path / "etc/systemd/system/xend.service.d/xend-vnet.conf"
    assert str(dropin) in written
    lines = unit_lines(dropin)
    assert "BindPaths=/run/xend-upstream:/run/xend" in lines
    assert "RuntimeDirectory=xend-upstream" in lines
    assert "After=xend-vnet.service" in lines
    assert "systemctl restart xend" in out
    # The freshly written config selects the beside-xend deployment (design.md 9).
    settings = server_settings(XendConfig.read(str(tmp_path / "etc/xen/xend-config.sxp")))
    assert settings.deployment == "beside-xend"
    assert settings.upstream == "httpu:///run/xend-upstream/xmlrpc.sock"
    assert settings.unix_path == "/var/run/xend/xmlrpc.sock"


def test_standalone_and_beside_xend_can_be_forced(tmp_path):
    (tmp_path / "etc/init.d").mkdir(parents=True)
    (tmp_path / "etc/init.d/xend").write_text("")
    run_install(tmp_path / "a", beside_xend=True)
    assert (tmp_path / "a/etc/systemd/system/xend.service.d/xend-vnet.conf").exists()
    run_install(tmp_path, beside_xend=False)
    assert not (tmp_path / "etc/systemd/system/xend.service.d").exists()


def test_sample_config_keys_are_all_read_by_xend_vnet():
    """Every key of etc/xend-config.sxp, commented or not, is one xend-vnet or xend reads."""
    text = read(install.find_sample_config())
    cfg = XendConfig.from_text(text)
    assert cfg.get("network-script") == "network-vnet"
    standalone = server_settings(cfg)
    assert standalone.deployment == "standalone"
    assert standalone.unix_path == "/var/run/xend/xmlrpc.sock"
    assert standalone.state_dir == "/var/lib/xend"
    assert standalone.engine_control == "/var/run/vnetd.sock"
    keys = set(re.findall(r"^#?\((xend-vnet-[a-z-]+) ", text, re.M))
    assert keys == {"xend-vnet-unix-path", "xend-vnet-upstream", "xend-vnet-tcp-server",
                    "xend-vnet-tcp-address", "xend-vnet-tcp-port", "xend-vnet-tcp-ssl-key-file",
                    "xend-vnet-tcp-ssl-cert-file", "xend-vnet-logfile",
                    "xend-vnet-state-dir", "xend-vnet-engine-control", "xend-vnet-unix-group",
                    "xend-vnet-control-plane", "xend-vnet-evpn-address", "xend-vnet-evpn-as",
                    "xend-vnet-evpn-reflectors", "xend-vnet-evpn-password-file",
                    "xend-vnet-evpn-ttl-security", "xend-vnet-evpn-listen"}
    package = os.path.dirname(install.__file__)
    source = read(os.path.join(package, "xend_config.py")) + read(
        os.path.join(package, "evpn_settings.py"))
    for key in keys:
        assert f'"{key}"' in source, f"{key} is not read by xend_config.py or evpn_settings.py"
    # Uncommenting the whole beside-xend block still parses to valid settings.
    every = XendConfig.from_text(re.sub(r"^#\((xend-vnet-)", r"(\1", text, flags=re.M))
    assert server_settings(every).deployment == "beside-xend"
    evpn = evpn_settings(every)
    assert evpn.vtep and evpn.reflector and evpn.engine_params()["vxlan_control_plane"] == "evpn"


def test_network_vnet_without_the_default_line_is_refused():
    with pytest.raises(install.InstallError, match="VN_DEFAULT=vn"):
        install.network_vnet_script("#!/bin/sh\nVN=vn\n", "/x/vn")
    quoted = install.network_vnet_script("VN_DEFAULT=vn\n", "/opt/my tools/vn")
    assert quoted == "VN_DEFAULT='/opt/my tools/vn'\n"


def test_find_tools_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(install.InstallError, match="cannot find the vn command"):
        install.find_tools([str(tmp_path)])
    for name in install.TOOLS:
        p = tmp_path / name
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    tools = install.find_tools([str(tmp_path)])
    assert tools.vn == str(tmp_path / "vn") and tools.xend_vnet == str(tmp_path / "xend-vnet")


def test_cli_install_with_root(tmp_path):
    """What the operator runs; the installed script names this installation's vn."""
    done = subprocess.run([sys.executable, "-m", "xend_vnet.xmlrpc.cli", "install",
                           "--root", str(tmp_path), "--standalone"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    script = read(tmp_path / "etc/xen/scripts/network-vnet")
    line = next(x for x in script.splitlines() if x.startswith("VN_DEFAULT="))
    vn = line.split("=", 1)[1]
    assert os.path.isabs(vn) and os.access(vn, os.X_OK)
    assert f"wrote {tmp_path}/etc/systemd/system/vnetd.service" in done.stdout


def test_cli_install_reports_an_unwritable_root(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = subprocess.run([sys.executable, "-m", "xend_vnet.xmlrpc.cli", "install",
                           "--root", str(blocker)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("xend-vnet install: cannot write ")


# -- sd_notify -------------------------------------------------------------------

def test_notify_without_systemd_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    for bad in ("", "relative/path", "vsock:2:1234"):
        monkeypatch.setenv("NOTIFY_SOCKET", bad)
        assert sdnotify.notify("READY=1") is False


def test_notify_to_a_path_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.notify("READY=1") is True
        assert s.recv(100) == b"READY=1"
    os.unlink(path)
    assert sdnotify.notify("READY=1") is False, "nobody listens: False, no exception"


def test_notify_to_an_abstract_socket(monkeypatch):
    name = f"xv6-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(b"\0" + name.encode())
        s.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("STOPPING=1") is True
        assert s.recv(100) == b"STOPPING=1"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_units_and_the_drop_in(tmp_path):
    install.install(str(tmp_path), True, install.find_tools(), io.StringIO())
    units = tmp_path / "etc/systemd/system"
    # A stand-in xend.service to which the drop-in applies.
    (units / "xend.service").write_text("[Service]\nExecStart=/bin/true\n")
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{units}:")
    for unit in ("vnetd.service", "xend-vnet.service", "xend.service"):
        done = subprocess.run(["systemd-analyze", "verify", str(units / unit)], env=env,
                              capture_output=True, text=True, timeout=60)
        problems = [line for line in done.stderr.splitlines()
                    if unit in line or "xend-vnet.conf" in line]
        assert done.returncode == 0 and not problems, done.stderr
