"""The XML-RPC methods of xend-vnet: wire names, argument types, Faults.

Method names are those xm sends (protocol.md 10.1): ``xend_vnets``,
``xend_vnet(id)``, ``xend_vnet_create(path_or_text)``,
``xend_vnet_delete(id)``; plus ``vnet_create``, ``vnet_delete``,
``vnet_list`` (design.md 4), ``vnet_status`` (for ``xend-vnet status``) and
``system.listMethods``/``system.methodHelp``.  Vnet errors are Fault 2;
protocol errors and internal failures Fault 1; never Fault 3 (that one makes
xm print "Domain ... does not exist").

``dispatch`` works on request bytes and returns reply bytes (or None for a
method to hand to an upstream xend), so it is tested without sockets.
Requests are parsed with defusedxml: no DTDs, no entities.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import xml.parsers.expat
import xmlrpc.client
from collections.abc import Callable

from defusedxml import DefusedXmlException
from defusedxml.xmlrpc import DefusedExpatParser

from .. import sxp
from ..config import ConfigError, VnetConfig
from .caller import Caller, CallerFileError, read_caller_file
from .limits import RefusalLog
from .service import VnetFault, VnetService

log = logging.getLogger("xend-vnet")

ERROR_INTERNAL = 1
ERROR_GENERIC = 2
MAX_DEPTH = 32
# Anything but XML 1.0 Char: replies carrying it are not XML (protocol.md 10.1).
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def parse_request(body: bytes) -> tuple[str, tuple]:
    """Method name and params of an XML-RPC call; ValueError saying what is wrong."""
    unmarshaller = xmlrpc.client.Unmarshaller()
    parser = DefusedExpatParser(unmarshaller, forbid_dtd=True)
    try:
        parser.feed(body)
        parser.close()
        params = unmarshaller.close()
    except DefusedXmlException as e:
        raise ValueError(f"forbidden XML construct: {type(e).__name__}") from None
    except xml.parsers.expat.ExpatError as e:
        raise ValueError(f"malformed XML: {e}") from None
    except (xmlrpc.client.ResponseError, ValueError, TypeError, KeyError, IndexError) as e:
        raise ValueError(f"not an XML-RPC call: {e or type(e).__name__}") from None
    method = unmarshaller.getmethodname()
    if not isinstance(method, str) or not method:
        raise ValueError("not an XML-RPC call: no methodName")
    return method, tuple(params)


def fault_reply(code: int, message: str) -> bytes:
    return xmlrpc.client.dumps(xmlrpc.client.Fault(code, message), methodresponse=True,
                               allow_none=True).encode("utf-8")


def looks_like_text(value: str) -> bool:
    """Config text (first thing after blanks and '#' comments is '('), not a path."""
    for line in value.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        return stripped.startswith("(")
    return False


def check_sxpr(value: object) -> list:
    """A config given as nested arrays: only strings and lists, not too deep, and only
    characters an XML-RPC reply can carry (XML 1.0 Char), so listings never break."""
    if not isinstance(value, list):
        raise VnetFault("the config must be a list such as [\"vnet\", [\"id\", \"97\"]]")
    stack = [(value, 1, "vnet")]
    while stack:
        item, depth, field = stack.pop()
        if depth > MAX_DEPTH:
            raise VnetFault(f"the config is nested deeper than {MAX_DEPTH} levels")
        # The head of (key value ...) names the field of the values after it.
        inner = item[0] if item and isinstance(item[0], str) else field
        for i, x in enumerate(item):
            if isinstance(x, list):
                stack.append((x, depth + 1, inner))
            elif not isinstance(x, str):
                raise VnetFault(f"config values must be strings, found {type(x).__name__}")
            else:
                bad = _NOT_XML_CHAR.search(x)
                if bad:
                    what = f"key {x!r} in {field}" if i == 0 else f"{inner}: value {x!r}"
                    char = "control character" if bad.group() < " " else "character"
                    raise VnetFault(f"invalid vnet config: {what} contains the {char} "
                                    f"U+{ord(bad.group()):04X}, which XML-RPC cannot carry")
    return value


def check_remote_key_file(sxpr: list, key_dir: str) -> None:
    """design.md 7: over TCP, a key file is accepted only under the key directory of
    the state dir (symlinks resolved), so no remote caller makes the engine read
    other files."""
    try:
        key_file = VnetConfig.from_sxpr(sxpr).key_file
    except ConfigError:
        return          # create reports what is wrong with the config
    if key_file is None:
        return
    base = os.path.realpath(key_dir)
    if os.path.commonpath([os.path.realpath(key_file), base]) != base:
        raise VnetFault(f"invalid vnet config: key-file: {key_file!r} refused: over TCP, key "
                        f"files are accepted only under the key directory {key_dir}")


class VnetAPI:
    """The method table over one VnetService."""

    def __init__(self, service: VnetService, forward_unknown: bool = False):
        self.service = service
        self.forward_unknown = forward_unknown
        # Entity bombs and the like: one line per interval, not one per request.
        self.bad_requests = RefusalLog(log)
        self.methods: dict[str, Callable] = {
            "xend_vnets": self.xend_vnets,
            "xend_vnet": self.xend_vnet,
            "xend_vnet_create": self.xend_vnet_create,
            "xend_vnet_delete": self.xend_vnet_delete,
            "vnet_create": self.xend_vnet_create,
            "vnet_delete": self.xend_vnet_delete,
            "vnet_list": self.vnet_list,
            "vnet_status": self.vnet_status,
            "system.listMethods": self.list_methods,
            "system.methodHelp": self.method_help,
        }

    # -- methods (caller first, then the XML-RPC params) ----------------------

    def xend_vnets(self, caller: Caller) -> list:
        """xend_vnets() -> [id, ...]: stored ids as written, sorted by id."""
        return self.service.ids()

    def xend_vnet(self, caller: Caller, vnet_id: str) -> list:
        """xend_vnet(id) -> the stored config as nested arrays, exactly as written."""
        return self.service.get(vnet_id)

    def xend_vnet_create(self, caller: Caller, config: object) -> None:
        """xend_vnet_create(path | config text | nested arrays): create a vnet."""
        sxpr = self._config_of(caller, config)
        if caller.transport != "unix":
            check_remote_key_file(sxpr, self.service.store.key_dir)
        self.service.create(sxpr)

    def xend_vnet_delete(self, caller: Caller, vnet_id: str, force: bool = False) -> None:
        """xend_vnet_delete(id[, force]): delete a vnet; force even with vifs attached."""
        self.service.delete(vnet_id, force)

    def vnet_list(self, caller: Caller) -> list:
        """vnet_list() -> every stored config, sorted by id."""
        return self.service.list_all()

    def vnet_status(self, caller: Caller) -> dict:
        """vnet_status() -> {vnets, problems, store_problems, pending_removals}."""
        return self.service.status()

    def list_methods(self, caller: Caller) -> list:
        """system.listMethods() -> the method names."""
        return sorted(self.methods)

    def method_help(self, caller: Caller, name: str) -> str:
        """system.methodHelp(name) -> a one-line description."""
        func = self.methods.get(name)
        if func is None:
            raise VnetFault(f"no such method {name!r}")
        return (func.__doc__ or "").strip()

    def _config_of(self, caller: Caller, config: object) -> list:
        if isinstance(config, list):
            return check_sxpr(config)
        if not isinstance(config, str):
            raise VnetFault("expected a config file path, config text or nested arrays, "
                            f"not {type(config).__name__}")
        if looks_like_text(config):
            text, source = config, "the config text"
        else:
            try:
                text = read_caller_file(config, caller)
            except CallerFileError as e:
                raise VnetFault(str(e)) from None
            source = config
        try:
            return check_sxpr(sxp.parse_one(text))
        except sxp.ParseError as e:
            raise VnetFault(f"cannot parse {source}: {e}") from None

    # -- dispatch -------------------------------------------------------------

    def dispatch(self, caller: Caller, body: bytes) -> bytes | None:
        """Reply bytes for one request; None when the method belongs upstream."""
        try:
            method, params = parse_request(body)
        except ValueError as e:
            self.bad_requests.note("bad request", f"bad XML-RPC request: {e}")
            return fault_reply(ERROR_INTERNAL, f"bad XML-RPC request: {e}")
        func = self.methods.get(method)
        if func is None:
            if self.forward_unknown:
                # Only unix-socket callers reach the upstream xend: a TCP port must not
                # give local users control of domains (design.md 9).
                if caller.transport == "unix":
                    return None
                return fault_reply(ERROR_INTERNAL, f'method "{method}" is served only on '
                                   "the unix socket (xend's methods are not forwarded "
                                   "from TCP)")
            return fault_reply(ERROR_INTERNAL, f'method "{method}" is not supported')
        try:
            inspect.signature(func).bind(caller, *params)
        except TypeError:
            return fault_reply(ERROR_GENERIC, f"{method}: wrong number of arguments "
                               f"({len(params)} given); {(func.__doc__ or '').strip()}")
        try:
            result = func(caller, *params)
        except VnetFault as e:
            return fault_reply(ERROR_GENERIC, str(e))
        except Exception as e:
            log.exception("internal error in %s", method)
            return fault_reply(ERROR_INTERNAL, f"internal error in {method}: {e}")
        return xmlrpc.client.dumps((result,), methodresponse=True,
                                   allow_none=True).encode("utf-8")
