"""Key files and the key schedule of secured vnets (design.md 7).

A key file holds 32 random bytes as 64 hex characters on one line, mode
0600 (``vn key-gen``).  Every key in use is derived from it with
HKDF-SHA256, with the vnet id in the info, so one file reused for two vnets
gives unrelated keys:

* the generation number (1-65535) names the key on every host without any
  agreement on the order keys were added;
* the SPI names (vnet, generation) on the wire;
* the group key of (vnet, generation) is the root of the traffic keys;
* a traffic key per (suite, sender id, epoch) keeps two senders or two boots
  from ever sharing a (key, nonce) pair.

Errors name the file, never its content.
"""

from __future__ import annotations

import hmac
import os
import stat

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
TRAFFIC_KEY_BYTES = 16      # AES-128 (design.md 7)
_SALT = b"xend-vnet secure v1"
MAKE_ONE = ("make one with 'vn key-gen PATH' on one host and copy it to every host "
            "of the vnet")


class KeyFileError(Exception):
    """A key file that cannot be used; the message names the file and what to do."""


def _hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_SALT, info=info).derive(ikm)


def parse_key_text(text: str) -> bytes:
    """The 32 key bytes of a key file's text; ValueError without echoing it."""
    words = text.split()
    if len(words) != 1 or len(words[0]) != 2 * KEY_BYTES:
        raise ValueError(f"expected {2 * KEY_BYTES} hex characters on one line")
    try:
        return bytes.fromhex(words[0])
    except ValueError:
        raise ValueError(f"expected {2 * KEY_BYTES} hex characters on one line") from None


def read_key_file(path: str) -> bytes:
    """Read and check a key file: absolute path, a regular file not readable
    by group or others, 64 hex characters."""
    if not os.path.isabs(path):
        raise KeyFileError(f"key file {path!r} must be an absolute path")
    try:
        # O_NONBLOCK: a FIFO named as a key file must not stall the engine's loop.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
                     | os.O_NOCTTY)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist: {MAKE_ONE}") from None
    except OSError as e:
        raise KeyFileError(f"cannot open key file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(f"key file {path} is readable by others "
                               f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it, "
                               "and make a new key if others could have read it")
        data = os.read(fd, 4 * KEY_BYTES)
    finally:
        os.close(fd)
    try:
        return parse_key_text(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise KeyFileError(f"key file {path} is not a vnet key (expected "
                           f"{2 * KEY_BYTES} hex characters on one line): {MAKE_ONE}") from None


def generation(file_key: bytes, vid_raw: bytes) -> int:
    """The generation number of a key for a vnet, 1 to 65535; the same on every host."""
    n = int.from_bytes(_hkdf(file_key, b"generation" + vid_raw, 2), "big")
    return 1 + n % 65535


def spi(file_key: bytes, vid_raw: bytes, gen: int) -> int:
    """The 32-bit SPI that names (vnet, generation) on the wire."""
    return int.from_bytes(_hkdf(file_key, b"spi" + vid_raw + gen.to_bytes(2, "big"), 4), "big")


def group_key(file_key: bytes, vid_raw: bytes, gen: int) -> bytes:
    """The root of the traffic keys of (vnet, generation)."""
    return _hkdf(file_key, b"group" + vid_raw + gen.to_bytes(2, "big"), KEY_BYTES)


def traffic_prk(group: bytes) -> hmac.HMAC:
    """HKDF-Extract of a group key (RFC 5869 2.2), done once per generation, as
    an HMAC ready to copy: a traffic key is then one HMAC block, so a forged
    packet naming a new sender costs no more than a sender's first genuine one
    (docs/security.md "Resource limits")."""
    return hmac.new(hmac.digest(_SALT, group, "sha256"), digestmod="sha256")


def traffic_key_with(prk: hmac.HMAC, suite: int, sender_id: int, epoch: int) -> bytes:
    """``traffic_key`` from ``traffic_prk(group)``: HKDF-Expand of one block
    (RFC 5869 2.3, T(1) = HMAC(PRK, info || 0x01))."""
    h = prk.copy()
    h.update(b"traffic" + bytes([suite]) + sender_id.to_bytes(8, "big")
             + epoch.to_bytes(8, "big") + b"\x01")
    return h.digest()[:TRAFFIC_KEY_BYTES]


def traffic_key(group: bytes, suite: int, sender_id: int, epoch: int) -> bytes:
    """The AES-128 key of one sender in one epoch (design.md 7, RFC 6054's idea):
    HKDF-SHA256 of the group key, info ``traffic || suite || sender id || epoch``."""
    return traffic_key_with(traffic_prk(group), suite, sender_id, epoch)
