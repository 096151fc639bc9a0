"""Key generations, epochs and per-sender state of secured vnets (design.md 7).

``SecurityContext`` is the engine-wide part: the random 64-bit sender id of
this engine, the epoch source (injected: the wall clock and a persist hook,
so the core stays sans-IO) and the epoch limits.  ``VnetKeys`` is one vnet:
its generations (added: accepted on receive; active: used to send and
accepted; retired: forgotten), the send state of the active generation and
the receive state per (generation, sender id): the latest verified epoch,
its traffic key and its replay window.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..wire.codec import DecodeError
from . import keys
from .replay import ReplayWindow
from .secure_codec import SUITES, header_prefix, open_, seal_with

EPOCH_LIFETIME = 600.0      # senders start a new epoch at least this often (s)
EPOCH_MAX_AGE = 900.0       # receivers reject older epochs (s, design.md 7)
# A new epoch long before the 64-bit space ends, and within AES-GCM's
# per-key invocation limit.
REKEY_SEQ = 1 << 32
# Traffic keys derived for packets of a sender or epoch not verified yet, per
# vnet: a forged flood pays no key set-up past them, so it costs less per
# packet than genuine traffic (docs/security.md "Resource limits").  Legit
# need: one per sender every --epoch-lifetime, and every sender at once
# after a restart of ours.
NEW_SENDERS_PER_SECOND = 256.0
NEW_SENDER_BURST = 1024.0
STATE_ADDED = "added"
STATE_ACTIVE = "active"
STATE_RETIRED = "retired"


class EpochSource:
    """Epochs only grow: the larger of the wall clock in nanoseconds and the
    last epoch plus one, handed to ``persist`` before it is used."""

    def __init__(self, wall_ns: Callable[[], int], last: int = 0,
                 persist: Callable[[int], None] | None = None):
        self.wall_ns = wall_ns
        self.last = last
        self.persist = persist

    def next(self) -> int:
        epoch = max(self.wall_ns(), self.last + 1)
        if self.persist is not None:
            self.persist(epoch)
        self.last = epoch
        return epoch


class SecurityContext:
    """Engine-wide security state shared by every secured vnet."""

    def __init__(self, sender_id: int, epochs: EpochSource,
                 max_age: float = EPOCH_MAX_AGE, lifetime: float = EPOCH_LIFETIME):
        if not 0 <= sender_id < 1 << 64:
            raise ValueError("sender id must be 64 bits")
        self.sender_id = sender_id
        self.epochs = epochs
        self.wall_ns = epochs.wall_ns
        self.max_age_ns = int(max_age * 1e9)
        self.lifetime = lifetime
    def epoch_ahead_of_clock(self) -> float:
        """Seconds by which the persisted epoch is ahead of the wall clock.

        Epochs never go back (design.md 7), so after a clock that jumped ahead
        and was corrected, receivers with right clocks refuse this host's
        epochs as from the future until the clock catches up; which clock
        was wrong only the operator knows, so the daemon says so."""
        return max(0, self.epochs.last - self.wall_ns()) / 1e9

    @classmethod
    def system(cls, last_epoch: int = 0, persist: Callable[[int], None] | None = None,
               max_age: float = EPOCH_MAX_AGE, lifetime: float = EPOCH_LIFETIME
               ) -> SecurityContext:
        """A random sender id and the system's wall clock."""
        return cls(int.from_bytes(os.urandom(8), "big"),
                   EpochSource(time.time_ns, last_epoch, persist), max_age, lifetime)


class Generation:
    """One key generation of a vnet; ``group`` is derived key material, never listed."""

    __slots__ = ("gen", "group", "peers", "prk", "spi", "state")

    def __init__(self, gen: int, spi: int, group: bytes):
        self.gen = gen
        self.spi = spi
        self.group = group
        self.prk = keys.traffic_prk(group)     # the traffic keys' HKDF-Extract, once
        self.state = STATE_ADDED
        self.peers: dict[int, _Peer] = {}


class _Peer:
    """Receive state of one sender under one generation: its latest epoch."""

    __slots__ = ("aead", "epoch", "window")

    def __init__(self, epoch: int, aead: AESGCM, window: ReplayWindow):
        self.epoch = epoch
        self.aead = aead
        self.window = window


class _Sending:
    __slots__ = ("aead", "epoch", "gen", "prefix", "seq", "started")

    def __init__(self, gen: Generation, epoch: int, aead: AESGCM, prefix: bytes,
                 started: float):
        self.gen = gen
        self.epoch = epoch
        self.aead = aead
        self.prefix = prefix
        self.seq = 0
        self.started = started


class VnetKeys:
    """The keys of one secured vnet."""

    def __init__(self, vid_raw: bytes, level: str, ctx: SecurityContext):
        self.vid_raw = vid_raw
        self.level = level
        self.suite = SUITES[level]
        self.ctx = ctx
        self.generations: dict[int, Generation] = {}
        self._sending: _Sending | None = None
        self.epochs_started = 0
        self._tokens = NEW_SENDER_BURST     # derivations for new senders, refilled per second
        self._tokens_at: float | None = None

    # -- generations -----------------------------------------------------------

    def prepare(self, file_key: bytes) -> Generation:
        """The generation a file key makes for this vnet (not added yet).
        KeyError if it is already here; ValueError if another key has its number."""
        gen = keys.generation(file_key, self.vid_raw)
        g = Generation(gen, keys.spi(file_key, self.vid_raw, gen),
                       keys.group_key(file_key, self.vid_raw, gen))
        old = self.generations.get(gen)
        if old is not None and old.state != STATE_RETIRED:
            if old.group == g.group:
                raise KeyError(f"key generation {gen} is already added")
            raise ValueError(f"another key of this vnet has generation {gen}: make a new key")
        return g

    def add(self, g: Generation) -> None:
        """Accept ``g`` on receive; the first generation is also made active."""
        self.generations[g.gen] = g
        g.state = STATE_ADDED
        if self.active() is None:
            self.activate(g.gen)

    def active(self) -> Generation | None:
        for g in self.generations.values():
            if g.state == STATE_ACTIVE:
                return g
        return None

    def activate(self, gen: int) -> None:
        """Send with ``gen``; the previous active one stays accepted.  KeyError if unknown."""
        g = self._usable(gen)
        old = self.active()
        if old is not None:
            old.state = STATE_ADDED
        g.state = STATE_ACTIVE
        self._sending = None

    def retire(self, gen: int) -> Generation:
        """Stop accepting ``gen``; ValueError for the active one."""
        g = self._usable(gen)
        if g.state == STATE_ACTIVE:
            raise ValueError(f"key generation {gen} is active: activate another one first")
        g.state = STATE_RETIRED
        g.group = b""
        g.prk = None
        g.peers.clear()
        return g

    def _usable(self, gen: int) -> Generation:
        g = self.generations.get(gen)
        if g is None or g.state == STATE_RETIRED:
            raise KeyError(f"no key generation {gen}")
        return g

    def listing(self) -> list[tuple[int, str, int]]:
        """(generation, state, SPI), by generation: never key material."""
        return [(g.gen, g.state, g.spi) for _, g in sorted(self.generations.items())]

    # -- data path ---------------------------------------------------------------

    def seal(self, inner: bytes, care_of: bytes, now: float) -> bytes:
        """``inner`` (a clear-mode message) as a secured message of the active generation."""
        s = self._sending
        if s is None or s.seq >= REKEY_SEQ or now - s.started >= self.ctx.lifetime:
            s = self._new_epoch(now)
        s.seq += 1
        return seal_with(s.aead, self.suite, s.prefix, s.seq, care_of, inner)

    def _new_epoch(self, now: float) -> _Sending:
        g = self.active()
        epoch = self.ctx.epochs.next()
        sender = self.ctx.sender_id
        aead = AESGCM(keys.traffic_key_with(g.prk, self.suite, sender, epoch))
        prefix = header_prefix(self.suite, g.spi, sender, epoch)
        self._sending = s = _Sending(g, epoch, aead, prefix, now)
        self.epochs_started += 1
        return s

    def open(self, g: Generation, sender: int, epoch: int, seq: int, payload: bytes,
             now: float = 0.0) -> bytes:
        """The clear-mode message of a secured one for generation ``g`` whose
        header carries ``sender``, ``epoch`` and ``seq``.  State changes only
        after the ICV verified (RFC 4303 3.4.3); a new sender or epoch waits
        when the vnet's derivations for such are used up (``new_sender_limited``)."""
        ctx = self.ctx
        wall = ctx.wall_ns()
        if epoch + ctx.max_age_ns < wall:
            raise DecodeError("epoch_expired")
        if epoch > wall + ctx.max_age_ns:
            # A "future" epoch would never expire, so its packets could be
            # replayed to every receiver that restarts: refuse it too.
            raise DecodeError("epoch_future")
        peer = g.peers.get(sender)
        if peer is not None and epoch == peer.epoch:
            reason = peer.window.check(seq)
            if reason is not None:
                raise DecodeError(reason)
            inner = open_(peer.aead, self.suite, payload)
            peer.window.update(seq)
            return inner
        if sender == ctx.sender_id:
            raise DecodeError("own_packet")
        if peer is not None and epoch < peer.epoch:
            raise DecodeError("epoch_old")
        if seq == 0:
            raise DecodeError("replay_zero_seq")
        if not self._may_derive(now):
            raise DecodeError("new_sender_limited")
        # One HMAC block and a key set-up, as for a sender's first genuine packet.
        aead = AESGCM(keys.traffic_key_with(g.prk, self.suite, sender, epoch))
        inner = open_(aead, self.suite, payload)
        window = ReplayWindow()
        window.update(seq)
        g.peers[sender] = _Peer(epoch, aead, window)
        return inner

    def _may_derive(self, now: float) -> bool:
        """A token of the new-sender budget (NEW_SENDERS_PER_SECOND), if one is left."""
        last = self._tokens_at
        tokens = self._tokens if last is None else min(
            NEW_SENDER_BURST, self._tokens + max(0.0, now - last) * NEW_SENDERS_PER_SECOND)
        self._tokens_at = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True

    def sweep(self) -> None:
        """Forget senders whose epoch is past the age limit (they are refused anyway)."""
        oldest = self.ctx.wall_ns() - self.ctx.max_age_ns
        for g in self.generations.values():
            for sender in [s for s, p in g.peers.items() if p.epoch < oldest]:
                del g.peers[sender]
