"""Regression tests for the management-plane review: reconcile loop, caller files,
key files over TCP, XML-unsafe config values, engine EEXIST, adopted bridges, xm
pass-through loops, upstream validation, request deadlines, import errors."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import xml.parsers.expat
import xmlrpc.client
import xmlrpc.server
from pathlib import Path

import pytest
from vnet_server_harness import Harness, UnixConn

from xend_vnet.store import VnetStore
from xend_vnet.vnet_id import VnetId
from xend_vnet.xend_config import XendConfig, XendConfigError, server_settings
from xend_vnet.xm_commands import main as xm
from xend_vnet.xmlrpc import cli, importer
from xend_vnet.xmlrpc import server as server_mod
from xend_vnet.xmlrpc.api import VnetAPI, check_sxpr
from xend_vnet.xmlrpc.caller import Caller, CallerFileError, read_caller_file
from xend_vnet.xmlrpc.server import DeadlineReader, ServerError, XMLRPCServers
from xend_vnet.xmlrpc.service import ReconcileLoop, VnetFault

VNET97 = "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))"
C97 = "0000:0000:0000:0000:0000:0000:0000:0097"
C98 = "0000:0000:0000:0000:0000:0000:0000:0098"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def h():
    harness = Harness(tcp=True)
    yield harness
    harness.close()


@pytest.fixture
def open_dir():
    """A directory every uid may reach (pytest's tmp_path is under a 0700 dir)."""
    d = tempfile.mkdtemp(prefix="xvm-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d)


def fault(call, *args) -> xmlrpc.client.Fault:
    with pytest.raises(xmlrpc.client.Fault) as info:
        call(*args)
    return info.value


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


# -- 1. the reconcile loop outlives any failure ---------------------------------

def test_reconcile_loop_survives_unexpected_exceptions():
    class Flaky:
        def __init__(self):
            self.checks = 0
            self.reconciled = 0

        def needs_reconcile(self):
            self.checks += 1
            if self.checks <= 3:
                raise RuntimeError("surprise")
            return True

        def reconcile(self):
            self.reconciled += 1

    service = Flaky()
    loop = ReconcileLoop(service, interval=0.01)
    loop.start()
    try:
        assert wait_for(lambda: service.reconciled >= 2)
        assert loop.is_alive() and loop.last_failure is None
    finally:
        loop.stop()
        loop.join(5)


# -- 4. caller files: the kernel checks, as the caller ---------------------------

@needs_root
def test_caller_file_read_with_the_callers_identity(open_dir, monkeypatch):
    secret = open_dir / "secret"
    secret.mkdir(mode=0o700)
    (secret / "conf.sxp").write_text(VNET97)
    os.chmod(secret / "conf.sxp", 0o644)
    (open_dir / "link").symlink_to(secret)
    (open_dir / "flink").symlink_to(secret / "conf.sxp")
    (open_dir / "ok.sxp").write_text(VNET97)
    os.chmod(open_dir / "ok.sxp", 0o644)
    os.mkfifo(open_dir / "fifo")
    monkeypatch.chdir(open_dir)
    nobody = Caller("unix", os.getpid(), 65534, 65534)
    for path in ("secret/conf.sxp", "link/conf.sxp", "flink", str(open_dir / "link/conf.sxp")):
        with pytest.raises(CallerFileError, match="Permission denied"):
            read_caller_file(path, nobody)
    assert read_caller_file("ok.sxp", nobody) == VNET97
    assert read_caller_file(str(open_dir / "ok.sxp"), nobody) == VNET97
    assert read_caller_file("link/conf.sxp", Caller("unix", os.getpid(), 0, 0)) == VNET97
    with pytest.raises(CallerFileError, match="not a regular file"):
        read_caller_file("fifo", nobody)
    with pytest.raises(CallerFileError, match="File not found"):
        read_caller_file("missing.sxp", nobody)


def _acl_user_read(path: Path, uid: int) -> bool:
    """Give ``uid`` read access by a POSIX ACL entry; False if the file system has none."""
    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, 4, uid), (0x04, 0, 0xFFFFFFFF),
               (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]
    value = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    try:
        os.setxattr(path, "system.posix_acl_access", value)
    except OSError:
        return False
    return True


@needs_root
def test_caller_file_acl_is_honoured(open_dir):
    p = open_dir / "acl.sxp"
    p.write_text(VNET97)
    os.chmod(p, 0o600)
    if not _acl_user_read(p, 65534):
        pytest.skip("no POSIX ACLs on this file system")
    assert read_caller_file(str(p), Caller("unix", os.getpid(), 65534, 65534)) == VNET97
    with pytest.raises(CallerFileError, match="Permission denied"):
        read_caller_file(str(p), Caller("unix", os.getpid(), 65533, 65533))


@needs_root
@pytest.mark.root
def test_caller_file_in_another_mount_namespace(open_dir):
    """A file only the caller's mount namespace shows is read (relative and absolute)."""
    mnt = open_dir / "mnt"
    mnt.mkdir()
    script = (f"mount -t tmpfs none {mnt} && echo '{VNET97}' > {mnt}/x.sxp && cd {mnt} "
              "&& echo ready && exec sleep 30")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert not (mnt / "x.sxp").exists()          # not in our namespace
        caller = Caller("unix", proc.pid, 0, 0)
        assert read_caller_file("x.sxp", caller).strip() == VNET97
        assert read_caller_file(str(mnt / "x.sxp"), caller).strip() == VNET97
    finally:
        proc.kill()
        proc.wait()


# -- 7. key files over TCP only under <state-dir>/keys ----------------------------

def test_tcp_key_files_only_under_the_key_directory(h, open_dir):
    key_dir = Path(h.store.key_dir)
    key_dir.mkdir(parents=True)
    (key_dir / "k97").write_text("00" * 32 + "\n")
    (key_dir / "escape").symlink_to("/etc/passwd")
    tcp = h.tcp_rpc()
    for key in ("/etc/passwd", str(key_dir / "escape"), str(key_dir / ".." / "vnet" / "x")):
        f = fault(tcp.xend_vnet_create, f"(vnet (id 97) (security conf) (key-file {key}))")
        assert f.faultCode == 2 and "key-file" in f.faultString
        assert "only under the key directory" in f.faultString and str(key_dir) in f.faultString
    f = fault(tcp.vnet_create, ["vnet", ["id", "97"], ["security", "auth"],
                                ["key-file", "/root/k"]])
    assert "only under the key directory" in f.faultString
    # Under the key directory, or over the unix socket, the rule does not apply.
    for rpc, key in ((tcp, key_dir / "k97"), (h.rpc, open_dir / "k")):
        try:
            rpc.xend_vnet_create(f"(vnet (id 97) (security conf) (key-file {key}))")
        except xmlrpc.client.Fault as e:
            assert "key directory" not in e.faultString
    assert h.rpc.xend_vnets() in ([], ["97"])


# -- 9. values XML-RPC cannot carry; xm long mode reports every exception ----------

@pytest.mark.parametrize("value, field, code", [
    ("a\ufffeb", "note", "U+FFFE"), ("\uffff", "note", "U+FFFF"),
    ("x\ud800", "note", "U+D800"), ("a\x01", "note", "U+0001"),
])
def test_non_xml_characters_refused_naming_the_field(value, field, code):
    with pytest.raises(VnetFault) as info:
        check_sxpr(["vnet", ["id", "97"], [field, value]])
    assert f"{field}: value" in str(info.value) and code in str(info.value)
    with pytest.raises(VnetFault, match="key"):
        check_sxpr(["vnet", ["id", "97"], [value, "x"]])
    check_sxpr(["vnet", ["id", "97"], ["note", "tab\there, \U0001f600 and \ue000"]])


def test_non_xml_character_in_a_file_is_fault_2_and_listing_still_works(h, open_dir):
    p = open_dir / "bad.sxp"
    p.write_text("(vnet (id 97) (note 'a\ufffeb'))", encoding="utf-8")
    f = fault(h.rpc.xend_vnet_create, str(p))
    assert f.faultCode == 2 and "note" in f.faultString and "U+FFFE" in f.faultString
    assert h.rpc.xend_vnets() == [] and h.rpc.vnet_list() == []


def test_xm_long_listing_reports_any_exception_per_id():
    class Server:
        def xend_vnets(self):
            return ["97", "98", "99"]

        def xend_vnet(self, vnet):
            if vnet == "97":
                raise xml.parsers.expat.ExpatError("not well-formed (invalid token)")
            if vnet == "98":
                raise ValueError("odd reply")
            return ["vnet", ["id", "99"]]

    out = io.StringIO()
    xm.vnet_list(Server(), ["-l"], out)
    assert out.getvalue() == ("97 not well-formed (invalid token)\n98 odd reply\n"
                              "(vnet (id 99))\n")


# -- 10. EEXIST that is not "this vnet exists" --------------------------------------

def test_engine_eexist_for_another_reason_gives_the_engines_message(h):
    h.engine.execute("(vnet.add (id 98) (vnetif vnif97))")
    f = fault(h.rpc.xend_vnet_create, VNET97)
    assert f.faultCode == 2
    assert f.faultString == (f"cannot create vnet 97: vnet.add: interface vnif97 of vnet {C97} "
                             f"is already used by vnet {C98}")
    assert h.rpc.xend_vnets() == [] and "vnet97" not in h.net.links


# -- 11. adopted bridges are kept, created ones go ----------------------------------

def test_adopted_bridge_survives_delete(h):
    vid = VnetId.parse("97")
    h.net.add_link("vnet97", "bridge")
    h.net.add_link("eth9")
    h.net.links["eth9"]["master"] = "vnet97"
    Path(h.store.dir).mkdir(parents=True, exist_ok=True)
    Path(h.store.bridge_record_of(vid)).write_text("vnet97\n")    # stale, from a crash
    h.rpc.xend_vnet_create(VNET97)
    assert h.store.created_bridge(vid) is None
    h.rpc.xend_vnet_delete("97", True)
    assert h.net.links["vnet97"]["kind"] == "bridge"
    assert h.net.links["eth9"]["master"] == "vnet97"
    assert h.rpc.xend_vnets() == []


def test_created_bridge_is_recorded_and_deleted(h):
    vid = VnetId.parse("97")
    h.rpc.xend_vnet_create(VNET97)
    assert h.store.created_bridge(vid) == "vnet97"
    # Lost (e.g. a reboot) and made again by reconcile: still ours.
    h.net.remove_link("vnet97")
    assert h.service.reconcile() == {}
    assert h.store.created_bridge(vid) == "vnet97"
    h.rpc.xend_vnet_delete("97")
    assert "vnet97" not in h.net.links
    assert not os.path.exists(h.store.bridge_record_of(vid))


def test_failed_create_leaves_no_bridge_record(h):
    h.net.fail["enslave"] = "boom"
    fault(h.rpc.xend_vnet_create, VNET97)
    assert "vnet97" not in h.net.links
    assert h.store.created_bridge(VnetId.parse("97")) is None


# -- 13. xm pass-through never loops --------------------------------------------------

def _wrapper(path: Path) -> None:
    path.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {ROOT!r})\n"
                    "from xend_vnet.xm_commands.main import main\nsys.exit(main())\n")
    path.chmod(0o755)


def test_two_xm_wrappers_on_path_do_not_loop(tmp_path):
    dirs = [tmp_path / n for n in ("a", "b", "c")]
    for d in dirs:
        d.mkdir()
    _wrapper(dirs[0] / "xm")
    _wrapper(dirs[1] / "xm")
    env = {k: v for k, v in os.environ.items() if k != xm.SEEN_ENV}
    env["PATH"] = f"{dirs[0]}:{dirs[1]}"
    done = subprocess.run(["xm", "list"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 1 and "not provided by xend-vnet" in done.stderr
    assert "use xl" in done.stderr
    (dirs[2] / "xm").write_text("#!/bin/sh\necho \"real xm $*\"\n")
    (dirs[2] / "xm").chmod(0o755)
    env["PATH"] += f":{dirs[2]}"
    done = subprocess.run(["xm", "list"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert (done.returncode, done.stdout) == (0, "real xm list\n")


def test_next_xm_skips_seen(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "xm").write_text("#!/bin/sh\n")
        (d / "xm").chmod(0o755)
    assert xm.next_xm(str(a / "xm"), f"{a}:{b}", {str(b / "xm")}) is None
    assert xm.next_xm(str(a / "xm"), f"{a}:{b}", set()) == str(b / "xm")


# -- 16. the upstream is checked at start; forwarding never raises ------------------------

@pytest.mark.parametrize("text, message", [
    ("(xend-vnet-upstream ftp://x)", "use httpu:///PATH or http://HOST:PORT"),
    ("(xend-vnet-upstream https://x)", "use httpu:///PATH"),
    ("(xend-vnet-upstream httpu://)", "names no socket"),
    ("(xend-vnet-upstream http://localhost:x)", "invalid port"),
    ("(xend-vnet-upstream httpu:///var/run/xend/xmlrpc.sock)", "own socket"),
    ("(xend-vnet-upstream httpu:///s.sock) (xend-vnet-unix-path /s.sock)", "own socket"),
    ("(xend-vnet-upstream http://127.0.0.1:8006) (xend-vnet-tcp-server yes)", "own TCP"),
])
def test_bad_upstream_refused_at_start(text, message):
    with pytest.raises(XendConfigError, match="xend-vnet-upstream") as info:
        server_settings(XendConfig.from_text(text))
    assert message in str(info.value)


def test_good_upstreams_accepted():
    for text in ("(xend-vnet-upstream httpu:///run/xend-upstream/xmlrpc.sock)",
                 "(xend-vnet-upstream http://localhost:8006)",
                 "(xend-vnet-upstream http://127.0.0.1:8007) (xend-vnet-tcp-server yes)"):
        assert server_settings(XendConfig.from_text(text)).upstream


def test_upstream_equal_to_own_socket_refused_by_the_server(h, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(os.path.dirname(h.sock))
    own = str(tmp_path / "s.sock")
    for upstream in (f"httpu://{own}", f"httpu://{tmp_path}/./s.sock", "gopher://x"):
        with pytest.raises(ServerError, match="xend-vnet-upstream"):
            XMLRPCServers(VnetAPI(h.service), own, None, upstream)
    with pytest.raises(ServerError, match="own socket"):
        XMLRPCServers(VnetAPI(h.service), str(link / "other.sock"), None,
                      f"httpu://{os.path.dirname(h.sock)}/other.sock")


def test_forwarding_failures_are_fault_1(monkeypatch):
    harness = Harness(upstream="http://127.0.0.1:9")
    try:
        def broken(uri):
            raise ValueError("bad upstream reply")
        monkeypatch.setattr(server_mod, "upstream_connection", broken)
        f = fault(harness.rpc.xend_domains)
        assert f.faultCode == 1 and "bad upstream reply" in f.faultString
        assert harness.rpc.xend_vnets() == []
    finally:
        harness.close()


# -- 17. a whole request has a deadline; idle keep-alive ends --------------------------

def test_trickling_client_is_cut_off(h, monkeypatch):
    monkeypatch.setattr(server_mod.RequestHandler, "timeout", 0.8)
    monkeypatch.setattr(server_mod.RequestHandler, "request_deadline", 1.0)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(h.sock)
    s.settimeout(0.05)
    request = b"POST /RPC2 HTTP/1.1\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
    closed_after = None
    start = time.monotonic()
    try:
        for i in range(len(request)):
            try:
                s.send(request[i:i + 1])
                if s.recv(100) == b"":
                    closed_after = time.monotonic() - start
                    break
            except TimeoutError:
                pass
            except OSError:
                closed_after = time.monotonic() - start
                break
            time.sleep(0.25)
            if time.monotonic() - start > 20:
                break
    finally:
        s.close()
    assert closed_after is not None and closed_after < 10
    assert h.rpc.xend_vnets() == []


def test_idle_keep_alive_connection_is_closed(h, monkeypatch):
    monkeypatch.setattr(server_mod.RequestHandler, "keepalive_idle", 0.3)
    conn = UnixConn(h.sock)
    body = xmlrpc.client.dumps((), "xend_vnets").encode()
    conn.request("POST", "/RPC2", body, {"Content-Type": "text/xml"})
    assert conn.getresponse().read().startswith(b"<?xml")
    conn.sock.settimeout(10)
    assert conn.sock.recv(10) == b""          # the server closed the idle connection
    conn.close()


def test_slow_upstream_is_not_cut_off(monkeypatch):
    monkeypatch.setattr(server_mod.RequestHandler, "timeout", 0.5)
    monkeypatch.setattr(server_mod.RequestHandler, "request_deadline", 0.5)
    upstream = xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False,
                                                allow_none=True)
    upstream.register_function(lambda: time.sleep(1.5) or ["Domain-0"], "xend_domains")
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    harness = Harness(upstream="http://%s:%d" % upstream.server_address)
    try:
        assert harness.rpc.xend_domains() == ["Domain-0"]
    finally:
        harness.close()
        upstream.shutdown()
        upstream.server_close()


def test_deadline_reader_with_a_fake_clock():
    a, b = socket.socketpair()
    now = [100.0]
    reader = DeadlineReader(a, per_recv=30.0, clock=lambda: now[0])
    try:
        b.sendall(b"abc")
        reader.expect_request(60.0)
        buf = bytearray(10)
        assert reader.readinto(buf) == 3 and a.gettimeout() == 30.0
        now[0] += 59.5
        b.sendall(b"d")
        assert reader.readinto(buf) == 1 and a.gettimeout() == pytest.approx(0.5)
        now[0] += 1
        with pytest.raises(TimeoutError):
            reader.readinto(buf)
        # Keep-alive: idle until the first byte, then a fresh deadline.
        reader.expect_next_request(5.0, 60.0)
        assert reader.deadline == now[0] + 5.0
        b.sendall(b"e")
        assert reader.readinto(buf) == 1 and reader.deadline == now[0] + 60.0
        reader.request_received()
        assert reader.deadline is None and a.gettimeout() == 30.0
    finally:
        a.close()
        b.close()


# -- 18. import errors are messages, not tracebacks -------------------------------------

def test_xenstore_tool_timeout_is_reported(monkeypatch):
    monkeypatch.setattr(importer.shutil, "which", lambda name: "/usr/bin/" + name)

    def hang(argv, **kwargs):
        raise subprocess.TimeoutExpired(argv, kwargs.get("timeout"))
    monkeypatch.setattr(importer.subprocess, "run", hang)
    with pytest.raises(importer.ImportSourceError, match="no answer within"):
        importer.run_tool(["xenstore-list", "/vnet"])

    def list_ok(argv):
        if argv[0] == "xenstore-list":
            return "97\n98\n"
        return importer.run_tool(argv)
    entries = importer.read_xenstore(list_ok)
    assert [e.text for e in entries] == [None, None]
    assert all("no answer" in e.error for e in entries)


def test_cli_import_errors_exit_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XEND_CONFIG", str(tmp_path / "none.sxp"))
    db = tmp_path / "db"
    db.mkdir()
    (db / "97").write_text("(vnet (id 97))")
    (db / "98").write_text("(vnet (id 98) ((((")
    state = tmp_path / "state"
    state.mkdir()
    (state / "vnet").write_text("not a directory")
    assert cli.main(["import", "--dir", str(db), "--state-dir", str(state)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("xend-vnet import: ") and "store" in err
    (state / "vnet").unlink()
    assert cli.main(["import", "--dir", str(db), "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "imported vnet 97" in out and "cannot parse" in out

    def hang(run=None):
        raise importer.ImportSourceError("xenstore-list /vnet: no answer within 30 s")
    monkeypatch.setattr(importer, "read_xenstore", hang)
    assert cli.main(["import", "--state-dir", str(state)]) == 1
    assert "no answer within 30 s" in capsys.readouterr().err


def test_garbage_in_the_store_is_a_problem_not_a_traceback(tmp_path):
    store = VnetStore(str(tmp_path))
    os.makedirs(store.dir)
    vid = VnetId.parse("97")
    Path(store.path_of(vid)).write_text("(" * 500)
    configs, problems = store.load_all()
    assert configs == [] and len(problems) == 1 and problems[0].moved_to


# -- 20a. a start failure names the real log destination --------------------------------

def test_start_failure_names_the_log_destination(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, XEND_CONFIG=str(tmp_path / "none.sxp"))
    bad_log = "/dev/null/xend-vnet.log"
    done = subprocess.run(
        [sys.executable, "-m", "xend_vnet.xmlrpc.cli", "start", "--socket",
         str(tmp_path / "x.sock"), "--engine-control", str(tmp_path / "vnetd.sock"),
         "--no-engine", "--log-file", bad_log, "--state-dir", str(tmp_path / "state")],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert f"cannot open the log file {bad_log}" in done.stderr
    pid_file = tmp_path / "x.sock.pid"
    if pid_file.exists():
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
