"""XML-RPC over HTTP on a unix socket (the ``httpu`` scheme) and optional TCP.

HTTP/1.0 and 1.1, POST ``/RPC2`` or ``/`` (protocol.md 10.4, 16).
Hardening: a request size cap (HTTP 413 before reading the body), a socket
timeout per receive (accept() does not pass the listener's timeout on,
design.md 11) and a deadline for a whole request, so a client trickling
bytes cannot hold a connection slot; a short idle timeout between
keep-alive requests; a budget for the request head (431) and connection
slots shared among callers, so no one caller holds them all (limits.py,
docs/security.md); defusedxml parsing (api.py), no dotted-name dispatch.
A unix socket that still accepts connections is never unlinked, and its
mode is explicit whatever the umask (unix_socket.py, design.md 9).
Beside xend, methods this server does not serve are forwarded to the
upstream xend byte for byte, with no timeout, for callers on the unix
socket only: TCP callers get Fault 1 (no TCP port gives local users
control of domains).  TCP is HTTPS when a key and certificate are
set (tls.py); plain HTTP to every interface is never served (design.md 9).
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import socketserver
import ssl
import stat
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from ..accept_backoff import AcceptBackoff
from ..xend_config import TlsFiles, XendConfigError, check_upstream
from ..httpu import UnixHTTPConnection
from . import tls as tls_mod
from .api import ERROR_INTERNAL, VnetAPI, fault_reply
from .caller import Caller, peer_of
from .unix_socket import ServerError, prepare_unix_path, set_socket_mode, unix_group_id
from .limits import (MAX_CONNECTIONS, MAX_PER_CALLER, CallerSlots, DeadlineReader,
                     HeadBudget, HeaderTooLarge, RefusalLog)

log = logging.getLogger("xend-vnet")

MAX_REQUEST = 1024 * 1024
REQUEST_TIMEOUT = 30.0     # one receive or send
REQUEST_DEADLINE = 60.0    # receiving one whole request
KEEPALIVE_IDLE = 5.0       # waiting for the next request on a kept-alive connection
LINGER = 1.0               # reading what a refused client still sends, so it gets the reply
LINGER_BYTES = 256 * 1024
RPC_PATHS = ("/RPC2", "/")


def upstream_connection(uri: str) -> http.client.HTTPConnection:
    """A connection to the upstream xend, with no timeout (xm create, migrations)."""
    parts = urlsplit(uri)
    if parts.scheme == "httpu":
        return UnixHTTPConnection(parts.path, timeout=None)
    if parts.scheme == "http":
        return http.client.HTTPConnection(parts.hostname or "localhost", parts.port or 8006,
                                          timeout=None)
    raise ServerError(f"unsupported upstream {uri!r}: use httpu:///PATH or http://HOST:PORT")


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A request line without a version gets a real status line, not HTTP/0.9.
    default_request_version = "HTTP/1.0"
    server_version = "xend-vnet"
    timeout = REQUEST_TIMEOUT
    request_deadline = REQUEST_DEADLINE
    keepalive_idle = KEEPALIVE_IDLE

    def setup(self) -> None:
        self.started = time.monotonic()
        self.refused = False
        context = getattr(self.server, "tls", None)
        if context is not None:
            # In this connection's thread, within its first request's deadline.
            self.request = self.connection = tls_mod.handshake(
                context, self.request, self.started + self.request_deadline)
        super().setup()
        self.reader = DeadlineReader(self.connection, self.timeout)
        self.rfile = HeadBudget(self.reader)
        self.requests_seen = 0

    def finish(self) -> None:
        try:
            super().finish()
            if self.refused:
                self._linger()
        finally:
            if isinstance(self.connection, ssl.SSLSocket):
                self.connection.close()

    def _linger(self) -> None:
        """Read, for a moment, what a refused client still sends: closing with
        unread data resets the connection and the client may lose the reply."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            end = time.monotonic() + LINGER
            got = 0
            while got < LINGER_BYTES and (left := end - time.monotonic()) > 0:
                self.connection.settimeout(left)
                data = self.connection.recv(65536)
                if not data:
                    return
                got += len(data)
        except OSError:
            pass

    def handle_one_request(self) -> None:
        if self.requests_seen:
            self.reader.expect_next_request(self.keepalive_idle, self.request_deadline)
        else:
            self.reader.expect_request(self.request_deadline, since=self.started)
        self.requests_seen += 1
        self.command = self.requestline = ""
        self.request_version = self.default_request_version
        self.rfile.start_head()
        try:
            super().handle_one_request()
        except HeaderTooLarge as e:
            # docs/security.md, management plane limits: the head is bounded like the body.
            self.server.refusals.note("head", f"refused a request from "
                                      f"{self.address_string()}: {e}")
            self._plain(414 if e.request_line else 431, f"{e}; the limits are "
                        f"{self.rfile.line_max} bytes a line, {self.rfile.bytes_max} bytes "
                        f"and {self.rfile.lines_max} lines in all")

    def send_response(self, code: int, message: str | None = None) -> None:
        self.reader.request_received()
        super().send_response(code, message)

    def do_POST(self) -> None:
        if self.path not in RPC_PATHS:
            self._plain(404, f"no XML-RPC endpoint at {self.path}; use /RPC2")
            return
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._plain(411, "chunked requests are not accepted; send a Content-Length")
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self._plain(411, "Content-Length required")
            return
        try:
            length = int(length_text)
        except ValueError:
            length = -1
        if length < 0:
            self._plain(400, f"invalid Content-Length {length_text!r}")
            return
        if self._too_large(length):
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            return
        reply = self.server.api.dispatch(self.server.caller_of(self.request), body)
        if reply is None:
            self._forward(body)
            return
        self._send(200, "text/xml", reply)

    def handle_expect_100(self) -> bool:
        # Refuse an oversized body before inviting the client to send it.
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and self._too_large(int(length)):
            return False
        return super().handle_expect_100()

    def _too_large(self, length: int) -> bool:
        if length <= self.server.max_request:
            return False
        log.warning("refused a %d-byte request (limit %d)", length, self.server.max_request)
        self._plain(413, f"request of {length} bytes is larger than the limit of "
                    f"{self.server.max_request} bytes")
        return True

    def _forward(self, body: bytes) -> None:
        # No timeout on the upstream call itself (design.md 9: xm create, migrations).
        conn = None
        try:
            conn = upstream_connection(self.server.upstream)
            conn.request("POST", self.path, body, {"Content-Type": "text/xml"})
            response = conn.getresponse()
            data = response.read()
        except Exception as e:  # noqa: BLE001 - every failure becomes a Fault, not a traceback
            reason = str(e) or type(e).__name__
            what = "is not reachable" if isinstance(e, OSError) else "failed"
            log.error("upstream xend %s %s: %s", self.server.upstream, what, reason)
            self._send(200, "text/xml", fault_reply(
                ERROR_INTERNAL, f"upstream xend {self.server.upstream} {what}: {reason}"))
            return
        finally:
            if conn is not None:
                conn.close()
        self._send(response.status, response.getheader("Content-Type", "text/xml"), data)

    def _plain(self, code: int, message: str) -> None:
        self.close_connection = True
        self.refused = True
        self._send(code, "text/plain; charset=utf-8", (message + "\n").encode("utf-8"))

    def _send(self, code: int, content_type: str, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def address_string(self) -> str:
        # AF_UNIX peers have no address; client_address is ''.
        return str(self.client_address[0]) if self.client_address else "unix"

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Serving(socketserver.ThreadingMixIn):
    """Threads per connection, in slots shared fairly among callers (limits.py)."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def setup_serving(self, api: VnetAPI, upstream: str | None, max_request: int,
                      slots: CallerSlots, refusals: RefusalLog) -> None:
        self.api = api
        self.upstream = upstream
        self.max_request = max_request
        self.slots = slots
        self.refusals = refusals
        self.accept_backoff = AcceptBackoff(f"XML-RPC {self.listener_name()}", log)

    def get_request(self):
        try:
            return super().get_request()
        except OSError as e:
            until = self.accept_backoff.failed(e, time.monotonic())
            if until is not None:
                # Out of descriptors: the listener stays readable, so do not poll
                # it again at once (accept_backoff.py); this thread only accepts.
                time.sleep(max(0.0, until - time.monotonic()))
            raise

    def process_request(self, request, client_address) -> None:
        key = self.slot_key(request, client_address)
        refusal = self.slots.take(key)
        if refusal is not None:
            self.refusals.note("slots", f"refused a connection: {refusal}")
            self._refuse_busy(request, refusal)
            return
        thread = threading.Thread(target=self._serve_in_slot, name="xmlrpc-connection",
                                  args=(request, client_address, key), daemon=True)
        try:
            thread.start()
        except BaseException:
            self.slots.give_back(key)
            raise

    def handle_error(self, request, client_address) -> None:
        # A client that leaves or breaks TLS mid-reply is no server fault: no
        # traceback on stderr for every hostile connection (docs/security.md).
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("XML-RPC connection ended: %s", sys.exc_info()[1])
            return
        super().handle_error(request, client_address)

    def _serve_in_slot(self, request, client_address, key: str) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self.slots.give_back(key)

    def _refuse_busy(self, request, refusal: str) -> None:
        """503 at once, in clear text only where the listener speaks it; what the
        client already sent is read first, so closing does not reset the reply."""
        if getattr(self, "tls", None) is None:   # no clear text on an HTTPS port
            body = f"{refusal}; try again later\n".encode("utf-8")
            try:
                request.setblocking(False)
                try:
                    request.recv(65536)
                except BlockingIOError:
                    pass
                request.send(b"HTTP/1.1 503 Service Unavailable\r\n"
                             b"Content-Type: text/plain; charset=utf-8\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (len(body), body))
            except OSError:
                pass
        self.shutdown_request(request)


class UnixXMLRPCServer(_Serving, socketserver.UnixStreamServer):
    def __init__(self, path: str, handler, group: int | None = None):
        self.group = group
        super().__init__(path, handler)

    def server_bind(self) -> None:
        # Bound, then given its mode before listen(): until listen() every
        # connect() is refused, so there is no moment with a wider mode; the
        # umask is left alone (process-wide, other threads make files).
        super().server_bind()
        set_socket_mode(self.server_address, self.group)

    def caller_of(self, sock: socket.socket) -> Caller:
        return peer_of(sock)

    def slot_key(self, request: socket.socket, client_address) -> str:
        return f"uid {peer_of(request).uid}"

    def listener_name(self) -> str:
        return f"unix socket {self.server_address}"


class TCPXMLRPCServer(_Serving, socketserver.TCPServer):
    allow_reuse_address = True
    tls: ssl.SSLContext | None = None

    def caller_of(self, sock: socket.socket) -> Caller:
        return Caller("tcp")

    def slot_key(self, request: socket.socket, client_address) -> str:
        return f"address {client_address[0]}"

    def listener_name(self) -> str:
        return f"port {self.server_address[1]}"

    def finish_request(self, request, client_address) -> None:
        try:
            super().finish_request(request, client_address)
        except tls_mod.HandshakeFailed as e:
            self.refusals.note("tls", f"refused a connection from {client_address[0]}: {e}")

    def describe(self, configured_host: str) -> str:
        host, port = self.server_address[:2]
        where = f"{host} (every interface)" if configured_host == "" else host
        return f"{'https' if self.tls else 'http'} on {where}, port {port}"


def tcp_address(tcp: tuple[str, int], tls: TlsFiles | None) -> tuple[str, int]:
    """Where to listen: an empty address (xend: every interface) only with TLS;
    without it, localhost, and the log says why (design.md 9)."""
    host, port = tcp
    if host == "" and tls is None:
        log.warning("the TCP XML-RPC address is empty (every interface) but no TLS key "
                    "and certificate are set: serving plain HTTP on localhost only; set "
                    "the ssl-key-file and ssl-cert-file keys to serve HTTPS everywhere")
        return "localhost", port
    return host, port


class XMLRPCServers:
    """The listening sockets of one xend-vnet, each served by its own thread."""

    def __init__(self, api: VnetAPI, unix_path: str | None, tcp: tuple[str, int] | None,
                 upstream: str | None = None, max_request: int = MAX_REQUEST,
                 tls: TlsFiles | None = None, unix_group: str | None = None,
                 slots: CallerSlots | None = None):
        self.unix_path = unix_path
        self.tcp_host: str | None = None
        self.servers: list[socketserver.BaseServer] = []
        self.threads: list[threading.Thread] = []
        # One pool for every listener, so the bound on memory is one number
        # (limits.py); ``slots`` lets two sets of listeners share it.
        self.slots = slots or CallerSlots(MAX_CONNECTIONS, MAX_PER_CALLER)
        self.refusals = RefusalLog(log)
        gid = unix_group_id(unix_group)
        if upstream:
            try:
                check_upstream(upstream, unix_path, tcp)
            except XendConfigError as e:
                raise ServerError(str(e)) from None
        try:
            context = tls_mod.server_context(tls) if tcp and tls else None
        except tls_mod.TlsSetupError as e:
            raise ServerError(str(e)) from None
        try:
            if unix_path:
                prepare_unix_path(unix_path, gid)
                try:
                    server = UnixXMLRPCServer(unix_path, RequestHandler, gid)
                except OSError as e:
                    raise ServerError(f"cannot listen on {unix_path}: {e.strerror}") from None
                server.setup_serving(api, upstream, max_request, self.slots, self.refusals)
                self.servers.append(server)
            if tcp:
                address = tcp_address(tcp, tls)
                self.tcp_host = address[0]
                self.servers.append(self._tcp_server(address, context, api, upstream,
                                                     max_request))
        except BaseException:
            self.close()
            raise
        if not self.servers:
            raise ServerError("nothing to listen on: no unix socket and no TCP server configured")

    def _tcp_server(self, address: tuple[str, int], context: ssl.SSLContext | None,
                    api: VnetAPI, upstream: str | None, max_request: int) -> TCPXMLRPCServer:
        try:
            server = TCPXMLRPCServer(address, RequestHandler)
        except OSError as e:
            raise ServerError(f"cannot listen on {address[0] or '*'}:{address[1]}: "
                              f"{e.strerror}") from None
        server.tls = context
        server.setup_serving(api, upstream, max_request, self.slots, self.refusals)
        return server

    def start(self) -> None:
        for server in self.servers:
            if isinstance(server, TCPXMLRPCServer):
                log.info("serving XML-RPC over %s", server.describe(self.tcp_host or ""))
            else:
                log.info("serving XML-RPC on the unix socket %s", server.server_address)
            t = threading.Thread(target=server.serve_forever, args=(0.1,), name="xmlrpc",
                                 daemon=True)
            t.start()
            self.threads.append(t)

    def close(self) -> None:
        for server in self.servers:
            if self.threads:
                server.shutdown()
            server.server_close()
        for t in self.threads:
            t.join(timeout=5)
        if self.unix_path and self.servers:
            try:
                if stat.S_ISSOCK(os.lstat(self.unix_path).st_mode):
                    os.unlink(self.unix_path)
            except OSError:
                pass
        self.servers = []
        self.threads = []
