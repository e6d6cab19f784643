"""Role hierarchy: owner ⊇ editor ⊇ viewer; agent and admin stand alone."""

from __future__ import annotations

import pytest

from foedus.client_sdk.apikeys import check_key, format_key, new_key
from foedus.server.errors import Unauthenticated
from foedus.server.store.records import Role
from foedus.server.tenancy.principal import Principal
from foedus.server.tenancy.service import parse_key


@pytest.mark.parametrize(
    ("role", "allowed", "expected"),
    [
        (Role.OWNER, {Role.EDITOR}, True),
        (Role.EDITOR, {Role.EDITOR}, True),
        (Role.VIEWER, {Role.EDITOR}, False),
        (Role.EDITOR, {Role.VIEWER}, True),
        (Role.AGENT, {Role.VIEWER}, False),
        (Role.AGENT, {Role.VIEWER, Role.AGENT}, True),
        (Role.ADMIN, {Role.OWNER}, False),
        (Role.OWNER, {Role.ADMIN}, False),
        (Role.OWNER, {Role.ADMIN, Role.AGENT}, False),
    ],
)
def test_role_hierarchy(role: Role, allowed: set[Role], expected: bool) -> None:
    assert Principal("k", role, None if role == Role.ADMIN else "t").may(frozenset(allowed)) is expected


def test_key_format() -> None:
    assert parse_key("fds_abcdefghijkl_s3cr_et-x") == ("abcdefghijkl", "s3cr_et-x")
    for bad in ("", "abc", "fds_short", "fds_abcdefghijklXsecret"):
        with pytest.raises(Unauthenticated):
            parse_key(bad)


def test_new_keys_are_well_formed_and_parse() -> None:
    key_id, secret = new_key()
    key = format_key(key_id, secret)
    assert check_key(key) == parse_key(key) == (key_id, secret)
    assert len(secret) >= 43 and new_key() != (key_id, secret)
    for bad in (key + " ", key.replace("fds_", "fdx_"), key.upper(), key[:-2], f"fds_{key_id}-{secret}"):
        with pytest.raises(ValueError, match="not a well-formed API key") as exc:
            check_key(bad)
        assert secret not in str(exc.value)
