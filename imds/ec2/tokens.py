"""
IMDSv2 session tokens: stateless, signed, expiring.

A token carries its own expiry and an HMAC under a key made fresh for each process, so
issuing a million of them costs no memory [T-08] [T-17] and none can be forged or
survive a restart. The caller's address is mixed into the MAC (not stored in the token),
so a token replayed from another address fails to verify.

Layout, 40 bytes, URL-safe base64 with padding = 56 characters as on EC2 [T-07]:

    version(3) | expires_at_ms(8, big-endian) | nonce(8) | mac(21)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import secrets
import struct
from collections.abc import Callable
from typing import NamedTuple

from imds.ec2.wire import TTL_MAX, TTL_MIN
from imds.errors import InvalidTTL

# Real tokens start `AQAEA` on current Nitro hosts [T-07]; these bytes give that prefix.
_VERSION = b"\x01\x00\x04"
_MAC_LEN = 21
_BODY = struct.Struct(">3sQ8s")
_RAW_LEN = _BODY.size + _MAC_LEN
TOKEN_LENGTH = 56
_SEEN_MAX = 4096
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def parse_ttl(raw: str | None) -> int:
    """
    Parse the TTL header by EC2's rule.

    [T-04] leaves `+60`, ` 60 `, `60.0` and leading zeros undocumented; anything but a
    plain decimal integer in 1..21600 is refused, as the spec recommends.
    """
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 5:
        raise InvalidTTL(raw)
    if raw.startswith("0"):
        raise InvalidTTL(raw)
    ttl = int(raw)
    if not TTL_MIN <= ttl <= TTL_MAX:
        raise InvalidTTL(raw)
    return ttl


class Verified(NamedTuple):
    """A token that checked out, and when it stops doing so."""

    expires_at: float

    def remaining(self, now: float) -> int:
        # remaining lifetime in whole seconds: 21600 just after issue.
        return max(0, math.ceil(self.expires_at - now))


class TokenSigner:
    """Issues and verifies tokens under one secret key held only in memory."""

    def __init__(self, clock: Callable[[], float], key: bytes | None = None) -> None:
        self._clock = clock
        self._key = key if key is not None else secrets.token_bytes(32)
        # Keyed once; each MAC copies it, which skips re-deriving the padded key (half the
        # cost of `hmac.new` per request).
        self._keyed = hmac.new(self._key, digestmod=hashlib.sha256)
        # Tokens that verified, with the client each is bound to. An SDK sends one token
        # with several requests (the role list, then the credentials [S-PY-05]; Go v2 and
        # Rust for the token's lifetime [T-17]), and a lookup costs a tenth of checking
        # the MAC again. Only good tokens are kept, at most _SEEN_MAX; expiry is checked
        # on every use.
        self._seen: dict[str, tuple[str, Verified]] = {}

    def issue(self, ttl: int, client: str = "") -> str:
        expires_ms = int((self._clock() + ttl) * 1000)
        body = _BODY.pack(_VERSION, expires_ms, secrets.token_bytes(8))
        return base64.urlsafe_b64encode(body + self._mac(body, client)).decode("ascii")

    def verify(self, token: str, client: str = "") -> Verified | None:
        """Return the token's expiry if it is ours, intact, unexpired and used from `client`."""
        seen = self._seen.get(token)
        if seen is not None and seen[0] == client:
            verified = seen[1]
            return verified if self._clock() < verified.expires_at else None
        if len(token) != TOKEN_LENGTH or not token.isascii():
            return None
        encoded = token.encode("ascii")
        try:
            # Strict: only the alphabet, padding only at the end.
            raw = binascii.a2b_base64(encoded.translate(_FROM_URLSAFE), strict_mode=True)
        except binascii.Error:
            return None
        if (len(raw) != _RAW_LEN
                or binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE) != encoded):
            # Reject non-canonical encodings so one token has exactly one spelling.
            return None
        body = raw[: _BODY.size]
        if not hmac.compare_digest(raw[_BODY.size :], self._mac(body, client)):
            return None
        version, expires_ms, _nonce = _BODY.unpack(body)
        if version != _VERSION:
            return None
        expires_at = expires_ms / 1000
        # [T-21] a token is invalid from the instant created + ttl.
        if self._clock() >= expires_at:
            return None
        verified = Verified(expires_at)
        if len(self._seen) >= _SEEN_MAX:
            self._seen.clear()
        self._seen[token] = (client, verified)
        return verified

    def _mac(self, body: bytes, client: str) -> bytes:
        mac = self._keyed.copy()
        mac.update(body + client.encode())
        return mac.digest()[:_MAC_LEN]
