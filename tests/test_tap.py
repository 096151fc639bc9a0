"""TAP adapter: name checks, cleanup of a failed create, a device deleted from outside."""

from __future__ import annotations

import errno
import subprocess

import pytest
from netns import Lab, call_in_netns

from xend_vnet.kernel_shim.datapath.tap import TapError, check_tap_name, delete_tap, open_tap


@pytest.mark.parametrize("name", ["vn%d", "", "a" * 16, "vn x", "vn/x", "vn:1", "..",
                                  "vn#x", "vn(x", "vné"])
def test_names_the_kernel_would_misread_are_refused(name):
    with pytest.raises(TapError) as e:
        check_tap_name(name)
    assert e.value.errno == errno.EINVAL
    assert repr(name) in e.value.message or (not name and "empty" in e.value.message)


@pytest.mark.parametrize("name", ["vnif0097", "vnif97", "a.b_c-d", "x" * 15])
def test_ordinary_names_pass(name):
    check_tap_name(name)


@pytest.fixture
def lab():
    lab = Lab("xvtap-")
    try:
        yield lab
    finally:
        lab.close()


@pytest.mark.root
def test_failed_configure_removes_the_device_it_created(lab):
    ns = lab.netns("h")

    def attempt():
        try:
            open_tap("vniftest", mtu=70000)     # the MTU step fails after the create
        except TapError as e:
            return e.errno
        return None

    assert call_in_netns(ns, attempt) is not None
    shown = subprocess.run(["ip", "-n", ns, "link", "show", "vniftest"],
                           capture_output=True, text=True)
    assert shown.returncode != 0, "a failed create must leave nothing behind"


@pytest.mark.root
def test_device_deleted_from_outside_is_an_error_not_a_crash(lab):
    ns = lab.netns("h")

    def scenario():
        tap = open_tap("vniftest")
        subprocess.run(["ip", "link", "del", "vniftest"], check=True)
        try:
            tap.read_batch(8)
        except TapError as e:
            outcome = ("error", e.errno)
        else:
            outcome = ("no error", None)
        delete_tap(tap)          # must not raise on a device that is gone
        return outcome

    kind, _ = call_in_netns(ns, scenario)
    assert kind == "error"


@pytest.mark.root
def test_engine_survives_its_tap_being_deleted_and_makes_it_again(lab):
    from netns import wait_for
    lab.underlay()
    ns = lab.host("h", "192.0.2.1")
    d = lab.start_vnetd(ns, "--no-default-vnets")
    d.call("(vnet.add (id 97))")
    lab.ns_sh(ns, "ip", "link", "del", "vnif0097")

    def recreated():
        shown = lab.ns_sh(ns, "ip", "-o", "link", "show", "vnif0097", check=False)
        return shown.returncode == 0 and "tap_lost" in d.request("(engine.status)")

    wait_for(recreated, timeout=15, what="the TAP to be made again")
    assert d.alive()
    assert "vnif0097" in d.request("(vnet.list)")
    # The recreated device belongs to the vnet: vnet.del removes it.
    d.call("(vnet.del (id 97))")
    assert lab.ns_sh(ns, "ip", "link", "show", "vnif0097", check=False).returncode != 0
