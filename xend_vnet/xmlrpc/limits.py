"""What one XML-RPC caller may hold of the server (docs/security.md,
management plane limits; design.md 9).

``DeadlineReader`` is the receiving side of a connection: a timeout per
receive, a deadline for a whole request (accept() does not pass the
listener's timeout on, design.md 11) and a budget for the request head, so
headers are bounded like the body.  ``CallerSlots`` shares the connection
slots among callers (uid on the unix socket, source address on TCP) so one
caller cannot hold them all.  ``RefusalLog`` keeps refusals to one log line
per kind and interval.  Bound on request bytes held at once:
MAX_CONNECTIONS x (MAX_HEADER_BYTES + read buffer + MAX_REQUEST), 64 x
(32 KiB + 8 KiB + 1 MiB), about 66 MiB.
"""

from __future__ import annotations

import collections
import io
import logging
import socket
import threading
import time

MAX_HEADER_LINE = 8 * 1024       # one header line, or the request line
MAX_HEADER_BYTES = 32 * 1024     # the request line and every header line together
MAX_HEADER_LINES = 100
MAX_CONNECTIONS = 64             # connections served at once, every listener together
MAX_PER_CALLER = 16              # of those, held by one uid or one source address
LOCAL_RESERVE = 16               # of those, never taken by callers over TCP
READ_BUFFER = io.DEFAULT_BUFFER_SIZE
REFUSAL_LOG_INTERVAL = 10.0


class HeaderTooLarge(Exception):
    """The request head is over its budget; ``request_line`` says which part."""

    def __init__(self, message: str, request_line: bool = False):
        super().__init__(message)
        self.request_line = request_line


class DeadlineReader(io.RawIOBase):
    """The receiving side of a connection with a per-receive timeout and a deadline
    for the whole request; ``clock`` is time.monotonic (a parameter for tests)."""

    def __init__(self, sock: socket.socket, per_recv: float, clock=time.monotonic):
        super().__init__()
        self.sock = sock
        self.per_recv = per_recv
        self.clock = clock
        self.deadline: float | None = None
        self.idle_until_first_byte: float | None = None

    def readable(self) -> bool:
        return True

    def expect_request(self, deadline: float, since: float | None = None) -> None:
        """A request must arrive whole within ``deadline`` seconds from now, or from
        ``since`` (a ``clock`` time: when the connection was accepted)."""
        self.deadline = (self.clock() if since is None else since) + deadline
        self.idle_until_first_byte = None

    def expect_next_request(self, idle: float, deadline: float) -> None:
        """Keep-alive: the next request starts within ``idle`` seconds and then must
        arrive whole within ``deadline`` seconds of its first byte."""
        self.deadline = self.clock() + idle
        self.idle_until_first_byte = deadline

    def request_received(self) -> None:
        """Answering now: no deadline, plain per-operation timeouts for the reply."""
        self.deadline = None
        self.idle_until_first_byte = None
        self.sock.settimeout(self.per_recv)

    def readinto(self, buffer) -> int:
        timeout = self.per_recv
        if self.deadline is not None:
            left = self.deadline - self.clock()
            if left <= 0:
                raise TimeoutError("the request took too long to arrive")
            timeout = min(timeout, left)
        self.sock.settimeout(timeout)
        n = self.sock.recv_into(buffer)
        if n and self.idle_until_first_byte is not None:
            self.expect_request(self.idle_until_first_byte)
        return n


class HeadBudget:
    """``rfile`` of a request handler: a buffered reader whose lines, while the
    request head is read, are held to MAX_HEADER_LINE bytes each, MAX_HEADER_BYTES
    and MAX_HEADER_LINES in all; the body is read through ``read`` unchanged."""

    def __init__(self, raw: io.RawIOBase, line_max: int = MAX_HEADER_LINE,
                 bytes_max: int = MAX_HEADER_BYTES, lines_max: int = MAX_HEADER_LINES):
        self.buffered = io.BufferedReader(raw, READ_BUFFER)
        self.line_max = line_max
        self.bytes_max = bytes_max
        self.lines_max = lines_max
        self.lines = -1             # -1: not reading a head
        self.size = 0

    def start_head(self) -> None:
        self.lines = 0
        self.size = 0

    def readline(self, limit: int = -1) -> bytes:
        if self.lines < 0:
            return self.buffered.readline(limit)
        cap = self.line_max + 1 if limit < 0 else min(limit, self.line_max + 1)
        line = self.buffered.readline(cap)
        first = self.lines == 0
        self.lines += 1
        self.size += len(line)
        what = "request line" if first else "header line"
        if len(line) > self.line_max:
            raise HeaderTooLarge(f"{what} longer than {self.line_max} bytes", first)
        if self.size > self.bytes_max:
            raise HeaderTooLarge(f"request line and headers larger than {self.bytes_max} "
                                 "bytes in all", first)
        if not first and line in (b"\r\n", b"\n", b""):
            self.lines = -1         # the head is over
        elif self.lines > self.lines_max:
            # Counted with the empty line that ends the head, as http.client does.
            raise HeaderTooLarge(f"more than {self.lines_max} header lines")
        return line

    def read(self, size: int = -1) -> bytes:
        return self.buffered.read(size)

    def close(self) -> None:
        self.buffered.close()


class CallerSlots:
    """Connection slots shared by every listener of one server: at most ``total``
    at once, at most ``per_caller`` for one caller key (thread-safe)."""

    def __init__(self, total: int = MAX_CONNECTIONS, per_caller: int = MAX_PER_CALLER):
        self.total = total
        self.per_caller = per_caller
        self.lock = threading.Lock()
        self.held: collections.Counter = collections.Counter()
        self.in_use = 0
        self.remote = 0             # of which callers over TCP

    def take(self, key: str) -> str | None:
        """Take a slot for ``key``; None when taken, else why not (for the 503).

        Callers over TCP (keys ``address ...``) share all but ``LOCAL_RESERVE``
        slots: the unix socket's callers (xm, network-vnet, the calls for
        xend) always find one, however many remote addresses connect."""
        with self.lock:
            if self.held[key] >= self.per_caller:
                return (f"{key} already holds {self.per_caller} connections, the limit "
                        "per caller")
            if self.in_use >= self.total:
                return f"all {self.total} connections are in use"
            if key.startswith("address ") and self.remote >= self.total - LOCAL_RESERVE:
                return (f"the {self.total - LOCAL_RESERVE} connections callers over TCP "
                        "may hold are in use")
            self.held[key] += 1
            self.in_use += 1
            self.remote += key.startswith("address ")
            return None

    def give_back(self, key: str) -> None:
        with self.lock:
            self.in_use -= 1
            self.remote -= key.startswith("address ")
            self.held[key] -= 1
            if self.held[key] <= 0:
                del self.held[key]


class RefusalLog:
    """One warning per kind of refusal and interval, with the count since the last."""

    def __init__(self, log: logging.Logger, interval: float = REFUSAL_LOG_INTERVAL,
                 clock=time.monotonic):
        self.log = log
        self.interval = interval
        self.clock = clock
        self.lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()
        self.logged_at: dict[str, float] = {}

    def note(self, kind: str, message: str) -> None:
        """Log ``message`` unless ``kind`` was logged less than an interval ago."""
        now = self.clock()
        with self.lock:
            self.counts[kind] += 1
            last = self.logged_at.get(kind)
            if last is not None and now - last < self.interval:
                return
            count = self.counts.pop(kind)
            self.logged_at[kind] = now
        more = f" ({count - 1} more like it since the last such line)" if count > 1 else ""
        self.log.warning("%s%s", message, more)
