"""`foedus performance ...`: delayed labels and the model performance they make measurable."""

from __future__ import annotations

import csv
import datetime
import time
from pathlib import Path
from typing import Any

import typer

from foedus.client_sdk.cli.common import emit, globals_of, number, to_dict
from foedus.client_sdk.cli.metrics import parse_duration
from foedus.client_sdk.errors import FoedusError, ResourceExhausted

app = typer.Typer(help="Delayed labels and per-version model performance.", no_args_is_help=True)

COLUMNS = (
    "version",
    "window",
    "predictions",
    "labelled",
    "coverage",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "mae",
    "rmse",
    "est_accuracy",
    "est_f1",
)
FAIRNESS_COLUMNS = (
    "version",
    "window",
    "feature",
    "segment",
    "labelled",
    "selection_rate",
    "tpr",
    "accuracy",
)


def _time(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M")


LABELS_PER_CALL = 10_000
"""The server's limit of labels in one LogLabels call; longer files go in several calls."""


@app.command("log-labels")
def log_labels(
    ctx: typer.Context,
    deployment: str,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV with columns request_id,label"),
) -> None:
    """Logs true labels of answered requests from a CSV file (columns request_id,label).

    Labels are classes or, for a regression, true values; the agents join them with the
    predictions they keep on their own hosts. A file of more than 10,000 labels goes in calls of
    10,000, one after the other; a call over the tenant's ingest limit is sent again after the
    wait the server names. A call that fails otherwise stops the upload: the calls before it are
    stored (the message says how many rows), the rest is not.
    """
    with open(file, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"request_id", "label"} <= set(rows[0]):
        raise typer.BadParameter("the CSV needs the columns request_id and label", param_hint="FILE")
    stored, first, last = 0, 0, 0
    with globals_of(ctx).client() as client:
        for start in range(0, max(1, len(rows)), LABELS_PER_CALL):
            chunk = rows[start : start + LABELS_PER_CALL]
            try:
                resp = _log_chunk(client, deployment, chunk)
            except FoedusError as exc:
                if start:
                    exc.message = f"{exc.message} (rows 1-{start} were stored; none after)"
                raise
            stored += resp.stored
            first = first or resp.first_sequence
            last = resp.last_sequence or last
            if len(rows) > LABELS_PER_CALL:
                typer.echo(f"{start + len(chunk):,}/{len(rows):,} labels sent", err=True)
    emit(ctx, [{"stored": stored, "first": first, "last": last}], ("stored", "first", "last"))


def _log_chunk(client: Any, deployment: str, rows: list[dict[str, str]]) -> Any:
    """One LogLabels call, sent again while the tenant is over its ingest limit (nothing of a
    refused call is stored)."""
    while True:
        try:
            return client.monitoring.log_labels(
                deployment, [r["request_id"] for r in rows], [r["label"] for r in rows]
            )
        except ResourceExhausted as exc:
            if exc.retry_after_s <= 0:
                raise
            typer.echo(f"over the ingest limit; sending again in {exc.retry_after_s:.1f} s", err=True)
            time.sleep(exc.retry_after_s)


@app.command("report")
def report(
    ctx: typer.Context,
    deployment: str,
    version: int = typer.Option(0, "--version", min=0, help="the version (default: every version)"),
    window: str = typer.Option("1h", "--window", help="width of each window: 1m, 15m, 1h, 1d, 1w"),
    since: str = typer.Option("7d", "--since", help="how far back the prediction times go, ending now"),
    positive_class: str = typer.Option(
        "", "--positive-class", help="class the fairness metrics compare (default: the greatest label)"
    ),
) -> None:
    """Performance per version and window, the label-free estimate, and fairness.

    Accuracy, macro precision/recall/F1, ROC-AUC, MAE/RMSE and the label coverage from the labelled
    predictions; the CBPE estimate of the unlabelled ones (EST_*: an estimate from the predicted
    probabilities, not a measurement); per segment of the version's sensitive feature the selection
    rate and TPR, with the demographic parity and equal opportunity differences.
    """
    try:
        window_s = parse_duration(window)
    except typer.BadParameter as exc:
        raise typer.BadParameter(exc.message, param_hint="'--window'") from None
    try:
        since_s = parse_duration(since)
    except typer.BadParameter as exc:
        raise typer.BadParameter(exc.message, param_hint="'--since'") from None
    if window_s % 60:
        raise typer.BadParameter("use whole minutes", param_hint="'--window'")
    end_ms = int(time.time() * 1000)
    start_ms = end_ms - since_s * 1000
    start_ms -= start_ms % (window_s * 1000 or 60_000)  # windows on whole minutes, hours, days
    with globals_of(ctx).client() as client:
        resp = client.monitoring.performance(
            deployment,
            version=version,
            window_s=window_s,
            start_unix_ms=start_ms,
            end_unix_ms=end_ms,
            positive_class=positive_class,
        )
    rows: list[dict[str, Any]] = []
    fairness: list[dict[str, Any]] = []
    for w in resp.windows:
        estimate = w.estimate if w.HasField("estimate") else None
        rows.append(
            {
                "version": w.version,
                "window": _time(w.start_unix_ms),
                "predictions": w.predictions,
                "labelled": w.labelled,
                "coverage": number(w.label_coverage),
                "accuracy": number(w.accuracy),
                "precision": number(w.precision),
                "recall": number(w.recall),
                "f1": number(w.f1),
                "roc_auc": number(w.roc_auc),
                "mae": number(w.mae),
                "rmse": number(w.rmse),
                "est_accuracy": number(estimate.accuracy) if estimate else "-",
                "est_f1": number(estimate.f1) if estimate else "-",
            }
        )
        if w.HasField("fairness"):
            f = w.fairness
            fairness.extend(
                {
                    "version": w.version,
                    "window": _time(w.start_unix_ms),
                    "feature": f.sensitive_feature,
                    "segment": s.segment,
                    "labelled": s.labelled,
                    "selection_rate": number(s.selection_rate),
                    "tpr": number(s.true_positive_rate),
                    "accuracy": number(s.accuracy),
                }
                for s in f.segments
            )
    emit(ctx, rows, COLUMNS, raw=to_dict(resp))
    if globals_of(ctx).output != "json" and fairness:
        typer.echo("")
        emit(ctx, fairness, FAIRNESS_COLUMNS)
        for w in resp.windows:
            if w.HasField("fairness"):
                typer.echo(
                    f"v{w.version} {_time(w.start_unix_ms)}: positive class {w.fairness.positive_class!r}: "
                    f"demographic parity difference {number(w.fairness.demographic_parity_difference)}, "
                    f"equal opportunity difference {number(w.fairness.equal_opportunity_difference)}"
                )
