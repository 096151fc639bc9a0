"""Secured vnets through the control commands and vn (design.md 6, 7):
vnet.add with a key file, vnet.key add/activate/retire/list, errors that
name files and never echo keys."""

from __future__ import annotations

import pytest
from security_helpers import KEY1, KEY2, V97, Clock, context, write_key
from fake_engine import FakeHost, err, run_vn

from xend_vnet import sxp
from xend_vnet.vn import main as vn
from xend_vnet.kernel_shim.control.commands import execute
from xend_vnet.kernel_shim.core.engine import CoreOptions, EngineCore
from xend_vnet.kernel_shim.security import keys

ID97 = V97.canonical


@pytest.fixture
def host():
    return FakeHost(EngineCore(CoreOptions(), context(7, Clock())))


@pytest.fixture
def key1(tmp_path):
    return write_key(str(tmp_path / "k1"), KEY1)


@pytest.fixture
def key2(tmp_path):
    return write_key(str(tmp_path / "k2"), KEY2)


def forms(reply):
    return sxp.parse_all(reply)


def test_secured_vnet_add_and_listing(host, key1):
    assert execute(host, f"(vnet.add (id 97) (security conf) (key-file {key1}))") == ""
    gen = keys.generation(KEY1, V97.raw)
    line = execute(host, "(vnet.list)")
    assert f"(security conf) (data-path vnetd) (header 116) (keys (gen {gen} active)))" in line
    (f,) = forms(execute(host, "(vnet.key (id 97) (list))"))
    assert sxp.child_value(f, "gen") == str(gen) and sxp.child_value(f, "state") == "active"
    assert sxp.child_value(f, "spi") == f"0x{keys.spi(KEY1, V97.raw, gen):08x}"


def test_rotation_commands(host, key1, key2):
    execute(host, f"(vnet.add (id 97) (security auth) (key-file {key1}))")
    g1, g2 = keys.generation(KEY1, V97.raw), keys.generation(KEY2, V97.raw)
    (f,) = forms(execute(host, f"(vnet.key (id 97) (add {key2}))"))
    assert sxp.child_value(f, "gen") == str(g2) and sxp.child_value(f, "state") == "added"
    assert err(execute(host, f"(vnet.key (id 97) (add {key2}))"))[0] == 17
    assert err(execute(host, f"(vnet.key (id 97) (retire {g1}))")) == (
        16, f"vnet.key: key generation {g1} is active: activate another one first")
    assert execute(host, f"(vnet.key (id 97) (activate {g2}))") == ""
    assert execute(host, f"(vnet.key (id 97) (retire {g1}))") == ""
    states = {sxp.child_value(f, "gen"): sxp.child_value(f, "state")
              for f in forms(execute(host, "(vnet.key (id 97) (list))"))}
    assert states == {str(g1): "retired", str(g2): "active"}
    assert err(execute(host, f"(vnet.key (id 97) (activate {g1}))"))[0] == 2


@pytest.mark.parametrize("request_text,errno,fragment", [
    ("(vnet.key (id 98) (list))", 2, "no such vnet"),
    ("(vnet.key (id 97))", 22, "exactly one of"),
    ("(vnet.key (id 97) (list) (activate 1))", 22, "exactly one of"),
    ("(vnet.key (id 97) (activate x))", 22, "invalid activate 'x'"),
    ("(vnet.key (id 97) (retire 0))", 22, "1 to 65535"),
    ("(vnet.key (id 97) (activate 1))", 2, "no key generation 1"),
    ("(vnet.key (id 97) (add relative))", 22, "absolute"),
    ("(vnet.key (id 97) (add /nonexistent/key))", 22, "/nonexistent/key does not exist"),
])
def test_vnet_key_errors(host, key1, request_text, errno, fragment):
    execute(host, f"(vnet.add (id 97) (security conf) (key-file {key1}))")
    got, message = err(execute(host, request_text))
    assert got == errno and fragment in message, message


def test_keys_of_an_unsecured_vnet(host):
    execute(host, "(vnet.add (id 97))")
    assert "security none" in err(execute(host, "(vnet.key (id 97) (list))"))[1]


def test_errors_never_echo_key_material(host, tmp_path):
    bad = tmp_path / "bad"
    bad.write_text(KEY1.hex()[:60] + "\n")
    bad.chmod(0o600)
    open_ = tmp_path / "open"
    open_.write_text(KEY1.hex() + "\n")
    open_.chmod(0o644)
    for path in (bad, open_):
        got, message = err(execute(host, f"(vnet.add (id 97) (security conf) (key-file {path}))"))
        assert got == 22 and str(path) in message
        assert KEY1.hex()[:20] not in message
    assert not host.created and not host.core.has_vnet(V97)


# -- vn -------------------------------------------------------------------------------

def test_vn_vnet_create_with_key_file(engine, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(vn.bridges, "set_up", lambda name: None)
    monkeypatch.chdir(tmp_path)
    write_key(str(tmp_path / "k97"), KEY1)
    status, _, _ = run_vn(engine, capsys, "vnet-create", "-s", "conf", "-k", "k97", "97")
    assert status == 0
    assert engine.requests[0] == ["vnet.add", ["id", "97"], ["security", "conf"],
                                  ["key-file", str(tmp_path / "k97")]]
    assert engine.vnets == {ID97: ("vnif0097", "conf")}


def test_vn_key_commands(engine, capsys, key1, key2):
    engine.execute(f"(vnet.add (id 97) (security conf) (key-file {key1}))")
    g1, g2 = keys.generation(KEY1, V97.raw), keys.generation(KEY2, V97.raw)
    status, out, _ = run_vn(engine, capsys, "key-add", "97", key2)
    assert status == 0 and out == f"generation {g2} added\n"
    assert engine.requests[-1] == ["vnet.key", ["id", ID97], ["add", key2]]
    assert run_vn(engine, capsys, "key-activate", "97", str(g2))[0] == 0
    assert engine.requests[-1] == ["vnet.key", ["id", ID97], ["activate", str(g2)]]
    assert run_vn(engine, capsys, "key-retire", "97", f"0{g1}")[0] == 0
    assert engine.requests[-1] == ["vnet.key", ["id", ID97], ["retire", str(g1)]]
    status, out, _ = run_vn(engine, capsys, "keys", "97")
    assert engine.requests[-1] == ["vnet.key", ["id", ID97], ["list"]]
    lines = out.splitlines()
    assert lines[0] == "  gen  state    spi         suite"
    assert sorted(lines[1:]) == sorted(
        f"{g:>5}  {state:<8} 0x{keys.spi(key, V97.raw, g):08x}  aes-128-gcm"
        for g, state, key in ((g1, "retired", KEY1), (g2, "active", KEY2)))
    status, _, e = run_vn(engine, capsys, "key-activate", "97", "x")
    assert status == 1 and "invalid key generation 'x'" in e


# -- xm vnet-create configs ---------------------------------------------------------------

def test_secured_config_goes_to_the_engine_with_its_key_file():
    from xend_vnet.config import VnetConfig
    from xend_vnet.xmlrpc.service import add_form

    config = VnetConfig.from_text(
        "(vnet (id 97) (bridge vnet97) (security conf) (key-file /etc/xen/vnet97.key))")
    assert add_form(config) == ["vnet.add", ["id", ID97], ["vnetif", "vnif0097"],
                                ["security", "conf"], ["key-file", "/etc/xen/vnet97.key"],
                                ["owner", "xend-vnet"]]


def test_a_fifo_named_as_key_file_is_refused_without_blocking(tmp_path):
    import os

    from xend_vnet.kernel_shim.security.keys import KeyFileError, read_key_file
    fifo = tmp_path / "key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        read_key_file(str(fifo))
