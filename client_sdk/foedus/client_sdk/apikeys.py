"""The form of Foedus API keys: `fds_<key id>_<secret>`.

The key id is 12 characters of [a-z0-9]; the secret is 256 random bits, URL-safe base64 (43
characters). The server stores only a SHA-256 hash of the secret. `new_key()` makes a key the way
the server does; `foedus server admin-key` writes one to a file for the server's `admin_key_file`.
"""

from __future__ import annotations

import re
import secrets

KEY_PREFIX = "fds_"
KEY_ID_LENGTH = 12
KEY_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
SECRET_BYTES = 32
SECRET_MIN_LENGTH = 43
"""Characters of a secret of SECRET_BYTES random bytes in URL-safe base64 (unpadded)."""

_WELL_FORMED = re.compile(
    rf"{KEY_PREFIX}([{KEY_ID_ALPHABET}]{{{KEY_ID_LENGTH}}})_([A-Za-z0-9_-]{{{SECRET_MIN_LENGTH},}})"
)


def new_key() -> tuple[str, str]:
    """A new random key id and secret; `format_key` joins them into the key callers pass."""
    key_id = "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))
    return key_id, secrets.token_urlsafe(SECRET_BYTES)


def format_key(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}{key_id}_{secret}"


def check_key(token: str) -> tuple[str, str]:
    """The key id and secret of a well-formed key made by `new_key`; ValueError otherwise.

    The message never contains the key itself.
    """
    match = _WELL_FORMED.fullmatch(token)
    if match is None:
        raise ValueError(
            f"not a well-formed API key: expected {KEY_PREFIX}<{KEY_ID_LENGTH} characters a-z0-9>_<secret of "
            f"at least {SECRET_MIN_LENGTH} characters A-Za-z0-9_->, as `foedus server admin-key` writes"
        )
    return match.group(1), match.group(2)
