"""XML-RPC over HTTP on a unix socket: the ``httpu`` scheme (protocol.md 10.4).

``httpu:///var/run/xend/xmlrpc.sock`` means HTTP over the AF_UNIX stream
socket at the URI's path; the request path is always ``/RPC2``.
"""

from __future__ import annotations

import http.client
import socket
import xmlrpc.client
from urllib.parse import urlsplit

DEFAULT_URI = "httpu:///var/run/xend/xmlrpc.sock"


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTPConnection whose "host" is a unix socket path."""

    def __init__(self, path: str, timeout: float | None = None):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            raise
        self.sock = s


class UnixTransport(xmlrpc.client.Transport):
    """xmlrpc.client transport for one unix socket path."""

    def __init__(self, path: str, timeout: float | None = None):
        super().__init__(use_builtin_types=False)
        self.path = path
        self.timeout = timeout

    def make_connection(self, host):
        return UnixHTTPConnection(self.path, self.timeout)


def server_proxy(uri: str, timeout: float | None = None) -> xmlrpc.client.ServerProxy:
    """A ServerProxy for ``httpu://``, ``http://`` or ``https://`` URIs, with allow_none."""
    parts = urlsplit(uri)
    if parts.scheme == "httpu":
        if not parts.path:
            raise ValueError(f"httpu URI without a socket path: {uri!r}")
        return xmlrpc.client.ServerProxy("http://localhost/RPC2",
                                         transport=UnixTransport(parts.path, timeout),
                                         allow_none=True)
    if parts.scheme in ("http", "https"):
        return xmlrpc.client.ServerProxy(uri, allow_none=True)
    raise ValueError(f"unsupported server URI {uri!r}: use httpu:///PATH or http://HOST:PORT")
