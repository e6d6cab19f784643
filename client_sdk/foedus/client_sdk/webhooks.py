"""Signatures of Foedus webhook deliveries: how the server signs them and how a receiver checks them.

Every delivery is a POST of a JSON body with the header

    X-Foedus-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed by the secret>

(the scheme Stripe uses). A receiver recomputes the HMAC over the raw body with its copy of the
secret, compares in constant time, and refuses old timestamps so a captured delivery cannot be
replayed later:

    from foedus.client_sdk.webhooks import verify_signature
    verify_signature(secret, request.headers["X-Foedus-Signature"], raw_body)  # raises if forged
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Foedus-Signature"
DEFAULT_TOLERANCE_S = 300.0


class SignatureError(ValueError):
    """The signature header is missing, malformed, too old, or does not match the body."""


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of "<timestamp>.<body>" keyed by `secret`."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    """The value of the X-Foedus-Signature header for `body` (now, unless `timestamp` is given)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={signature(secret, body, t)}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Checks a delivery; returns its timestamp, or raises SignatureError.

    `tolerance_s` is how old (or how far ahead) the timestamp may be; 0 turns the check off.
    """
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        raise SignatureError(f"{SIGNATURE_HEADER} has no timestamp (t=...)") from None
    if tolerance_s and abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise SignatureError(f"the delivery's timestamp is more than {tolerance_s:g} s away from now")
    expected = signature(secret, body, timestamp)
    if not any(hmac.compare_digest(expected, given) for given in fields.get("v1", [])):
        raise SignatureError("the signature does not match the body: wrong secret, or altered body")
    return timestamp
