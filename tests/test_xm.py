"""xm vnet-create/-delete/-list: exact output and exit codes (protocol.md 10.2-10.3)."""

from __future__ import annotations

import http.server
import io
import os
import stat
import subprocess
import sys
import threading
import xml.parsers.expat

import pytest
from vnet_server_harness import run_xm

from xend_vnet.xm_commands import main as xm
from xend_vnet.xm_commands.main import usage_text

VNET97 = "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LIST_USAGE = ("Usage: xm vnet-list [-l|--long]\n\nList Vnets.\n"
              "  -l, --long                     List Vnets as SXP" + " " * 26 + "\n\n")
CREATE_USAGE = "Usage: xm vnet-create <ConfigFile>\n\nCreate a vnet from ConfigFile.\n"


def test_usage_layout_is_xms():
    assert usage_text("vnet-list") == LIST_USAGE
    assert usage_text("vnet-create") == CREATE_USAGE
    assert usage_text("vnet-delete").startswith(
        "Usage: xm vnet-delete <VnetId>\n\nDelete a Vnet.\n")


def test_create_list_long_delete(server, capsys, tmp_path, monkeypatch):
    conf = tmp_path / "vnet97.sxp"
    conf.write_text("# vnet 97\n" + VNET97 + "\n")
    assert run_xm(capsys, "vnet-create", str(conf)) == (0, "", "")
    assert run_xm(capsys, "vnet-list") == (0, "97\n", "")
    assert run_xm(capsys, "vnet-list", "-l") == (0, VNET97 + "\n", "")
    assert run_xm(capsys, "vnet-list", "--long") == (0, VNET97 + "\n", "")
    assert run_xm(capsys, "vnet-list", "0097", "98") == (
        0, VNET97 + "\n98 <Fault 2: 'No such vnet 98'>\n", "")
    assert run_xm(capsys, "vnet-list", "97", "-l") == (0, VNET97 + "\n", "")  # gnu_getopt
    assert run_xm(capsys, "vnet-delete", "97") == (0, "", "")
    assert run_xm(capsys, "vnet-list") == (0, "", "")


def test_relative_path_from_another_directory(server, capsys, tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "v.sxp").write_text(VNET97)
    monkeypatch.chdir(tmp_path / "sub")
    assert run_xm(capsys, "vnet-create", "v.sxp") == (0, "", "")
    monkeypatch.chdir(tmp_path)
    assert run_xm(capsys, "vnet-create", "--", "sub/v.sxp")[2] == "Error: vnet 97 already exists\n"


def test_faults_print_error_and_usage(server, capsys, tmp_path):
    conf = tmp_path / "v.sxp"
    conf.write_text(VNET97)
    run_xm(capsys, "vnet-create", str(conf))
    assert run_xm(capsys, "vnet-create", str(conf)) == (
        1, CREATE_USAGE, "Error: vnet 97 already exists\n")
    code, out, err = run_xm(capsys, "vnet-delete", "98")
    assert (code, err) == (1, "Error: No such vnet 98\n")
    assert out == usage_text("vnet-delete")


def test_delete_force(server, capsys, tmp_path):
    conf = tmp_path / "v.sxp"
    conf.write_text(VNET97)
    run_xm(capsys, "vnet-create", str(conf))
    server.net.add_link("vif1.0", "vif")
    server.net.enslave("vnet97", "vif1.0")
    code, _, err = run_xm(capsys, "vnet-delete", "97")
    assert code == 1 and "vif1.0" in err
    assert run_xm(capsys, "vnet-delete", "--force", "97") == (0, "", "")
    assert run_xm(capsys, "vnet-list") == (0, "", "")


def test_command_line_errors(server, capsys):
    assert run_xm(capsys, "vnet-create", "/nonexistent/v.sxp") == (
        1, "File not found: /nonexistent/v.sxp\n", "")
    assert run_xm(capsys, "vnet-create") == (
        1, CREATE_USAGE, "Error: 'xm vnet-create' requires 1 arguments.\n\n")
    code, _, err = run_xm(capsys, "vnet-delete", "1", "2")
    assert code == 1 and err == "Error: 'xm vnet-delete' requires 1 arguments.\n\n"
    assert run_xm(capsys, "vnet-list", "-x") == (1, LIST_USAGE, "Error: option -x not recognized\n")
    assert server.engine.requests == []


def test_requires_n_arguments_says_arguments_even_for_one(server, capsys):
    # Xen 3.0.3 on: "lo == 1 and '' or 's'" is always 's' (protocol.md 10.2).
    for args in ((), ("a", "b")):
        code, out, err = run_xm(capsys, "vnet-delete", *args)
        assert (code, err) == (1, "Error: 'xm vnet-delete' requires 1 arguments.\n\n")
        assert out == usage_text("vnet-delete")
    assert run_xm(capsys, "vnet-create", "--") == (
        1, CREATE_USAGE, "Error: 'xm vnet-create' requires 1 arguments.\n\n")
    assert server.engine.requests == []


@pytest.mark.parametrize("args, usage", [
    (("vnet-create", "--help"), CREATE_USAGE),
    (("vnet-create", "-h"), CREATE_USAGE),
    (("vnet-create", "v.sxp", "--help"), CREATE_USAGE),
    (("vnet-create", "--", "-h"), CREATE_USAGE),
    (("vnet-list", "-l", "--help"), LIST_USAGE),
    (("vnet-list", "-h"), LIST_USAGE),
    (("vnet-delete", "97", "-h"), usage_text("vnet-delete")),
    (("vnet-l", "--help"), LIST_USAGE),
])
def test_help_option_prints_the_usage_and_exits_1(server, capsys, args, usage):
    assert run_xm(capsys, *args) == (1, usage, "")
    assert server.engine.requests == []


def test_unique_prefix_runs_its_vnet_subcommand(server, capsys, tmp_path):
    conf = tmp_path / "v.sxp"
    conf.write_text(VNET97)
    assert run_xm(capsys, "vnet-c", str(conf)) == (0, "", "")
    assert run_xm(capsys, "vnet-l") == (0, "97\n", "")
    assert run_xm(capsys, "vnet-li", "-l") == (0, VNET97 + "\n", "")
    assert run_xm(capsys, "vnet-d") == (
        1, usage_text("vnet-delete"), "Error: 'xm vnet-delete' requires 1 arguments.\n\n")
    assert run_xm(capsys, "vnet-de", "97") == (0, "", "")
    assert run_xm(capsys, "vnet-l") == (0, "", "")


@pytest.mark.parametrize("prefix", ["vne", "vnet", "vnet-"])
def test_ambiguous_prefix_is_xens_subcommand_not_found(server, capsys, prefix):
    code, out, err = run_xm(capsys, prefix, "-l")
    assert (code, err) == (1, f"Error: Subcommand {prefix} not found!\n")
    assert out.startswith("Usage: xm <subcommand> [args]\n")
    assert [line.split()[0] for line in out.splitlines() if line.startswith(" vnet-")] == [
        "vnet-create", "vnet-delete", "vnet-list"]
    assert server.engine.requests == []


def test_vnet_prefix_resolution():
    assert xm.vnet_commands_named("vnet-list") == ["vnet-list"]
    assert xm.vnet_commands_named("vnet-l") == ["vnet-list"]
    assert xm.vnet_commands_named("vnet-") == list(xm.VNET_COMMANDS)
    # One character is never a prefix in Xen's xm; "vn" is vncviewer's too (Xen 3.3 on).
    assert xm.vnet_commands_named("v") == []
    assert xm.vnet_commands_named("vn") == []
    assert xm.vnet_commands_named("vnet-list-all") == []
    assert xm.vnet_commands_named("list") == []


def test_other_prefixes_go_to_the_next_real_xm(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for d in (ours, theirs):
        d.mkdir()
    _our_xm(ours / "xm")
    _script(theirs / "xm", "#!/bin/sh\necho \"real xm $*\"\n")
    env = dict(os.environ, PATH=f"{ours}:{theirs}")
    for args in (["vn"], ["v", "-h"], ["vncv", "d1"], ["li", "--help"]):
        done = subprocess.run(["xm", *args], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert (done.returncode, done.stdout) == (0, f"real xm {' '.join(args)}\n")


def test_no_server(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XM_SERVER", f"httpu://{tmp_path}/none.sock")
    assert run_xm(capsys, "vnet-list") == (
        1, "", "Error: Unable to connect to xend: No such file or directory. Is xend running?\n")
    monkeypatch.setenv("XM_SERVER", "ftp://x")
    code, _, err = run_xm(capsys, "vnet-list")
    assert code == 1 and "unsupported server URI" in err


def test_broken_server_reply(capsys, monkeypatch):
    class Broken(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_error(500, "boom")

        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Broken)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        monkeypatch.setenv("XM_SERVER", f"http://127.0.0.1:{srv.server_address[1]}/RPC2")
        code, _, err = run_xm(capsys, "vnet-list")
        assert code == 1 and err == "Xend has probably crashed!  ProtocolError(500, boom).\n"
    finally:
        srv.shutdown()
        srv.server_close()


def _script(path, body):
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _our_xm(path):
    """An ``xm`` that runs this checkout's xm."""
    _script(path, f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {ROOT!r})\n"
            "from xend_vnet.xm_commands.main import main\nsys.exit(main())\n")


def test_other_subcommands_go_to_the_next_real_xm(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    _our_xm(ours / "xm")
    (theirs / "xm-link").symlink_to(ours / "xm")
    env = dict(os.environ, PATH=f"{ours}:{theirs}")
    done = subprocess.run(["xm", "list"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "not provided by xend-vnet" in done.stderr and "xl" in done.stderr
    # Our own script reached through a symlink further down PATH is skipped too.
    os.rename(theirs / "xm-link", theirs / "xm")
    done = subprocess.run(["xm", "list"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "not provided" in done.stderr
    os.unlink(theirs / "xm")
    _script(theirs / "xm", "#!/bin/sh\necho \"real xm $*\"\nexit 7\n")
    done = subprocess.run(["xm", "list", "-l"], env=env, capture_output=True, text=True,
                          check=False)
    assert (done.returncode, done.stdout) == (7, "real xm list -l\n")


def test_next_xm_skips_itself(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _script(a / "xm", "#!/bin/sh\n")
    _script(b / "xm", "#!/bin/sh\n")
    assert xm.next_xm(str(a / "xm"), f"{a}:{b}") == str(b / "xm")
    assert xm.next_xm(str(b / "xm"), f"{a}:{b}") == str(a / "xm")
    assert xm.next_xm(str(a / "xm"), str(a)) is None


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


def test_two_xm_wrappers_on_path_do_not_loop(tmp_path):
    dirs = [tmp_path / n for n in ("a", "b", "c")]
    for d in dirs:
        d.mkdir()
    _our_xm(dirs[0] / "xm")
    _our_xm(dirs[1] / "xm")
    env = {k: v for k, v in os.environ.items() if k != xm.SEEN_ENV}
    env["PATH"] = f"{dirs[0]}:{dirs[1]}"
    done = subprocess.run(["xm", "list"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 1 and "not provided by xend-vnet" in done.stderr
    assert "use xl" in done.stderr
    _script(dirs[2] / "xm", "#!/bin/sh\necho \"real xm $*\"\n")
    env["PATH"] += f":{dirs[2]}"
    done = subprocess.run(["xm", "list"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert (done.returncode, done.stdout) == (0, "real xm list\n")


def test_next_xm_skips_the_ones_already_seen(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        _script(d / "xm", "#!/bin/sh\n")
    assert xm.next_xm(str(a / "xm"), f"{a}:{b}", {str(b / "xm")}) is None
    assert xm.next_xm(str(a / "xm"), f"{a}:{b}", set()) == str(b / "xm")
