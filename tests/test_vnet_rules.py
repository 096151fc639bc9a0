"""The rules of a vnet config (vnet_rules), and the cases where the config
side, the engine's commands and the core used to disagree: each now follows
the one rule, checked at the rule and where it is applied."""

import pytest

from xend_vnet import vnet_rules
from xend_vnet.config import ConfigError, VnetConfig
from xend_vnet.kernel_shim.control.commands import EINVAL, execute
from xend_vnet.kernel_shim.core.engine import CoreOptions, EngineCore
from xend_vnet.kernel_shim.wire import codec
from xend_vnet.vnet_id import VnetId

from test_commands import FakeHost, err

V97 = VnetId.parse("97")
MAC = bytes.fromhex("aa0000000002")


# -- the rules ------------------------------------------------------------------------

def test_security_levels_and_data_paths():
    for level in ("none", "auth", "conf"):
        assert vnet_rules.security_problem(level) is None
    for bad in ("", "high", "AUTH"):
        assert f"{bad!r} is not a security level; use none, auth or conf" == (
            vnet_rules.security_problem(bad))
    assert vnet_rules.data_path_problem("vnetd") is None
    assert vnet_rules.data_path_problem("vxlan") is None
    assert "'kernel' is not a data path; use vnetd" in vnet_rules.data_path_problem("kernel")
    assert vnet_rules.vxlan_security_problem("none") is None
    assert "neither authenticates nor encrypts" in vnet_rules.vxlan_security_problem("auth")


def test_key_files():
    assert vnet_rules.key_file_problem("none", None) is None
    assert vnet_rules.key_file_problem("conf", "/etc/xen/k") is None
    assert "needs (key-file /ABSOLUTE/PATH)" in vnet_rules.key_file_problem("auth", None)
    assert "vn key-gen PATH" in vnet_rules.key_file_problem("auth", None)
    assert "must be an absolute path" in vnet_rules.key_file_problem("auth", "k")
    assert "only for security auth or conf" in vnet_rules.key_file_problem("none", "/k")


def test_vni_is_the_low_24_bits():
    assert vnet_rules.vni_of(VnetId.parse("9c")) == 0x9c
    assert vnet_rules.vni_of(VnetId.parse("ffff")) == 0xffff
    assert vnet_rules.vni_of(VnetId.parse("0:0:0:0:0:0:12:3456")) == 0x123456
    assert vnet_rules.vni_of(VnetId.parse("0:0:0:0:0:0:1234:5678")) == 0x345678
    assert vnet_rules.vni_of(VnetId.parse("1:0:0:0:0:0:0:9c")) == 0x9c


def test_only_ids_of_24_bits_can_use_vxlan():
    for text in ("9c", "ffff", "0:0:0:0:0:0:ff:ffff", "0:0:0:0:0:0:12:3456"):
        assert vnet_rules.vxlan_id_problem(VnetId.parse(text)) is None, text
    for text in ("0:0:0:0:0:0:100:9c", "0:0:0:0:0:0:1234:5678", "1:0:0:0:0:0:0:9c",
                 "0:0:0:0:0:0:100:0"):
        problem = vnet_rules.vxlan_id_problem(VnetId.parse(text))
        assert problem and "24 bits" in problem and VnetId.parse(text).canonical in problem
    problem = vnet_rules.vxlan_id_problem(VnetId.parse("0:0:0:0:0:0:100:9c"), "0:..:100:9c")
    assert problem.startswith("vnet 0:..:100:9c cannot") and "share VNI 156 with vnet 9c" in problem


def test_interface_names_and_their_owners():
    assert vnet_rules.ifname_problem("vnif0097") is None
    assert vnet_rules.ifname_problem("a" * 15) is None
    for bad in ("", "a" * 16, "a:b", "a\tb", ".", "bad\x01"):
        assert vnet_rules.ifname_problem(bad), bad
    taken = [("vnet97", "A"), ("vnif0097", "B")]
    assert vnet_rules.name_owner("vnif0097", taken) == "B"
    assert vnet_rules.name_owner("vnif0098", taken) is None
    assert vnet_rules.name_owner("VNIF0097", taken) is None     # the kernel's names are exact


@pytest.mark.parametrize("addr", ["1.0.0.1", "10.1.2.3", "126.255.255.255", "128.0.0.1",
                                  "192.0.2.1", "223.255.255.255"])
def test_host_addresses(addr):
    assert vnet_rules.is_host_address(addr)
    assert vnet_rules.host_address_problem(addr) is None


@pytest.mark.parametrize("addr,kind", [
    ("0.0.0.0", "0.0.0.0/8"), ("0.1.2.3", "0.0.0.0/8"), ("127.0.0.1", "loopback"),
    ("127.0.1.1", "loopback"), ("224.10.0.1", "multicast"), ("239.255.255.255", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved")])
def test_not_host_addresses(addr, kind):
    assert not vnet_rules.is_host_address(addr)
    problem = vnet_rules.host_address_problem(addr)
    assert problem.startswith(addr) and kind in problem and "expected the unicast" in problem


# -- where the old definitions disagreed ------------------------------------------------

@pytest.mark.parametrize("addr", ["127.0.0.1", "127.0.1.1", "240.0.0.1", "0.1.2.3"])
def test_peer_add_refuses_what_no_host_can_have(addr):
    """peer.add refused only 0.0.0.0, 224/4 and the broadcast address; the core
    refused 0/8, 127/8 and 224/3 as sources and care-of addresses.  The
    stricter rule holds for peers too (legacy accepted any address,
    protocol.md 7, but a peer on loopback or in 240/4 can never answer)."""
    host = FakeHost()
    errno, message = err(execute(host, f"(peer.add (addr {addr}))"))
    assert errno == EINVAL and f"invalid peer address '{addr}'" in message, message
    assert len(host.core.peers) == 0


@pytest.mark.parametrize("addr", ["127.0.0.1", "127.0.1.1"])
def test_announce_of_a_loopback_address_is_dropped(addr):
    """The announce check refused 0/8 and 224/3 but learned 127/8, which the
    care-of and forwarded-source checks refused: now one rule.  Era-C
    hosts never send requests, so no legacy announce is lost (protocol.md 3.3)."""
    core = EngineCore(CoreOptions())
    core.own_addresses = {"192.0.2.1"}
    core.self_address = "192.0.2.1"
    core.add_vnet(V97, "vnif0097")
    ann = codec.encode_announce(V97.raw, MAC, addr)
    assert core.receive_udp(ann, "192.0.2.2", "224.10.0.1", 0) == []
    assert core.counters.rx_dropped == {"varp_bad_address": 1}
    assert len(core.varp) == 0


@pytest.mark.parametrize("child,fragment", [
    ("(vnetif '')", "empty interface name"),
    ("(security '')", "'' is not a security level"),
    ("(data-path '')", "'' is not a data path")])
def test_empty_values_are_refused_as_in_configs(child, fragment):
    """vnet.add took an empty vnetif, security or data-path for the default; a
    config refused them (and legacy refused any other security word with
    EINVAL, protocol.md 8.3)."""
    host = FakeHost()
    errno, message = err(execute(host, f"(vnet.add (id 97) {child})"))
    assert errno == EINVAL and fragment in message, message
    assert not host.created
    with pytest.raises(ConfigError, match=fragment):
        VnetConfig.from_text(f"(vnet (id 97) {child})")


@pytest.mark.parametrize("config,request_text", [
    ("(vnet (id 97) (security high))", "(vnet.add (id 97) (security high))"),
    ("(vnet (id 97) (data-path kernel))", "(vnet.add (id 97) (data-path kernel))"),
    ("(vnet (id 97) (security auth))", "(vnet.add (id 97) (security auth))"),
    ("(vnet (id 97) (key-file /k))", "(vnet.add (id 97) (key-file /k))"),
    ("(vnet (id 97) (security auth) (key-file k))",
     "(vnet.add (id 97) (security auth) (key-file k))"),
    ("(vnet (id 9c) (security auth) (key-file /k) (data-path vxlan))",
     "(vnet.add (id 9c) (security auth) (key-file /k) (data-path vxlan))"),
    ("(vnet (id 0:0:0:0:0:0:100:9c) (data-path vxlan))",
     "(vnet.add (id 0:0:0:0:0:0:100:9c) (data-path vxlan))")])
def test_config_and_engine_give_the_same_reason(config, request_text):
    """The two sides worded each refusal their own way; now the rule's words,
    behind each side's context (config key, command name)."""
    with pytest.raises(ConfigError) as info:
        VnetConfig.from_text(config)
    errno, message = err(execute(FakeHost(), request_text))
    assert errno == EINVAL
    reason = info.value.reason
    if "cannot use data-path vxlan: its VNI" in reason:
        # The config quotes the id as written, the engine its canonical form.
        reason = reason.split(" cannot ", 1)[1]
    assert reason in message, (reason, message)


def test_the_secured_levels_are_the_engines_suites():
    # The rule and the engine's sealing must name the same levels (design.md 7).
    from xend_vnet.kernel_shim.security import secure_codec
    assert set(vnet_rules.SECURED_LEVELS) == set(secure_codec.SUITES)
