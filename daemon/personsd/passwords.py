"""Tenant SFTP passwords, stored only as salted scrypt hashes (SPEC section 6).

The stored form describes itself, ``scrypt$n$r$p$salt$hash`` (salt and hash in
unpadded base64), so the cost can be raised later without breaking hashes that
are already stored.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets

_N = 2**14
_R = 8
_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
# A stored hash is trusted data, but a corrupt or hostile row must not make
# one login attempt eat gigabytes or minutes: cap the parameters we accept.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16
_MAXMEM = 256 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=length
    )


def hash_password(password: str) -> str:
    """A fresh salted hash of ``password`` in the ``scrypt$n$r$p$salt$hash`` form."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, _N, _R, _P, _HASH_BYTES)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error):
        return None
    power_of_two = n > 1 and n & (n - 1) == 0
    if not (power_of_two and n <= _MAX_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        return None
    if not salt or not 16 <= len(digest) <= 64:
        return None
    return n, r, p, salt, digest


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; False for a malformed hash."""
    parsed = _parse(stored)
    if parsed is None:
        return False
    n, r, p, salt, digest = parsed
    candidate = _scrypt(password, salt, n, r, p, len(digest))
    return hmac.compare_digest(candidate, digest)


# Spent on a login attempt for a user with no password, so that the answer
# takes as long as for a wrong password and does not reveal which users exist.
@functools.cache
def _dummy() -> str:
    return hash_password(secrets.token_hex(16))


def burn_time(password: str) -> None:
    """Spend the time of one verification, for logins that cannot succeed."""
    verify_password(password, _dummy())
