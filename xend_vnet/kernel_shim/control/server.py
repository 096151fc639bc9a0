"""The engine's control socket server (design.md 5-6, protocol.md 8.1).

An AF_UNIX stream socket, mode 0600, one request per connection: the
client writes one s-expression and reads the reply until EOF.  The request
is answered as soon as the bytes read hold one complete expression, as the
legacy vnetd did, so Xen's own ``vn`` (which never half-closes) works; a
half-close ends the request as well.  A second expression on the same
connection is refused (design.md 6).  Everything runs non-blocking inside
the engine's event loop: a request is collected until it is complete, EOF,
a size cap or a deadline, so a slow or stuck client never blocks the data
path.  Callers from another network namespace (found through SO_PEERCRED
and /proc/<pid>/ns/net) are refused unless the engine allows them: a `vn`
run in one emulated host must never create TAPs in another (design.md 5).
An accept() out of file descriptors pauses the listener instead of spinning
(accept_backoff.py).
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import stat
import struct
from collections.abc import Callable

from ... import sxp
from ...accept_backoff import AcceptBackoff

log = logging.getLogger("vnetd.control")

MAX_REQUEST = 1024 * 1024
REQUEST_TIMEOUT = 5.0
_UCRED = struct.Struct("3i")


class ControlSocketError(Exception):
    """The control socket cannot be set up (path in use, not a socket...)."""


def error_reply(errno_: int, message: str) -> str:
    """The ``(err (errno N) (message "..."))`` form of design.md 6."""
    return sxp.to_string(["err", ["errno", str(errno_)], ["message", message]])


def _netns_of(pid: str) -> tuple[int, int]:
    st = os.stat(f"/proc/{pid}/ns/net")
    return st.st_dev, st.st_ino


class _Connection:
    __slots__ = ("chunks", "deadline", "out", "refusal", "scanner", "size", "sock")

    def __init__(self, sock: socket.socket, deadline: float, refusal: str | None):
        self.sock = sock
        self.deadline = deadline
        self.chunks: list = []
        self.size = 0
        self.refusal = refusal
        self.out: memoryview | None = None
        self.scanner = sxp.FormScanner()


def _discard_unread(sock: socket.socket) -> None:
    """Read what the caller wrote after its expression (a newline, say): a unix
    socket closed with unread data resets the peer, which may then lose the
    reply it has not read yet (design.md 6)."""
    try:
        for _ in range(16):
            if not sock.recv(65536):
                return
    except OSError:
        pass


class ControlServer:
    """Accepts control connections and answers each with ``handler(request_text)``."""

    def __init__(self, path: str, handler: Callable[[str], str],
                 selector: selectors.BaseSelector, allow_foreign_netns: bool = False,
                 max_request: int = MAX_REQUEST, timeout: float = REQUEST_TIMEOUT):
        self.path = path
        self.handler = handler
        self.selector = selector
        self.allow_foreign_netns = allow_foreign_netns
        self.max_request = max_request
        self.timeout = timeout
        self.own_netns = _netns_of("self")
        self.listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._conns: dict[int, _Connection] = {}
        self.accept_backoff = AcceptBackoff(f"control socket {path}", log)
        self._accept_paused_until: float | None = None

    # -- the listening socket ------------------------------------------------

    def listen(self) -> None:
        """Bind the socket; a stale socket file is replaced, a live one never."""
        parent = os.path.dirname(self.path) or "."
        os.makedirs(parent, mode=0o755, exist_ok=True)
        self._remove_stale()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            s.bind(self.path)
        except OSError as e:
            s.close()
            raise ControlSocketError(f"cannot bind control socket {self.path}: {e.strerror}") \
                from None
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        s.listen(64)
        s.setblocking(False)
        self.listener = s
        self.selector.register(s, selectors.EVENT_READ, self._on_accept)

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlSocketError(f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(self.path)  # nobody accepts on it: a leftover of a dead engine
            return
        except OSError as e:
            raise ControlSocketError(f"cannot probe control socket {self.path}: {e.strerror}") \
                from None
        finally:
            probe.close()
        raise ControlSocketError(f"control socket {self.path} is in use by a running engine")

    def close(self) -> None:
        """Close every connection and the listener; unlink the path if it is still ours."""
        for fd in list(self._conns):
            self._drop(fd)
        if self.listener is not None:
            if self._accept_paused_until is None:
                self.selector.unregister(self.listener)
            self.listener.close()
            self.listener = None
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass

    # -- connections -----------------------------------------------------------

    def _refusal(self, conn: socket.socket) -> str | None:
        """Why this caller is refused, or None (design.md 5)."""
        if self.allow_foreign_netns:
            return None
        pid, _uid, _gid = _UCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        try:
            same = pid > 0 and _netns_of(str(pid)) == self.own_netns
        except OSError:
            same = False
        if same:
            return None
        log.warning("refused control caller pid %d: another network namespace", pid)
        return error_reply(errno.EPERM,
                           f"caller (pid {pid}) is in another network namespace than this "
                           "vnetd; run the command in the engine's namespace "
                           "(or start vnetd with --allow-foreign-netns)")

    def _on_accept(self, _mask: int, now: float) -> None:
        if self._accept_paused_until is not None:
            return      # an event of the wakeup that paused the listener
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                # EMFILE and friends: keep serving the ones we have, and stop
                # polling the still readable listener for a while.
                until = self.accept_backoff.failed(e, now)
                if until is None:
                    log.warning("control socket accept failed: %s", e.strerror)
                else:
                    self.selector.unregister(self.listener)
                    self._accept_paused_until = until
                return
            conn.setblocking(False)
            c = _Connection(conn, now + self.timeout, self._refusal(conn))
            self._conns[conn.fileno()] = c
            self.selector.register(conn, selectors.EVENT_READ,
                                   lambda mask, now, c=c: self._on_conn(c, mask))

    def _on_conn(self, c: _Connection, mask: int) -> None:
        if c.out is not None:
            self._send(c)
            return
        eof = self._read(c)
        if eof is None:
            return
        scan = c.scanner
        if not eof and scan.end is None:
            return      # not one complete expression yet: wait for more or the deadline
        if c.refusal is not None:
            self._reply(c, c.refusal)
            return
        data = b"".join(c.chunks)
        first = data[:scan.end].decode("utf-8", "replace")
        if scan.more:
            # Legacy vnetd evaluated every expression of its first read; we
            # answer one, whatever the chunking (design.md 6).
            self._reply(c, error_reply(errno.EINVAL,
                                       "one s-expression per connection: more follows "
                                       f"{first.strip()[:80]}; send each command on a "
                                       "connection of its own"))
            return
        text = data.decode("utf-8", "replace") if scan.end is None else first
        try:
            reply = self.handler(text)
        except Exception as e:  # the engine must keep serving whatever a command does
            log.exception("control request %r failed", text[:200])
            reply = error_reply(errno.EIO, f"internal error: {e}")
        self._reply(c, reply)

    def _read(self, c: _Connection) -> bool | None:
        """Read what has arrived: True at EOF, False while more may come, None
        when the connection is gone or already answered (too large)."""
        while True:
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                self._drop(c.sock.fileno())
                return None
            if not data:
                return True
            c.size += len(data)
            if c.size > self.max_request:
                self._reply(c, error_reply(errno.E2BIG,
                                           f"request larger than {self.max_request} bytes"))
                return None
            c.chunks.append(data)
            c.scanner.feed(data)
            if c.scanner.more:
                return False

    def _reply(self, c: _Connection, text: str) -> None:
        c.chunks = []
        c.out = memoryview(text.encode("utf-8"))
        self.selector.modify(c.sock, selectors.EVENT_WRITE,
                             lambda mask, now, c=c: self._on_conn(c, mask))
        self._send(c)

    def _send(self, c: _Connection) -> None:
        try:
            while c.out:
                n = c.sock.send(c.out)
                c.out = c.out[n:]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            # Xen's vn closes without reading the reply to a plain command
            # (protocol.md 13): the command ran, nobody is left to tell.
            log.debug("control caller left before its reply: %s", e.strerror)
        else:
            _discard_unread(c.sock)
        self._drop(c.sock.fileno())

    def _drop(self, fd: int) -> None:
        c = self._conns.pop(fd, None)
        if c is not None:
            self.selector.unregister(c.sock)
            c.sock.close()

    def next_deadline(self) -> float | None:
        paused = self._accept_paused_until
        if not self._conns:
            return paused
        soonest = min(c.deadline for c in self._conns.values())
        return soonest if paused is None else min(soonest, paused)

    def expire(self, now: float) -> None:
        """Answer or close connections past their deadline (a stuck client);
        poll the listener again once its accept() pause is over."""
        paused = self._accept_paused_until
        if paused is not None and paused <= now and self.listener is not None:
            self._accept_paused_until = None
            self.selector.register(self.listener, selectors.EVENT_READ, self._on_accept)
        for fd, c in list(self._conns.items()):
            if c.deadline > now:
                continue
            if c.out is None:
                log.info("control request not completed within %g s", self.timeout)
                c.deadline = now + self.timeout
                self._reply(c, error_reply(errno.ETIMEDOUT,
                                           f"request not completed within {self.timeout:g} s "
                                           "(write one complete s-expression)"))
            else:
                self._drop(fd)
