"""The startup file's reconcile (control/config_file.py): forms in, commands out,
no engine and no sockets."""

from __future__ import annotations

from xend_vnet import sxp
from xend_vnet.kernel_shim.control.config_file import StartupFile
from xend_vnet.vnet_id import VnetId

V10, V11, V13 = (VnetId.parse(n) for n in ("10", "11", "13"))


def forms(text: str) -> list:
    return sxp.parse_all(text)


def run(file: StartupFile, text: str, vnets: set, peers: set, fail: tuple = ()):
    """One load against a pretend engine holding ``vnets`` and ``peers``: the
    commands run in order (a form in ``fail`` fails) and the removals."""
    plan = file.plan(forms(text), vnets.__contains__, peers.__contains__)
    ran, problems, succeeded = [], [], []
    for step in plan.steps:
        if step.problem is not None:
            problems.append(step.problem)
            continue
        ran.append(sxp.to_string(step.form))
        if sxp.to_string(step.form) in fail:
            continue
        succeeded.append(step)
        if step.vnet is not None:
            vnets.add(step.vnet)
        if step.peer is not None:
            peers.add(step.peer)
    removals = [sxp.to_string(f) for f in file.settle(plan, succeeded, vnets.__contains__)]
    return ran, problems, removals


def test_the_first_load_runs_every_command_in_file_order():
    file = StartupFile()
    ran, problems, removals = run(file, "(vnet.add (id 10))(peer.add (addr 192.0.2.60))"
                                  "(varp.mcaddr (addr 224.10.0.7) (ttl 2))", set(), set())
    assert ran == ["(vnet.add (id 10))", "(peer.add (addr 192.0.2.60))",
                   "(varp.mcaddr (addr 224.10.0.7) (ttl 2))"]
    assert problems == [] and removals == []
    assert file.vnets == {V10} and file.peers == {"192.0.2.60"}


def test_other_forms_and_bad_values_are_ignored_with_a_reason():
    ran, problems, _ = run(StartupFile(), "(vif.add (vnet 10) (vmac aa:00:00:00:00:01))"
                           "(vnet.add (id zz))(peer.add (addr 300.1.1.1))(vnet.add (id 11))",
                           set(), set())
    assert ran == ["(vnet.add (id 11))"]
    assert problems[0] == "only vnet.add, peer.add, varp.mcaddr are accepted here"
    assert len(problems) == 3 and "zz" in problems[1] and "300.1.1.1" in problems[2]


def test_a_reload_adds_what_is_new_and_removes_only_what_the_file_added():
    file = StartupFile()
    vnets, peers = set(), set()
    run(file, "(vnet.add (id 10))(vnet.add (id 11))(peer.add (addr 192.0.2.60))", vnets, peers)
    vnets.add(VnetId.parse("12"))              # the operator's, by hand
    peers.add("192.0.2.61")
    ran, _, removals = run(file, "(vnet.add (id 11))(vnet.add (id 13))", vnets, peers)
    assert ran == ["(vnet.add (id 13))"]       # 11 exists: listed, not added again
    assert removals == ["(vnet.del (id 0000:0000:0000:0000:0000:0000:0000:0010))",
                        "(peer.del (addr 192.0.2.60))"]
    assert file.vnets == {V11, V13} and file.peers == set()


def test_a_vnet_the_operator_made_first_is_never_the_files():
    file = StartupFile()
    vnets = {V10}
    ran, _, _ = run(file, "(vnet.add (id 10))", vnets, set())
    assert ran == [] and file.vnets == set()
    _, _, removals = run(file, "", vnets, set())
    assert removals == []


def test_a_peer_that_was_there_first_is_listed_but_not_the_files():
    file = StartupFile()
    peers = {"192.0.2.60"}
    ran, _, _ = run(file, "(peer.add (addr 192.0.2.60))", set(), peers)
    assert ran == ["(peer.add (addr 192.0.2.60))"] and file.peers == set()


def test_a_failed_add_is_not_recorded_and_a_failed_peer_add_is_not_listed():
    file = StartupFile()
    vnets, peers = set(), set()
    run(file, "(peer.add (addr 192.0.2.60))", vnets, peers)
    _, _, removals = run(file, "(vnet.add (id 10))(peer.add (addr 192.0.2.60))", vnets, peers,
                         fail=("(vnet.add (id 10))", "(peer.add (addr 192.0.2.60))"))
    assert file.vnets == set()
    assert removals == ["(peer.del (addr 192.0.2.60))"]


def test_a_vnet_listed_twice_is_added_once():
    ran, _, _ = run(StartupFile(), "(vnet.add (id 10))(vnet.add (id 10) (vnetif x))",
                    set(), set())
    assert ran == ["(vnet.add (id 10))"]


def test_a_vnet_gone_meanwhile_is_forgotten_without_a_command():
    file = StartupFile()
    vnets = set()
    run(file, "(vnet.add (id 10))", vnets, set())
    vnets.clear()                               # vnet.del by hand
    _, _, removals = run(file, "", vnets, set())
    assert removals == [] and file.vnets == set()
