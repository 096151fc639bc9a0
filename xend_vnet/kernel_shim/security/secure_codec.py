"""The secured message on UDP port 1798 (design.md 7, docs/security.md).

```
off size field
  0   2  VnetMsgHdr id = 4
  2   2  VnetMsgHdr opcode = suite: 1 auth (AES-128-GMAC), 2 conf (AES-128-GCM)
  4   4  SPI: names (vnet, key generation)
  8   8  sender id
 16   8  epoch
 24   8  sequence number (first packet of an epoch = 1)
 32   4  care-of address of the sender (IPv4)
 36   n  payload: the clear-mode message (data: 00 02 00 00 00 40 + id + frame),
         as is for auth, encrypted for conf
36+n 16  ICV (the GCM tag)
```

All 36 header bytes are associated data, so each of them is authenticated.
The 12-byte GCM nonce is 4 zero bytes and the sequence number: unique,
because each (sender id, epoch) has its own traffic key.  ``auth`` is GMAC:
AES-GCM with an empty plaintext and header + payload as associated data.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..wire.codec import MSG_SECURE, DecodeError

SUITE_AUTH = 1
SUITE_CONF = 2
SUITES = {"auth": SUITE_AUTH, "conf": SUITE_CONF}
SUITE_NAMES = {SUITE_AUTH: "aes-128-gmac", SUITE_CONF: "aes-128-gcm"}
HEADER = struct.Struct("!HHIQQQ4s")
HEADER_LEN = HEADER.size        # 36
ICV_LEN = 16
OVERHEAD = HEADER_LEN + ICV_LEN  # over the clear-mode message
_NONCE_PAD = bytes(4)


class SecureHeader(NamedTuple):
    suite: int
    spi: int
    sender: int
    epoch: int
    seq: int
    care_of: bytes      # 4 bytes


def unpack(payload: bytes) -> tuple[int, int, int, int, int, bytes]:
    """(suite, SPI, sender id, epoch, sequence number, care-of) of a secured
    message, the data path's form of ``decode_header``; DecodeError on a short
    message or an unknown suite."""
    if len(payload) < OVERHEAD:
        raise DecodeError("secure_truncated", f"{len(payload)} bytes")
    fields = HEADER.unpack_from(payload)
    if fields[1] not in SUITE_NAMES:
        raise DecodeError("secure_bad_suite", f"suite {fields[1]}")
    return fields[1:]


def decode_header(payload: bytes) -> SecureHeader:
    """The header of a secured message; DecodeError on a short or unknown one."""
    return SecureHeader(*unpack(payload))


def header_prefix(suite: int, spi: int, sender: int, epoch: int) -> bytes:
    """The first 24 header bytes, the same for every message of one epoch."""
    return HEADER.pack(MSG_SECURE, suite, spi, sender, epoch, 0, bytes(4))[:24]


def seal_with(aead: AESGCM, suite: int, prefix: bytes, seq: int, care_of: bytes,
              inner: bytes) -> bytes:
    """The secured message carrying the clear-mode message ``inner``, from the
    epoch's ``header_prefix`` (the data path's form of ``seal``)."""
    seq_bytes = seq.to_bytes(8, "big")
    head = prefix + seq_bytes + care_of
    if suite == SUITE_CONF:
        return head + aead.encrypt(_NONCE_PAD + seq_bytes, inner, head)
    body = head + inner
    return body + aead.encrypt(_NONCE_PAD + seq_bytes, b"", body)


def seal(aead: AESGCM, h: SecureHeader, inner: bytes) -> bytes:
    """The secured message with header ``h`` carrying the clear-mode message ``inner``."""
    return seal_with(aead, h.suite, header_prefix(h.suite, h.spi, h.sender, h.epoch),
                     h.seq, h.care_of, inner)


def open_(aead: AESGCM, suite: int, payload: bytes) -> bytes:
    """The clear-mode message of a secured one; DecodeError("bad_icv") unless
    every byte verifies.  The nonce is built from the sequence number field."""
    nonce = _NONCE_PAD + payload[24:32]
    try:
        view = memoryview(payload)          # no copy of a 64 KB super-frame
        if suite == SUITE_CONF:
            return aead.decrypt(nonce, view[HEADER_LEN:], view[:HEADER_LEN])
        aead.decrypt(nonce, payload[-ICV_LEN:], view[:-ICV_LEN])
        return payload[HEADER_LEN:-ICV_LEN]
    except InvalidTag:
        raise DecodeError("bad_icv") from None
