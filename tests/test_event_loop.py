"""The engine's event loop (datapath/loop.py): callbacks, timers as data,
signals through the wakeup fd, stop."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from xend_vnet.kernel_shim.datapath.loop import EventLoop


@pytest.fixture
def loop():
    loop = EventLoop()
    yield loop
    loop.close()


def test_a_ready_source_gets_its_callback_with_the_time(loop):
    a, b = socket.socketpair()
    seen = []

    def on_read(mask, now):
        seen.append((a.recv(10), now))
        loop.stop()

    loop.register(a, on_read)
    b.send(b"x")
    loop.run()
    assert seen[0][0] == b"x" and seen[0][1] > 0
    loop.unregister(a)
    a.close()
    b.close()


def test_timers_fire_when_due_in_the_order_added(loop):
    fired = []
    due = {"a": 0.0, "b": 0.0}

    def fire(name):
        def run(now):
            fired.append(name)
            due[name] = None
            if name == "b":
                loop.stop()
        return run

    loop.add_timer(lambda: due["a"], fire("a"))
    loop.add_timer(lambda: None, lambda now: fired.append("never"))
    loop.add_timer(lambda: due["b"], fire("b"))
    loop.run()
    assert fired == ["a", "b"]


def test_the_wait_ends_at_the_soonest_deadline(loop):
    start = time.monotonic()
    at = start + 0.05
    loop.add_timer(lambda: at, lambda now: loop.stop())
    loop.add_timer(lambda: start + 60, lambda now: None)
    loop.run()
    assert 0.04 < time.monotonic() - start < 5
    assert loop.batch == 1                      # after an idle wait: one read per source


def test_signals_come_through_the_loop():
    loop = EventLoop()
    old = signal.getsignal(signal.SIGUSR1)
    got = []
    try:
        loop.watch_signals([signal.SIGUSR1], lambda sig: (got.append(sig), loop.stop()))
        os.kill(os.getpid(), signal.SIGUSR1)
        loop.run()
    finally:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGUSR1, old)
        loop.close()
    assert got == [signal.SIGUSR1]

