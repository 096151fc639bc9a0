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


def test_a_symlink_planted_at_the_temp_path_is_not_followed(tmp_path):
    path = tmp_path / "vnetd.epoch"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(victim, f"{path}.{os.getpid()}.tmp")
    with pytest.raises(OSError, match="is in the way of a temporary file"):
        epoch_file.save(str(path), 7)
    assert victim.read_text() == "precious\n"
    assert not path.exists()


def test_a_stale_temp_file_of_another_uid_is_left_alone(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to make a file of another uid")
    path = tmp_path / "vnetd.epoch"
    temp = tmp_path / f"vnetd.epoch.{os.getpid()}.tmp"
    temp.write_text("theirs")
    os.chown(temp, 65534, 65534)
    with pytest.raises(OSError, match="a regular file of uid 65534, not a leftover of ours"):
        epoch_file.save(str(path), 7)
    assert temp.read_text() == "theirs"
