"""Opaque page tokens: the sort key of the last row of a page, encoded so callers don't rely on it."""

from __future__ import annotations

import base64
import binascii
import json

from foedus.server.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument(f"page_size must be between 0 and {MAX_PAGE_SIZE}, got {requested}")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def encode(key: str | int) -> str:
    return base64.urlsafe_b64encode(json.dumps([key]).encode()).decode().rstrip("=")


def decode_str(token: str) -> str | None:
    key = _decode(token)
    if key is not None and not isinstance(key, str):
        raise InvalidArgument("page_token is not valid for this list call")
    return key


def decode_int(token: str) -> int | None:
    key = _decode(token)
    if key is not None and (not isinstance(key, int) or isinstance(key, bool) or not 0 <= key < 2**63):
        raise InvalidArgument("page_token is not valid for this list call")
    return key


def _decode(token: str) -> object:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument("page_token is malformed; pass next_page_token of a previous response") from exc
    if not isinstance(value, list) or len(value) != 1:
        raise InvalidArgument("page_token is malformed; pass next_page_token of a previous response")
    return value[0]
