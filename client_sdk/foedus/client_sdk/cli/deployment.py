"""`foedus deployment ...`: deployments, their traffic split and their status."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer

from foedus.client_sdk.cli.common import emit, globals_of, to_dict

app = typer.Typer(
    help="Create deployments, split their traffic between versions and watch their status.",
    no_args_is_help=True,
)
COLUMNS = ("name", "model", "traffic", "shadow", "generation", "description", "updated")
AGENT_COLUMNS = ("agent", "host", "providers", "last_seen")
VERSION_COLUMNS = ("version", "shadow", "requests", "errors", "error_rate", "p50_ms", "p99_ms", "rps")

VERSION_HELP = "version to serve (repeatable; pair each with a --weight, or give no --weight at all)"
WEIGHT_HELP = "relative weight of the --version at the same position (default 1 for every version)"


def format_ms(unix_ms: int) -> str:
    """Unix milliseconds as an ISO 8601 UTC time to the second; empty for 0."""
    if not unix_ms:
        return ""
    return datetime.fromtimestamp(unix_ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def traffic_of(versions: list[int], weights: list[float]) -> dict[int, float]:
    """Pairs repeated --version and --weight options by position; no --weight means 1 for each."""
    if weights and len(weights) != len(versions):
        raise typer.BadParameter(
            f"got {len(versions)} --version and {len(weights)} --weight: give one --weight per --version, "
            "or none (every weight 1)",
            param_hint="'--weight'",
        )
    if len(set(versions)) != len(versions):
        raise typer.BadParameter("a version may appear only once", param_hint="'--version'")
    return dict(zip(versions, weights or [1.0] * len(versions), strict=True))


def deployment_row(d: Any) -> dict[str, Any]:
    updated = d.meta.updated_at if d.meta.HasField("updated_at") else d.meta.created_at
    return {
        "name": d.name,
        "model": d.model,
        "traffic": ",".join(f"v{t.version}={t.weight:g}" for t in d.traffic),
        "shadow": f"v{d.shadow_version}" if d.shadow_version else "",
        "generation": d.generation,
        "description": d.description,
        "updated": format_ms(updated.seconds * 1000 + updated.nanos // 1_000_000),
    }


def _emit_deployments(ctx: typer.Context, items: list[Any]) -> None:
    emit(ctx, [deployment_row(d) for d in items], COLUMNS, raw=[to_dict(d) for d in items])


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="deployment name: lowercase letters, digits and '-'"),
    model: str = typer.Option(..., "--model", help="the registered model whose versions it serves"),
    version: list[int] = typer.Option([], "--version", help=VERSION_HELP),
    weight: list[float] = typer.Option([], "--weight", help=WEIGHT_HELP),
    shadow: int = typer.Option(0, "--shadow", help="version that gets a copy of every request (0: none)"),
    description: str = typer.Option("", "--description"),
) -> None:
    """Create a deployment, e.g. --version 3 --weight 9 --version 4 --weight 1."""
    traffic = traffic_of(version, weight)
    with globals_of(ctx).client() as client:
        d = client.deployments.create(
            name, model, traffic=traffic, shadow_version=shadow, description=description
        )
    _emit_deployments(ctx, [d])


@app.command("set")
def set_traffic(
    ctx: typer.Context,
    name: str,
    version: list[int] = typer.Option([], "--version", help=VERSION_HELP),
    weight: list[float] = typer.Option([], "--weight", help=WEIGHT_HELP),
    shadow: int = typer.Option(0, "--shadow", help="version that gets a copy of every request (0: none)"),
) -> None:
    """Replace the traffic split (and shadow) atomically; versions left out stop serving."""
    if not version:
        raise typer.BadParameter("give at least one version to serve", param_hint="'--version'")
    traffic = traffic_of(version, weight)
    with globals_of(ctx).client() as client:
        d = client.deployments.set_traffic(name, traffic, shadow_version=shadow)
    _emit_deployments(ctx, [d])


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List the tenant's deployments."""
    with globals_of(ctx).client() as client:
        items = client.deployments.list()
    _emit_deployments(ctx, items)


@app.command("get")
def get(ctx: typer.Context, name: str) -> None:
    """Show a deployment and its traffic split."""
    with globals_of(ctx).client() as client:
        d = client.deployments.get(name)
    _emit_deployments(ctx, [d])


@app.command("status")
def status(
    ctx: typer.Context,
    name: str,
    window: int = typer.Option(300, "--window", min=1, help="seconds of telemetry to aggregate"),
) -> None:
    """Show a deployment's agents and, per version, requests, errors and latency over a window."""
    with globals_of(ctx).client() as client:
        resp = client.monitoring.status(name, window_s=window)
    if globals_of(ctx).output == "json":
        emit(ctx, [], (), raw=to_dict(resp))
        return
    agents = [
        {
            "agent": a.info.name,
            "host": a.info.host,
            "providers": list(a.info.execution_providers),
            "last_seen": format_ms(a.last_seen_unix_ms),
        }
        for a in resp.agents
    ]
    versions = [
        {
            "version": v.version,
            "shadow": "shadow" if v.shadow else "",
            "requests": v.requests,
            "errors": v.errors,
            "error_rate": f"{v.error_rate:.2%}",
            "p50_ms": f"{v.latency_p50_ms:.3f}",
            "p99_ms": f"{v.latency_p99_ms:.3f}",
            "rps": f"{v.requests_per_s:.3f}",
        }
        for v in resp.versions
    ]
    _emit_deployments(ctx, [resp.deployment])
    typer.echo(f"\nagents ({len(agents)}):")
    emit(ctx, agents, AGENT_COLUMNS)
    typer.echo(f"\nversions, last {window} s:")
    emit(ctx, versions, VERSION_COLUMNS)


@app.command("windows")
def windows(
    ctx: typer.Context,
    name: str,
    duration: int = typer.Option(3600, "--duration", min=60, help="length of each window in seconds"),
    count: int = typer.Option(3, "--count", min=1, help="how many windows"),
    days: float = typer.Option(7.0, "--days", help="how far ahead to look"),
) -> None:
    """Suggest the lowest-load windows of the coming days (forecast from the request history)."""
    with globals_of(ctx).client() as client:
        resp = client.rollouts.windows(name, duration_s=duration, count=count, days=days)
    rows = [
        {
            "start": format_ms(w.start.seconds * 1000),
            "end": format_ms(w.end.seconds * 1000),
            "mean_rps": f"{w.mean_rps:.3g}",
            "vs_mean": f"{w.relative_to_mean:.0%}",
            "vs_peak": f"{w.relative_to_peak:.0%}",
        }
        for w in resp.windows
    ]
    emit(ctx, rows, ("start", "end", "mean_rps", "vs_mean", "vs_peak"), raw=to_dict(resp))
    if globals_of(ctx).output != "json":
        typer.echo(
            f"\nforecast: {resp.model} on {resp.history_hours} h of history; held-out MAE "
            f"{resp.model_mae:.3g} req/s (seasonal baseline {resp.baseline_mae:.3g})"
        )
