"""Vnet config validation (design.md 4, protocol.md 12.1)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xend_vnet import sxp
from xend_vnet.config import ConfigError, VnetConfig, check_collisions


def cfg(text, **kw):
    return VnetConfig.from_text(text, **kw)


def test_full_config_kept_verbatim():
    text = "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))"
    c = cfg(text)
    assert (c.id_text, c.bridge, c.vnetif, c.security, c.key_file) == (
        "97", "vnet97", "vnif97", "none", None)
    assert c.canonical == "0000:0000:0000:0000:0000:0000:0000:0097"
    assert c.to_string() == text
    assert c.sxpr == sxp.parse_one(text)


def test_defaults_short_id_as_written():
    c = cfg("(vnet (id 0097))")
    assert (c.bridge, c.vnetif, c.security) == ("vnet0097", "vnif0097", "none")
    assert c.to_string() == "(vnet (id 0097))"   # defaults are not written in
    assert cfg("(vnet (id 97))").bridge == "vnet97"


def test_defaults_long_id():
    c = cfg("(vnet (id 1:0:0:0:0:0:0:abc))")
    assert (c.bridge, c.vnetif) == ("vnet0abc", "vnif0abc")


def test_unknown_keys_and_order_kept():
    c = cfg("(vnet (comment 'my net') (id 97) (vnif oops) (x (y z)))")
    assert c.extra_keys == ["comment", "vnif", "x"]
    assert c.to_string() == "(vnet (comment 'my net') (id 97) (vnif oops) (x (y z)))"
    assert c.vnetif == "vnif0097"   # the misspelt key of vnet99.sxp is not a vnetif


@pytest.mark.parametrize("text, field, reason", [
    ("(vnet)", "id", "missing"),
    ("(vnet (id))", "id", "missing"),
    ("(vnet (bridge b))", "id", "missing"),
    ("(vnet (id 0))", "id", "id 0 is not a vnet"),
    ("(vnet (id 1))", "id", "reserved"),
    ("(vnet (id zz))", "id", "'zz'"),
    ("(vnet (id 1:2))", "id", "colon-separated"),
    ("(vnet (id 97) (id 98))", "id", "given 2 times"),
    ("(vnet (id (97)))", "id", "expected a single value"),
    ("(vnet (id 97 98))", "id", "expected one value"),
    ("(vif (id 97))", "vnet", "must start with 'vnet'"),
    ("(vnet (id 97) stray)", "vnet", "not a (key value) list"),
    ("(vnet (id 97) (bridge 'a b'))", "bridge", "contains ' '"),
    ("(vnet (id 97) (bridge a/b))", "bridge", "contains '/'"),
    ("(vnet (id 97) (vnetif a:b))", "vnetif", "contains ':'"),
    ("(vnet (id 97) (vnetif vnif%d))", "vnetif", "contains '%'"),
    ("(vnet (id 97) (vnetif ..))", "vnetif", "not a valid interface name"),
    ("(vnet (id 97) (vnetif ''))", "vnetif", "empty"),
    ("(vnet (id 97) (bridge abcdefghijklmnop))", "bridge", "16 characters"),
    ("(vnet (id 97) (bridge x) (vnetif x))", "bridge", "must differ"),
    ("(vnet (id 97) (security high))", "security", "'high' is not a security level"),
    ("(vnet (id 97) (security auth))", "key-file", "vn key-gen PATH"),
    ("(vnet (id 97) (key-file /etc/k))", "key-file", "only for security auth or conf"),
    ("vnet", "vnet", "one (vnet ...) list"),
    ("(vnet (id 97)", "vnet", "cannot parse"),
    ("(vnet (id 97)) (vnet (id 98))", "vnet", "found 2"),
])
def test_rejected_configs_name_the_field(text, field, reason):
    with pytest.raises(ConfigError) as info:
        cfg(text)
    assert info.value.field == field
    assert reason in info.value.reason
    assert str(info.value).startswith(f"invalid vnet config: {field}: ")


def test_derived_names_are_always_valid():
    assert cfg("(vnet (id ffff))").bridge == "vnetffff"
    assert cfg("(vnet (id ' 97 '))").bridge == "vnet97"


def test_fifteen_character_names_are_accepted_with_a_warning():
    c = cfg("(vnet (id 97) (bridge abcdefghijklmno))")
    assert c.bridge == "abcdefghijklmno"
    assert c.warnings() and "14" in c.warnings()[0]
    assert cfg("(vnet (id 97))").warnings() == []


def test_secured_vnets_need_an_absolute_key_file():
    c = cfg("(vnet (id 98) (security auth) (key-file /etc/xen/vnet98.key))")
    assert (c.security, c.key_file) == ("auth", "/etc/xen/vnet98.key")
    with pytest.raises(ConfigError) as info:
        cfg("(vnet (id 98) (security conf))")
    assert info.value.field == "key-file" and "vn key-gen" in info.value.reason
    with pytest.raises(ConfigError, match="must be an absolute path"):
        cfg("(vnet (id 98) (security conf) (key-file k))")


def test_from_sxpr_refuses_non_lists():
    for bad in (None, "vnet", [], 97):
        with pytest.raises(ConfigError):
            VnetConfig.from_sxpr(bad)


def test_interface_names_must_be_atoms():
    with pytest.raises(ConfigError, match="expected a single value") as info:
        cfg("(vnet (id 97) (vnetif (a)))")
    assert info.value.field == "vnetif"


def test_collisions_name_both_ids():
    a = cfg("(vnet (id 97))")
    same_bridge = cfg("(vnet (id 98) (bridge vnet97))")
    with pytest.raises(ConfigError) as info:
        check_collisions(same_bridge, [a])
    assert info.value.field == "bridge"
    assert "vnet 98" in str(info.value) and "vnet 97" in str(info.value)
    # A long id whose last field is 97 derives the same TAP name vnif0097.
    long_id = cfg("(vnet (id 1:0:0:0:0:0:0:97))")
    with pytest.raises(ConfigError) as info:
        check_collisions(long_id, [a])
    assert info.value.field == "vnetif" and "vnif0097" in str(info.value)
    # A bridge name that is another vnet's vnetif.
    with pytest.raises(ConfigError, match="vnetif of vnet 97"):
        check_collisions(cfg("(vnet (id 99) (bridge vnif0097))"), [a])
    check_collisions(cfg("(vnet (id 98))"), [a])
    check_collisions(cfg("(vnet (id 0097))"), [a])   # the same vnet is no collision


@settings(max_examples=300)
@given(st.text(alphabet="(vnet id bridge vnetif security key-file 0197:abc'\"#)\n", max_size=80))
def test_arbitrary_config_text_gives_config_or_config_error(text):
    try:
        c = VnetConfig.from_text(text)
    except ConfigError as e:
        assert e.field in ("vnet", "id", "bridge", "vnetif", "security", "key-file")
        return
    assert c.canonical and c.bridge and c.vnetif


# -- the kernel VXLAN data path (docs/vxlan.md) -----------------------

def test_data_path_default_and_values():
    assert cfg("(vnet (id 97))").data_path == "vnetd"
    assert cfg("(vnet (id 97) (data-path vnetd))").data_path == "vnetd"
    c = cfg("(vnet (id 9c) (bridge vnet9c) (data-path vxlan))")
    assert c.data_path == "vxlan"
    assert "data-path" not in c.extra_keys
    # Kept verbatim: xm vnet-list -l shows the key as written.
    assert c.to_string() == "(vnet (id 9c) (bridge vnet9c) (data-path vxlan))"


@pytest.mark.parametrize("text, reason", [
    ("(vnet (id 97) (data-path kernel))", "'kernel' is not a data path"),
    ("(vnet (id 97) (data-path VXLAN))", "use vnetd"),
    ("(vnet (id 97) (data-path vxlan) (data-path vnetd))", "given 2 times"),
    ("(vnet (id 97) (data-path (vxlan)))", "expected a single value"),
    ("(vnet (id 97) (security auth) (key-file /k) (data-path vxlan))",
     "neither authenticates nor encrypts"),
    ("(vnet (id 97) (security conf) (key-file /k) (data-path vxlan))",
     "security 'conf' cannot use data-path vxlan"),
    # The VNI is the id, 24 bits: 0:..:100:9c would share VNI 156 with vnet 9c.
    ("(vnet (id 0:0:0:0:0:0:100:9c) (data-path vxlan))",
     "vnet 0:0:0:0:0:0:100:9c cannot use data-path vxlan: its VNI is the id, and a VXLAN "
     "VNI is 24 bits"),
    ("(vnet (id 1:0:0:0:0:0:0:9c) (data-path vxlan))", "share VNI 156 with vnet 9c"),
])
def test_bad_data_path_names_the_field(text, reason):
    with pytest.raises(ConfigError) as info:
        cfg(text)
    assert info.value.field == "data-path" and reason in info.value.reason, info.value


def test_secured_vnet_on_the_engine_data_path_is_fine():
    c = cfg("(vnet (id 98) (security conf) (key-file /etc/xen/k) (data-path vnetd))")
    assert (c.security, c.data_path) == ("conf", "vnetd")


def test_vxlan_ids_up_to_24_bits_and_larger_ids_on_the_engine_data_path():
    assert cfg("(vnet (id 0:0:0:0:0:0:ff:ffff) (data-path vxlan))").data_path == "vxlan"
    assert cfg("(vnet (id 0:0:0:0:0:0:100:9c))").data_path == "vnetd"
    assert cfg("(vnet (id 0:0:0:0:0:0:100:9c) (data-path vnetd))").data_path == "vnetd"
