"""xend-config.sxp, read with xend's rules (protocol.md 15, design.md 9).

All top-level forms are wrapped as ``(xend-config ...)``; a key's value is
the first ``(key value)`` child.  Booleans and integers fail with xend's
messages.  A missing file is only a warning; a parse error stops start-up.

Two deployments (design.md 9):

* standalone (no ``xend-vnet-upstream``): xend-vnet serves xend's XML-RPC
  socket and honours xend's XML-RPC keys;
* beside xend (``xend-vnet-upstream`` set): only the ``xend-vnet-*`` keys
  count, and methods xend-vnet does not serve go to the upstream xend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from . import sxp
from .process import default_control_path
from .store import DEFAULT_STATE_DIR

DEFAULT_PATH = "/etc/xen/xend-config.sxp"
XML_RPC_SOCKET = "/var/run/xend/xmlrpc.sock"
DEFAULT_TCP_ADDRESS = "localhost"
DEFAULT_TCP_PORT = 8006

_TRUE = ("yes", "y", "1", "on", "true", "t")
_FALSE = ("no", "n", "0", "off", "false", "f")


class XendConfigError(ValueError):
    """A config file that cannot be parsed or a value of the wrong kind."""


def config_path(explicit: str | None = None) -> str:
    """--config, else $XEND_CONFIG, else /etc/xen/xend-config.sxp."""
    return explicit or os.environ.get("XEND_CONFIG") or DEFAULT_PATH


class XendConfig:
    """The parsed ``(xend-config ...)`` form."""

    def __init__(self, forms: list[sxp.Sxpr], path: str = "", warnings: list[str] | None = None):
        self.sxpr = ["xend-config"] + list(forms)
        self.path = path
        self.warnings = list(warnings or [])

    @classmethod
    def from_text(cls, text: str, path: str = "") -> XendConfig:
        try:
            return cls(sxp.parse_all(text), path)
        except sxp.ParseError as e:
            raise XendConfigError(f"cannot parse {path or 'the xend config'}: {e}") from None

    @classmethod
    def read(cls, path: str) -> XendConfig:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return cls([], path, [f"xend config {path} not found; using defaults"])
        except (OSError, UnicodeDecodeError) as e:
            raise XendConfigError(f"cannot read {path}: {e}") from None
        return cls.from_text(text, path)

    def has(self, name: str) -> bool:
        return sxp.child(self.sxpr, name) is not None

    def get(self, name: str, default: str | None = None) -> str | None:
        value = sxp.child_value(self.sxpr, name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise XendConfigError(
                f"invalid xend config {name}: expected a value: {sxp.to_string(value)}")
        return value

    def get_bool(self, name: str, default: bool) -> bool:
        value = self.get(name)
        if value is None:
            return default
        v = value.lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        raise XendConfigError(f"invalid xend config {name}: expected bool: {value}")

    def get_int(self, name: str, default: int) -> int:
        value = self.get(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise XendConfigError(f"invalid xend config {name}: expected int: {value}") from None


@dataclass(frozen=True)
class ServerSettings:
    """Where xend-vnet listens and what it uses, after config and options."""

    deployment: str                      # "standalone" or "beside-xend"
    unix_path: str | None
    tcp: tuple[str, int] | None
    upstream: str | None
    log_file: str | None
    state_dir: str
    engine_control: str


_THIS_HOST = ("", "localhost", "127.0.0.1", "::1", "0.0.0.0", "::")


def check_upstream(upstream: str, unix_path: str | None, tcp: tuple[str, int] | None) -> None:
    """Refuse an ``xend-vnet-upstream`` that cannot work: a scheme other than httpu or
    http, no socket path, or our own socket (every forwarded call would come back)."""
    what = f"invalid xend config xend-vnet-upstream: {upstream!r}"
    parts = urlsplit(upstream)
    if parts.scheme == "httpu":
        if not parts.path:
            raise XendConfigError(f"{what} names no socket: use httpu:///PATH")
        if unix_path and os.path.realpath(parts.path) == os.path.realpath(unix_path):
            raise XendConfigError(f"{what} is xend-vnet's own socket {unix_path}; name the "
                                  "socket of the xend it stands beside")
        return
    if parts.scheme != "http":
        raise XendConfigError(f"{what}: use httpu:///PATH or http://HOST:PORT")
    try:
        port = parts.port or DEFAULT_TCP_PORT
    except ValueError:
        raise XendConfigError(f"{what} has an invalid port") from None
    host = parts.hostname or "localhost"
    if tcp and port == tcp[1] and (host == tcp[0] or (host in _THIS_HOST
                                                      and tcp[0] in _THIS_HOST)):
        raise XendConfigError(f"{what} is xend-vnet's own TCP server {tcp[0]}:{tcp[1]}")


def server_settings(cfg: XendConfig) -> ServerSettings:
    """Apply the rules of design.md 9 to a parsed config."""
    upstream = cfg.get("xend-vnet-upstream")
    own_unix = cfg.get("xend-vnet-unix-path")
    if upstream:
        deployment = "beside-xend"
        unix_path: str | None = own_unix or XML_RPC_SOCKET
        tcp_on = cfg.get_bool("xend-vnet-tcp-server", False)
        address = cfg.get("xend-vnet-tcp-address", DEFAULT_TCP_ADDRESS)
        port = cfg.get_int("xend-vnet-tcp-port", DEFAULT_TCP_PORT)
    else:
        deployment = "standalone"
        unix_on = cfg.get_bool("xend-unix-xmlrpc-server", True)
        unix_path = own_unix or (XML_RPC_SOCKET if unix_on else None)
        if cfg.has("xend-vnet-tcp-server"):
            tcp_on = cfg.get_bool("xend-vnet-tcp-server", False)
        else:
            tcp_on = cfg.get_bool("xend-tcp-xmlrpc-server", False)
        address = cfg.get("xend-vnet-tcp-address") or cfg.get(
            "xend-tcp-xmlrpc-server-address", DEFAULT_TCP_ADDRESS)
        if cfg.has("xend-vnet-tcp-port"):
            port = cfg.get_int("xend-vnet-tcp-port", DEFAULT_TCP_PORT)
        else:
            port = cfg.get_int("xend-tcp-xmlrpc-server-port", DEFAULT_TCP_PORT)
    if not 0 < port < 65536:
        raise XendConfigError(f"invalid xend config tcp port: {port} is not 1 to 65535")
    tcp = (address or DEFAULT_TCP_ADDRESS, port) if tcp_on else None
    if upstream:
        check_upstream(upstream, unix_path, tcp)
    return ServerSettings(
        deployment=deployment,
        unix_path=unix_path,
        tcp=tcp,
        upstream=upstream,
        log_file=cfg.get("xend-vnet-logfile"),
        state_dir=cfg.get("xend-vnet-state-dir", DEFAULT_STATE_DIR),
        engine_control=cfg.get("xend-vnet-engine-control") or default_control_path(),
    )
