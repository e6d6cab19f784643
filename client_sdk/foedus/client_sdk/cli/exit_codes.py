"""Exit codes of the `foedus` CLI. Scripts may rely on them; tests check this table and the docs agree."""

from __future__ import annotations

from foedus.client_sdk.errors import FoedusError, StatusCode

OK = 0
ERROR = 1
USAGE = 2
NOT_FOUND = 3
DENIED = 4
INVALID = 5
CONFLICT = 6
UNAVAILABLE = 7
INTEGRITY = 8
NOT_PROMOTED = 9
LIMITED = 10

HELP: dict[int, str] = {
    OK: "success",
    ERROR: "unexpected error (see the message)",
    USAGE: "bad command line: unknown option, missing argument",
    NOT_FOUND: "the tenant, model, version, alias or key does not exist (or is not visible to this key)",
    DENIED: "no, bad or revoked API key, or the key's role may not do this",
    INVALID: "the request was refused as invalid (bad name, rejected artifact, archived version, ...)",
    CONFLICT: "it exists already",
    UNAVAILABLE: "the server could not be reached, or did not answer in time",
    INTEGRITY: "downloaded data did not match its recorded sha256",
    NOT_PROMOTED: "the rollout waited on ended without promoting the candidate (rolled back, aborted, lost its A/B test)",
    LIMITED: "the tenant is over a quota or its call rate (the message says which; retry later or ask the admin)",
}

_BY_STATUS = {
    StatusCode.NOT_FOUND: NOT_FOUND,
    StatusCode.UNAUTHENTICATED: DENIED,
    StatusCode.PERMISSION_DENIED: DENIED,
    StatusCode.INVALID_ARGUMENT: INVALID,
    StatusCode.FAILED_PRECONDITION: INVALID,
    StatusCode.OUT_OF_RANGE: INVALID,
    StatusCode.ALREADY_EXISTS: CONFLICT,
    StatusCode.UNAVAILABLE: UNAVAILABLE,
    StatusCode.DEADLINE_EXCEEDED: UNAVAILABLE,
    StatusCode.DATA_LOSS: INTEGRITY,
    StatusCode.RESOURCE_EXHAUSTED: LIMITED,
}


def for_error(error: FoedusError) -> int:
    return _BY_STATUS.get(error.status, ERROR)
