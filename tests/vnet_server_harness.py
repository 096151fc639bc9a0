"""A running xend-vnet XML-RPC server over a fake engine and an in-memory
network, plus a client that speaks httpu exactly as an unmodified xm does."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import tempfile
import xmlrpc.client

from fake_engine import FakeEngine
from fake_net import FakeNet

from xend_vnet.engine_client import EngineClient
from xend_vnet.store import VnetStore
from xend_vnet.xmlrpc.api import VnetAPI
from xend_vnet.xmlrpc.server import XMLRPCServers
from xend_vnet.xm_commands import main as xm
from xend_vnet.xmlrpc.service import VnetService


class UnixConn(http.client.HTTPConnection):
    """What xm's httpu transport does: HTTP over AF_UNIX, nothing of ours."""

    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.unix_path)


class UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path):
        super().__init__()
        self.unix_path = path

    def make_connection(self, host):
        return UnixConn(self.unix_path)


def legacy_proxy(path):
    return xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=UnixTransport(path),
                                     allow_none=True)


def tcp_of(tcp):
    """Harness(tcp=True) listens on 127.0.0.1; a (host, port) pair is used as given."""
    if isinstance(tcp, tuple):
        return tcp
    return ("127.0.0.1", 0) if tcp else None


class Harness:
    def __init__(self, tcp=False, upstream=None, tls=None, unix_group=None):
        self.dir = tempfile.mkdtemp(prefix="xvm-")
        self.net = FakeNet()
        self.engine = FakeEngine(os.path.join(self.dir, "vnetd.sock"),
                                 on_add=self.net.add_link, on_del=self.net.remove_link).start()
        self.store = VnetStore(os.path.join(self.dir, "state"))
        self.service = VnetService(self.store, EngineClient(self.engine.path, timeout=5),
                                   net=self.net)
        self.service.load()
        self.sock = os.path.join(self.dir, "xmlrpc.sock")
        self.servers = XMLRPCServers(VnetAPI(self.service, forward_unknown=bool(upstream)),
                                     self.sock, tcp_of(tcp), upstream, tls=tls,
                                     unix_group=unix_group)
        self.servers.start()
        self.rpc = legacy_proxy(self.sock)

    def tcp_rpc(self):
        host, port = self.servers.servers[1].server_address
        return xmlrpc.client.ServerProxy(f"http://{host}:{port}/RPC2", allow_none=True)

    def raw(self, data: bytes, timeout=10) -> bytes:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(self.sock)
        try:
            s.sendall(data)
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                if b"\r\n\r\n" in out:
                    head, _, body = out.partition(b"\r\n\r\n")
                    length = [int(h.split(b":")[1]) for h in head.split(b"\r\n")
                              if h.lower().startswith(b"content-length:")]
                    if length and len(body) >= length[0]:
                        break
            return out
        finally:
            s.close()

    def close(self):
        self.servers.close()
        self.engine.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_xm(capsys, *args: str) -> tuple[int, str, str]:
    """``xm ARGS...`` in this process: (exit status, stdout, stderr)."""
    code = xm.main(["xm", *args])
    out, err = capsys.readouterr()
    return code, out, err
