"""HTTPS for the TCP XML-RPC server, as xend served it with its SSL keys (design.md 9).

``server_context`` checks the key and certificate at start and names the file
that is wrong; ``handshake`` runs in the connection's own thread, never on the
accept path, and must finish before the connection's deadline, so a client
that connects and never says hello holds only its own slot until then.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import time

from ..xend_config import TlsFiles


# OpenSSL's reasons that an operator reads better in words.
HANDSHAKE_REASONS = {
    "HTTP_REQUEST": "plain HTTP on the HTTPS port (use https://)",
    "UNSUPPORTED_PROTOCOL": "the client offers no TLS 1.2 or later",
}


class TlsSetupError(Exception):
    """The key or certificate cannot be used; the message names the file."""


class HandshakeFailed(Exception):
    """A client did not complete a TLS 1.2+ handshake in time; the connection is closed."""


def _readable(path: str, setting: str, what: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise TlsSetupError(f"cannot read the TLS {what} {path} ({setting}): "
                            f"{e.strerror or e}") from None


def _refuse_password() -> bytes:
    # Without this, OpenSSL would prompt on the terminal for an encrypted key.
    raise TlsSetupError("encrypted")


def _cert_parses(path: str) -> bool:
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError):
        return False
    return True


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A server context of TLS 1.2 or later with the configured key and certificate."""
    _readable(files.cert_file, files.cert_setting, "certificate")
    _readable(files.key_file, files.key_setting, "key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert_file, files.key_file, password=_refuse_password)
    except TlsSetupError:
        raise TlsSetupError(f"the TLS key {files.key_file} ({files.key_setting}) is "
                            "encrypted; xend-vnet needs it without a passphrase") from None
    except ssl.SSLError as e:
        reason = e.reason or str(e)
        if "KEY_VALUES_MISMATCH" in str(reason).upper():
            raise TlsSetupError(f"the TLS key {files.key_file} ({files.key_setting}) does not "
                                f"match the certificate {files.cert_file} "
                                f"({files.cert_setting})") from None
        if not _cert_parses(files.cert_file):
            raise TlsSetupError(f"the TLS certificate {files.cert_file} ({files.cert_setting}) "
                                "is not a PEM certificate") from None
        raise TlsSetupError(f"the TLS key {files.key_file} ({files.key_setting}) is not a "
                            f"PEM private key ({reason})") from None
    return context


def handshake(context: ssl.SSLContext, sock: socket.socket, deadline: float,
              clock=time.monotonic) -> ssl.SSLSocket:
    """The server side of the handshake on an accepted socket, done by ``deadline``
    (a ``clock`` time); on failure the connection is closed and HandshakeFailed says why."""
    tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    try:
        tls.setblocking(False)
        with selectors.DefaultSelector() as selector:
            selector.register(tls, selectors.EVENT_READ)
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    selector.modify(tls, selectors.EVENT_READ)
                except ssl.SSLWantWriteError:
                    selector.modify(tls, selectors.EVENT_WRITE)
                left = deadline - clock()
                if left <= 0 or not selector.select(left):
                    raise HandshakeFailed("no TLS handshake before the connection's deadline")
    except ssl.SSLError as e:
        tls.close()
        reason = e.reason or str(e)
        raise HandshakeFailed(f"TLS handshake failed: {reason}"
                              + (f": {HANDSHAKE_REASONS[reason]}"
                                 if reason in HANDSHAKE_REASONS else "")) from None
    except OSError as e:
        tls.close()
        raise HandshakeFailed(f"TLS handshake failed: {e.strerror or e}") from None
    except BaseException:
        tls.close()
        raise
    return tls
