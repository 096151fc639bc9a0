"""A fake vnetd control socket for the vn and launcher tests (design.md 6).

It serves the control protocol on a unix socket in a temp directory: one
request per connection, read until EOF, answer, close.  Every request is
recorded as parsed s-expressions; the answer comes from a table of canned
replies by command name (default: nothing, i.e. success).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable

from xend_vnet import sxp

Reply = str | Callable[[sxp.Sxpr], str]


class FakeEngine:
    def __init__(self, path: str):
        self.path = path
        self.replies: dict[str, Reply] = {}
        self.requests: list[sxp.Sxpr] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                chunks = []
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
                reply = ""
                for form in sxp.parse_all(b"".join(chunks).decode()):
                    self.requests.append(form)
                    canned = self.replies.get(form[0] if isinstance(form, list) else form, "")
                    reply += canned(form) if callable(canned) else canned
                conn.sendall(reply.encode())

    def sent(self, name: str) -> list[sxp.Sxpr]:
        """The requests with this command name."""
        return [f for f in self.requests if isinstance(f, list) and f[:1] == [name]]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def vnet_form(last: int, vnetif: str = "") -> str:
    vid = ":".join(["0000"] * 7 + [f"{last:04x}"])
    return f"(vnet (id {vid}) (vnetif {vnetif or f'vnif{last:04x}'}) (security none) (header 0))\n"
