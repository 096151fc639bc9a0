"""What a listener does when accept() fails for want of file descriptors.

EMFILE and ENFILE leave the connection queued, so the listener stays
readable: polling it again at once would spin.  The failure is counted,
logged once per interval (the count since the last line), and the listener
is left alone for a short pause (docs/security.md, management plane limits).
"""

from __future__ import annotations

import errno
import logging

RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
PAUSE = 0.5            # seconds the listener is not polled after such a failure
LOG_INTERVAL = 60.0    # at most one log line per this many seconds


class AcceptBackoff:
    """Counts accept() failures of one listener; ``now`` is a monotonic time."""

    def __init__(self, what: str, log: logging.Logger, pause: float = PAUSE,
                 log_interval: float = LOG_INTERVAL):
        self.what = what
        self.log = log
        self.pause = pause
        self.log_interval = log_interval
        self.failures = 0
        self._unlogged = 0
        self._logged_at: float | None = None

    def failed(self, error: OSError, now: float) -> float | None:
        """Record a failed accept(): the time until which the listener must not be
        polled when it is out of descriptors or memory, else None."""
        if error.errno not in RESOURCE_ERRORS:
            return None
        self.failures += 1
        self._unlogged += 1
        if self._logged_at is None or now - self._logged_at >= self.log_interval:
            self.log.warning("%s: accept() failed %d time(s) (%s); not accepting for %g s "
                             "at a time until descriptors are free", self.what,
                             self._unlogged, error.strerror or error, self.pause)
            self._logged_at = now
            self._unlogged = 0
        return now + self.pause
