"""The engine's event loop: one ``selectors`` loop for every file descriptor,
timers as data, signals through a wakeup fd (design.md 5).

A source registers a callback ``(mask, now)``; a timer is a pair of
callables, its next deadline (None: not armed) and what to do at it
(``fire(now)``), looked at after every wakeup in the order they were added.
Signals only wake the loop: their numbers come through a pipe and are
handled between two wakeups, never inside one.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from collections.abc import Callable, Iterable

BATCH = 64                 # datagrams or frames drained per wakeup
# A wait longer than this leaves the engine's code out of the CPU caches, and
# the read that only meets EAGAIN then costs as much as the frame's own turn
# (~35 us here, docs/performance.md): after such a wait one frame is read per
# source, and the loop comes back at once, warm, if more are waiting.
IDLE_WAIT = 0.0005

Deadline = Callable[[], "float | None"]


def _ignore_signal(_signum, _frame) -> None:
    """Python-level handler so the signal only wakes the loop through the wakeup fd."""


class EventLoop:
    """Runs callbacks when their fds are ready and timers when they are due."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.batch = BATCH          # reads per source this turn (1 after an idle wait)
        self.stopping = False
        self._timers: list[tuple[Deadline, Callable[[float], None]]] = []
        self._signal_r = -1

    def register(self, fileobj, callback: Callable[[int, float], None]) -> None:
        self.selector.register(fileobj, selectors.EVENT_READ, callback)

    def unregister(self, fileobj) -> None:
        self.selector.unregister(fileobj)

    def add_timer(self, deadline: Deadline, fire: Callable[[float], None]) -> None:
        self._timers.append((deadline, fire))

    def watch_signals(self, signals: Iterable[int], on_signal: Callable[[int], None]) -> None:
        """Deliver ``signals`` to ``on_signal`` from the loop; one that arrives
        before ``run`` waits for it."""
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._signal_r = r
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for sig in signals:
            signal.signal(sig, _ignore_signal)  # the wakeup fd carries the number
        self.register(r, lambda _mask, _now: self._read_signals(on_signal))

    def _read_signals(self, on_signal: Callable[[int], None]) -> None:
        try:
            data = os.read(self._signal_r, 64)
        except BlockingIOError:
            return
        for sig in data:
            on_signal(sig)

    def stop(self) -> None:
        """End ``run`` once this wakeup is done."""
        self.stopping = True

    def _next_deadline(self) -> float | None:
        soonest = None
        for deadline, _ in self._timers:
            at = deadline()
            if at is not None and (soonest is None or at < soonest):
                soonest = at
        return soonest

    def run(self) -> None:
        select = self.selector.select
        timers = self._timers
        monotonic = time.monotonic
        while not self.stopping:
            now = monotonic()
            deadline = self._next_deadline()
            events = select(None if deadline is None else max(0.0, deadline - now))
            before, now = now, monotonic()
            self.batch = 1 if now - before > IDLE_WAIT else BATCH
            for key, mask in events:
                key.data(mask, now)
            for deadline_of, fire in timers:
                at = deadline_of()
                if at is not None and at <= now:
                    fire(now)

    def close(self) -> None:
        self.selector.close()
