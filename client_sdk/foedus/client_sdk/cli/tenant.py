"""`foedus tenant ...`: create, list, disable and enable tenants (platform admin)."""

from __future__ import annotations

import typer

from foedus.client_sdk.cli.common import emit, globals_of, to_dict

app = typer.Typer(help="Manage tenants (platform admin key).", no_args_is_help=True)
COLUMNS = ("name", "display_name", "state")


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="lowercase letters, digits and '-', starting with a letter"),
    display_name: str = typer.Option("", "--display-name", help="human-readable name"),
    owner_key: bool = typer.Option(True, "--owner-key/--no-owner-key", help="also create a first owner key"),
) -> None:
    """Create a tenant and (by default) its first owner key, whose secret is printed only now."""
    with globals_of(ctx).client() as client:
        resp = client.tenants.create(name, display_name=display_name, owner_key=owner_key)
    row = to_dict(resp.tenant)
    if resp.owner_key_secret:
        row["owner_key"] = resp.owner_key_secret
    emit(ctx, [row], (*COLUMNS, "owner_key") if resp.owner_key_secret else COLUMNS)
    if resp.owner_key_secret and globals_of(ctx).output == "table":
        typer.echo("Store the owner key now: it is not shown again.", err=True)


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List all tenants."""
    with globals_of(ctx).client() as client:
        emit(ctx, [to_dict(t) for t in client.tenants.list()], COLUMNS)


@app.command("disable")
def disable(ctx: typer.Context, name: str) -> None:
    """Disable a tenant: its keys are refused, its data is kept."""
    with globals_of(ctx).client() as client:
        emit(ctx, [to_dict(client.tenants.disable(name))], COLUMNS)


@app.command("enable")
def enable(ctx: typer.Context, name: str) -> None:
    """Enable a disabled tenant again."""
    with globals_of(ctx).client() as client:
        emit(ctx, [to_dict(client.tenants.enable(name))], COLUMNS)
