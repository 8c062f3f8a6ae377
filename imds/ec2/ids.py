"""Realistic AWS identifiers: key ids, instance profile ids, instance ids."""

from __future__ import annotations

import hashlib
import secrets

# AWS unique ids use upper-case letters and the digits 2-7 (base32 without padding).
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def _base32(data: bytes, length: int) -> str:
    number = int.from_bytes(data, "big")
    chars = []
    for _ in range(length):
        number, index = divmod(number, 32)
        chars.append(_ALPHABET[index])
    return "".join(chars)


def access_key_id(prefix: str = "ASIA") -> str:
    """A 20-character key id; [C-03] temporary keys start `ASIA`."""
    return prefix + _base32(secrets.token_bytes(10), 16)


def instance_profile_id(seed: str) -> str:
    """A stable `AIPA…` id (21 characters) derived from `seed` [C-01]."""
    return "AIPA" + _base32(hashlib.sha256(seed.encode()).digest(), 17)
