"""`foedus drift ...`: input drift of a deployment's version against its reference profile."""

from __future__ import annotations

from typing import Any

import click
import typer

from foedus.client_sdk.cli.common import emit, globals_of, number, to_dict
from foedus.client_sdk.cli.metrics import parse_duration
from foedus.client_sdk.drift import METHODS, DriftThresholds

app = typer.Typer(help="Input drift of deployments.", no_args_is_help=True)

COLUMNS = (
    "feature",
    "kind",
    "method",
    "score",
    "threshold",
    "drifted",
    "current",
    "psi",
    "js",
    "ks",
    "wasserstein",
)


@app.command("report")
def report(
    ctx: typer.Context,
    deployment: str,
    version: int = typer.Option(0, "--version", min=0, help="the version (default: the most traffic)"),
    window: str = typer.Option("1h", "--window", help="the window, ending now: 90s, 15m, 1h, 2d, 1w"),
    method: str = typer.Option(
        "auto",
        "--method",
        click_type=click.Choice(list(METHODS)),
        help="the statistic that decides (auto: normed Wasserstein or Jensen-Shannon, as Evidently)",
    ),
    drift_share: float = typer.Option(
        DriftThresholds().drift_share, "--drift-share", help="share of drifted features for dataset drift"
    ),
) -> None:
    """Per-feature drift (PSI, Jensen-Shannon, chi-square, KS, Wasserstein) and the dataset's verdict.

    The agents' counts on the version's reference-profile bins over the window against the
    profile's own counts; raw inputs never leave the agents' hosts.
    """
    try:
        window_s = parse_duration(window)
    except typer.BadParameter as exc:
        raise typer.BadParameter(exc.message, param_hint="'--window'") from None
    with globals_of(ctx).client() as client:
        resp = client.monitoring.drift(
            deployment,
            version=version,
            window_s=window_s,
            method=method,
            thresholds=DriftThresholds(drift_share=drift_share),
        )
    rows: list[dict[str, Any]] = [
        {
            "feature": f.name,
            "kind": f.kind,
            "method": f.method,
            "score": number(f.score),
            "threshold": f"{f.threshold:g}",
            "drifted": "DRIFT" if f.drifted else "no",
            "current": f.current_count,
            "psi": number(f.psi),
            "js": number(f.js_distance),
            "ks": number(f.ks_statistic),
            "wasserstein": number(f.wasserstein),
        }
        for f in resp.features
    ]
    emit(ctx, rows, COLUMNS, raw=to_dict(resp))
    if globals_of(ctx).output != "json":
        verdict = "drift" if resp.dataset_drift else "no drift"
        typer.echo(
            f"{resp.model} v{resp.version}: {resp.drifted_features} of {resp.compared_features} features "
            f"drifted ({resp.drift_share:.0%}, dataset drift at {resp.thresholds.drift_share:.0%}): "
            f"{verdict}; {resp.intervals} agent intervals"
        )
