"""Xen's example vnet configs (protocol.md 12.1) through an unmodified xm path.

vnet97.sxp is created.  vnet98.sxp (security auth) and vnet99.sxp
(security conf) are refused until their vnet has a key file, with an error
that says what to add: a secured vnet is never run unprotected (design.md
4, 7).  vnet99.sxp also spells the interface key ``vnif``.  Decision: that
key is kept verbatim and returned by ``xm vnet-list -l`` (xend kept unknown
keys too), and the vnet uses the default interface name, as legacy xend did
(it never read ``vnif``); the README says to write ``vnetif``.
"""

from __future__ import annotations

import pytest
from vnet_server_harness import run_xm


EXAMPLES = {
    "vnet97.sxp": "# Vnet 97, no security.\n"
                  "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))\n",
    "vnet98.sxp": "# Vnet 98, authenticated.\n"
                  "(vnet (id 98) (bridge vnet98) (vnetif vnif98) (security auth))\n",
    "vnet99.sxp": "# Vnet 99, encrypted.\n"
                  "(vnet (id 99) (bridge vnet99) (vnif vnetif99) (security conf))\n",
}


@pytest.fixture
def examples(tmp_path):
    for name, text in EXAMPLES.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_vnet97_is_created(server, examples, capsys):
    code, out, err = run_xm(capsys, "vnet-create", str(examples / "vnet97.sxp"))
    assert (code, out, err) == (0, "", "")
    assert run_xm(capsys, "vnet-list", "-l")[1] == (
        "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))\n")
    assert "vnif97" in server.net.links and "vnet97" in server.net.links


@pytest.mark.parametrize("name,level", [("vnet98.sxp", "auth"), ("vnet99.sxp", "conf")])
def test_secured_examples_are_refused_with_what_to_fix(server, examples, capsys, name, level):
    code, out, err = run_xm(capsys, "vnet-create", str(examples / name))
    assert code == 1
    assert err.startswith("Error: ")
    assert "security" in err or "key-file" in err
    # The operator is told what to change: a key file, or security none.
    assert "key-file" in err or "(security none)" in err
    assert f"'{level}'" in err
    assert run_xm(capsys, "vnet-list")[1] == "", "nothing half-created"
    number = name[4:6]
    assert f"vnet{number}" not in server.net.links and f"vnif{number}" not in server.net.links


def test_vnet99_misspelt_vnif_is_kept_and_the_default_interface_used(server, examples,
                                                                       capsys):
    text = EXAMPLES["vnet99.sxp"].replace("(security conf)", "(security none)")
    (examples / "vnet99-none.sxp").write_text(text)
    code, out, err = run_xm(capsys, "vnet-create", str(examples / "vnet99-none.sxp"))
    assert (code, err) == (0, "")
    assert run_xm(capsys, "vnet-list", "-l")[1] == (
        "(vnet (id 99) (bridge vnet99) (vnif vnetif99) (security none))\n")
    assert "vnet99" in server.net.links
    assert "vnetif99" not in server.net.links, "the misspelt key is not a vnetif"
    assert "vnif0099" in server.net.links, "the default name of vnet 99's interface"
