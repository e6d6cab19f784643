"""`foedus model ...`: the model registry."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import typer

from foedus.client_sdk.cli.common import emit, globals_of, parse_pairs, to_dict
from foedus.client_sdk.errors import InvalidArgument

app = typer.Typer(help="Register, list, alias, download and archive model versions.", no_args_is_help=True)
VERSION_COLUMNS = ("version", "state", "aliases", "framework", "size", "sha256", "p50_ms", "created")


def _version_row(v: Any) -> dict[str, Any]:
    d = to_dict(v)
    art = d.get("artifact", {})
    return {
        **d,
        "version": v.version,
        "state": d.get("state", "").removeprefix("VERSION_STATE_").lower(),
        "framework": art.get("framework", ""),
        "size": art.get("size_bytes", "0"),
        "sha256": art.get("sha256", "")[:12],
        "p50_ms": f"{v.latency.p50_ms:.3f}" if v.HasField("latency") else "",
        "created": d.get("meta", {}).get("created_at", ""),
    }


def load_reference(path: Path) -> Any:
    """Reference data from .npy (2-D array) or .csv (header row; numeric columns parsed as numbers)."""
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"cannot read the reference data {path}: {exc}") from None
    if path.suffix != ".csv":
        raise InvalidArgument(f"reference data must be .npy or .csv, got {path.name}")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None) or []
        duplicates = sorted({name for name in header if header.count(name) > 1})
        if duplicates:
            raise InvalidArgument(f"{path}: column names repeat in the header: {', '.join(duplicates)}")
        columns: dict[str, list[str]] = {name: [] for name in header}
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise InvalidArgument(
                    f"{path}, line {reader.line_num}: {len(row)} fields, the header has {len(header)}"
                )
            for name, value in zip(header, row, strict=True):
                columns[name].append(value)
    out: dict[str, Any] = {}
    for name, values in columns.items():
        try:
            out[name] = np.array([float(v) if v != "" else np.nan for v in values])
        except ValueError:
            out[name] = np.array(values, dtype=object)
    return out


@app.command("register")
def register(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="model name (created on the first registration)"),
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="artifact file, e.g. model.onnx"),
    alias: list[str] = typer.Option([], "--alias", help="alias to point at the new version (repeatable)"),
    tag: list[str] = typer.Option([], "--tag", help="KEY=VALUE (repeatable)"),
    lineage: list[str] = typer.Option(
        [], "--lineage", help="KEY=VALUE: data_fingerprint, code_revision, parent_version, or free keys"
    ),
    reference: Path | None = typer.Option(
        None, "--reference", exists=True, dir_okay=False, help="reference sample (.npy or .csv) to profile"
    ),
    description: str = typer.Option("", "--description"),
    framework: str | None = typer.Option(
        None, "--framework", help="onnx (default for .onnx files), sklearn, custom, ..."
    ),
) -> None:
    """Upload a new version; ONNX artifacts pass the registry's gates or are rejected."""
    data = load_reference(reference) if reference is not None else None
    with globals_of(ctx).client() as client:
        version = client.models.register(
            name,
            path,
            aliases=alias,
            tags=parse_pairs(tag, "--tag"),
            lineage=parse_pairs(lineage, "--lineage"),
            reference_data=data,
            description=description,
            framework=framework,
        )
    emit(ctx, [_version_row(version)], VERSION_COLUMNS, raw=to_dict(version))


@app.command("list")
def list_(
    ctx: typer.Context, prefix: str = typer.Option("", "--prefix", help="only names starting with this")
) -> None:
    """List the tenant's models."""
    with globals_of(ctx).client() as client:
        models = client.models.list(name_prefix=prefix)
    emit(ctx, [to_dict(m) for m in models], ("name", "latest_version", "aliases", "description"))


@app.command("versions")
def versions(
    ctx: typer.Context,
    name: str,
    all_: bool = typer.Option(False, "--all", help="include archived versions"),
) -> None:
    """List a model's versions, newest first."""
    with globals_of(ctx).client() as client:
        items = client.models.versions(name, include_archived=all_)
    emit(ctx, [_version_row(v) for v in items], VERSION_COLUMNS, raw=[to_dict(v) for v in items])


@app.command("get")
def get(
    ctx: typer.Context,
    name: str,
    version: int | None = typer.Option(None, "--version", help="version number"),
    alias: str | None = typer.Option(None, "--alias", help="alias, e.g. production"),
) -> None:
    """Show a model, or one of its versions with --version or --alias."""
    with globals_of(ctx).client() as client:
        if version is None and alias is None:
            model = client.models.get(name)
            emit(
                ctx,
                [to_dict(model)],
                ("name", "latest_version", "aliases", "tags", "description"),
                raw=to_dict(model),  # one object, as for a version
            )
            return
        v = client.models.get_version(name, version, alias=alias)
    emit(ctx, [_version_row(v)], VERSION_COLUMNS, raw=to_dict(v))


@app.command("alias")
def set_alias(
    ctx: typer.Context,
    name: str,
    alias: str,
    version: int | None = typer.Argument(None, help="version to point at (omit with --delete)"),
    delete: bool = typer.Option(False, "--delete", help="remove the alias"),
) -> None:
    """Point ALIAS at VERSION (atomically), or remove it with --delete."""
    with globals_of(ctx).client() as client:
        if delete:
            if version is not None:
                raise InvalidArgument("--delete removes the alias: give no VERSION with it")
            client.models.delete_alias(name, alias)
            emit(ctx, [{"alias": alias, "version": "", "previous": ""}], ("alias", "version"))
            return
        if version is None:
            raise InvalidArgument("give the VERSION to point the alias at, or --delete")
        previous = client.models.set_alias(name, alias, version)
    emit(
        ctx,
        [{"alias": alias, "version": version, "previous": previous or ""}],
        ("alias", "version", "previous"),
    )


@app.command("download")
def download(
    ctx: typer.Context,
    name: str,
    dest: str = typer.Argument(
        ".", help="file or existing directory to write to (a path ending in / is a directory)"
    ),
    version: int | None = typer.Option(None, "--version"),
    alias: str | None = typer.Option(None, "--alias"),
) -> None:
    """Download a version's artifact, verified against its sha256."""
    with globals_of(ctx).client() as client:
        path = client.models.download(name, dest, version, alias=alias)
    emit(ctx, [{"path": str(path)}], ("path",))


@app.command("archive")
def archive(ctx: typer.Context, name: str, version: int) -> None:
    """Archive a version (refused while an alias points at it)."""
    with globals_of(ctx).client() as client:
        v = client.models.archive(name, version)
    emit(ctx, [_version_row(v)], VERSION_COLUMNS, raw=to_dict(v))
