"""What the command groups share: global options, the client, and output as a table or JSON."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import typer
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from foedus.client_sdk.client import Client, TlsConfig
from foedus.client_sdk.errors import InvalidArgument, Unauthenticated

DEFAULT_SERVER = "127.0.0.1:50051"


@dataclass
class Globals:
    server: str
    api_key: str | None
    output: str
    tls: bool
    ca_cert: str | None
    client_cert: str | None = None
    client_key: str | None = None

    def tls_config(self) -> TlsConfig | None:
        """TLS settings from --tls, --ca-cert and --client-cert/--client-key; None is plaintext."""
        if bool(self.client_cert) != bool(self.client_key):
            raise InvalidArgument("--client-cert and --client-key go together")
        if not (self.tls or self.ca_cert or self.client_cert):
            return None
        return TlsConfig(ca_cert=self.ca_cert, client_cert=self.client_cert, client_key=self.client_key)

    def client(self) -> Client:
        key = self.api_key
        if not key:
            raise Unauthenticated(
                "no API key: pass --api-key, set FOEDUS_API_KEY, or FOEDUS_API_KEY_FILE "
                "(the admin key is in DATA_DIR/admin.key)"
            )
        return Client.connect(self.server, api_key=key, tls=self.tls_config())


def resolve_key(api_key: str | None, api_key_file: str | None, *, key_from_env: bool = False) -> str | None:
    """The API key: `--api-key`, else `--api-key-file`, else FOEDUS_API_KEY, else FOEDUS_API_KEY_FILE.

    `key_from_env` says that `api_key` came from FOEDUS_API_KEY rather than the command line, so an
    explicit `--api-key-file` takes precedence over it. Both flags on one command line are refused.
    """
    if api_key and api_key_file and not key_from_env:
        raise InvalidArgument("give --api-key or --api-key-file, not both")
    if api_key and not (key_from_env and api_key_file):
        return api_key
    path = api_key_file or os.environ.get("FOEDUS_API_KEY_FILE")
    if path:
        try:
            return open(path).read().strip()
        except OSError as exc:
            raise InvalidArgument(f"cannot read the API key file {path}: {exc.strerror}") from exc
    return None


def globals_of(ctx: typer.Context) -> Globals:
    obj = ctx.find_root().obj
    assert isinstance(obj, Globals)
    return obj


def to_dict(message: Message) -> dict[str, Any]:
    """The message as JSON data: proto field names, enum names, and 64-bit integers as numbers
    (protobuf's JSON mapping writes them as strings), so that `jq '.version == 2'` works.
    Timestamps and durations keep their RFC 3339 / "1.5s" strings."""
    data = MessageToDict(message, preserving_proto_field_name=True, use_integers_for_enums=False)
    _int64_as_numbers(message, data)
    return data


_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def _int64_as_numbers(message: Message, data: dict[str, Any]) -> None:
    descriptor: Any = message.DESCRIPTOR  # the stubs and upb's descriptors disagree on types
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = getattr(message, field.name)
        if field.type in _INT64:
            data[field.name] = [int(v) for v in value] if _repeated(field) else int(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            kind = field.message_type
            if kind.GetOptions().map_entry:
                entry = kind.fields_by_name["value"]
                if entry.type in _INT64:
                    data[field.name] = {k: int(v) for k, v in data[field.name].items()}
                elif entry.type == FieldDescriptor.TYPE_MESSAGE and not _well_known(entry.message_type):
                    for key, sub in value.items():
                        _int64_as_numbers(sub, data[field.name][str(key)])
            elif _well_known(kind):
                continue  # Timestamp, Duration, Struct, wrappers: their JSON forms stay
            elif _repeated(field):
                for sub, sub_data in zip(value, data[field.name], strict=True):
                    _int64_as_numbers(sub, sub_data)
            else:
                _int64_as_numbers(value, data[field.name])


def _repeated(field: Any) -> bool:
    return bool(field.is_repeated)


def _well_known(descriptor: Any) -> bool:
    return str(descriptor.full_name).startswith("google.protobuf.")


def emit(ctx: typer.Context, rows: Sequence[dict[str, Any]], columns: Sequence[str], raw: Any = None) -> None:
    """Prints rows as an aligned table, or `raw` (default: the rows) as JSON with --output json."""
    if globals_of(ctx).output == "json":
        # NaN and infinities are not JSON: an undefined figure is null.
        data = _json_safe(rows if raw is None else raw)
        typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str, allow_nan=False))
        return
    if not rows:
        typer.echo("(none)")
        return
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def number(x: float) -> str:
    """A metric in a table: four significant digits, "-" for NaN (undefined)."""
    return "-" if math.isnan(x) else f"{x:.4g}"


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def parse_pairs(pairs: Sequence[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"{what} must look like KEY=VALUE, got {pair!r}")
        if key in out:
            raise InvalidArgument(f"{what} {key!r} is given twice")
        out[key] = value
    return out
