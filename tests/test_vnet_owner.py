"""Vnets xend-vnet manages: ``(owner xend-vnet)`` recorded by vnet.add, listed,
and guarding vnet.del (design.md 6), through the command layer and ``vn``."""

from __future__ import annotations

import pytest
from fake_engine import FakeHost, err, run_vn

from xend_vnet import sxp
from xend_vnet.kernel_shim.control.commands import EBUSY, EEXIST, EINVAL, execute
from xend_vnet.vn import main as vn
from xend_vnet.vnet_id import VnetId

ID97 = "0000:0000:0000:0000:0000:0000:0000:0097"
V97 = VnetId.parse("97")


@pytest.fixture
def host():
    return FakeHost()


def listed(host: FakeHost, command: str = "(vnet.list)") -> dict:
    return {sxp.child_value(f, "id"): f for f in sxp.parse_all(execute(host, command))
            if f[0] == "vnet"}


def test_owner_recorded_and_listed_after_the_legacy_fields(host):
    assert execute(host, "(vnet.add (id 97) (owner xend-vnet))") == ""
    assert execute(host, "(vnet.add (id 98) (data-path vxlan) (owner xend-vnet))") == ""
    assert execute(host, "(vnet.add (id 99))") == ""
    assert host.owners == {V97: "xend-vnet", VnetId.parse("98"): "xend-vnet"}
    lines = execute(host, "(vnet.list)").splitlines()
    assert lines[0] == (f"(vnet (id {ID97}) (vnetif vnif0097) (security none) "
                        "(data-path vnetd) (header 64) (owner xend-vnet))")
    assert lines[1].startswith("(vnet (id 0000:0000:0000:0000:0000:0000:0000:0098) ")
    assert lines[1].endswith(" (header 50) (owner xend-vnet))")
    assert "owner" not in lines[2]
    assert sxp.child_value(listed(host, "(varp.print)")[ID97], "owner") == "xend-vnet"


@pytest.mark.parametrize("text", ["(vnet.add (id 97) (owner root))",
                                  "(vnet.add (id 97) (owner))",
                                  "(vnet.add (id 97) (owner (xend-vnet)))"])
def test_unknown_owner_refused(host, text):
    errno, message = err(execute(host, text))
    assert errno == EINVAL and "owner" in message
    assert not host.created and not host.owners


def test_del_of_an_owned_vnet_refused_with_the_way_to_delete_it(host):
    execute(host, "(vnet.add (id 97) (owner xend-vnet))")
    for text in ("(vnet.del (id 97))", "(vnet.del 97)"):
        errno, message = err(execute(host, text))
        assert errno == EBUSY
        assert f"vnet {ID97} is stored by xend-vnet" in message
        assert "'xm vnet-delete 97'" in message and "(force)" in message
        assert "vn vnet-delete --force" in message
    assert err(execute(host, "(vnet.del (id 97) (owner root))"))[0] == EINVAL
    assert not host.deleted and host.owners == {V97: "xend-vnet"}


@pytest.mark.parametrize("text", ["(vnet.del (id 97) (force))",
                                  "(vnet.del (id 97) (owner xend-vnet))"])
def test_forced_or_owner_delete_removes_it_and_its_owner(host, text):
    execute(host, "(vnet.add (id 97) (owner xend-vnet))")
    assert execute(host, text) == ""
    assert host.deleted == [V97] and host.owners == {}
    execute(host, "(vnet.add (id 97))")             # made again by hand: nobody's
    assert "owner" not in execute(host, "(vnet.list)")
    assert execute(host, "(vnet.del (id 97))") == ""


def test_del_of_a_vnet_nobody_owns_takes_owner_and_force(host):
    execute(host, "(vnet.add (id 97))")
    execute(host, "(vnet.add (id 98))")
    assert execute(host, "(vnet.del (id 97) (owner xend-vnet))") == ""
    assert execute(host, "(vnet.del (id 98) (force))") == ""


@pytest.mark.parametrize("first,again", [
    ("(vnet.add (id 97))", "(vnet.add (id 0097) (vnetif vnif0097) (security none) "
                           "(owner xend-vnet))"),
    ("(vnet.add (id 97) (data-path vxlan))", "(vnet.add (id 97) (data-path vxlan) "
                                             "(owner xend-vnet))"),
])
def test_readd_with_owner_records_it_and_still_answers_exists(host, first, again):
    execute(host, first)
    errno, message = err(execute(host, again))
    assert errno == EEXIST and "already exists" in message   # xend-vnet: success
    assert host.owners == {V97: "xend-vnet"}
    assert sxp.child_value(listed(host)[ID97], "owner") == "xend-vnet"


@pytest.mark.parametrize("again", [
    "(vnet.add (id 97) (vnetif other97) (owner xend-vnet))",
    "(vnet.add (id 97) (data-path vxlan) (owner xend-vnet))",
])
def test_readd_with_other_parameters_records_no_owner(host, again):
    execute(host, "(vnet.add (id 97))")
    assert err(execute(host, again))[0] == EEXIST
    assert host.owners == {}


# -- vn ------------------------------------------------------------------------------

@pytest.fixture
def owned(engine, monkeypatch):
    """The fake engine with vnet 97 stored by xend-vnet; no interfaces on this host."""
    monkeypatch.setattr(vn.bridges, "link_exists", lambda name: False)
    engine.execute("(vnet.add (id 97) (owner xend-vnet))")
    return engine


def test_vn_vnets_shows_the_owner(owned, capsys):
    status, out, _ = run_vn(owned, capsys, "vnets")
    assert status == 0 and "(owner xend-vnet)" in out


def test_vn_vnet_delete_refused_then_forced(owned, capsys):
    status, _, error = run_vn(owned, capsys, "vnet-delete", "97")
    assert status == 1
    assert error.startswith(f"vn: vnet.del: vnet {ID97} is stored by xend-vnet: ")
    assert owned.vnets
    for flag in ("--force", "-f"):
        owned.execute("(vnet.add (id 97) (owner xend-vnet))")
        assert run_vn(owned, capsys, "vnet-delete", flag, "vnif0097")[0] == 0
        assert owned.sent("vnet.del")[-1] == ["vnet.del", ["id", ID97], ["force"]]
        assert owned.vnets == {}
