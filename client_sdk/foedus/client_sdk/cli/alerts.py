"""`foedus alerts ...`: alerts raised by agents' detectors."""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from foedus.client_sdk.cli.common import emit, globals_of, to_dict
from foedus.client_sdk.cli.deployment import format_ms

app = typer.Typer(help="List and watch alerts raised by agents.", no_args_is_help=True)
COLUMNS = ("id", "time", "deployment", "agent", "version", "kind", "score", "threshold", "detector")


def _row(a: Any) -> dict[str, Any]:
    return {
        "id": a.id,
        "time": format_ms(a.alert.time_unix_ms),
        "deployment": a.deployment,
        "agent": a.agent,
        "version": a.alert.version,
        "kind": a.alert.kind,
        "score": f"{a.alert.score:.3g}",
        "threshold": f"{a.alert.threshold:.3g}",
        "detector": a.alert.detector,
        "top": ", ".join(f"{c.metric}={c.value:.3g}" for c in a.alert.top),
    }


@app.command("list")
def list_(
    ctx: typer.Context,
    deployment: str = typer.Option("", "--deployment", help="one deployment (default: all of them)"),
    limit: int = typer.Option(100, "--limit", min=1, help="newest alerts to show"),
) -> None:
    """List alerts, newest first."""
    with globals_of(ctx).client() as client:
        items = client.monitoring.alerts(deployment, limit=limit)
    emit(ctx, [_row(a) for a in items], COLUMNS, raw=[to_dict(a) for a in items])


@app.command("watch")
def watch(
    ctx: typer.Context,
    deployment: str = typer.Option("", "--deployment", help="one deployment (default: all of them)"),
    interval: float = typer.Option(2.0, "--interval", min=0.2, help="seconds between looks"),
    count: int = typer.Option(0, "--count", min=0, help="stop after this many new alerts (0: never)"),
) -> None:
    """Print alerts as they arrive (one line each, or one JSON object per line with -o json)."""
    g = globals_of(ctx)
    seen = 0
    printed = 0
    with g.client() as client:
        latest = client.monitoring.alerts(deployment, limit=1)
        seen = latest[0].id if latest else 0
        while count == 0 or printed < count:
            fresh = [a for a in client.monitoring.alerts(deployment, limit=100) if a.id > seen]
            for a in sorted(fresh, key=lambda a: a.id):
                if count and printed >= count:
                    break
                if g.output == "json":
                    typer.echo(json.dumps(to_dict(a), sort_keys=True))
                else:
                    r = _row(a)
                    typer.echo(
                        f"{r['time']}  {r['deployment']}  {r['agent']}  v{r['version']}  {r['kind']}  "
                        f"score {r['score']} > {r['threshold']}  [{r['detector']}]  {r['top']}"
                    )
                seen = max(seen, a.id)
                printed += 1
            if count and printed >= count:
                break
            time.sleep(interval)
