"""`foedus key ...`: create, list and revoke API keys."""

from __future__ import annotations

import typer

from foedus.client_sdk.cli.common import emit, globals_of, to_dict

app = typer.Typer(
    help="Manage API keys: tenant owners their tenant's; the admin a tenant's with --tenant, "
    "and without it the platform admin keys (to rotate one: create, switch, revoke the old).",
    no_args_is_help=True,
)
COLUMNS = ("key_id", "tenant", "role", "description", "revoked_at")


@app.command("create")
def create(
    ctx: typer.Context,
    role: str = typer.Option(
        ..., "--role", help="owner | editor | viewer | agent; admin for a platform admin key (no --tenant)"
    ),
    description: str = typer.Option("", "--description", help="what the key is for"),
    tenant: str = typer.Option(
        "", "--tenant", help="tenant (for the admin; without it: platform admin keys; owners: their own)"
    ),
) -> None:
    """Create a key; its secret is printed only now."""
    with globals_of(ctx).client() as client:
        resp = client.keys.create(role, description=description, tenant=tenant)
    row = {**to_dict(resp.key), "secret": resp.secret}
    emit(ctx, [row], ("key_id", "tenant", "role", "secret"))


@app.command("list")
def list_(
    ctx: typer.Context,
    tenant: str = typer.Option(
        "", "--tenant", help="tenant (for the admin; without it: platform admin keys)"
    ),
    all_: bool = typer.Option(False, "--all", help="include revoked keys"),
) -> None:
    """List keys (never their secrets)."""
    with globals_of(ctx).client() as client:
        keys = client.keys.list(tenant=tenant, include_revoked=all_)
    emit(ctx, [to_dict(k) for k in keys], COLUMNS)


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    key_id: str,
    tenant: str = typer.Option(
        "", "--tenant", help="tenant (for the admin; without it: a platform admin key)"
    ),
) -> None:
    """Revoke a key; calls with it are refused from now on."""
    with globals_of(ctx).client() as client:
        emit(ctx, [to_dict(client.keys.revoke(key_id, tenant=tenant))], COLUMNS)
