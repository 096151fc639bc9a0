"""xend-vnet beside a running xend (design.md 9).

A stand-in upstream xend serves XML-RPC on a unix socket and records every
request it gets.  The real xend-vnet process runs with a config that sets
``xend-vnet-upstream`` and owns the socket xm uses: vnet methods are
answered locally, every other call reaches the upstream with its body byte
for byte, and a call that takes 60 s (an ``xm create`` or a migration) is
not cut short.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from http.server import BaseHTTPRequestHandler

import pytest
from netns import REPO, wait_for

from xend_vnet.httpu import server_proxy

SLOW_CALL = 60.0     # design.md 5: a call that takes 60 s goes through

# Odd but valid formatting: a re-encoding proxy would change these bytes.
DOMAINS_BODY = (b"<?xml version='1.0'?>\n<methodCall>\n<methodName>xend.domains</methodName>"
                b"\n<params>\n<param>\n<value><int>0</int></value>\n</param>\n</params>\n"
                b"</methodCall>\n  \t")
DOMAINS_REPLY = xmlrpc.client.dumps((["Domain-0", "guest1"],), methodresponse=True).encode()


class Upstream(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The stand-in xend: records (method, path, body); slow for xend.domain.create."""

    daemon_threads = True

    def __init__(self, path: str):
        self.calls: list[tuple[str, str, bytes]] = []
        super().__init__(path, UpstreamHandler)


class UpstreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        method = xmlrpc.client.loads(body)[1]
        self.server.calls.append((method, self.path, body))
        if method == "xend.domains":
            reply = DOMAINS_REPLY
        elif method == "xend.domain.create":
            time.sleep(SLOW_CALL)
            reply = xmlrpc.client.dumps((["domain", ["domid", 7]],), methodresponse=True).encode()
        else:
            reply = xmlrpc.client.dumps(xmlrpc.client.Fault(2, f"no method {method}"),
                                        methodresponse=True).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def raw_call(path: str, body: bytes, timeout: float = 30) -> tuple[bytes, bytes]:
    """POST body to /RPC2 over a unix socket; (head, body) of the reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    try:
        s.sendall(b"POST /RPC2 HTTP/1.0\r\nContent-Type: text/xml\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    finally:
        s.close()
    head, _, reply = data.partition(b"\r\n\r\n")
    return head, reply


@pytest.fixture
def beside_xend():
    d = tempfile.mkdtemp(prefix="xv6-proxy-")
    upstream_path = os.path.join(d, "xend", "xmlrpc.sock")
    os.makedirs(os.path.dirname(upstream_path))
    upstream = Upstream(upstream_path)
    threading.Thread(target=upstream.serve_forever, args=(0.1,), daemon=True).start()
    sock = os.path.join(d, "run", "xmlrpc.sock")
    config = os.path.join(d, "xend-config.sxp")
    with open(config, "w") as f:
        f.write(f"(xend-unix-xmlrpc-server no)\n(xend-vnet-unix-path {sock})\n"
                f"(xend-vnet-upstream httpu://{upstream_path})\n"
                f"(xend-vnet-state-dir {d}/state)\n"
                f"(xend-vnet-engine-control {d}/no-engine.sock)\n")
    env = dict(os.environ, PYTHONPATH=REPO)
    server = subprocess.Popen(
        [sys.executable, "-m", "xend_vnet.xmlrpc.cli", "start", "--foreground", "--no-engine",
         "--config", config], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: os.path.exists(sock) and server_proxy(f"httpu://{sock}", timeout=5)
                 .xend_vnets() == [], timeout=20, what="xend-vnet to serve")
        yield sock, upstream
    finally:
        server.send_signal(signal.SIGTERM)
        out = server.communicate(timeout=30)[0].decode(errors="replace")
        upstream.shutdown()
        upstream.server_close()
        shutil.rmtree(d, ignore_errors=True)
        assert server.returncode == 0, out


def test_vnet_methods_local_others_forwarded_byte_for_byte_and_slow_calls_wait(beside_xend):
    sock, upstream = beside_xend
    proxy = server_proxy(f"httpu://{sock}", timeout=SLOW_CALL + 60)

    # A call that takes SLOW_CALL seconds upstream, in flight during the rest.
    slow: dict[str, object] = {}

    def create():
        started = time.monotonic()
        slow["result"] = proxy.xend.domain.create(["vm", ["name", "guest2"]])
        slow["took"] = time.monotonic() - started

    t = threading.Thread(target=create)
    t.start()
    wait_for(lambda: any(c[0] == "xend.domain.create" for c in upstream.calls), timeout=20,
             what="the slow call to reach the upstream")

    # xend.domains: the body arrives unchanged and the reply comes back unchanged.
    head, reply = raw_call(sock, DOMAINS_BODY)
    assert head.split(b"\r\n")[0].endswith(b"200 OK")
    assert reply == DOMAINS_REPLY
    forwarded = [c for c in upstream.calls if c[0] == "xend.domains"]
    assert forwarded == [("xend.domains", "/RPC2", DOMAINS_BODY)]

    # The vnet methods are answered here and never reach the upstream.
    assert server_proxy(f"httpu://{sock}", timeout=10).xend_vnets() == []
    with pytest.raises(xmlrpc.client.Fault) as fault:
        server_proxy(f"httpu://{sock}", timeout=10).xend_vnet("97")
    assert fault.value.faultString == "No such vnet 97"
    assert not [c for c in upstream.calls if c[0].startswith(("xend_vnet", "vnet_"))]

    # An upstream fault passes through unchanged.
    with pytest.raises(xmlrpc.client.Fault) as fault:
        server_proxy(f"httpu://{sock}", timeout=10).xend.domain.destroy("guest1")
    assert (fault.value.faultCode, fault.value.faultString) == (2, "no method "
                                                               "xend.domain.destroy")

    t.join(SLOW_CALL + 60)
    assert not t.is_alive()
    assert slow["result"] == ["domain", ["domid", 7]]
    assert slow["took"] >= SLOW_CALL - 1


def test_an_unreachable_upstream_is_a_clear_fault(beside_xend):
    sock, upstream = beside_xend
    upstream.shutdown()
    upstream.server_close()
    os.unlink(upstream.server_address)
    with pytest.raises(xmlrpc.client.Fault) as fault:
        server_proxy(f"httpu://{sock}", timeout=10).xend.domains(0)
    assert "upstream xend" in fault.value.faultString
    assert "not reachable" in fault.value.faultString
    assert server_proxy(f"httpu://{sock}", timeout=10).xend_vnets() == [], "vnets still work"


def test_one_keep_alive_connection_mixes_local_and_forwarded_calls(beside_xend):
    """Python 3's ServerProxy (and so xm on it) keeps one HTTP/1.1 connection."""
    sock, upstream = beside_xend
    proxy = server_proxy(f"httpu://{sock}", timeout=10)
    for _ in range(2):
        assert proxy.xend.domains(0) == ["Domain-0", "guest1"]
        assert proxy.xend_vnets() == []
    assert [c[0] for c in upstream.calls] == ["xend.domains", "xend.domains"]


def test_tcp_callers_are_never_forwarded_upstream(tmp_path):
    """design.md 9: no TCP port gives local users control of domains. Beside xend with
    a TCP listener, only unix-socket callers reach the upstream; TCP callers get Fault 1
    for xend's methods and keep the vnet methods."""
    from vnet_server_harness import Harness

    upstream_path = str(tmp_path / "xend.sock")
    upstream = Upstream(upstream_path)
    threading.Thread(target=upstream.serve_forever, args=(0.1,), daemon=True).start()
    h = Harness(tcp=True, upstream=f"httpu://{upstream_path}")
    try:
        tcp = h.tcp_rpc()
        for call in (lambda: tcp.xend.domains(0), lambda: tcp.xend.domain.destroy("guest1")):
            with pytest.raises(xmlrpc.client.Fault) as fault:
                call()
            assert fault.value.faultCode == 1
            assert "served only on the unix socket" in fault.value.faultString
        assert upstream.calls == []
        assert tcp.xend_vnets() == []
        tcp.xend_vnet_create("(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))")
        assert tcp.xend_vnets() == ["97"]
        assert "xend_vnets" in tcp.system.listMethods()
        # The unix socket still forwards.
        assert server_proxy(f"httpu://{h.sock}", timeout=10).xend.domains(0) == \
            ["Domain-0", "guest1"]
        assert [c[0] for c in upstream.calls] == ["xend.domains"]
    finally:
        h.close()
        upstream.shutdown()
        upstream.server_close()
