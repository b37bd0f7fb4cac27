"""Password hashing: scrypt with a random salt per password, stored as a self-describing string.

The stored form is ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``: the parameters travel with
the hash, so they can be raised later and old hashes still verify (and are re-hashed at the
next successful login, see ``needs_rehash``). Passwords are never logged, and never kept
anywhere but in the caller's variables.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import unicodedata
from dataclasses import dataclass

ALGORITHM = "scrypt"
# n = 2^15, r = 8, p = 1: 32 MiB and ~50-100 ms per hash on one core, OWASP's scrypt guidance.
N, R, P = 2**15, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
MIN_LENGTH = 10
# A bound so a megabyte "password" cannot be used to make each login attempt expensive.
MAX_LENGTH = 1024
# Parameters above these in a stored hash are refused rather than computed (a corrupted or
# hostile row must not make one login take minutes and gigabytes).
MAX_N, MAX_R, MAX_P = 2**20, 32, 16


class PasswordError(ValueError):
    """A password refused by the policy; the message says why (never the password)."""


def normalize(password: str) -> str:
    """NFKC, as NIST SP 800-63B asks: the same password typed on two keyboards is one password
    (an "é" composed or decomposed, a full-width digit)."""
    return unicodedata.normalize("NFKC", password)


def check_policy(password: str) -> str:
    """The normalized password, or PasswordError saying what is wrong with it."""
    if not isinstance(password, str):
        raise PasswordError("a password is text")
    password = normalize(password)
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"a password has at least {MIN_LENGTH} characters (a few words make a good one)")
    if len(password) > MAX_LENGTH:
        raise PasswordError(f"a password has at most {MAX_LENGTH} characters")
    if password.strip() == "":
        raise PasswordError("a password cannot be only spaces")
    return password


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # maxmem: scrypt needs 128 * n * r * p bytes; OpenSSL's default cap (32 MiB) is just too small.
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=2 * 128 * n * r * p + 1024 * 1024)


def hash_password(password: str) -> str:
    """The stored form of an acceptable password (PasswordError otherwise)."""
    password = check_policy(password)
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, N, R, P, HASH_BYTES)
    return f"{ALGORITHM}${N}${R}${P}${_b64(salt)}${_b64(digest)}"


@dataclass(frozen=True)
class _Stored:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def _parse(stored: str) -> _Stored:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != ALGORITHM:
        raise ValueError("not a Jisr scrypt hash")
    n, r, p = (int(x) for x in parts[1:4])
    if not (1 < n <= MAX_N and n & (n - 1) == 0 and 0 < r <= MAX_R and 0 < p <= MAX_P):
        raise ValueError("scrypt parameters out of range")
    salt, digest = _unb64(parts[4]), _unb64(parts[5])
    if not salt or len(digest) < 16:
        raise ValueError("scrypt salt or hash missing")
    return _Stored(n, r, p, salt, digest)


def verify_password(password: str, stored: str) -> bool:
    """Does ``password`` match ``stored``? Constant time in the comparison; False (never an
    exception) for a malformed stored value or an over-long password."""
    if not isinstance(password, str) or len(password) > MAX_LENGTH * 4:
        return False
    try:
        parsed = _parse(stored)
    except (ValueError, TypeError):
        return False
    candidate = _scrypt(normalize(password), parsed.salt, parsed.n, parsed.r, parsed.p, len(parsed.digest))
    return hmac.compare_digest(candidate, parsed.digest)


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with other parameters than today's."""
    try:
        parsed = _parse(stored)
    except (ValueError, TypeError):
        return True
    return (parsed.n, parsed.r, parsed.p, len(parsed.salt), len(parsed.digest)) != (N, R, P, SALT_BYTES, HASH_BYTES)


# Verified against when the username is unknown, so an unknown name takes as long to refuse
# as a wrong password (no account enumeration by timing). Made once, lazily.
_DUMMY: list[str] = []


def burn_time(password: str) -> None:
    """Spend what a real verification spends, for a login attempt on an unknown username."""
    if not _DUMMY:
        _DUMMY.append(hash_password("jisr-dummy-password-" + _b64(os.urandom(9))))
    verify_password(password, _DUMMY[0])
