"""Control commands against a fake EngineHost (protocol.md 8.2-8.5, design.md 4, 6)."""

import pytest
from fake_engine import FakeHost, err
from hypothesis import given, settings
from hypothesis import strategies as st

from xend_vnet import sxp
from xend_vnet.kernel_shim.control import commands
from xend_vnet.kernel_shim.control.commands import EEXIST, EINVAL, ENOENT, CommandError, execute
from xend_vnet.vnet_id import VnetId

ID97 = "0000:0000:0000:0000:0000:0000:0000:0097"


@pytest.fixture
def host():
    h = FakeHost(vnets=("2", "3", "4"))
    h.core.self_address = "192.0.2.1"
    return h


def test_vnet_add_forms(host):
    assert execute(host, "(vnet.add (id 97))") == ""
    assert host.created[-1] == (VnetId.parse("97"), "vnif0097", "none", None)
    # xend's form: extra children ignored, order free (protocol.md 8.2, 8.4).
    assert execute(host, "(vnet.add (security none) (bridge vnet98) (vnetif vnif98) "
                         "(id 0:0:0:0:0:0:0:98))") == ""
    assert host.created[-1][:3] == (VnetId.parse("98"), "vnif98", "none")


@pytest.mark.parametrize("request_text,errno,fragment", [
    ("(vnet.add (id 4))", EEXIST, "already exists"),
    ("(vnet.add (id 0004))", EEXIST, "already exists"),
    ("(vnet.add (id 1))", EEXIST, "reserved"),
    ("(vnet.add (id 0))", EINVAL, "id 0"),
    ("(vnet.add (id 1:2))", EINVAL, "'1:2'"),
    ("(vnet.add (id xyz))", EINVAL, "'xyz'"),
    ("(vnet.add)", EINVAL, "missing (id"),
    ("(vnet.add (id))", EINVAL, "missing (id"),
    ("(vnet.add (id (97)))", EINVAL, "must be an atom"),
    ("(vnet.add (id 97) (vnetif vnif0004))", EEXIST, "already used by vnet"),
    ("(vnet.add (id 97) (vnetif abcdefghijklmnop))", EINVAL, "'abcdefghijklmnop'"),
    ("(vnet.add (id 97) (vnetif 'a b'))", EINVAL, "'a b'"),
    ("(vnet.add (id 97) (vnetif a/b))", EINVAL, "'a/b'"),
    ("(vnet.add (id 97) (vnetif ..))", EINVAL, "'..'"),
    ("(vnet.add (id 97) (security high))", EINVAL, "'high'"),
    ("(vnet.add (id 97) (security auth))", EINVAL, "vn key-gen PATH"),
    ("(vnet.add (id 97) (security conf))", EINVAL, "needs (key-file /ABSOLUTE/PATH)"),
    ("(vnet.add (id 97) (security conf) (key-file relative))", EINVAL, "absolute"),
    ("(vnet.add (id 97) (security auth) (key-file /nonexistent/k))", EINVAL, "does not exist"),
    ("(vnet.add (id 99) (key-file /etc/xen/k))", EINVAL, "only for security auth or conf"),
])
def test_vnet_add_errors(host, request_text, errno, fragment):
    got_errno, message = err(execute(host, request_text))
    assert got_errno == errno and fragment in message
    assert not host.created


def test_long_ids_differing_above_last_field_collide_by_name(host):
    assert execute(host, "(vnet.add (id 0:0:0:0:0:0:1:97))") == ""
    errno, message = err(execute(host, "(vnet.add (id 0:0:0:0:0:0:2:97))"))
    assert errno == EEXIST and "0000:0000:0000:0000:0000:0001:0000:0097" not in message
    assert "0000:0000:0000:0000:0000:0000:0001:0097" in message
    assert "0000:0000:0000:0000:0000:0000:0002:0097" in message


def test_host_errors_reach_the_caller(host):
    host.fail_create = CommandError(16, "device vnif0097 is busy")
    assert err(execute(host, "(vnet.add (id 97))")) == (16, "device vnif0097 is busy")
    host.fail_create = PermissionError(1, "Operation not permitted")
    assert err(execute(host, "(vnet.add (id 97))"))[0] == 1
    host.fail_create = RuntimeError("boom")
    errno, message = err(execute(host, "(vnet.add (id 97))"))
    assert errno == 5 and "boom" in message


def test_vnet_del_both_shapes(host):
    execute(host, "(vnet.add (id 97))")
    assert execute(host, "(vnet.del (id 97))") == ""
    execute(host, "(vnet.add (id 97))")
    assert execute(host, "(vnet.del 97)") == ""          # xend's wrong shape
    assert host.deleted == [VnetId.parse("97")] * 2
    assert err(execute(host, "(vnet.del (id 97))")) == (
        ENOENT, f"vnet.del: no such vnet {ID97}")
    assert err(execute(host, "(vnet.del)"))[0] == EINVAL
    assert err(execute(host, "(vnet.del (id 1))"))[0] == EINVAL


def test_vnet_list_and_stats(host):
    out = execute(host, "(vnet.list)")
    assert [sxp.child_value(f, "vnetif") for f in sxp.parse_all(out)] == \
        ["vnif0002", "vnif0003", "vnif0004"]
    forms = sxp.parse_all(execute(host, "(vnet.stats)"))
    assert [f[0] for f in forms] == ["engine_stats"] + ["vnet_stats"] * 3
    forms = sxp.parse_all(execute(host, "(vnet.stats (id 3))"))
    assert len(forms) == 1 and sxp.child_value(forms[0], "vnetif") == "vnif0003"
    assert err(execute(host, "(vnet.stats (id 97))"))[0] == ENOENT


V9C = VnetId.parse("9c")
ID9C = V9C.canonical


def test_vxlan_vnet_add_goes_to_the_host_not_the_core(host):
    assert execute(host, "(vnet.add (id 9c) (data-path vxlan))") == ""
    assert host.vxlan_created == [(V9C, "vnif009c")]
    assert not host.core.has_vnet(V9C) and not host.created
    assert execute(host, "(vnet.add (id 97) (data-path vnetd))") == ""
    assert host.created[-1][:3] == (VnetId.parse("97"), "vnif0097", "none")
    listed = {sxp.child_value(f, "id"): sxp.child_value(f, "data-path")
              for f in sxp.parse_all(execute(host, "(vnet.list)"))}
    assert listed[ID9C] == "vxlan" and listed[ID97] == "vnetd"


@pytest.mark.parametrize("request_text,errno,fragment", [
    ("(vnet.add (id 9d) (data-path kernel))", EINVAL, "'kernel' is not a data path"),
    ("(vnet.add (id 9d) (data-path (vxlan)))", EINVAL, "must be an atom"),
    ("(vnet.add (id 9d) (security conf) (key-file /k) (data-path vxlan))", EINVAL,
     "neither authenticates nor encrypts"),
    ("(vnet.add (id 9d) (security auth) (data-path vxlan))", EINVAL, "security 'auth' cannot"),
    ("(vnet.add (id 9d) (key-file /k) (data-path vxlan))", EINVAL, "only for security"),
    ("(vnet.add (id 9c))", EEXIST, "already exists"),                 # either data path
    ("(vnet.add (id 0:0:0:0:0:0:0:9c) (data-path vxlan))", EEXIST, "already exists"),
    ("(vnet.add (id 0:0:0:0:0:0:100:9c) (vnetif vx2) (data-path vxlan))", EINVAL,
     "a VXLAN VNI is 24 bits"),
    ("(vnet.add (id 98) (vnetif vnif009c))", EEXIST, f"already used by vnet {ID9C}"),
    ("(vnet.add (id 9d) (vnetif vnif0004) (data-path vxlan))", EEXIST,
     "already used by vnet 0000:0000:0000:0000:0000:0000:0000:0004"),
])
def test_vxlan_vnet_add_refusals(host, request_text, errno, fragment):
    assert execute(host, "(vnet.add (id 9c) (data-path vxlan))") == ""
    got_errno, message = err(execute(host, request_text))
    assert got_errno == errno and fragment in message, message
    assert host.vxlan_created == [(V9C, "vnif009c")] and not host.created


@pytest.mark.parametrize("text", ["0:0:0:0:0:0:100:9c", "1:0:0:0:0:0:0:9c",
                                  "0:0:0:0:0:0:100:0"])
def test_vxlan_ids_above_24_bits_are_refused(host, text):
    """The VNI is the id: a larger id would share the VNI of its low 24 bits with
    that vnet on another host (0:0:0:0:0:0:100:9c here, 9c there: both VNI 156)."""
    errno, message = err(execute(host, f"(vnet.add (id {text}) (data-path vxlan))"))
    assert errno == EINVAL and "a VXLAN VNI is 24 bits" in message, message
    assert VnetId.parse(text).canonical in message and "data-path vnetd" in message
    assert not host.vxlan_created and not host.created


def test_vxlan_ids_up_to_24_bits_are_accepted(host):
    assert execute(host, "(vnet.add (id 0:0:0:0:0:0:ff:ffff) (vnetif vx1) "
                         "(data-path vxlan))") == ""
    assert execute(host, "(vnet.add (id 0:0:0:0:0:0:1:9c) (vnetif vx2) (data-path vxlan))") == ""
    assert [v.vni for v in host.vxlan] == [0x1009c, 0xffffff]


def test_same_low_bits_on_the_engine_data_path_are_fine(host):
    """Only VXLAN vnets have a VNI: a vnetd vnet with the same low 24 bits is fine."""
    assert execute(host, "(vnet.add (id 9c) (data-path vxlan))") == ""
    assert execute(host, "(vnet.add (id 0:0:0:0:0:0:100:9c) (vnetif vx2))") == ""


def test_vxlan_vnet_del_and_engine_only_commands(host):
    execute(host, "(vnet.add (id 9c) (data-path vxlan))")
    for text in ("(vnet.stats (id 9c))", "(vif.add (vnet 9c) (vmac aa:00:00:00:00:01))",
                 "(vnet.key (id 9c) (list))"):
        errno, message = err(execute(host, text))
        assert errno == EINVAL and "kernel VXLAN data path" in message, text
    assert execute(host, "(vnet.del 9c)") == ""
    assert host.deleted == [V9C] and host.vxlan.get(V9C) is None
    assert err(execute(host, "(vnet.del (id 9c))")) == (ENOENT, f"vnet.del: no such vnet {ID9C}")


def test_peer_changes_reach_the_flood_entries(host):
    execute(host, "(peer.add (addr 198.51.100.7))")
    execute(host, "(peer.add (addr 203.0.113.4))")
    execute(host, "(peer.del (addr 198.51.100.7))")
    assert host.peer_syncs == [["198.51.100.7"], ["198.51.100.7", "203.0.113.4"],
                               ["203.0.113.4"]]
    err(execute(host, "(peer.del (addr 198.51.100.7))"))
    assert len(host.peer_syncs) == 3     # a refused command changes nothing


def test_vif_commands(host):
    assert execute(host, "(vif.add (vnet 4) (vif vif3.0) (vmac AA-00-00-00-00-01))") == ""
    forms = sxp.parse_all(execute(host, "(vif.list)"))
    assert sxp.child_value(forms[1], "vmac") == "aa:00:00:00:00:01"
    assert err(execute(host, "(vif.add (vnet 97) (vmac aa:00:00:00:00:01))"))[0] == ENOENT
    assert err(execute(host, "(vif.add (vnet 4) (vmac aa:00:00:00:00))")) == (
        EINVAL, "vif.add: invalid MAC 'aa:00:00:00:00': expected xx:xx:xx:xx:xx:xx")
    assert err(execute(host, "(vif.add (vnet 4))"))[0] == EINVAL
    assert execute(host, "(vif.del (vmac aa:00:00:00:00:01) (vnet 4))") == ""
    assert err(execute(host, "(vif.del (vnet 4) (vmac aa:00:00:00:00:01))"))[0] == ENOENT


def test_vif_add_past_the_vnets_bound_is_refused_not_silently_dropped(host):
    v4 = VnetId.parse("4")
    host.core.set_limit(v4, "vif", 1)
    assert execute(host, "(vif.add (vnet 4) (vmac aa:00:00:00:00:01))") == ""
    assert execute(host, "(vif.add (vnet 4) (vmac aa:00:00:00:00:01))") == ""   # known
    errno_, message = err(execute(host, "(vif.add (vnet 4) (vmac aa:00:00:00:00:02))"))
    assert errno_ == commands.ENOSPC and "aa:00:00:00:00:02 is not recorded" in message
    assert len(sxp.parse_all(execute(host, "(vif.list)"))) == 2     # the header and one vif


def test_peer_commands(host):
    assert execute(host, "(peer.add (addr 198.51.100.7))") == ""
    assert execute(host, "(peer.add (addr 192.0.2.9) (port 1798))") == ""
    forms = sxp.parse_all(execute(host, "(peer.list)"))
    assert [(sxp.child_value(f, "addr"), sxp.child_value(f, "port")) for f in forms] == [
        ("192.0.2.9", "1798"), ("198.51.100.7", "1798")]
    for bad in ("(peer.add (addr example.org))", "(peer.add (addr 224.10.0.1))",
                "(peer.add (addr 0.0.0.0))", "(peer.add (addr 192.0.2.9) (port 0))",
                "(peer.add (addr 192.0.2.9) (port x))", "(peer.add)"):
        assert err(execute(host, bad))[0] == EINVAL, bad
    assert execute(host, "(peer.del (addr 192.0.2.9))") == ""
    assert err(execute(host, "(peer.del (addr 192.0.2.9))"))[0] == ENOENT


def test_varp_commands(host):
    v4 = VnetId.parse("4")
    host.core.receive_udp(b"\x00\x02\x00\x00\x00\x40" + v4.raw + bytes(6)
                          + bytes.fromhex("aa0000000002") + b"\x08\x00",
                          "192.0.2.2", "192.0.2.1", 99.0)
    forms = sxp.parse_all(execute(host, "(varp.list)"))
    assert [f[0] for f in forms] == ["varp", "ventry"]
    assert sxp.child_value(forms[0], "device") == "eth0"
    assert sxp.child_value(forms[1], "age") == "1000"
    forms = sxp.parse_all(execute(host, "(varp.print)"))
    assert [f[0] for f in forms] == ["vnet"] * 3 + ["viftable", "varp", "ventry"]
    assert execute(host, "(varp.flush)") == ""
    assert len(sxp.parse_all(execute(host, "(varp.list)"))) == 1


def test_varp_mcaddr(host):
    assert execute(host, "(varp.mcaddr (addr 239.1.2.3) (ttl 4))") == ""
    assert execute(host, "(varp.mcaddr (addr 224.10.0.1))") == ""
    assert host.groups == [("239.1.2.3", 4), ("224.10.0.1", None)]
    for bad in ("(varp.mcaddr (addr 192.0.2.1))", "(varp.mcaddr (addr 224.10.0.1) (ttl 0))",
                "(varp.mcaddr (addr 224.10.0.1) (ttl 256))", "(varp.mcaddr)"):
        assert err(execute(host, bad))[0] == EINVAL, bad


def test_engine_status(host):
    host.status = lambda: [["pid", "42"], ["joined", "yes"]]
    assert sxp.parse_one(execute(host, "(engine.status)")) == [
        "engine.status", ["pid", "42"], ["joined", "yes"]]


def test_several_forms_stop_at_first_error(host):
    reply = execute(host, "(vnet.add (id 97)) (vnet.add (id 97)) (vnet.add (id 98))")
    assert err(reply)[0] == EEXIST
    assert [c[0] for c in host.created] == [VnetId.parse("97")]
    out = execute(host, "(vnet.list) (peer.list)")
    assert len(sxp.parse_all(out)) == 4


@pytest.mark.parametrize("text", ["(", ")", "(vnet.add (id 97", "'unterminated"])
def test_parse_errors(host, text):
    errno, message = err(execute(host, text))
    assert errno == EINVAL and "cannot parse" in message


@pytest.mark.parametrize("text,fragment", [
    ("(bogus)", "unknown command 'bogus'"), ("bare", "not a command"), ("()", "not a command"),
    ("((vnet.list))", "not a command")])
def test_not_commands(host, text, fragment):
    errno, message = err(execute(host, text))
    assert errno == EINVAL and fragment in message


def test_empty_request_is_empty_reply(host):
    assert execute(host, "") == "" and execute(host, "  # comment only\n") == ""


NAMES = st.sampled_from(sorted(commands._COMMANDS) + ["id", "vnet", "vmac", "addr", "port",
                                                      "ttl", "vnetif", "security", "key-file"])
ATOMS = st.one_of(NAMES, st.sampled_from(["97", "4", "1", "0", "aa:bb:cc:dd:ee:ff",
                                          "224.10.0.5", "192.0.2.4", "none", "auth", "7"]),
                  st.text(max_size=12))
FORMS = st.recursive(ATOMS, lambda inner: st.lists(inner, max_size=4), max_leaves=12)


@settings(max_examples=300)
@given(st.lists(st.builds(lambda head, rest: [head, *rest], NAMES, st.lists(FORMS, max_size=3)),
                max_size=3))
def test_structured_requests_always_answer(forms):
    host = FakeHost()
    reply = execute(host, " ".join(sxp.to_string(f) for f in forms))
    assert isinstance(reply, str) and "internal error" not in reply
    sxp.parse_all(reply)


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_arbitrary_text_always_answers(text):
    reply = execute(FakeHost(), text)
    assert isinstance(reply, str) and "internal error" not in reply
