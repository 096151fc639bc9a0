"""The anti-replay window (RFC 4303 3.4.3, design.md 7)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xend_vnet.kernel_shim.security.replay import WINDOW, ReplayWindow


def test_in_order_then_replay():
    w = ReplayWindow()
    for seq in range(1, 2000):
        assert w.check(seq) is None
        w.update(seq)
    assert w.check(1999) == "replay"
    assert w.check(1999 - WINDOW + 1) == "replay"
    assert w.check(1999 - WINDOW) == "replay_too_old"
    assert w.check(0) == "replay_zero_seq"


def test_reordering_within_the_window_accepted_once():
    w = ReplayWindow()
    w.update(1500)
    for seq in (1499, 600, 477):
        assert w.check(seq) is None
        w.update(seq)
        assert w.check(seq) == "replay"
    assert w.check(476) == "replay_too_old"      # 1500 - 1024


def test_check_does_not_change_state():
    w = ReplayWindow()
    w.update(5)
    assert w.check(10) is None
    assert w.top == 5 and w.check(10) is None


def test_big_jump_clears_the_window():
    w = ReplayWindow(size=1024)
    w.update(3)
    w.update(10_000)
    assert w.check(10_000 - 1) is None
    assert w.bits == 1


def test_size_must_be_positive():
    with pytest.raises(ValueError):
        ReplayWindow(0)


@given(st.lists(st.integers(min_value=1, max_value=5000), max_size=300))
def test_each_sequence_number_accepted_at_most_once(seqs):
    w = ReplayWindow()
    accepted = []
    for seq in seqs:
        if w.check(seq) is None:
            w.update(seq)
            accepted.append(seq)
    assert len(accepted) == len(set(accepted))
    assert all(w.check(s) is not None for s in accepted)
