"""`foedus audit`: read the audit log."""

from __future__ import annotations

import typer

from foedus.client_sdk.cli.common import emit, globals_of, to_dict

COLUMNS = ("id", "time", "key_id", "role", "method", "resource", "outcome")


def audit(
    ctx: typer.Context,
    tenant: str = typer.Option("", "--tenant", help="tenant (admin; owners see their own)"),
    limit: int = typer.Option(50, "--limit", min=1, help="newest entries to show"),
) -> None:
    """Show audit entries of mutating calls, newest first (owners and the admin)."""
    with globals_of(ctx).client() as client:
        entries = client.audit(tenant=tenant, limit=limit)
    rows = [to_dict(e) for e in entries]
    for row in rows:
        row["method"] = row.get("method", "").rsplit("/", 1)[-1]
    emit(ctx, rows, COLUMNS)
