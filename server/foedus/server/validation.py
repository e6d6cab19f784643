"""Checks of names, tags and sizes shared by the services; each failure says what is accepted."""

from __future__ import annotations

import math
import re

from foedus.server.errors import InvalidArgument
from foedus.server.store.records import ReferenceProfile

TENANT_NAME = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
TAG_KEY = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")
FRAMEWORK = re.compile(r"^[a-z0-9_-]{1,32}$")
DEPLOYMENT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

MAX_TAGS = 64
MAX_TAG_VALUE = 1024
MAX_DESCRIPTION = 10_000
MAX_FEATURES = 10_000
MAX_BINS = 1_000
MAX_CATEGORIES = 1_000


def tenant_name(name: str) -> str:
    if not TENANT_NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid tenant name {name!r}: use 2-63 lowercase letters, digits or '-', starting with a letter"
        )
    return name


def model_name(name: str) -> str:
    if not MODEL_NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid model name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def alias(name: str) -> str:
    if not ALIAS.fullmatch(name):
        raise InvalidArgument(
            f"invalid alias {name!r}: use 1-64 lowercase letters, digits, '_' or '-', starting with a letter"
        )
    return name


def deployment_name(name: str) -> str:
    if not DEPLOYMENT_NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid deployment name {name!r}: use 1-63 lowercase letters, digits or '-', starting with a letter"
        )
    return name


def agent_name(name: str) -> str:
    if not AGENT_NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid agent name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def version_number(version: int) -> int:
    if version <= 0:
        raise InvalidArgument(f"version numbers start at 1, got {version}")
    return version


def description(text: str) -> str:
    if len(text) > MAX_DESCRIPTION:
        raise InvalidArgument(f"description is longer than {MAX_DESCRIPTION} characters")
    return text


def tags(values: dict[str, str], what: str = "tags") -> dict[str, str]:
    if len(values) > MAX_TAGS:
        raise InvalidArgument(f"at most {MAX_TAGS} {what}, got {len(values)}")
    for key, value in values.items():
        if not TAG_KEY.fullmatch(key):
            raise InvalidArgument(f"invalid key {key!r} in {what}: use 1-128 of A-Z a-z 0-9 _ . : / -")
        if len(value) > MAX_TAG_VALUE:
            raise InvalidArgument(f"value of {key!r} in {what} is longer than {MAX_TAG_VALUE} characters")
    return dict(values)


def framework(name: str) -> str:
    if not FRAMEWORK.fullmatch(name):
        raise InvalidArgument(f"invalid framework {name!r}: use 1-32 lowercase letters, digits, '_' or '-'")
    return name


def reference_profile(profile: ReferenceProfile) -> ReferenceProfile:
    """A profile must be internally consistent: the drift computations rely on it."""
    if profile.row_count < 0:
        raise InvalidArgument("reference profile: row_count must not be negative")
    if len(profile.features) > MAX_FEATURES:
        raise InvalidArgument(f"reference profile: at most {MAX_FEATURES} features")
    seen: set[str] = set()
    for f in profile.features:
        where = f"reference profile, feature {f.name!r}"
        if not f.name or f.name in seen:
            raise InvalidArgument(f"{where}: feature names must be non-empty and unique")
        seen.add(f.name)
        if f.missing < 0 or any(c < 0 for c in f.counts):
            raise InvalidArgument(f"{where}: counts must not be negative")
        if f.kind == "numeric":
            if not 2 <= len(f.edges) <= MAX_BINS + 1:
                raise InvalidArgument(f"{where}: needs 2 to {MAX_BINS + 1} bin edges")
            if not all(math.isfinite(e) for e in f.edges) or any(
                b <= a for a, b in zip(f.edges, f.edges[1:], strict=False)
            ):
                raise InvalidArgument(f"{where}: bin edges must be finite and strictly increasing")
            if len(f.counts) != len(f.edges) - 1:
                raise InvalidArgument(f"{where}: needs one count per bin (len(edges) - 1)")
            if f.underflow < 0 or f.overflow < 0:
                raise InvalidArgument(f"{where}: counts must not be negative")
        elif f.kind == "categorical":
            if len(f.categories) > MAX_CATEGORIES or len(set(f.categories)) != len(f.categories):
                raise InvalidArgument(f"{where}: at most {MAX_CATEGORIES} distinct categories")
            if len(f.counts) != len(f.categories) or f.other < 0:
                raise InvalidArgument(f"{where}: needs one non-negative count per category")
        else:
            raise InvalidArgument(f"{where}: is neither numeric nor categorical")
    return profile
