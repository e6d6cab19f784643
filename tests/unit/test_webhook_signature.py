"""foedus.client_sdk.webhooks: the signature scheme of webhook deliveries."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from foedus.client_sdk.webhooks import SignatureError, sign, verify_signature

SECRET = "whsec-0123456789abcdef"
BODY = b'{"type": "incident.opened"}'


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    header = sign(SECRET, BODY, timestamp=1_700_000_000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify_signature(SECRET, header, BODY, now=1_700_000_100) == 1_700_000_000


def test_forged_altered_stale_or_malformed_deliveries_are_refused() -> None:
    header = sign(SECRET, BODY, timestamp=1_700_000_000)
    now = 1_700_000_010
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature("another-secret-0123456789", header, BODY, now=now)
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(SECRET, header, BODY + b" ", now=now)
    # The timestamp is signed too: moving it breaks the signature.
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(SECRET, header.replace("t=1700000000", "t=1700000005"), BODY, now=now)
    with pytest.raises(SignatureError, match="away from now"):
        verify_signature(SECRET, header, BODY, now=1_700_000_000 + 301)
    for bad in ("", "v1=abc", "t=soon,v1=abc", "t=1700000000"):
        with pytest.raises(SignatureError):
            verify_signature(SECRET, bad, BODY, now=now)
    assert verify_signature(SECRET, header, BODY, tolerance_s=0, now=0) == 1_700_000_000


def test_a_header_with_several_v1_values_matches_when_one_does() -> None:
    """Stripe's format allows several v1 values; the server sends one, receivers accept any."""
    header = sign(SECRET, BODY, timestamp=1_700_000_000)
    old = sign("the-old-secret-0123456789", BODY, timestamp=1_700_000_000).split(",")[1]
    assert verify_signature(SECRET, f"{header},{old}", BODY, now=1_700_000_000) == 1_700_000_000
