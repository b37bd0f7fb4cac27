"""Keyed pseudonyms of addresses: what logs and the suppression list hold instead of a phone number.

A plain sha256 of "whatsapp:+33612345678" is reversed in minutes by hashing every phone
number of a country; an HMAC needs the key too (JISR_LOG_PSEUDONYM_KEY, from the
environment, refused as a placeholder in production). Two purposes, two domains: a log
pseudonym is short (enough to follow one family through the logs), a suppression hash is
the full digest (it must never collide).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Optional

_key: Optional[bytes] = None


def configure(key: str) -> None:
    """Use ``key`` in this process (the gateway calls this with its settings at start-up)."""
    global _key
    _key = key.encode()


def _current_key() -> bytes:
    # Not configured (a CLI command, a worker): the same environment the gateway reads.
    global _key
    if _key is None:
        from jisr.settings import Settings

        _key = Settings().log_pseudonym_key.encode()
    return _key


def _digest(purpose: bytes, address: str) -> str:
    return hmac.new(_current_key(), purpose + b"\0" + address.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def address_hash(address: str) -> str:
    """What logs (and per-sender Redis counters) say instead of a phone number or chat id."""
    return _digest(b"log", address)[:16]


def suppression_hash(address: str) -> str:
    """The only trace of a forgotten address: lets an import refuse it, reveals nothing without the key."""
    return _digest(b"suppress", address)
