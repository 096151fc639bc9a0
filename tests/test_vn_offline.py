"""vn without an engine: formatters, command-line parsing, key files, and what it
says when no engine answers."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xend_vnet.vn import commands, formatting, links
from xend_vnet.vn import main as vn
from xend_vnet.vn.session import UsageError


@pytest.mark.parametrize("seconds,text", [
    (0, "0s"), (59.9, "59s"), (60, "1m00s"), (192, "3m12s"), (3600, "1h00m"),
    (7380, "2h03m"), (86400 * 5 + 7200, "5d02h"), (-3, "0s")])
def test_format_uptime(seconds, text):
    assert formatting.format_uptime(seconds) == text


def test_format_link_is_ifconfig_layout():
    text = links.format_link({
        "ifname": "vnif0097", "address": "02:00:00:00:00:97", "flags": 0x1 | 0x2 | 0x40 | 0x1000,
        "mtu": 1500, "txqlen": 1000, "inet": [("10.0.0.1", 24, "10.0.0.255")],
        "stats": {"rx_packets": 3, "rx_bytes": 2048, "tx_bytes": 10}})
    lines = text.splitlines()
    assert lines[0] == "vnif0097  Link encap:Ethernet  HWaddr 02:00:00:00:00:97"
    assert lines[1] == "          inet addr:10.0.0.1  Bcast:10.0.0.255  Mask:255.255.255.0"
    assert lines[2] == "          UP BROADCAST RUNNING MULTICAST  MTU:1500  Metric:1"
    assert lines[-2] == "          RX bytes:2048 (2.0 KiB)  TX bytes:10 (10 B)"
    assert text.endswith("\n\n")


# Engine replies are parsed s-expressions of any shape: the formatters must
# show what they can and never raise.
atoms = st.text(st.characters(codec="ascii"), max_size=8)
forms = st.recursive(atoms, lambda inner: st.lists(inner, max_size=5), max_leaves=30)


@given(st.lists(forms, max_size=5))
def test_formatters_accept_any_reply(replies):
    formatting.format_stats(replies)
    for form in replies:
        formatting.format_status(form)
    formatting.find_vnet(replies, "97")
    formatting.sort_vnets([r for r in replies if isinstance(r, list)])


@given(st.lists(st.text(max_size=6), max_size=6))
def test_argument_parsing_only_usage_errors(argv):
    for command in commands.COMMANDS.values():
        try:
            command.parse(argv)
        except UsageError:
            pass


def test_key_gen(tmp_path, capsys):
    path = tmp_path / "k"
    assert vn.main(["key-gen", str(path)]) == 0
    text = path.read_text()
    assert len(text) == 65 and text.endswith("\n")
    int(text, 16)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert vn.main(["key-gen", str(path)]) == 1
    assert "exists: not overwriting" in capsys.readouterr().err
    assert path.read_text() == text
    vn.main(["key-gen", str(tmp_path / "k2")])
    assert (tmp_path / "k2").read_text() != text


def test_engine_not_running(tmp_path, capsys):
    status = vn.main(["--control", str(tmp_path / "none.sock"), "vnets"])
    _, err = capsys.readouterr()
    assert status == 1
    assert err.startswith("vn: vnetd is not running (control socket ")


def test_status_not_running(tmp_path, capsys):
    status = vn.main(["--control", str(tmp_path / "none.sock"), "status"])
    out, _ = capsys.readouterr()
    assert (status, out) == (3, "not running\n")


def test_rmmod_not_running(tmp_path, capsys):
    status = vn.main(["--control", str(tmp_path / "none.sock"), "rmmod"])
    _, err = capsys.readouterr()
    assert status == 1 and err.startswith("vn: vnetd is not running")
