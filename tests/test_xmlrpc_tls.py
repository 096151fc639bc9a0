"""HTTPS on the TCP XML-RPC server with xend's SSL keys (design.md 9, protocol.md 15).

Throwaway self-signed certificates are made here with ``cryptography``; every
socket is on 127.0.0.1.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import logging
import socket
import socketserver
import ssl
import time
import xmlrpc.client

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from vnet_server_harness import Harness

from xend_vnet.xend_config import TlsFiles
from xend_vnet.xmlrpc import server as server_mod
from xend_vnet.xmlrpc import tls as tls_mod
from xend_vnet.xmlrpc.server import ServerError, XMLRPCServers

VNET97 = "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))"


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_cert(directory, name="xmlrpc"):
    """A self-signed certificate for 127.0.0.1 and its key, as two PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    key_file, cert_file = directory / f"{name}.key", directory / f"{name}.crt"
    key_file.write_bytes(_key_pem(key))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return TlsFiles(str(key_file), str(cert_file))


@pytest.fixture
def files(tmp_path):
    return make_cert(tmp_path)


@pytest.fixture
def https(files):
    h = Harness(tcp=True, tls=files)
    yield h
    h.close()


@pytest.fixture
def logs(caplog):
    """Records of the xend-vnet logger, whatever another test did to its propagation."""
    logger = logging.getLogger("xend-vnet")
    logger.addHandler(caplog.handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield caplog
    logger.setLevel(old)
    logger.removeHandler(caplog.handler)


def client_context(files) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=files.cert_file)
    return context


def tcp_port(h) -> int:
    return h.servers.servers[1].server_address[1]


def https_rpc(h, files):
    return xmlrpc.client.ServerProxy(f"https://127.0.0.1:{tcp_port(h)}/RPC2", allow_none=True,
                                     context=client_context(files))


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def wait_for_message(caplog, text: str, timeout=5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in messages(caplog) if text in m]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no log message with {text!r} in {messages(caplog)}")


def test_https_round_trip_with_the_configured_key_and_certificate(https, files):
    rpc = https_rpc(https, files)
    assert rpc.xend_vnet_create(VNET97) is None
    assert rpc.xend_vnets() == ["97"]
    assert https.rpc.xend_vnets() == ["97"]          # the unix socket is unchanged
    with ssl.create_connection(("127.0.0.1", tcp_port(https))) as raw, \
            client_context(files).wrap_socket(raw, server_hostname="127.0.0.1") as s:
        assert s.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_1_1_client_refused(https, files, logs):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(files.cert_file)
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        with socket.create_connection(("127.0.0.1", tcp_port(https)), timeout=10) as raw:
            context.wrap_socket(raw, server_hostname="127.0.0.1")
    # Refused by the server (a minimum of TLS 1.2), not only by this client.
    assert wait_for_message(logs, "refused a connection from 127.0.0.1").endswith(
        "TLS handshake failed: UNSUPPORTED_PROTOCOL: the client offers no TLS 1.2 or later")


def test_plain_http_to_the_https_port_refused(https, logs):
    rpc = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{tcp_port(https)}/RPC2")
    with pytest.raises((OSError, http.client.HTTPException, xmlrpc.client.ProtocolError)):
        rpc.xend_vnets()
    assert wait_for_message(logs, "refused a connection from 127.0.0.1").endswith(
        "TLS handshake failed: HTTP_REQUEST: plain HTTP on the HTTPS port (use https://)")
    assert https.service.store.load_all()[0] == []


def test_client_that_never_says_hello_does_not_block_others(https, files, logs, monkeypatch):
    monkeypatch.setattr(server_mod.RequestHandler, "request_deadline", 1.0)
    silent = socket.create_connection(("127.0.0.1", tcp_port(https)), timeout=10)
    trickle = socket.create_connection(("127.0.0.1", tcp_port(https)), timeout=10)
    try:
        trickle.sendall(b"\x16")                       # a record that never completes
        started = time.monotonic()
        assert https_rpc(https, files).xend_vnets() == []
        assert time.monotonic() - started < 0.9          # served before any deadline
        # Both are cut off at the connection's deadline.
        assert silent.recv(100) == b"" and trickle.recv(100) == b""
        assert time.monotonic() - started < 5
    finally:
        silent.close()
        trickle.close()
    wait_for_message(logs, "no TLS handshake before the connection's deadline")


def _bind_loopback(monkeypatch) -> list:
    """Record where the TCP server was asked to listen, and listen on 127.0.0.1 instead."""
    asked = []

    def server_bind(self):
        asked.append(self.server_address)
        self.server_address = ("127.0.0.1", 0)
        socketserver.TCPServer.server_bind(self)

    monkeypatch.setattr(server_mod.TCPXMLRPCServer, "server_bind", server_bind)
    return asked


def test_empty_address_with_tls_is_every_interface(files, logs, monkeypatch):
    asked = _bind_loopback(monkeypatch)
    h = Harness(tcp=("", 0), tls=files)
    try:
        assert asked == [("", 0)]
        assert any(m.startswith("serving XML-RPC over https on 127.0.0.1")
                   for m in messages(logs))
        assert https_rpc(h, files).xend_vnets() == []
    finally:
        h.close()
    # What the log says when the bind really is every interface.
    server = server_mod.TCPXMLRPCServer(("127.0.0.1", 0), server_mod.RequestHandler,
                                        bind_and_activate=False)
    server.server_address, server.tls = ("0.0.0.0", 8006), ssl.create_default_context()
    assert server.describe("") == "https on 0.0.0.0 (every interface), port 8006"
    server.server_close()


def test_empty_address_without_tls_is_localhost_and_logged(logs):
    h = Harness(tcp=("", 0))
    try:
        host, port = h.servers.servers[1].server_address
        assert host == "127.0.0.1"
        warning = [r for r in logs.records if r.levelno == logging.WARNING]
        assert "serving plain HTTP on localhost only" in warning[0].getMessage()
        assert f"serving XML-RPC over http on 127.0.0.1, port {port}" in messages(logs)
        assert any(m == f"serving XML-RPC on the unix socket {h.sock}" for m in messages(logs))
    finally:
        h.close()


def test_bad_key_file_refused_naming_the_file(tmp_path, files):
    def refused(tls) -> str:
        with pytest.raises(ServerError) as info:
            XMLRPCServers(None, None, ("127.0.0.1", 0), tls=tls)
        return str(info.value)

    missing = str(tmp_path / "missing.key")
    assert refused(TlsFiles(missing, files.cert_file)) == (
        f"cannot read the TLS key {missing} (xend-tcp-xmlrpc-server-ssl-key-file): "
        "No such file or directory")
    other = make_cert(tmp_path, "other")
    assert refused(TlsFiles(other.key_file, files.cert_file)) == (
        f"the TLS key {other.key_file} (xend-tcp-xmlrpc-server-ssl-key-file) does not match "
        f"the certificate {files.cert_file} (xend-tcp-xmlrpc-server-ssl-cert-file)")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM\n")
    assert refused(TlsFiles(files.key_file, str(garbage))) == (
        f"the TLS certificate {garbage} (xend-tcp-xmlrpc-server-ssl-cert-file) is not a PEM "
        "certificate")
    assert refused(TlsFiles(str(garbage), files.cert_file)).startswith(
        f"the TLS key {garbage} (xend-tcp-xmlrpc-server-ssl-key-file) is not a PEM private key")
    locked = tmp_path / "locked.key"
    key = serialization.load_pem_private_key(open(files.key_file, "rb").read(), None)
    locked.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    assert refused(TlsFiles(str(locked), files.cert_file)) == (
        f"the TLS key {locked} (xend-tcp-xmlrpc-server-ssl-key-file) is encrypted; "
        "xend-vnet needs it without a passphrase")


def test_handshake_deadline_with_a_past_deadline(files):
    context = tls_mod.server_context(files)
    a, b = socket.socketpair()
    try:
        with pytest.raises(tls_mod.HandshakeFailed, match="deadline"):
            tls_mod.handshake(context, a, deadline=time.monotonic() - 1)
        assert a.fileno() == -1                      # closed: nothing is left open
    finally:
        a.close()
        b.close()
