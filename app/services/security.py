"""Password hashing (argon2 via pwdlib), random secrets and their digests."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

_hasher = PasswordHash((Argon2Hasher(),))
# A real hash to verify against when the user does not exist, so timing does not tell.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    """Constant-ish time: an unknown user still costs one argon2 verification."""
    try:
        return _hasher.verify(password, password_hash or _DUMMY_HASH) and password_hash is not None
    except Exception:  # malformed hash in the database
        return False


def new_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def digest(value: str) -> str:
    """SHA-256 hex of a high-entropy secret (tokens, session ids); not for passwords."""
    return hashlib.sha256(value.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def generate_password() -> str:
    return secrets.token_urlsafe(12)
