"""xend-vnet import: legacy xenstore /vnet and Xen 2.0 xend-db/vnet (protocol.md 11.1)."""

import os
import subprocess

import pytest

from xend_vnet.store import VnetStore
from xend_vnet.xmlrpc import cli, importer
from xend_vnet.xmlrpc.importer import ImportSourceError, LegacyEntry


def fake_xenstore(tree):
    """A runner answering xenstore-list/xenstore-read from a dict."""
    def run(argv):
        tool, path = argv
        if tool == "xenstore-list":
            if path not in tree:
                raise ImportSourceError(f"xenstore-list {path}: xenstore-list: could not "
                                        f"list path {path}")
            return "".join(name + "\n" for name in tree[path])
        if path not in tree:
            raise ImportSourceError(f"xenstore-read {path}: could not read path")
        return tree[path]
    return run


def test_xenstore_entries():
    tree = {
        "/vnet": ["97", "0000-0000-0000-0000-0000-0000-0000-0098", "bad"],
        "/vnet/97/config": "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))",
        "/vnet/0000-0000-0000-0000-0000-0000-0000-0098/config": "(vnet (id 98))",
    }
    entries = importer.read_xenstore(fake_xenstore(tree))
    assert [e.source for e in entries] == ["xenstore /vnet/97",
                                           "xenstore /vnet/0000-0000-0000-0000-0000-0000-0000-0098",
                                           "xenstore /vnet/bad"]
    assert entries[0].text.startswith("(vnet (id 97)")
    assert entries[2].text is None and "could not read" in entries[2].error


def test_xenstore_without_vnet_dir():
    assert importer.read_xenstore(fake_xenstore({})) == []


def test_xenstore_tools_missing(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ImportSourceError, match="xenstore-list not found"):
        importer.read_xenstore()


def test_import_validates_and_reports(tmp_path):
    store = VnetStore(str(tmp_path / "state"))
    entries = [
        LegacyEntry("a", "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))"),
        LegacyEntry("b", "(vnet (id 0097))"),                       # same vnet as a
        LegacyEntry("c", "(vnet (id 98) (bridge vnet97))"),          # name taken
        LegacyEntry("d", "(vnet (id 99) (vnif vnetif99) (security conf))"),
        LegacyEntry("e", "(vnet (id 9a)"),
        LegacyEntry("f", error="could not read"),
        LegacyEntry("g", "(vnet (id 9b) (comment 'kept as written'))"),
    ]
    result = importer.import_configs(store, entries)
    assert result.imported == ["97", "9b"]
    reasons = dict(result.skipped)
    assert "already stored" in reasons["b"]
    assert "vnet 97" in reasons["c"]
    assert "vn key-gen" in reasons["d"]
    assert "cannot parse" in reasons["e"]
    assert reasons["f"] == "could not read"
    configs, problems = store.load_all()
    assert problems == []
    assert [c.to_string() for c in configs] == [
        "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))",
        "(vnet (id 9b) (comment 'kept as written'))"]
    again = importer.import_configs(store, entries[:1])
    assert again.imported == [] and "already stored" in again.skipped[0][1]


def test_xen2_db_directory(tmp_path):
    db = tmp_path / "xend-db" / "vnet"
    db.mkdir(parents=True)
    (db / "97").write_text("# /var/lib/xen/xend-db/vnet/97 2005-03-01 10:00:00\n"
                           "(vnet (id 97) (bridge vnet97) (vnetif vnetif97))\n")
    (db / "98").write_bytes(b"(vnet (id \xff))")
    (db / "sub").mkdir()
    entries = importer.read_xend_db(str(db))
    assert [os.path.basename(e.source) for e in entries] == ["97", "98"]
    assert entries[1].error
    result = importer.import_configs(VnetStore(str(tmp_path / "state")), entries)
    assert result.imported == ["97"] and len(result.skipped) == 1
    with pytest.raises(ImportSourceError, match="cannot read"):
        importer.read_xend_db(str(tmp_path / "nope"))


def test_cli_import(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XEND_CONFIG", str(tmp_path / "none.sxp"))
    db = tmp_path / "db"
    db.mkdir()
    (db / "97").write_text("(vnet (id 97))")
    (db / "x").write_text("(vnet)")
    state = tmp_path / "state"
    assert cli.main(["import", "--dir", str(db), "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "imported vnet 97" in out and "skipped" in out and "id: missing" in out
    assert "1 imported, 1 skipped" in out
    assert (state / "vnet" / "0000-0000-0000-0000-0000-0000-0000-0097.sxp").exists()
    assert cli.main(["import", "--dir", str(tmp_path / "nope"), "--state-dir", str(state)]) == 1


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
