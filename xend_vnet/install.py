"""``xend-vnet install``: put the product where a Xen host looks for it.

Run once by an operator after ``pip install``.  It writes, under ``--root``
(default ``/``):

* ``/etc/xen/scripts/network-vnet``, the network script of protocol.md
  14.3, whose ``VN_DEFAULT`` names this installation's ``vn`` by absolute path
  (xend runs scripts with PATH=/sbin:/usr/sbin:/bin:/usr/bin);
* ``/etc/xen/xend-config.sxp`` from the sample, or beside an existing one as
  ``xend-config.sxp.xend-vnet`` (an operator's config is never overwritten);
* systemd units ``vnetd.service`` and ``xend-vnet.service``: engine before
  server before domains, both ``Type=notify`` (``sdnotify``) so that a domain
  started at boot finds its bridge, ``LimitNOFILE=65536`` (design.md 5);
* beside a running xend (design.md 9), a drop-in for ``xend.service`` that
  moves xend's socket directory aside with ``BindPaths=``, so xend-vnet owns
  ``/var/run/xend/xmlrpc.sock`` and forwards the rest to xend.

The generation is pure (text in, text out); only ``install`` writes files.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from typing import TextIO

from . import atomic_file

SCRIPT_DIR = "/etc/xen/scripts"
XEND_CONFIG = "/etc/xen/xend-config.sxp"
UNIT_DIR = "/etc/systemd/system"
XEND_DROPIN = "xend.service.d/xend-vnet.conf"
# Where xend's socket directory lives on the host once the drop-in moves it.
UPSTREAM_DIR = "/run/xend-upstream"
UPSTREAM_URI = f"httpu://{UPSTREAM_DIR}/xmlrpc.sock"
XEND_RUN_DIR = "/run/xend"
# Units a domain or xend start depends on: they come after us.
DOMAIN_UNITS = "xendomains.service xen-init-dom0.service xenconsoled.service"
# Files whose presence under --root says that xend is installed.
XEND_MARKERS = ("usr/sbin/xend", "etc/init.d/xend", "lib/systemd/system/xend.service",
                "usr/lib/systemd/system/xend.service", "etc/systemd/system/xend.service")
VN_DEFAULT_LINE = "VN_DEFAULT=vn"
TOOLS = ("vn", "vnetd", "xend-vnet")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
NETWORK_VNET_SOURCE = os.path.join(_PACKAGE_DIR, "scripts", "network-vnet")
# The sample config: the source tree's etc/, or where setup.cfg's data_files put it.
SAMPLE_CONFIG_CANDIDATES = (
    os.path.join(os.path.dirname(_PACKAGE_DIR), "etc", "xend-config.sxp"),
    os.path.join(sys.prefix, "share", "xend-vnet", "xend-config.sxp"),
)


class InstallError(Exception):
    """Something the operator must fix before installing; the message says what."""


@dataclass(frozen=True)
class Tools:
    """Absolute paths of this installation's commands."""

    vn: str
    vnetd: str
    xend_vnet: str


def find_tools(bin_dirs: list[str] | None = None) -> Tools:
    """The commands beside this Python (a venv or prefix), else on PATH."""
    dirs = bin_dirs if bin_dirs is not None else [os.path.dirname(sys.executable)]
    found = {}
    for name in TOOLS:
        for d in dirs:
            path = os.path.join(d, name)
            if os.access(path, os.X_OK):
                found[name] = os.path.abspath(path)
                break
        else:
            path = shutil.which(name)
            if path is None:
                raise InstallError(
                    f"cannot find the {name} command; install the package first "
                    "(pip install .) with the Python that runs xend-vnet install")
            found[name] = os.path.abspath(path)
    return Tools(found["vn"], found["vnetd"], found["xend-vnet"])


def network_vnet_script(source: str, vn: str) -> str:
    """The network-vnet text with ``VN_DEFAULT`` set to ``vn`` (an absolute path)."""
    lines = source.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.rstrip("\n") == VN_DEFAULT_LINE]
    if len(hits) != 1:
        raise InstallError(f"network-vnet has {len(hits)} '{VN_DEFAULT_LINE}' lines; "
                           "expected exactly one to replace")
    lines[hits[0]] = f"VN_DEFAULT={shlex.quote(vn)}\n"
    return "".join(lines)


def vnetd_unit(tools: Tools) -> str:
    return f"""\
# Written by xend-vnet install.  The vnet engine (design.md 5): it starts
# even without a network and joins the multicast group once it can.
# `xend-vnet engine` becomes vnetd with the options xend-config.sxp gives
# it (the control plane of vxlan vnets, docs/fleet.md).
[Unit]
Description=xend-vnet tunnel engine (vnetd, the user-space vnet_module)
After=network.target
Before=xend-vnet.service xend.service {DOMAIN_UNITS}

[Service]
Type=notify
NotifyAccess=main
ExecStart={tools.xend_vnet} engine
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""


def xend_vnet_unit(tools: Tools) -> str:
    return f"""\
# Written by xend-vnet install.  The xend vnet API: it restores the stored
# vnets (bridges included) before it reports ready, so domains started
# after it find their bridges.  Wants=, not Requires=: beside xend it owns
# the socket every xm command uses, so it must run even if the engine
# cannot; it brings the vnets up once the engine answers (design.md 5).
[Unit]
Description=xend-vnet: the xend vnet API (xm vnet-*, XML-RPC)
Wants=vnetd.service
After=vnetd.service network.target
Before=xend.service {DOMAIN_UNITS}

[Service]
Type=notify
NotifyAccess=main
ExecStart={tools.xend_vnet} start --foreground --no-engine
Restart=on-failure
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""


def xend_dropin() -> str:
    return f"""\
# Written by xend-vnet install (design.md 9: xend-vnet beside a running xend).
# xend sees {UPSTREAM_DIR} as {XEND_RUN_DIR}, so its XML-RPC socket is
# {UPSTREAM_DIR}/xmlrpc.sock on the host, and xend-vnet serves
# {XEND_RUN_DIR}/xmlrpc.sock, the socket xm uses; it forwards every call it
# does not serve to xend.  Set in /etc/xen/xend-config.sxp:
#   (xend-vnet-upstream {UPSTREAM_URI})
[Unit]
Wants=xend-vnet.service
After=xend-vnet.service

[Service]
RuntimeDirectory=xend-upstream
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=yes
BindPaths={UPSTREAM_DIR}:{XEND_RUN_DIR}
"""


def sample_config(text: str, beside_xend: bool) -> str:
    """The sample xend-config.sxp; beside xend, with the upstream key set."""
    if not beside_xend:
        return text
    key = f"#(xend-vnet-upstream {UPSTREAM_URI})"
    if key not in text:
        raise InstallError(f"the sample xend-config.sxp lacks the line {key!r}")
    return text.replace(key, key[1:], 1)


def xend_installed(root: str) -> bool:
    return any(os.path.exists(os.path.join(root, m)) for m in XEND_MARKERS)


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise InstallError(f"cannot read {path}: {e.strerror}") from None


def _write(path: str, text: str, mode: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_file.write_atomically(path, text.encode("utf-8"), mode=mode,
                                 temp=f"{path}.tmp-{os.getpid()}", sync=False)


def find_sample_config() -> str:
    for path in SAMPLE_CONFIG_CANDIDATES:
        if os.path.exists(path):
            return path
    raise InstallError("cannot find the sample xend-config.sxp (looked in "
                       + ", ".join(SAMPLE_CONFIG_CANDIDATES) + ")")


def install(root: str = "/", beside_xend: bool | None = None, tools: Tools | None = None,
            out: TextIO = sys.stdout) -> list[str]:
    """Write every file under ``root``; return the paths written.

    ``beside_xend`` None means: if xend is installed under ``root``.
    """
    tools = tools or find_tools()
    if beside_xend is None:
        beside_xend = xend_installed(root)
    files: list[tuple[str, str, int]] = [
        (_under(root, f"{SCRIPT_DIR}/network-vnet"),
         network_vnet_script(_read(NETWORK_VNET_SOURCE), tools.vn), 0o755),
        (_under(root, f"{UNIT_DIR}/vnetd.service"), vnetd_unit(tools), 0o644),
        (_under(root, f"{UNIT_DIR}/xend-vnet.service"), xend_vnet_unit(tools), 0o644),
    ]
    config = _under(root, XEND_CONFIG)
    keep_config = os.path.exists(config)
    files.append((config + ".xend-vnet" if keep_config else config,
                  sample_config(_read(find_sample_config()), beside_xend), 0o644))
    if beside_xend:
        files.append((_under(root, f"{UNIT_DIR}/{XEND_DROPIN}"), xend_dropin(), 0o644))
    written = []
    for path, text, mode in files:
        try:
            _write(path, text, mode)
        except OSError as e:
            raise InstallError(f"cannot write {path}: {e.strerror}") from None
        written.append(path)
        print(f"wrote {path}", file=out)
    print(_next_steps(config, keep_config, beside_xend), file=out)
    return written


def _next_steps(config: str, kept: bool, beside_xend: bool) -> str:
    steps = ["", "Next:"]
    if kept:
        steps.append(f"  - {config} was left as it is; merge from {config}.xend-vnet: "
                     "(network-script network-vnet)"
                     + (f" and (xend-vnet-upstream {UPSTREAM_URI})" if beside_xend else ""))
    steps.append("  - systemctl daemon-reload && systemctl enable --now vnetd xend-vnet")
    if beside_xend:
        steps.append("  - systemctl restart xend   (its socket moves aside; xm now goes "
                     "through xend-vnet)")
    else:
        steps.append("  - standalone: xend-vnet serves /var/run/xend/xmlrpc.sock itself "
                     "(stop xend first if it runs)")
    return "\n".join(steps)
