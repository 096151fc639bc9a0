"""xend-config.sxp reading (protocol.md 15) and the two deployments (design.md 9)."""

import pytest

from xend_vnet.xend_config import (
    XML_RPC_SOCKET,
    TlsFiles,
    XendConfig,
    XendConfigError,
    config_path,
    server_settings,
)


def conf(text):
    return XendConfig.from_text(text)


def test_path_resolution(monkeypatch):
    monkeypatch.delenv("XEND_CONFIG", raising=False)
    assert config_path() == "/etc/xen/xend-config.sxp"
    monkeypatch.setenv("XEND_CONFIG", "/tmp/x.sxp")
    assert config_path() == "/tmp/x.sxp"
    assert config_path("/a.sxp") == "/a.sxp"


def test_missing_file_is_a_warning(tmp_path):
    c = XendConfig.read(str(tmp_path / "none.sxp"))
    assert c.warnings and "not found" in c.warnings[0]
    assert server_settings(c).unix_path == XML_RPC_SOCKET


def test_parse_error_stops(tmp_path):
    p = tmp_path / "bad.sxp"
    p.write_text("(xend-unix-xmlrpc-server yes")
    with pytest.raises(XendConfigError, match="cannot parse .*unexpected EOF"):
        XendConfig.read(str(p))


@pytest.mark.parametrize("word, value", [(w, True) for w in ("yes", "Y", "1", "on", "TRUE", "t")]
                         + [(w, False) for w in ("no", "N", "0", "off", "false", "F")])
def test_bools(word, value):
    assert conf(f"(k {word})").get_bool("k", not value) is value


def test_bad_bool_and_int_use_xend_messages():
    with pytest.raises(XendConfigError, match="invalid xend config k: expected bool: maybe"):
        conf("(k maybe)").get_bool("k", False)
    with pytest.raises(XendConfigError, match="invalid xend config p: expected int: 80a"):
        conf("(p 80a)").get_int("p", 1)
    with pytest.raises(XendConfigError, match="expected a value"):
        conf("(k (a b))").get("k")


def test_first_value_wins_and_comments():
    c = conf("# comment\n(logfile /a)\n(logfile /b)\n(xend-port 8000)")
    assert c.get("logfile") == "/a"
    assert c.get_int("xend-port", 1) == 8000
    assert c.get("nope", "d") == "d"


def test_standalone_defaults():
    s = server_settings(conf(""))
    assert s.deployment == "standalone"
    assert s.unix_path == XML_RPC_SOCKET and s.tcp is None and s.upstream is None
    assert s.state_dir == "/var/lib/xend"


def test_standalone_honours_xend_keys():
    s = server_settings(conf("""
        (xend-unix-xmlrpc-server no)
        (xend-tcp-xmlrpc-server yes)
        (xend-tcp-xmlrpc-server-address 127.0.0.1)
        (xend-tcp-xmlrpc-server-port 8010)
        (xend-vnet-state-dir /srv/state)
        (xend-vnet-engine-control /run/v.sock)
        (xend-vnet-logfile /var/log/v.log)"""))
    assert s.unix_path is None
    assert s.tcp == ("127.0.0.1", 8010)
    assert (s.state_dir, s.engine_control, s.log_file) == ("/srv/state", "/run/v.sock",
                                                           "/var/log/v.log")


def test_standalone_tcp_default_port():
    assert server_settings(conf("(xend-tcp-xmlrpc-server yes)")).tcp == ("localhost", 8006)


def test_beside_xend_reads_only_its_own_keys():
    s = server_settings(conf("""
        (xend-unix-xmlrpc-server no)
        (xend-tcp-xmlrpc-server yes)
        (xend-tcp-xmlrpc-server-port 9999)
        (xend-vnet-upstream httpu:///var/run/xend/xend-real.sock)"""))
    assert s.deployment == "beside-xend"
    assert s.unix_path == XML_RPC_SOCKET     # owns the path xm uses
    assert s.tcp is None
    assert s.upstream == "httpu:///var/run/xend/xend-real.sock"
    s = server_settings(conf("""
        (xend-vnet-upstream http://localhost:8006/)
        (xend-vnet-unix-path /run/x.sock)
        (xend-vnet-tcp-server on) (xend-vnet-tcp-port 8100)"""))
    assert s.unix_path == "/run/x.sock" and s.tcp == ("localhost", 8100)


def test_tls_keys_standalone_xends_and_ours():
    s = server_settings(conf("""
        (xend-tcp-xmlrpc-server yes)
        (xend-tcp-xmlrpc-server-ssl-key-file /etc/xen/xmlrpc.key)
        (xend-tcp-xmlrpc-server-ssl-cert-file /etc/xen/xmlrpc.crt)"""))
    assert s.tls == TlsFiles("/etc/xen/xmlrpc.key", "/etc/xen/xmlrpc.crt")
    s = server_settings(conf("""
        (xend-tcp-xmlrpc-server yes)
        (xend-tcp-xmlrpc-server-ssl-key-file /etc/xen/xmlrpc.key)
        (xend-tcp-xmlrpc-server-ssl-cert-file /etc/xen/xmlrpc.crt)
        (xend-vnet-tcp-ssl-key-file /etc/xend-vnet/k.pem)"""))
    assert (s.tls.key_file, s.tls.key_setting) == ("/etc/xend-vnet/k.pem",
                                                   "xend-vnet-tcp-ssl-key-file")
    assert s.tls.cert_file == "/etc/xen/xmlrpc.crt"
    # No TCP server, no TLS; xend's keys are xend's own beside xend.
    assert server_settings(conf("(xend-tcp-xmlrpc-server-ssl-key-file /k)")).tls is None
    s = server_settings(conf("""
        (xend-vnet-upstream httpu:///run/xend-upstream/xmlrpc.sock)
        (xend-vnet-tcp-server yes)
        (xend-tcp-xmlrpc-server-ssl-key-file /etc/xen/xmlrpc.key)
        (xend-tcp-xmlrpc-server-ssl-cert-file /etc/xen/xmlrpc.crt)"""))
    assert s.tls is None
    s = server_settings(conf("""
        (xend-vnet-upstream httpu:///run/xend-upstream/xmlrpc.sock)
        (xend-vnet-tcp-server yes)
        (xend-vnet-tcp-ssl-key-file /k) (xend-vnet-tcp-ssl-cert-file /c)"""))
    assert (s.tls.key_file, s.tls.cert_file) == ("/k", "/c")


def test_tls_key_without_certificate_refused():
    with pytest.raises(XendConfigError) as info:
        server_settings(conf("(xend-tcp-xmlrpc-server yes) "
                             "(xend-tcp-xmlrpc-server-ssl-key-file /etc/xen/xmlrpc.key)"))
    assert str(info.value) == (
        "invalid xend config: xend-tcp-xmlrpc-server-ssl-key-file is set but "
        "xend-tcp-xmlrpc-server-ssl-cert-file is not; set both to serve HTTPS, or neither")


def test_empty_tcp_address_is_kept_for_the_server():
    s = server_settings(conf("(xend-tcp-xmlrpc-server yes) (xend-tcp-xmlrpc-server-address '')"))
    assert s.tcp == ("", 8006)
    s = server_settings(conf("(xend-tcp-xmlrpc-server yes) (xend-tcp-xmlrpc-server-address x) "
                             "(xend-vnet-tcp-address '')"))
    assert s.tcp == ("", 8006)


def test_engine_control_default_from_environment(monkeypatch):
    monkeypatch.setenv("VNETD_SOCKET", "/run/test-vnetd.sock")
    assert server_settings(conf("")).engine_control == "/run/test-vnetd.sock"


def test_bad_port_refused():
    with pytest.raises(XendConfigError, match="1 to 65535"):
        server_settings(conf("(xend-tcp-xmlrpc-server yes) (xend-tcp-xmlrpc-server-port 0)"))


@pytest.mark.parametrize("text, message", [
    ("(xend-vnet-upstream ftp://x)", "use httpu:///PATH or http://HOST:PORT"),
    ("(xend-vnet-upstream https://x)", "use httpu:///PATH"),
    ("(xend-vnet-upstream httpu://)", "names no socket"),
    ("(xend-vnet-upstream http://localhost:x)", "invalid port"),
    ("(xend-vnet-upstream httpu:///var/run/xend/xmlrpc.sock)", "own socket"),
    ("(xend-vnet-upstream httpu:///s.sock) (xend-vnet-unix-path /s.sock)", "own socket"),
    ("(xend-vnet-upstream http://127.0.0.1:8006) (xend-vnet-tcp-server yes)", "own TCP"),
])
def test_bad_upstream_refused_at_start(text, message):
    with pytest.raises(XendConfigError, match="xend-vnet-upstream") as info:
        server_settings(XendConfig.from_text(text))
    assert message in str(info.value)


def test_good_upstreams_accepted():
    for text in ("(xend-vnet-upstream httpu:///run/xend-upstream/xmlrpc.sock)",
                 "(xend-vnet-upstream http://localhost:8006)",
                 "(xend-vnet-upstream http://127.0.0.1:8007) (xend-vnet-tcp-server yes)"):
        assert server_settings(XendConfig.from_text(text)).upstream


def test_unix_socket_group_from_the_config_and_the_command_line(tmp_path):
    from xend_vnet.xmlrpc import cli

    assert server_settings(conf("")).unix_group is None
    assert server_settings(conf("(xend-vnet-unix-group xen)")).unix_group == "xen"
    config = tmp_path / "xend-config.sxp"
    config.write_text("(xend-vnet-unix-group xen)\n")
    args = cli.parse_args(["start", "--config", str(config)])
    assert cli.settings_of(args)[0].unix_group == "xen"
    args = cli.parse_args(["start", "--config", str(config), "--socket-group", "kvm"])
    assert cli.settings_of(args)[0].unix_group == "kvm"
