"""`foedus report ...`: reports over the tenant's history."""

from __future__ import annotations

from typing import Any

import typer

from foedus.client_sdk.cli.common import emit, globals_of, to_dict

app = typer.Typer(help="Reports: DORA metrics of the tenant's deployments.", no_args_is_help=True)
COLUMNS = (
    "model",
    "deployments",
    "per_day",
    "lead_time_h",
    "code_lead_time_h",
    "change_failure_rate",
    "failures",
    "recovery_min",
)


def _value(x: float, fmt: str) -> str:
    return "-" if x < 0 else format(x, fmt)


@app.command("dora")
def dora(
    ctx: typer.Context,
    model: str = typer.Option("", "--model", help="one model (default: each model and the total)"),
    days: int = typer.Option(30, "--days", min=1, help="the period, ending now"),
) -> None:
    """DORA metrics: deployment frequency, lead time, change-failure rate, recovery time.

    A deployment is a rollout that brought its candidate to 100%; a failure is a rollback or an
    alert on the promoted version within 24 h; medians, '-' where there is nothing to measure.
    """
    with globals_of(ctx).client() as client:
        resp = client.rollouts.dora(model=model, days=days)
    rows: list[dict[str, Any]] = [
        {
            "model": m.model or "(all)",
            "deployments": m.deployments,
            "per_day": f"{m.deployment_frequency_per_day:.3g}",
            "lead_time_h": _value(m.lead_time_median_h, ".3g"),
            "code_lead_time_h": _value(m.code_lead_time_median_h, ".3g"),
            "change_failure_rate": f"{m.change_failure_rate:.0%}",
            "failures": m.failures,
            "recovery_min": _value(m.recovery_time_median_min, ".3g"),
        }
        for m in resp.metrics
    ]
    emit(ctx, rows, COLUMNS, raw=to_dict(resp))
