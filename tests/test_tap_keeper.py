"""The keeper of the kernel path's TAPs across a restart (datapath/tap_keeper.py),
without root: the descriptors it keeps are pipes, which is all it needs."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from xend_vnet.kernel_shim.datapath import tap_keeper
from xend_vnet.kernel_shim.datapath.tap import TapError, adopt_tap


@pytest.fixture
def control(tmp_path):
    """The directory the keeper's socket goes in (/run/xend-vnet for vnetd)."""
    return str(tmp_path)


def pipes(n: int) -> list[tuple[int, int]]:
    return [os.pipe() for _ in range(n)]


def test_the_next_engine_takes_what_the_keeper_held(control):
    held = pipes(3)
    taps = {f"vnif{i:04x}": r for i, (r, _w) in enumerate(held)}
    assert tap_keeper.hand_over(control, taps, keep_time=30) is None
    for r, _w in held:
        os.close(r)           # the engine's own descriptors go as it exits
    assert os.stat(tap_keeper.keeper_path(control)).st_mode & 0o777 == 0o600
    got = tap_keeper.take_over(control)
    assert sorted(got) == sorted(taps)
    for i, (_r, w) in enumerate(held):
        os.write(w, b"frame %d" % i)
        assert os.read(got[f"vnif{i:04x}"], 64) == b"frame %d" % i
    for fd in got.values():
        os.close(fd)
    for _r, w in held:
        os.close(w)
    # The keeper is gone with its socket: nothing to take a second time.
    deadline = time.monotonic() + 5
    while os.path.exists(tap_keeper.keeper_path(control)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tap_keeper.take_over(control) == {}


def test_more_descriptors_than_one_message_carries(control):
    held = pipes(tap_keeper.FDS_PER_MESSAGE + 7)
    taps = {f"t{i}": r for i, (r, _w) in enumerate(held)}
    assert tap_keeper.hand_over(control, taps, keep_time=30) is None
    got = tap_keeper.take_over(control)
    assert sorted(got) == sorted(taps)
    for fd in got.values():
        os.close(fd)
    for r, w in held:
        os.close(r)
        os.close(w)


def test_the_keeper_gives_up_after_its_time(control):
    (r, w), = pipes(1)
    assert tap_keeper.hand_over(control, {"vnif0002": r}, keep_time=0.3) is None
    os.close(r)
    time.sleep(1.0)
    assert not os.path.exists(tap_keeper.keeper_path(control))
    # Its copy of the descriptor went with it: the pipe has no reader left.
    with pytest.raises(BrokenPipeError):
        os.write(w, b"x")
    os.close(w)


def test_what_is_not_a_keepers_socket_is_ignored(control):
    with open(tap_keeper.keeper_path(control), "w") as f:
        f.write("not a socket")
    assert tap_keeper.take_over(control) == {}
    os.unlink(tap_keeper.keeper_path(control))
    # A socket nobody listens on (a keeper that died): nothing, and it goes.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(tap_keeper.keeper_path(control))
    s.close()
    assert tap_keeper.take_over(control) == {}
    assert not os.path.exists(tap_keeper.keeper_path(control))


def keeper_pid(path: str) -> int:
    """The keeper this test started, found by its command line."""
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if entry.isdigit() and path.encode() in f.read().split(b"\0"):
                    return int(entry)
        except OSError:
            continue        # gone meanwhile, or not a process
    raise AssertionError(f"no keeper for {path}")


def test_a_keeper_killed_removes_its_socket(control):
    (r, w), = pipes(1)
    assert tap_keeper.hand_over(control, {"vnif0002": r}, keep_time=30) is None
    os.close(r)
    os.kill(keeper_pid(tap_keeper.keeper_path(control)), signal.SIGTERM)
    deadline = time.monotonic() + 5
    while os.path.exists(tap_keeper.keeper_path(control)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(tap_keeper.keeper_path(control))
    os.close(w)


def test_a_keeper_that_cannot_listen_says_why(tmp_path):
    (r, w), = pipes(1)
    problem = tap_keeper.hand_over(str(tmp_path / "missing"), {"x": r})
    assert problem is not None and "cannot listen on" in problem
    os.close(r)
    os.close(w)


def test_a_kept_descriptor_must_be_the_tap_it_is_named_after():
    r, w = os.pipe()
    with pytest.raises(TapError, match="the TAP kept for vnif0002 is not a TAP"):
        adopt_tap("vnif0002", r)
    os.close(r)
    os.close(w)
