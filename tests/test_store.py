"""The vnet store: atomic writes, crash leftovers, corrupt files (design.md 4)."""

import os
from pathlib import Path

import pytest

from xend_vnet import store as store_mod
from xend_vnet.config import VnetConfig
from xend_vnet.store import PendingRemoval, StoreError, VnetStore
from xend_vnet.vnet_id import VnetId

D97 = "0000-0000-0000-0000-0000-0000-0000-0097"


def cfg(text):
    return VnetConfig.from_text(text)


@pytest.fixture
def store(tmp_path):
    return VnetStore(str(tmp_path))


def test_save_writes_one_line_per_vnet(store, tmp_path):
    path = store.save(cfg("(vnet (id 0097) (extra 'a b'))"))
    assert path == str(tmp_path / "vnet" / f"{D97}.sxp")
    assert Path(path).read_text() == "(vnet (id 0097) (extra 'a b'))\n"
    assert store.exists(VnetId.parse("97"))
    configs, problems = store.load_all()
    assert problems == []
    assert [c.to_string() for c in configs] == ["(vnet (id 0097) (extra 'a b'))"]


def test_load_all_sorted_by_id(store):
    for i in ("ff", "3", "1:0:0:0:0:0:0:5", "a0"):
        store.save(cfg(f"(vnet (id {i}))"))
    configs, _ = store.load_all()
    assert [c.id_text for c in configs] == ["3", "a0", "ff", "1:0:0:0:0:0:0:5"]


def test_empty_or_missing_dir(store):
    assert store.load_all() == ([], [])


def test_overwrite_and_delete(store):
    store.save(cfg("(vnet (id 97))"))
    store.save(cfg("(vnet (id 97) (bridge b2))"))
    configs, _ = store.load_all()
    assert configs[0].bridge == "b2"
    assert store.delete(VnetId.parse("97"))
    assert not store.delete(VnetId.parse("97"))
    assert store.load_all() == ([], [])


def test_crash_between_temp_write_and_rename(store, monkeypatch):
    store.save(cfg("(vnet (id 97) (bridge old))"))

    def crash(src, dst):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(store_mod.os, "rename", crash)
    with pytest.raises(KeyboardInterrupt):
        store.save(cfg("(vnet (id 97) (bridge new))"))
    monkeypatch.undo()
    configs, problems = store.load_all()
    assert [c.bridge for c in configs] == ["old"] and problems == []


def test_leftover_temp_file_from_a_dead_process_is_dropped(store):
    store.save(cfg("(vnet (id 97))"))
    leftover = os.path.join(store.dir, f".{D97}.sxp.tmp-99999")
    with open(leftover, "w") as f:
        f.write("(vnet (id 97) (half")
    configs, problems = store.load_all()
    assert len(configs) == 1 and problems == []
    assert not os.path.exists(leftover)


@pytest.mark.parametrize("content, reason", [
    ("(vnet (id 97)", "unexpected EOF"),
    ("", "no s-expression"),
    ("(vnet (id zz))", "'zz'"),
    ("(vnet (id 98))", "does not match"),
    (b"(vnet (id \xff))", "not UTF-8"),
])
def test_corrupt_file_moved_aside_and_reported(store, content, reason):
    store.save(cfg("(vnet (id 99))"))
    path = os.path.join(store.dir, f"{D97}.sxp")
    with open(path, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
    configs, problems = store.load_all()
    assert [c.id_text for c in configs] == ["99"]
    assert len(problems) == 1
    assert problems[0].path == path and reason in problems[0].reason
    assert problems[0].moved_to == path + ".corrupt"
    assert os.path.exists(path + ".corrupt") and not os.path.exists(path)
    assert reason in str(problems[0]) and ".corrupt" in str(problems[0])
    # A second corrupt file of the same name never overwrites the first.
    with open(path, "w") as f:
        f.write("(")
    _, problems = store.load_all()
    assert problems[0].moved_to == path + ".corrupt.1"
    assert store.load_all()[1] == []   # .corrupt files are not read again


def test_other_files_ignored(store):
    os.makedirs(store.dir)
    open(os.path.join(store.dir, "README"), "w").close()
    assert store.load_all() == ([], [])


def test_unwritable_store_raises_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot store vnet 97"):
        VnetStore(str(blocker)).save(cfg("(vnet (id 97))"))


def test_garbage_in_the_store_is_a_problem_not_a_traceback(tmp_path):
    store = VnetStore(str(tmp_path))
    os.makedirs(store.dir)
    vid = VnetId.parse("97")
    Path(store.path_of(vid)).write_text("(" * 500)
    configs, problems = store.load_all()
    assert configs == [] and len(problems) == 1 and problems[0].moved_to


# -- pending removals (design.md 5) ---------------------------------------------------

def test_removal_record_format_and_round_trip(store):
    removal = PendingRemoval(VnetId.parse("97"), "vnif97", "vnetd")
    store.record_removal(removal)
    path = Path(store.dir) / f"{D97}.deleted"
    assert path.read_text() == ("(vnet.deleted (id 0000:0000:0000:0000:0000:0000:0000:0097) "
                                "(vnetif vnif97) (data-path vnetd))\n")
    assert store.pending_removals() == ([removal], [])
    assert store.load_all() == ([], [])                  # not a stored vnet
    store.drop_removal(removal.vid)
    store.drop_removal(removal.vid)                      # already gone: fine
    assert store.pending_removals() == ([], []) and not path.exists()


@pytest.mark.parametrize("content, reason", [
    ("(vnet.deleted (id 97) (vnetif vnif97)", "unexpected EOF"),
    ("", "no s-expression"),
    ("(vnet (id 97) (vnetif vnif97) (data-path vnetd))", "not a (vnet.deleted ...) record"),
    ("(vnet.deleted (id 97) (data-path vnetd))", "must each be given as text"),
    ("(vnet.deleted (id zz) (vnetif vnif97) (data-path vnetd))", "id: "),
    ("(vnet.deleted (id 97) (vnetif eth0/x) (data-path vnetd))", "interface name 'eth0/x'"),
    ("(vnet.deleted (id 97) (vnetif vnif97) (data-path kernel))", "'kernel' is not a data path"),
    ("(vnet.deleted (id 98) (vnetif vnif98) (data-path vnetd))", "does not match the id"),
    (b"(vnet.deleted (id \xff))", "not UTF-8"),
    ("(" * 500, "nested deeper"),
])
def test_corrupt_removal_record_moved_aside_and_reported(store, content, reason):
    store.record_removal(PendingRemoval(VnetId.parse("99"), "vnif99", "vxlan"))
    path = os.path.join(store.dir, f"{D97}.deleted")
    with open(path, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
    removals, problems = store.pending_removals()
    assert [r.vnetif for r in removals] == ["vnif99"]
    assert len(problems) == 1 and reason in problems[0].reason
    assert problems[0].moved_to == path + ".corrupt" and not os.path.exists(path)
    assert store.pending_removals()[1] == []             # not read again


def test_unwritable_removal_record_raises_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot record the removal of vnet"):
        VnetStore(str(blocker)).record_removal(
            PendingRemoval(VnetId.parse("97"), "vnif97", "vnetd"))


def test_a_symlink_planted_at_the_temp_path_is_not_followed(store, tmp_path):
    config = cfg("(vnet (id 97) (bridge vnet97))")
    store.save(config)                  # the directory exists
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    temp = os.path.join(store.dir, f".{config.vid.dbid}{store_mod.SUFFIX}"
                                   f"{store_mod.TEMP_MARK}{os.getpid()}")
    os.symlink(victim, temp)
    with pytest.raises(StoreError, match="is in the way of a temporary file: a symbolic link"):
        store.save(config)
    assert victim.read_text() == "precious\n"
    assert os.path.islink(temp)


def test_a_stale_temp_file_of_ours_is_replaced_and_modes_ignore_the_umask(store):
    config = cfg("(vnet (id 97) (bridge vnet97))")
    store.save(config)
    temp = os.path.join(store.dir, f".{config.vid.dbid}{store_mod.SUFFIX}"
                                   f"{store_mod.TEMP_MARK}{os.getpid()}")
    Path(temp).write_text("left by a crash")
    old = os.umask(0)
    try:
        path = store.save(config)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert not os.path.exists(temp)


def test_a_read_error_leaves_the_stored_file_in_place(tmp_path, monkeypatch):
    # EIO or EMFILE at start says nothing about the file: it is not moved
    # aside as corrupt, so the next start reads it again.
    store = VnetStore(str(tmp_path))
    store.save(VnetConfig.from_text("(vnet (id 97))"))

    def failing_read(path, name):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store, "_read", failing_read)
    configs, problems = store.load_all()
    assert configs == [] and len(problems) == 1 and problems[0].moved_to is None
    assert "Input/output error" in str(problems[0])
    assert os.path.exists(store.path_of(VnetId.parse("97")))
    monkeypatch.undo()
    assert [c.id_text for c in store.load_all()[0]] == ["97"]
