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
from dataclasses import dataclass, field
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

    def get_list(self, name: str) -> list[str]:
        """Every value of ``(name v1 v2 ...)`` (the first such form); [] when absent."""
        found = sxp.child(self.sxpr, name)
        if found is None:
            return []
        values = found[1:]
        for v in values:
            if not isinstance(v, str):
                raise XendConfigError(
                    f"invalid xend config {name}: expected values: {sxp.to_string(v)}")
        return list(values)

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
class TlsFiles:
    """The TCP server's TLS key and certificate, and the settings that named them."""

    key_file: str
    cert_file: str
    key_setting: str = "xend-tcp-xmlrpc-server-ssl-key-file"
    cert_setting: str = "xend-tcp-xmlrpc-server-ssl-cert-file"


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
    tls: TlsFiles | None = None          # HTTPS on the TCP server (design.md 9)
    unix_group: str | None = None        # the unix socket 0660 for this group, else 0600
    # vnetd's parameters for the host's control plane (evpn_settings, docs/fleet.md)
    engine_params: dict[str, str] = field(default_factory=dict)


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


def _first_set(cfg: XendConfig, names: tuple[str, ...]) -> tuple[str, str | None]:
    """The first of ``names`` the config has, and its value."""
    for name in names:
        if cfg.has(name):
            return name, cfg.get(name)
    return names[-1], None


def tls_files(cfg: XendConfig, own_keys_only: bool) -> TlsFiles | None:
    """The TLS key and certificate, when both are set (xend: HTTPS only then); one
    without the other is refused rather than served as plain HTTP (design.md 9)."""
    own = ("xend-vnet-tcp-ssl-key-file", "xend-vnet-tcp-ssl-cert-file")
    xend = ("xend-tcp-xmlrpc-server-ssl-key-file", "xend-tcp-xmlrpc-server-ssl-cert-file")
    pairs = ((own[0],), (own[1],)) if own_keys_only else ((own[0], xend[0]), (own[1], xend[1]))
    key_setting, key = _first_set(cfg, pairs[0])
    cert_setting, cert = _first_set(cfg, pairs[1])
    if not key and not cert:
        return None
    if not (key and cert):
        have, missing = (key_setting, cert_setting) if key else (cert_setting, key_setting)
        raise XendConfigError(f"invalid xend config: {have} is set but {missing} is not; "
                              "set both to serve HTTPS, or neither")
    return TlsFiles(key, cert, key_setting, cert_setting)


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
        _, address = _first_set(cfg, ("xend-vnet-tcp-address",
                                      "xend-tcp-xmlrpc-server-address"))
        if cfg.has("xend-vnet-tcp-port"):
            port = cfg.get_int("xend-vnet-tcp-port", DEFAULT_TCP_PORT)
        else:
            port = cfg.get_int("xend-tcp-xmlrpc-server-port", DEFAULT_TCP_PORT)
    if not 0 < port < 65536:
        raise XendConfigError(f"invalid xend config tcp port: {port} is not 1 to 65535")
    # An empty address is xend's "every interface"; the server decides (design.md 9).
    tcp = (DEFAULT_TCP_ADDRESS if address is None else address, port) if tcp_on else None
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
        tls=tls_files(cfg, own_keys_only=bool(upstream)) if tcp_on else None,
        unix_group=cfg.get("xend-vnet-unix-group"),
    )
