"""API key secrets: how they are made and hashed (no database, no Flask)."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "tc_"


def generate_key() -> tuple[str, str]:
    """A new key: (the secret to hand out once, its public prefix shown in listings).

    The secret is `tc_<8 hex>_<43 url-safe chars>`: 32 random bytes from `secrets` after the prefix.
    """
    prefix = KEY_PREFIX + secrets.token_hex(4)
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def hash_key(secret: str) -> str:
    """The SHA-256 hex digest stored for a key.

    A fast hash is right here, unlike for passwords: the secret carries 256 random bits, so guessing it is
    infeasible however fast each guess is, and a slow KDF (bcrypt, argon2) would only add tens of milliseconds
    to every request. Lookup is by this digest (unique index), so no secret is ever compared byte by byte.
    """
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
