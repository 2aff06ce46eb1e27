"""Device credential formats. Tokens are 256-bit random values issued once and never stored."""

from __future__ import annotations

import base64
import hashlib
import os

# Mosquitto 2.x password file format: $7$<iterations>$<base64 salt>$<base64 PBKDF2-SHA512>.
MOSQUITTO_HASH_ITERATIONS = 101  # Mosquitto's own default; tokens are random, not guessable
_MOSQUITTO_SALT_BYTES = 12


def hash_device_token(token: str) -> bytes:
    """SHA-256 of a bearer token: enough for a 256-bit random secret, and fast to look up."""
    return hashlib.sha256(token.encode()).digest()


def mosquitto_password_hash(secret: str, *, salt: bytes | None = None) -> str:
    """The line-value Mosquitto's password_file expects for ``secret``."""
    salt = salt if salt is not None else os.urandom(_MOSQUITTO_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, MOSQUITTO_HASH_ITERATIONS)
    encoded_salt = base64.b64encode(salt).decode()
    return f"$7${MOSQUITTO_HASH_ITERATIONS}${encoded_salt}${base64.b64encode(digest).decode()}"
