"""The engine's epoch state file (design.md 7, docs/security.md)."""

import os

import pytest

from xend_vnet.kernel_shim.security import epoch_file


def test_missing_file_is_zero_and_save_load_round_trip(tmp_path):
    path = str(tmp_path / "vnetd.sock.epoch")
    assert epoch_file.load(path) == 0
    epoch_file.save(path, 1_800_000_000_000_000_123)
    assert epoch_file.load(path) == 1_800_000_000_000_000_123
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["vnetd.sock.epoch"]     # no temporary left


@pytest.mark.parametrize("content", [b"", b"abc\n", b"-5\n", b"1" * 21, b"\xff\xfe"])
def test_damaged_file_refused(tmp_path, content):
    path = tmp_path / "e"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="damaged"):
        epoch_file.load(str(path))


def test_an_epoch_beyond_64_bits_is_damage(tmp_path):
    path = tmp_path / "epoch"
    path.write_text(f"{1 << 64}\n")
    with pytest.raises(ValueError, match="damaged"):
        epoch_file.load(str(path))
    path.write_text(f"{(1 << 64) - 1}\n")
    assert epoch_file.load(str(path)) == (1 << 64) - 1
