"""`foedus metrics ...`: series of what agents measured and of metrics logged with the SDK."""

from __future__ import annotations

import re
import time

import typer

from foedus.client_sdk.cli.common import emit, globals_of
from foedus.client_sdk.cli.deployment import format_ms

app = typer.Typer(help="Query metric series of a deployment.", no_args_is_help=True)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"(\d+)([smhdw]?)")


def parse_duration(text: str) -> int:
    """Seconds in '90', '90s', '15m', '1h', '2d' or '1w'."""
    match = _DURATION.fullmatch(text.strip())
    if not match or int(match.group(1)) <= 0:
        raise typer.BadParameter(
            f"{text!r} is not a duration: use a positive number with s, m, h, d or w, e.g. 15m or 1h",
            param_hint="'--since'",
        )
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


@app.command("query")
def query(
    ctx: typer.Context,
    deployment: str,
    metric: str = typer.Argument(
        ...,
        help="requests, errors, invalid, latency_p50_ms, latency_p99_ms, process_cpu_percent, "
        "process_memory_bytes, a score (anomaly, ...) or a logged metric's name",
    ),
    version: int = typer.Option(0, "--version", min=0, help="one version (default: all together)"),
    since: str = typer.Option("1h", "--since", help="how far back: 90s, 15m, 1h, 2d, 1w"),
    step: int = typer.Option(60, "--step", min=1, help="seconds per point"),
) -> None:
    """Show one metric of a deployment as a series of (time, value) points."""
    start_ms = time.time_ns() // 1_000_000 - parse_duration(since) * 1000
    with globals_of(ctx).client() as client:
        points = client.monitoring.query(
            deployment, metric, version=version, start_unix_ms=max(0, start_ms), step_s=step
        )
    emit(
        ctx,
        [{"time": format_ms(t), "value": f"{v:g}"} for t, v in points],
        ("time", "value"),
        raw=[{"time_unix_ms": t, "value": v} for t, v in points],
    )
