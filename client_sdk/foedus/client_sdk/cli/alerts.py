"""`foedus alerts ...`: alerts raised by agents' detectors."""

from __future__ import annotations

import typer

from foedus.client_sdk.cli.common import emit, globals_of, to_dict
from foedus.client_sdk.cli.deployment import format_ms

app = typer.Typer(help="List alerts raised by agents.", no_args_is_help=True)
COLUMNS = ("id", "time", "deployment", "agent", "version", "kind", "score", "threshold", "detector")


@app.command("list")
def list_(
    ctx: typer.Context,
    deployment: str = typer.Option("", "--deployment", help="one deployment (default: all of them)"),
    limit: int = typer.Option(100, "--limit", min=1, help="newest alerts to show"),
) -> None:
    """List alerts, newest first."""
    with globals_of(ctx).client() as client:
        items = client.monitoring.alerts(deployment, limit=limit)
    rows = [
        {
            "id": a.id,
            "time": format_ms(a.alert.time_unix_ms),
            "deployment": a.deployment,
            "agent": a.agent,
            "version": a.alert.version,
            "kind": a.alert.kind,
            "score": f"{a.alert.score:.3g}",
            "threshold": f"{a.alert.threshold:.3g}",
            "detector": a.alert.detector,
        }
        for a in items
    ]
    emit(ctx, rows, COLUMNS, raw=[to_dict(a) for a in items])
