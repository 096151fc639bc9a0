"""Key files, the key schedule and the secured message layout (design.md 7),
with the worked example of docs/security.md checked byte for byte."""

from __future__ import annotations

import os
import re
import socket
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st
from security_helpers import KEY1, V97, write_key

from xend_vnet.kernel_shim.wire import codec
from xend_vnet.kernel_shim.wire.codec import DecodeError
from xend_vnet.kernel_shim.security import keys
from xend_vnet.kernel_shim.security.secure_codec import (
    HEADER_LEN,
    OVERHEAD,
    SUITE_AUTH,
    SUITE_CONF,
    SecureHeader,
    decode_header,
    open_,
    seal,
)

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "security.md")
V98 = bytes(15) + b"\x98"

# The worked example: fixed key, sender id, epoch and care-of address.
EX_SENDER = 0x0123456789ABCDEF
EX_EPOCH = 1_800_000_000_000_000_000
EX_CARE_OF = "192.0.2.1"
EX_FRAME = (b"\xff" * 6 + bytes.fromhex("aa0000009701") + b"\x08\x06"
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + bytes.fromhex("aa0000009701")
            + socket.inet_aton("10.97.0.1") + bytes(6) + socket.inet_aton("10.97.0.2"))


def hexdump(data: bytes) -> str:
    return "\n".join(f"{i:04x}  " + " ".join(f"{b:02x}" for b in data[i:i + 16])
                     for i in range(0, len(data), 16))


def worked_example() -> str:
    """The text of docs/security.md's example block, made by the code."""
    gen = keys.generation(KEY1, V97.raw)
    spi = keys.spi(KEY1, V97.raw, gen)
    group = keys.group_key(KEY1, V97.raw, gen)
    inner = codec.DATA_PREFIX + V97.raw + EX_FRAME
    out = [f"key file        {KEY1.hex()}",
           f"vnet            {V97.canonical}",
           f"generation      {gen}",
           f"SPI             {spi:08x}",
           f"group key       {group.hex()}",
           f"sender id       {EX_SENDER:016x}",
           f"epoch           {EX_EPOCH} ({EX_EPOCH:016x})",
           f"care-of         {EX_CARE_OF}",
           f"inner message   ({len(inner)} bytes, clear mode)", hexdump(inner)]
    for level, suite in (("auth", SUITE_AUTH), ("conf", SUITE_CONF)):
        tk = keys.traffic_key(group, suite, EX_SENDER, EX_EPOCH)
        h = SecureHeader(suite, spi, EX_SENDER, EX_EPOCH, 1, socket.inet_aton(EX_CARE_OF))
        wire = seal(AESGCM(tk), h, inner)
        out += ["", f"{level}: traffic key {tk.hex()}, nonce {bytes(4).hex()}{1:016x}",
                f"UDP payload     ({len(wire)} bytes)", hexdump(wire)]
    return "\n".join(out) + "\n"


def test_doc_worked_example_matches_the_code():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"<!-- worked-example -->\n```\n(.*?)```", text, re.S)
    assert m, "docs/security.md lacks the worked example block"
    assert m.group(1) == worked_example()


def test_layout_offsets():
    h = SecureHeader(SUITE_CONF, 0x11223344, 0x5566778899AABBCC, 7, 9, b"\xc0\x00\x02\x01")
    wire = seal(AESGCM(bytes(16)), h, b"x" * 30)
    assert wire[:4] == b"\x00\x04\x00\x02" and wire[4:8] == bytes.fromhex("11223344")
    assert wire[8:16] == bytes.fromhex("5566778899aabbcc")
    assert wire[16:24] == (7).to_bytes(8, "big") and wire[24:32] == (9).to_bytes(8, "big")
    assert wire[32:36] == b"\xc0\x00\x02\x01" and len(wire) == 30 + OVERHEAD
    assert HEADER_LEN == 36 and OVERHEAD == 52
    assert decode_header(wire) == h


@pytest.mark.parametrize("suite", [SUITE_AUTH, SUITE_CONF])
def test_seal_open_round_trip(suite):
    aead = AESGCM(bytes(range(16)))
    h = SecureHeader(suite, 1, 2, 3, 4, b"\x0a\x00\x00\x01")
    wire = seal(aead, h, b"payload")
    assert open_(aead, suite, wire) == b"payload"
    assert (b"payload" in wire) == (suite == SUITE_AUTH)
    with pytest.raises(DecodeError) as e:
        open_(AESGCM(bytes(16)), suite, wire)
    assert e.value.reason == "bad_icv"


@given(st.binary(max_size=120))
def test_decode_header_never_crashes(data):
    try:
        h = decode_header(b"\x00\x04" + data)
    except DecodeError as e:
        assert e.reason in ("secure_truncated", "secure_bad_suite")
    else:
        assert h.suite in (SUITE_AUTH, SUITE_CONF)


def test_schedule_binds_vnet_and_generation():
    g97, g98 = keys.generation(KEY1, V97.raw), keys.generation(KEY1, V98)
    assert 1 <= g97 <= 65535 and keys.generation(KEY1, V97.raw) == g97
    assert keys.group_key(KEY1, V97.raw, g97) != keys.group_key(KEY1, V98, g97)
    assert keys.group_key(KEY1, V97.raw, 1) != keys.group_key(KEY1, V97.raw, 2)
    assert keys.spi(KEY1, V97.raw, g97) != keys.spi(KEY1, V98, g98)
    group = keys.group_key(KEY1, V97.raw, g97)
    base = keys.traffic_key(group, 2, 1, 1)
    assert len(base) == 16
    assert len({base, keys.traffic_key(group, 1, 1, 1), keys.traffic_key(group, 2, 2, 1),
                keys.traffic_key(group, 2, 1, 2)}) == 4


def test_key_file_read(tmp_path):
    path = write_key(str(tmp_path / "k"))
    assert keys.read_key_file(path) == KEY1


@pytest.mark.parametrize("content,mode,fragment", [
    (KEY1.hex()[:-2], 0o600, "not a vnet key"),
    ("zz" * 32, 0o600, "not a vnet key"),
    (KEY1.hex() + " " + KEY1.hex(), 0o600, "not a vnet key"),
    (KEY1.hex(), 0o644, "readable by others"),
    ("\xff\xfe", 0o600, "not a vnet key"),
])
def test_bad_key_files_named_never_echoed(tmp_path, content, mode, fragment):
    path = tmp_path / "k"
    path.write_bytes(content.encode("latin-1"))
    path.chmod(mode)
    with pytest.raises(keys.KeyFileError) as e:
        keys.read_key_file(str(path))
    message = str(e.value)
    assert fragment in message and str(path) in message
    assert KEY1.hex()[:16] not in message and "zz" not in message


def test_key_file_missing_relative_or_not_regular(tmp_path):
    with pytest.raises(keys.KeyFileError, match="vn key-gen PATH"):
        keys.read_key_file(str(tmp_path / "none"))
    with pytest.raises(keys.KeyFileError, match="absolute"):
        keys.read_key_file("k")
    with pytest.raises(keys.KeyFileError, match="not a regular file|cannot open"):
        keys.read_key_file(str(tmp_path))
    os.symlink(write_key(str(tmp_path / "real")), tmp_path / "link")
    with pytest.raises(keys.KeyFileError, match="cannot open"):
        keys.read_key_file(str(tmp_path / "link"))


if __name__ == "__main__":
    print(worked_example(), end="")
