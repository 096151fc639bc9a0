"""Start and stop the engine for ``vn insmod`` / ``vn rmmod`` (design.md 5).

``vn insmod`` stands for loading the legacy kernel module: it makes sure a
vnetd answers on the control socket.  Under systemd (PID 1, unit installed,
default socket, no parameters) the engine is started as ``vnetd.service`` so
it never lives in the caller's cgroup; otherwise it is started as a detached
daemon (``vnetd --daemon``: own session, pid file beside the control socket)
and this returns once the control socket answers.

Only a process whose command line is a vnetd is ever signalled: a pid file
may be stale and its pid reused by something else.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import psutil

from . import process, sxp
from .engine_client import EngineClient, EngineError, EngineUnavailable
from .kernel_shim import daemon as vnetd
from .process import DEFAULT_CONTROL

SYSTEMD_UNIT = "vnetd.service"
DAEMON_MODULE = vnetd.__name__          # run with -m
_UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
              "/usr/lib/systemd/system", "/lib/systemd/system")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
_POLL = 0.1

# vnetd options the launcher sets itself, never ``vn insmod`` parameters.
_LAUNCHER_OWNS = ("help", "version", "control", "pid_file", "daemon")
# Changed in a running engine by (varp.mcaddr (addr A) (ttl N)).
_RUNTIME = ("mcaddr", "mcast_ttl")
_TRUE = ("1", "yes", "true", "on")
_FALSE = ("0", "no", "false", "off")


def _parameter_table(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``vn insmod`` parameter -> vnetd option: each long spelling of vnetd's
    options, dashes as underscores, so legacy module parameters (protocol.md
    13: varp_mcaddr, varp_device) are vnetd's legacy aliases, and a new
    vnetd option is a parameter at once."""
    table = {}
    for action in parser._actions:      # argparse lists its options nowhere public
        if action.dest in _LAUNCHER_OWNS:
            continue
        for spelling in action.option_strings:
            if spelling.startswith("--"):
                table[spelling[2:].replace("-", "_")] = action
    return table


_PARAMS = _parameter_table(vnetd.build_parser())


def _option(action: argparse.Action) -> str:
    """The spelling the launcher writes: the first long one (--mcaddr)."""
    return next(s for s in action.option_strings if s.startswith("--"))


def _is_flag(action: argparse.Action) -> bool:
    return action.nargs == 0


class LauncherError(Exception):
    """The engine could not be started or stopped; the message says why."""


def pid_file_of(control_path: str) -> str:
    """vnetd's default pid file: ``<control>.pid`` (design.md 5)."""
    return control_path + ".pid"


def default_log_file(control_path: str) -> str:
    """Where a vnetd started by ``vn insmod`` logs."""
    if control_path == DEFAULT_CONTROL:
        return "/var/log/vnetd.log"
    return control_path + ".log"


def parse_params(params: dict[str, str]) -> list[str]:
    """The vnetd options for ``insmod`` parameters; LauncherError names bad ones.

    ``vnet_encaps=udp`` is the only encapsulation vnetd sends (protocol.md 4.2):
    etherip (IP protocol 97) is refused rather than silently ignored.
    """
    options: list[str] = []
    unknown = []
    for raw_key, value in params.items():
        key = raw_key.replace("-", "_")
        if key == "vnet_encaps":
            if value == "udp":
                continue
            if value == "etherip":
                raise LauncherError(
                    "vnet_encaps=etherip is not supported: vnetd sends etherip in UDP "
                    "port 1798 only (use vnet_encaps=udp, the legacy default)")
            raise LauncherError(f"invalid vnet_encaps {value!r}: expected udp")
        action = _PARAMS.get(key)
        if action is None:
            unknown.append(raw_key)
        elif not _is_flag(action):
            if value == "":
                raise LauncherError(f"parameter {raw_key} needs a value ({raw_key}=VALUE)")
            options += [_option(action), value]
        elif value.lower() in _TRUE:
            options.append(_option(action))
        elif value.lower() not in _FALSE:
            raise LauncherError(f"invalid {raw_key} {value!r}: expected yes or no")
    if unknown:
        known = param_names()
        raise LauncherError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(known: {', '.join(known)})")
    return options


def takes_value(name: str) -> bool | None:
    """Whether parameter ``name`` takes a value (False: a flag); None: unknown."""
    action = _PARAMS.get(name)
    return None if action is None else not _is_flag(action)


def param_names() -> list[str]:
    """Every parameter name ``vn insmod`` accepts (``vn insmod --list-params``)."""
    return sorted(set(_PARAMS) | {"vnet_encaps"})


def _cmdline_value(cmdline: list[str], action: argparse.Action) -> str | bool | None:
    """The value of ``action``'s option on a vnetd command line (the last one wins)."""
    flag = _is_flag(action)
    found: str | bool | None = False if flag else None
    for i, arg in enumerate(cmdline):
        name, eq, value = arg.partition("=")
        if name not in action.option_strings:
            continue
        if flag:
            found = True
        elif eq:
            found = value
        elif i + 1 < len(cmdline):
            found = cmdline[i + 1]
    return found


def _asked(params: dict[str, str]) -> dict[str, tuple[argparse.Action, str, str]]:
    """vnetd option (its dest) -> (its action, parameter as given, asked value)."""
    asked = {}
    for raw_key, value in params.items():
        action = _PARAMS.get(raw_key.replace("-", "_"))
        if action is not None:
            asked[action.dest] = (action, raw_key, value)
    return asked


def _same(action: argparse.Action, running: str, wanted: str) -> bool:
    if _is_flag(action):
        return (running.lower() in _TRUE) == (wanted.lower() in _TRUE)
    kind = action.type if callable(action.type) else str
    try:
        return kind(running) == kind(wanted)
    except ValueError:
        return running == wanted


def _engine_cmdline(status: sxp.Sxpr) -> list[str] | None:
    try:
        return psutil.Process(int(sxp.child_value(status, "pid", ""))).cmdline()
    except (psutil.Error, OSError, ValueError):
        return None


def _cmdline_mismatch(action: argparse.Action, raw_key: str, wanted: str,
                      cmdline: list[str] | None) -> str | None:
    """What differs between ``wanted`` and the running vnetd's command line, or None."""
    if cmdline is None:
        return (f"{raw_key}: the running engine's value cannot be read "
                f"(asked {wanted})")
    have = _cmdline_value(cmdline, action)
    if isinstance(have, bool):
        if have == (wanted.lower() in _TRUE):
            return None
        shown = "yes" if have else "no"
    elif have is None:
        shown = "not set"
    elif have == wanted or (action.metavar == "PATH"       # build_parser: a file
                            and os.path.realpath(have) == os.path.realpath(wanted)):
        return None
    else:
        shown = have
    return f"{raw_key}: running {shown}, asked {wanted}"


def reconcile_running(control_path: str, params: dict[str, str]) -> None:
    """Make a running engine match ``params`` (design.md 5: no silent no-op).

    Values the status reports are compared there, the others on the running
    vnetd's command line.  The VARP group and multicast TTL are changed at
    run time (varp.mcaddr); any other parameter that differs is a
    LauncherError naming the parameter, the running value and the asked one.
    """
    asked = _asked(params)
    if not asked:
        return
    client = EngineClient(control_path, timeout=5.0)
    status = client.call(["engine.status"])[0]
    reported = {}
    for dest in asked:
        value = sxp.child_value(status, dest.replace("_", "-"))
        reported[dest] = value if isinstance(value, str) else None
    cmdline = _engine_cmdline(status) if None in reported.values() else None
    mismatches: list[str] = []
    runtime: dict[str, str] = {}
    for dest, (action, raw_key, wanted) in asked.items():
        have = reported[dest]
        if have is None:
            mismatch = _cmdline_mismatch(action, raw_key, wanted, cmdline)
        elif _same(action, have, wanted):
            mismatch = None
        elif dest in _RUNTIME:
            runtime[dest] = wanted
            mismatch = None
        else:
            mismatch = f"{raw_key}: running {have or 'none'}, asked {wanted}"
        if mismatch:
            mismatches.append(mismatch)
    if mismatches:
        raise LauncherError(
            "vnetd already runs on " + control_path + " with other parameters ("
            + "; ".join(mismatches) + "); they cannot be changed while it runs: "
            "stop it first (vn rmmod), then vn insmod again")
    if runtime:
        _change_group(client, runtime, sxp.child_value(status, "mcaddr"))


def _change_group(client: EngineClient, runtime: dict[str, str], mcaddr: str) -> None:
    form: list = ["varp.mcaddr", ["addr", runtime.get("mcaddr", mcaddr)]]
    if "mcast_ttl" in runtime:
        form.append(["ttl", runtime["mcast_ttl"]])
    try:
        client.call(form)
    except EngineError as e:
        raise LauncherError(f"cannot change the running engine's VARP group: {e}") from None


def is_vnetd(proc: psutil.Process) -> bool:
    """True when the process runs vnetd (console script or ``-m`` module)."""
    return process.runs_command(proc, "vnetd", DAEMON_MODULE)


def engine_pid(control_path: str) -> int | None:
    """The pid in the pid file beside the socket, if that process is a live vnetd."""
    return process.live_pid(pid_file_of(control_path), "vnetd", DAEMON_MODULE)


def running_pid(control_path: str) -> int | None:
    """The engine's pid: from the pid file, else as the engine reports it
    (a vnetd started with another ``--pid-file``), if that is a vnetd."""
    pid = engine_pid(control_path)
    if pid is not None:
        return pid
    try:
        status = EngineClient(control_path, timeout=2.0).call(["engine.status"])
        pid = int(sxp.child_value(status[0], "pid", ""))
        return pid if is_vnetd(psutil.Process(pid)) else None
    except (EngineError, IndexError, ValueError, psutil.Error):
        return None


def engine_answers(control_path: str, timeout: float = 2.0, strict: bool = False) -> bool:
    """True when an engine answers ``(engine.status)`` on the control socket.

    With ``strict``, an engine that is there but answers with an error (a
    caller from another network namespace, design.md 5) or not at all is a
    LauncherError: starting a second engine would not help.
    """
    try:
        EngineClient(control_path, timeout=timeout).call(["engine.status"])
        return True
    except EngineUnavailable:
        return False
    except EngineError as e:
        if strict:
            raise LauncherError(f"the engine on {control_path} does not serve us: {e}") from None
        return False


def systemd_booted() -> bool:
    """sd_booted(3): systemd is PID 1."""
    return os.path.isdir("/run/systemd/system")


def systemd_unit_installed() -> bool:
    return any(os.path.exists(os.path.join(d, SYSTEMD_UNIT)) for d in _UNIT_DIRS)


def _use_systemd(control_path: str, options: list[str]) -> bool:
    # The unit has its own command line: it can only serve the default socket
    # with the options xend-config.sxp gives (``xend-vnet engine``).  Anything
    # else runs as a detached daemon.
    return not options and unit_serves(control_path)


def unit_serves(control_path: str) -> bool:
    """Whether ``vnetd.service`` is the engine of ``control_path``: systemd runs,
    the unit is installed and the socket is the default one."""
    return control_path == DEFAULT_CONTROL and systemd_booted() and systemd_unit_installed()


def daemon_command(control_path: str, options: list[str]) -> list[str]:
    """The command line that starts a detached vnetd for ``control_path``."""
    command = [sys.executable, "-m", DAEMON_MODULE, "--daemon",
               "--control", control_path]
    if "--log-file" not in options:
        command += ["--log-file", default_log_file(control_path)]
    return command + options


def engine_command(control_path: str, options: list[str]) -> list[str]:
    """vnetd in the foreground for ``control_path`` (a service manager's child)."""
    return [sys.executable, "-m", DAEMON_MODULE, "--control", control_path, *options]


def child_env() -> dict[str, str]:
    # The engine must import this same package, wherever the caller found it.
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([package_root] + paths)
    return env


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    # stderr goes to a file, not a pipe: the detached grandchild could keep a
    # pipe open and make the wait last as long as the engine.
    with tempfile.TemporaryFile(mode="w+") as err:
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                  env=child_env(), timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise LauncherError(
                f"{' '.join(command[:4])} did not return within {timeout:g} s") from None
        except OSError as e:
            raise LauncherError(f"cannot run {command[0]}: {e.strerror or e}") from None
        err.seek(0)
        done.stderr = err.read().strip()
    return done


def _wait_until_answers(control_path: str, timeout: float, log_file: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if engine_answers(control_path, timeout=1.0):
            return
        if time.monotonic() >= deadline:
            raise LauncherError(
                f"vnetd started but its control socket {control_path} did not answer "
                f"within {timeout:g} s; see {log_file}")
        time.sleep(_POLL)


def ensure_engine(control_path: str, params: dict[str, str],
                  timeout: float = START_TIMEOUT) -> None:
    """Make sure a vnetd answers on ``control_path``, starting one if needed; a
    running one is made to match ``params`` or refused (reconcile_running)."""
    options = parse_params(params)
    if engine_answers(control_path, strict=True):
        reconcile_running(control_path, params)
        return
    if _use_systemd(control_path, options):
        done = _run(["systemctl", "start", SYSTEMD_UNIT], timeout)
        if done.returncode != 0:
            raise LauncherError(
                f"systemctl start {SYSTEMD_UNIT} failed ({done.stderr or done.returncode}); "
                f"see journalctl -u {SYSTEMD_UNIT}")
        _wait_until_answers(control_path, timeout, f"journalctl -u {SYSTEMD_UNIT}")
        return
    command = daemon_command(control_path, options)
    log_file = command[command.index("--log-file") + 1]
    done = _run(command, timeout)
    if done.returncode != 0:
        detail = done.stderr.splitlines()[-1] if done.stderr else f"exit status {done.returncode}"
        raise LauncherError(f"vnetd failed to start: {detail}; see {log_file}")
    _wait_until_answers(control_path, timeout, log_file)


def _systemd_managed(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return f"/{SYSTEMD_UNIT}" in f.read()
    except OSError:
        return False


def purge_vnets(control_path: str) -> None:
    """Delete every vnet, so the engine removes their persistent TAPs (design.md 5);
    those xend-vnet stores too (force: the operator asked for all of them).
    Then the kernel path's programs and maps go too (engine.purge, design.md 1.1)."""
    client = EngineClient(control_path)
    for form in client.call(["vnet.list"]):
        vid = sxp.child_value(form, "id")
        if isinstance(form, list) and form[:1] == ["vnet"] and isinstance(vid, str):
            client.call(["vnet.del", ["id", vid], ["force"]])
    client.call(["engine.purge"])


def stop_engine(control_path: str, purge: bool, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the vnetd of ``control_path``; False when none was running.

    With ``purge`` every vnet is deleted first, so its TAP goes too; without
    it the TAPs stay for the next start.
    """
    pid = running_pid(control_path)
    if pid is None:
        return False
    if purge:
        try:
            purge_vnets(control_path)
        except EngineError as e:
            raise LauncherError(f"cannot purge the vnets of vnetd (pid {pid}): {e}") from None
    if _systemd_managed(pid):
        # A plain SIGTERM could make systemd restart the unit.
        done = _run(["systemctl", "stop", SYSTEMD_UNIT], timeout)
        if done.returncode != 0:
            raise LauncherError(f"systemctl stop {SYSTEMD_UNIT} failed: {done.stderr}")
        return True
    try:
        proc = psutil.Process(pid)
        if not is_vnetd(proc):
            return False
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        raise LauncherError(
            f"vnetd (pid {pid}) did not stop within {timeout:g} s of SIGTERM") from None
    return True
