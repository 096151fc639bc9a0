"""Client of the engine's control socket (design.md 6).

One request per connection: write one s-expression, half-close, read the
reply until EOF.  An ``(err (errno N) (message "..."))`` reply becomes an
EngineError; a socket nobody listens on becomes EngineUnavailable.
"""

from __future__ import annotations

import errno
import socket
from typing import List, Optional

from . import sxp
from .process import default_control_path

MAX_REPLY = 64 * 1024 * 1024


class EngineError(Exception):
    """The engine answered a command with an error."""

    def __init__(self, errno: int, message: str):
        self.errno = errno
        self.message = message
        super().__init__(message)


class EngineUnavailable(EngineError):
    """No engine answers on the control socket."""

    def __init__(self, path: str, reason: str):
        super().__init__(0, f"vnetd is not running (control socket {path}: {reason})")
        self.path = path


def error_of(form: sxp.Sxpr) -> Optional[EngineError]:
    """The EngineError an ``(err ...)`` reply form stands for, else None."""
    if not (isinstance(form, list) and form[:1] == ["err"]):
        return None
    errno_text = sxp.child_value(form, "errno", "0")
    try:
        errno = int(errno_text)
    except (TypeError, ValueError):
        errno = 0
    message = sxp.child_value(form, "message", "engine error")
    return EngineError(errno, str(message))


class EngineClient:
    """Talks to one vnetd over its control socket."""

    def __init__(self, path: Optional[str] = None, timeout: float = 30.0):
        self.path = path or default_control_path()
        self.timeout = timeout

    def request(self, text: str) -> str:
        """Send raw request text, return the raw reply text."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            try:
                s.connect(self.path)
            except PermissionError as e:
                # Someone is there, but not for us: not the same as "not running".
                raise EngineError(
                    errno.EACCES, f"permission denied on the control socket {self.path}"
                    " (vnetd accepts root only)") from e
            except OSError as e:
                raise EngineUnavailable(self.path, e.strerror or str(e)) from None
            s.sendall(text.encode("utf-8"))
            s.shutdown(socket.SHUT_WR)
            chunks: List[bytes] = []
            size = 0
            while True:
                data = s.recv(65536)
                if not data:
                    break
                size += len(data)
                if size > MAX_REPLY:
                    raise EngineError(0, "engine reply too large")
                chunks.append(data)
        except socket.timeout:
            raise EngineError(0, f"vnetd did not answer within {self.timeout:g} s") from None
        except OSError as e:
            # The engine went away mid-request (restart, crash): callers retry later.
            raise EngineUnavailable(self.path, e.strerror or str(e)) from None
        finally:
            s.close()
        return b"".join(chunks).decode("utf-8", "replace")

    def call(self, form: sxp.Sxpr) -> List[sxp.Sxpr]:
        """Send one command form; return the reply forms or raise EngineError."""
        text = self.request(sxp.to_string(form))
        try:
            reply = sxp.parse_all(text)
        except sxp.ParseError as e:
            raise EngineError(0, f"unreadable reply from vnetd: {e}") from None
        for f in reply:
            err = error_of(f)
            if err is not None:
                raise err
        return reply
