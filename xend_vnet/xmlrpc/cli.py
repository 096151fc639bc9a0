"""The ``xend-vnet`` command: start|stop|status|restart the server, delete, import,
install.

``start`` daemonizes unless ``--foreground`` and returns once the server is
ready (below), or with its error.  ``stop`` and ``status`` work from another
process through the pid file beside the socket (``<socket>.pid``), so one
server per network namespace can run on a machine.  Status exit codes
follow LSB: 0 running, 3 not running.  The sockets are served at once;
under systemd (``Type=notify``) the server says READY=1, and ``start``
returns, once every stored vnet is up or has failed with a logged reason
(design.md 5).  ``delete
[--force] ID`` asks the running server, or works on the store itself when
none runs: the way through for an admin whose xm has no ``--force``
(design.md 4).
"""

from __future__ import annotations

import argparse
import errno
import http.client
import logging
import os
import signal
import sys
import threading
import time
import xmlrpc.client

import psutil

from .. import bridges, frr_conf, frr_files, install, process, sdnotify
from .. import engine_launcher as launcher
from ..engine_client import EngineClient, EngineError
from ..evpn_settings import evpn_settings
from ..store import StoreError, VnetStore
from ..xend_config import ServerSettings, XendConfig, XendConfigError, config_path, server_settings
from ..httpu import server_proxy
from . import importer
from .api import VnetAPI
from .server import ServerError, XMLRPCServers
from .reconcile import ReconcileLoop
from .service import VnetFault, VnetService

log = logging.getLogger("xend-vnet")

DEFAULT_PID_FILE = "/var/run/xend-vnet.pid"
DEFAULT_LOG_FILE = "/var/log/xen/xend-vnet.log"
STATUS_RUNNING = 0
STATUS_NOT_RUNNING = 3
STOP_TIMEOUT = 15.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="xend-vnet", description="The xend vnet API server.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("start", "stop", "status", "restart"):
        s = sub.add_parser(name, help=f"{name} the server")
        s.add_argument("--foreground", action="store_true", help="do not daemonize")
        s.add_argument("--config", metavar="FILE",
                       help="xend config (default $XEND_CONFIG or /etc/xen/xend-config.sxp)")
        s.add_argument("--socket", metavar="PATH", help="unix socket to serve")
        s.add_argument("--socket-group", metavar="GROUP",
                       help="make the unix socket 0660 for GROUP (default 0600)")
        s.add_argument("--state-dir", metavar="DIR", help="state directory (vnets in DIR/vnet)")
        s.add_argument("--engine-control", metavar="PATH", help="vnetd control socket")
        s.add_argument("--no-engine", action="store_true",
                       help="do not start vnetd; only talk to it when it runs")
        s.add_argument("--pid-file", metavar="PATH", help="default <socket>.pid")
        s.add_argument("--log-file", metavar="PATH", help="default: stderr in the foreground")
        s.add_argument("--reconcile-interval", metavar="SECONDS", type=float, default=2.0,
                       help="how often to check the engine (default 2)")
    s = sub.add_parser("delete", help="delete a vnet, through the server if one runs")
    s.add_argument("--force", action="store_true",
                   help="even with domain interfaces attached to its bridge")
    s.add_argument("--config", metavar="FILE", help="xend config")
    s.add_argument("--socket", metavar="PATH", help="the server's unix socket")
    s.add_argument("--state-dir", metavar="DIR", help="state directory (when no server runs)")
    s.add_argument("--engine-control", metavar="PATH", help="vnetd control socket (likewise)")
    s.add_argument("--pid-file", metavar="PATH", help="default <socket>.pid")
    s.add_argument("id", metavar="ID", help="the vnet id, such as 97")
    s = sub.add_parser("import", help="import the vnets of a legacy xend")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--xenstore", action="store_true", help="from xenstore /vnet (default)")
    src.add_argument("--dir", metavar="PATH", help="from a Xen 2.0 xend-db/vnet directory")
    s.add_argument("--config", metavar="FILE", help="xend config")
    s.add_argument("--state-dir", metavar="DIR", help="state directory")
    s = sub.add_parser("evpn-config", help="write FRR's configuration for this host's "
                       "EVPN role (docs/fleet.md)")
    s.add_argument("--config", metavar="FILE", help="xend config")
    s.add_argument("--root", metavar="DIR", default="/",
                   help="write under DIR/etc/frr instead of /etc/frr")
    s.add_argument("--force", action="store_true",
                   help="replace a frr.conf xend-vnet did not write (it is kept aside)")
    s.add_argument("--print", dest="print_only", action="store_true",
                   help="print frr.conf instead of writing it (without the password)")
    s = sub.add_parser("engine", help="run vnetd in the foreground with the options "
                       "xend-config.sxp gives it (vnetd.service)")
    s.add_argument("--config", metavar="FILE", help="xend config")
    s = sub.add_parser("install", help="install network-vnet, systemd units, sample config")
    s.add_argument("--root", metavar="DIR", default="/",
                   help="install under DIR instead of / (for packaging and tests)")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--beside-xend", dest="beside_xend", action="store_true", default=None,
                       help="also write the xend drop-in (default: if xend is installed)")
    where.add_argument("--standalone", dest="beside_xend", action="store_false",
                       help="no xend drop-in")
    return p.parse_args(argv)


def settings_of(args: argparse.Namespace) -> tuple[ServerSettings, list[str]]:
    """The config file's settings with the command-line options on top, and the
    config's warnings (logged by ``start`` only)."""
    cfg = XendConfig.read(config_path(args.config))
    s = server_settings(cfg)
    # Only a start launches the engine: a wrong EVPN key never stops a stop.
    starting = getattr(args, "command", "") in ("start", "restart")
    params = evpn_settings(cfg).engine_params() if starting else {}
    return ServerSettings(
        deployment=s.deployment,
        unix_path=getattr(args, "socket", None) or s.unix_path,
        tcp=s.tcp,
        upstream=s.upstream,
        log_file=getattr(args, "log_file", None) or s.log_file,
        state_dir=args.state_dir or s.state_dir,
        engine_control=getattr(args, "engine_control", None) or s.engine_control,
        tls=s.tls,
        unix_group=getattr(args, "socket_group", None) or s.unix_group,
        engine_params=params,
    ), cfg.warnings


def pid_file_of(args: argparse.Namespace, settings: ServerSettings) -> str:
    if args.pid_file:
        return args.pid_file
    return settings.unix_path + ".pid" if settings.unix_path else DEFAULT_PID_FILE


def running_pid(pid_file: str) -> int | None:
    """The pid of the xend-vnet this pid file names, if it still runs."""
    # vnetd's command line also names the package: look for this command precisely.
    return process.live_pid(pid_file, "xend-vnet", __spec__.name)


def setup_logging(log_file: str | None) -> None:
    process.setup_logging("xend-vnet", logging.INFO, log_file)


def ensure_engine(control: str, params: dict[str, str] | None = None) -> str | None:
    """Start vnetd if nothing answers on its control socket (design.md 5), with
    the parameters xend-config.sxp gives it (the EVPN control plane,
    docs/fleet.md); return why it could not be started, or None.  Under
    systemd the unit runs ``xend-vnet engine``, which reads them itself: a
    running engine is only checked against them."""
    params = params or {}
    try:
        if launcher.unit_serves(control):
            launcher.ensure_engine(control, {})
            launcher.reconcile_running(control, params)
        else:
            launcher.ensure_engine(control, params)
    except (EngineError, launcher.LauncherError, OSError) as e:
        return str(getattr(e, "message", e))
    return None


def restore(args: argparse.Namespace, settings: ServerSettings, service: VnetService,
            stopping: threading.Event, engine_params: dict[str, str] | None = None) -> bool:
    """Make sure vnetd answers, then bring every stored vnet up or log why not;
    False when stopped before the end (design.md 5: ready only after this)."""
    if not args.no_engine:
        reason = ensure_engine(settings.engine_control, engine_params)
        if reason:
            log.error("cannot start vnetd: %s; stored vnets are restored once it runs",
                      reason)
    started = time.monotonic()
    problems = service.reconcile(stopping.is_set)
    if stopping.is_set():
        return False
    # servers.start() logged each listener: address, port, http or https.
    log.info("ready (%s), state in %s, engine %s: %d stored vnets restored in %.1f s%s",
             settings.deployment, settings.state_dir, settings.engine_control,
             len(service.configs) - len(problems), time.monotonic() - started,
             f", {len(problems)} not up" if problems else "")
    return True


def serve(args: argparse.Namespace, settings: ServerSettings, warnings: list[str],
          pid_file: str, ready=None) -> int:
    """Run the server until SIGTERM/SIGINT; ``ready(error)`` is called once listening."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    for w in warnings:
        log.warning("%s", w)
    service = VnetService(VnetStore(settings.state_dir), EngineClient(settings.engine_control))
    try:
        service.load()
    except StoreError as e:
        log.error("%s", e)
        if ready:
            ready(str(e))
        return 1
    api = VnetAPI(service, forward_unknown=bool(settings.upstream))
    try:
        servers = XMLRPCServers(api, settings.unix_path, settings.tcp, settings.upstream,
                                tls=settings.tls, unix_group=settings.unix_group)
    except ServerError as e:
        log.error("%s", e)
        if ready:
            ready(str(e))
        return 1
    loop = ReconcileLoop(service, args.reconcile_interval)
    try:
        process.write_pid_file(pid_file)
        # Served at once: listings answer from the store while the restore runs,
        # creates and deletes wait for one batch of it (design.md 5).
        servers.start()
        restored = restore(args, settings, service, stopping, settings.engine_params)
        if ready:
            ready(None if restored else "stopped before the stored vnets were restored")
        if restored:
            sdnotify.notify("READY=1")
        loop.start()
        while not stopping.wait(1.0):
            pass
        log.info("stopping")
        sdnotify.notify("STOPPING=1")
    finally:
        loop.stop()
        servers.close()
        process.remove_pid_file(pid_file)
    return 0


def daemon_start(args: argparse.Namespace, settings: ServerSettings, warnings: list[str],
                 pid_file: str) -> int:
    """Fork a detached server; return once it listens or failed."""
    log_file = settings.log_file or DEFAULT_LOG_FILE
    in_daemon, fd = process.detach()
    if not in_daemon:
        message = process.wait_ready(fd, None)[0].strip()
        if message == "ok":
            return 0
        print(f"xend-vnet: {message or 'failed to start; see ' + log_file}", file=sys.stderr)
        return 1
    try:
        setup_logging(log_file)
    except OSError as e:
        process.report_ready(fd, f"cannot open the log file {log_file}: {e.strerror or e}")
        os._exit(1)
    try:
        code = serve(args, settings, warnings, pid_file,
                     lambda error: process.report_ready(fd, error))
    except BaseException:
        log.exception("xend-vnet died")
        code = 1
    os._exit(code)


def cmd_start(args: argparse.Namespace, settings: ServerSettings, warnings: list[str],
              pid_file: str) -> int:
    pid = running_pid(pid_file)
    if pid is not None:
        print(f"xend-vnet is already running (pid {pid})")
        return 0
    if args.foreground:
        setup_logging(settings.log_file)
        return serve(args, settings, warnings, pid_file)
    return daemon_start(args, settings, warnings, pid_file)


def cmd_stop(pid_file: str) -> int:
    pid = running_pid(pid_file)
    if pid is None:
        print("xend-vnet is not running")
        return 0
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        proc.wait(STOP_TIMEOUT)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        print(f"xend-vnet (pid {pid}) did not stop within {STOP_TIMEOUT:g} s", file=sys.stderr)
        return 1
    return 0


def cmd_status(settings: ServerSettings, pid_file: str) -> int:
    pid = running_pid(pid_file)
    if pid is None:
        print("xend-vnet is not running")
        return STATUS_NOT_RUNNING
    where = settings.unix_path or (f"{settings.tcp[0]}:{settings.tcp[1]}" if settings.tcp else "")
    print(f"xend-vnet is running (pid {pid}) on {where}")
    uri = (f"httpu://{settings.unix_path}" if settings.unix_path
           else f"http://{settings.tcp[0]}:{settings.tcp[1]}/RPC2")
    try:
        status = server_proxy(uri, timeout=10).vnet_status()
    except (OSError, xmlrpc.client.Error, http.client.HTTPException) as e:
        print(f"  cannot ask it for details: {e}")
        return STATUS_RUNNING
    print(f"  vnets: {' '.join(status.get('vnets', [])) or '(none)'}")
    for line in status.get("problems", []):
        print(f"  not up: {line}")
    for line in status.get("pending_removals", []):
        print(f"  removal pending until vnetd answers: {line}")
    for line in status.get("store_problems", []):
        print(f"  store: {line}")
    return STATUS_RUNNING


def server_uri(settings: ServerSettings) -> str | None:
    if settings.unix_path:
        return f"httpu://{settings.unix_path}"
    return f"http://{settings.tcp[0]}:{settings.tcp[1]}/RPC2" if settings.tcp else None


def cmd_delete(args: argparse.Namespace, settings: ServerSettings, pid_file: str,
               net=bridges) -> int:
    """``xend-vnet delete [--force] ID``: ``vnet_delete(ID, force)`` on the running
    server; with none, the same delete on the store and engine directly."""
    uri = server_uri(settings)
    try:
        if uri is not None:
            server_proxy(uri, timeout=60).vnet_delete(args.id, args.force)
            return 0
    except xmlrpc.client.Fault as e:
        print(f"xend-vnet delete: {e.faultString}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ECONNREFUSED):
            print(f"xend-vnet delete: cannot ask the server at {uri}: {e}", file=sys.stderr)
            return 1
    except (xmlrpc.client.Error, http.client.HTTPException) as e:
        print(f"xend-vnet delete: cannot ask the server at {uri}: {e}", file=sys.stderr)
        return 1
    pid = running_pid(pid_file)
    if pid is not None:
        # Starting, or not serving: two writers of one store never.
        print(f"xend-vnet delete: xend-vnet (pid {pid}) runs but does not answer on {uri}; "
              "try again", file=sys.stderr)
        return 1
    return delete_in_store(args, settings, net)


def delete_in_store(args: argparse.Namespace, settings: ServerSettings, net) -> int:
    """The delete with no server: the service over the store, run here."""
    logger = logging.getLogger("xend-vnet")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())    # what matters is printed below
    service = VnetService(VnetStore(settings.state_dir), EngineClient(settings.engine_control),
                          net=net)
    try:
        for problem in service.load():
            print(f"xend-vnet delete: store: {problem}", file=sys.stderr)
        later = service.delete(args.id, args.force)
    except (StoreError, VnetFault) as e:
        print(f"xend-vnet delete: {e}", file=sys.stderr)
        return 1
    if later:
        print(f"deleted vnet {args.id}; {later}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    state_dir = args.state_dir or server_settings(
        XendConfig.read(config_path(args.config))).state_dir
    try:
        entries = (importer.read_xend_db(args.dir) if args.dir
                   else importer.read_xenstore())
        result = importer.import_configs(VnetStore(state_dir), entries)
    except (importer.ImportSourceError, StoreError) as e:
        print(f"xend-vnet import: {e}", file=sys.stderr)
        return 1
    for id_text in result.imported:
        print(f"imported vnet {id_text}")
    for source, reason in result.skipped:
        print(f"skipped {source}: {reason}")
    print(f"{len(result.imported)} imported, {len(result.skipped)} skipped"
          + ("; restart xend-vnet to bring them up" if result.imported else ""))
    return 0


def cmd_evpn_config(args: argparse.Namespace) -> int:
    """Write (or print) FRR's configuration for this host (docs/fleet.md)."""
    path = config_path(args.config)
    try:
        settings = evpn_settings(XendConfig.read(path))
        if args.print_only:
            password = "PASSWORD" if settings.password_file else None
            sys.stdout.write(frr_conf.frr_conf(settings, password, path))
            return 0
        written = frr_files.write_frr_files(settings, args.root, args.force, path)
    except (XendConfigError, frr_conf.FrrConfigError, frr_files.FrrFilesError) as e:
        print(f"xend-vnet evpn-config: {e}", file=sys.stderr)
        return 1
    for w in written:
        print(f"{w.path}: {'written' if w.changed else 'unchanged'}"
              + (f" (the former one kept as {w.saved})" if w.saved else ""))
    if any(w.changed for w in written):
        print("apply it: systemctl restart frr (or systemctl reload frr when only "
              "frr.conf changed)")
    roles = [r for r, on in (("advertises its EVPN vnets", settings.vtep),
                             ("reflects routes for its listen ranges", settings.reflector)) if on]
    print(f"this host {' and '.join(roles)}")
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    """Become vnetd, with the options xend-config.sxp gives (vnetd.service's
    ExecStart): the per-host control plane reaches the engine however it is
    started (docs/fleet.md)."""
    try:
        cfg = XendConfig.read(config_path(args.config))
        control = server_settings(cfg).engine_control
        options = launcher.parse_params(evpn_settings(cfg).engine_params())
    except (XendConfigError, launcher.LauncherError) as e:
        print(f"xend-vnet engine: {e}", file=sys.stderr)
        return 1
    command = launcher.engine_command(control, options)
    os.execve(command[0], command, launcher.child_env())


def cmd_install(args: argparse.Namespace) -> int:
    try:
        install.install(args.root, args.beside_xend)
    except install.InstallError as e:
        print(f"xend-vnet install: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "import":
            return cmd_import(args)
        if args.command == "install":
            return cmd_install(args)
        if args.command == "evpn-config":
            return cmd_evpn_config(args)
        if args.command == "engine":
            return cmd_engine(args)
        settings, warnings = settings_of(args)
    except XendConfigError as e:
        print(f"xend-vnet: {e}", file=sys.stderr)
        return 1
    pid_file = pid_file_of(args, settings)
    if args.command == "start":
        return cmd_start(args, settings, warnings, pid_file)
    if args.command == "stop":
        return cmd_stop(pid_file)
    if args.command == "status":
        return cmd_status(settings, pid_file)
    if args.command == "delete":
        return cmd_delete(args, settings, pid_file)
    code = cmd_stop(pid_file)
    if code:
        return code
    deadline = time.monotonic() + STOP_TIMEOUT
    while running_pid(pid_file) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    return cmd_start(args, settings, warnings, pid_file)


if __name__ == "__main__":
    sys.exit(main())
