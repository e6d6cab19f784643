"""`foedus rollout ...`: start, watch and steer progressive rollouts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import typer

from foedus.client_sdk.cli import exit_codes
from foedus.client_sdk.cli.common import emit, globals_of, to_dict
from foedus.client_sdk.cli.deployment import format_ms
from foedus.client_sdk.errors import InvalidArgument
from foedus.client_sdk.rollouts import STRATEGIES, TERMINAL, phase_name, strategy_name
from foedus.v1 import rollout_pb2

app = typer.Typer(
    help="Progressive rollouts: canary, blue-green, A/B and shadow, with automatic promotion and rollback.",
    no_args_is_help=True,
)
COLUMNS = (
    "id",
    "deployment",
    "strategy",
    "stable",
    "candidate",
    "phase",
    "step",
    "weight",
    "reason",
    "started",
)
EVENT_COLUMNS = ("seq", "time", "kind", "step", "weight", "message")
KEY_EVIDENCE = (
    "candidate_error_rate",
    "stable_error_rate",
    "candidate_p99_ms",
    "stable_p99_ms",
    "candidate_requests",
    "stable_requests",
)


def _ts_ms(ts: Any) -> int:
    return int(ts.seconds * 1000 + ts.nanos // 1_000_000)


def rollout_row(r: rollout_pb2.Rollout) -> dict[str, Any]:
    return {
        "id": r.id,
        "deployment": r.deployment,
        "strategy": strategy_name(r.strategy),
        "stable": r.stable_version,
        "candidate": r.candidate_version,
        "phase": phase_name(r.phase),
        "step": f"{r.step + 1}/{r.step_count}",
        "weight": f"{r.candidate_weight:g}%",
        "reason": r.reason,
        "started": format_ms(_ts_ms(r.started_at)) if r.HasField("started_at") else "",
    }


def event_row(e: rollout_pb2.RolloutEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "time": format_ms(_ts_ms(e.time)),
        "kind": e.kind,
        "step": e.step + 1,
        "weight": f"{e.weight:g}%",
        "message": e.message,
    }


def _evidence(e: rollout_pb2.RolloutEvent) -> str:
    shown = [k for k in KEY_EVIDENCE if k in e.evidence]
    shown += sorted(k for k in e.evidence if k.startswith("log_e_") or k.startswith("forecast_"))
    return ", ".join(f"{k}={e.evidence[k]:.4g}" for k in shown)


def _print_event(ctx: typer.Context, e: rollout_pb2.RolloutEvent, r: rollout_pb2.Rollout) -> None:
    if globals_of(ctx).output == "json":
        typer.echo(json.dumps({"event": to_dict(e), "rollout": to_dict(r)}, sort_keys=True))
        return
    row = event_row(e)
    typer.echo(
        f"{row['time']}  #{r.id} {row['kind']:<11} step {row['step']}  {row['weight']:>5}  {e.message}"
    )
    evidence = _evidence(e)
    if evidence and e.kind not in ("started", "scheduled", "resumed"):
        typer.echo(f"    evidence: {evidence}")


def _outcome_code(r: rollout_pb2.Rollout) -> int:
    if r.phase == rollout_pb2.ROLLOUT_PHASE_SUCCEEDED and (
        r.strategy == rollout_pb2.ROLLOUT_STRATEGY_SHADOW or r.candidate_weight >= 100.0
    ):
        return exit_codes.OK
    return exit_codes.NOT_PROMOTED if r.phase in TERMINAL else exit_codes.OK


def _watch(ctx: typer.Context, rollout_id: int, timeout: float | None) -> None:
    with globals_of(ctx).client() as client:
        last = None
        for message in client.rollouts.watch(rollout_id, timeout=timeout):
            _print_event(ctx, message.event, message.rollout)
            last = message.rollout
        final = last if last is not None and last.phase in TERMINAL else client.rollouts.get(rollout_id)
    raise typer.Exit(_outcome_code(final))


def parse_steps(texts: list[str]) -> list[tuple[float, int, int]]:
    """`--step WEIGHT[:MIN_SECONDS[:MIN_REQUESTS]]` values as (weight, seconds, requests); 0 = default."""
    steps: list[tuple[float, int, int]] = []
    for text in texts:
        parts = text.split(":")
        try:
            if len(parts) > 3:
                raise ValueError(text)
            steps.append(
                (
                    float(parts[0]),
                    int(parts[1]) if len(parts) > 1 else 0,
                    int(parts[2]) if len(parts) > 2 else 0,
                )
            )
        except (ValueError, IndexError):
            raise typer.BadParameter(
                f"{text!r} is not WEIGHT[:MIN_SECONDS[:MIN_REQUESTS]]", param_hint="'--step'"
            ) from None
    return steps


@app.command("start")
def start(
    ctx: typer.Context,
    deployment: str = typer.Argument(..., help="the deployment to roll out on"),
    version: int = typer.Argument(..., help="the candidate version of the deployment's model"),
    strategy: str = typer.Option("canary", "--strategy", help=f"one of: {', '.join(STRATEGIES)}"),
    step: list[str] = typer.Option(
        [],
        "--step",
        help="canary step WEIGHT[:MIN_SECONDS[:MIN_REQUESTS]], repeatable, the last 100 "
        "(default 10,25,50,100 with 60 s and 100 requests each)",
    ),
    preview: int = typer.Option(0, "--preview", help="blue-green: seconds of mirrored preview (default 60)"),
    post_switch: int = typer.Option(
        0, "--post-switch", help="blue-green: seconds of analysis after the switch"
    ),
    ab_weight: float = typer.Option(
        0.0, "--ab-weight", help="A/B: the candidate's share in percent (default 50)"
    ),
    duration: int = typer.Option(
        0, "--duration", help="A/B and shadow: seconds the test lasts (default 600)"
    ),
    ab_metric: str = typer.Option(
        "", "--ab-metric", help="A/B: error_rate (default), latency_p50 or latency_p99"
    ),
    alpha: float | None = typer.Option(
        None, "--alpha", help="false-rollback rate of a healthy candidate (0.01)"
    ),
    error_margin: float | None = typer.Option(
        None, "--error-margin", help="error-rate margin in percentage points, e.g. 0.5 (default 0)"
    ),
    p99_margin: float | None = typer.Option(
        None,
        "--p99-margin",
        help="relative p99 margin (0.15; tested as +18.9%: margins round up to latency buckets)",
    ),
    deadline: int | None = typer.Option(
        None, "--deadline", help="seconds a step may stay inconclusive (600)"
    ),
    rollback_on_inconclusive: bool = typer.Option(
        False, "--rollback-on-inconclusive", help="roll back instead of pausing at the deadline"
    ),
    slo_error_rate: float = typer.Option(0.0, "--slo-error-rate", help="predictive rollback SLO, e.g. 0.05"),
    slo_p99_ms: float = typer.Option(0.0, "--slo-p99-ms", help="predictive rollback SLO on p99 latency"),
    gate: list[str] = typer.Option(
        [],
        "--gate",
        help="gate before the start, repeatable: onnx, latency=MS, quality=DATASET:METRIC[:TOLERANCE]",
    ),
    start_at: datetime | None = typer.Option(
        None, "--start-at", help="start no earlier than this (UTC if no zone)"
    ),
    in_window: bool = typer.Option(False, "--in-window", help="start in the next forecast low-load window"),
    max_cpu: float = typer.Option(0.0, "--max-cpu", help="capacity check: share of the agents' cores (0.8)"),
    description: str = typer.Option("", "--description"),
    wait: bool = typer.Option(False, "--wait", help="watch until it finishes; exit 9 unless promoted"),
) -> None:
    """Start a rollout, e.g. `foedus rollout start web 4 --step 10:60 --step 50:120 --step 100 --wait`."""
    steps = parse_steps(step)
    analysis: dict[str, Any] = {}
    for key, value in (
        ("alpha", alpha),
        ("error_rate_margin_points", None if error_margin is None else error_margin / 100.0),
        ("latency_p99_margin", p99_margin),
        ("step_deadline_s", deadline),
    ):
        if value is not None:
            analysis[key] = value
    if rollback_on_inconclusive:
        analysis["rollback_on_inconclusive"] = True
    if slo_error_rate:
        analysis["slo_error_rate"] = slo_error_rate
    if slo_p99_ms:
        analysis["slo_latency_p99_ms"] = slo_p99_ms
    gates = parse_gates(gate)
    when = None if start_at is None else (start_at if start_at.tzinfo else start_at.replace(tzinfo=UTC))
    with globals_of(ctx).client() as client:
        r = client.rollouts.start(
            deployment,
            version,
            strategy=strategy,
            steps=steps,
            preview_s=preview,
            post_switch_s=post_switch,
            ab_weight=ab_weight,
            duration_s=duration,
            ab_metric=ab_metric,
            analysis=analysis,
            gates=gates,
            start_at=when,
            in_window=in_window,
            max_cpu_utilisation=max_cpu,
            description=description,
        )
    if wait:
        _watch(ctx, r.id, None)
    emit(ctx, [rollout_row(r)], COLUMNS, raw=to_dict(r))


def parse_gates(gates: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for text in gates:
        name, _, value = text.partition("=")
        if name == "onnx" and not value:
            out["onnx_valid"] = True
        elif name == "latency" and value:
            try:
                out["latency_budget_ms"] = float(value)
            except ValueError:
                raise InvalidArgument(
                    f"--gate latency=MS needs a number of milliseconds, not {value!r}"
                ) from None
        elif name == "quality" and value:
            parts = value.split(":")
            if len(parts) not in (2, 3) or not all(parts[:2]):
                raise InvalidArgument(f"--gate quality=DATASET:METRIC[:TOLERANCE], not {text!r}")
            out.update(quality_dataset=parts[0], quality_metric=parts[1])
            if len(parts) == 3:
                try:
                    out["quality_tolerance"] = float(parts[2])
                except ValueError:
                    raise InvalidArgument(
                        f"the quality gate's tolerance must be a number, not {parts[2]!r}"
                    ) from None
            if parts[1] in ("rmse", "mae"):
                out["lower_is_better"] = True
        else:
            raise InvalidArgument(
                f"unknown gate {text!r}; use onnx, latency=MS or quality=DATASET:METRIC[:TOLERANCE]"
            )
    return out


def _one(ctx: typer.Context, r: rollout_pb2.Rollout) -> None:
    emit(ctx, [rollout_row(r)], COLUMNS, raw=to_dict(r))


@app.command("status")
def status(
    ctx: typer.Context,
    rollout: int = typer.Argument(0, help="rollout id (or use --deployment for its newest rollout)"),
    deployment: str = typer.Option("", "--deployment", help="the deployment's newest rollout"),
) -> None:
    """Show a rollout, its latest analysis and every event with its evidence."""
    if not rollout and not deployment:
        raise typer.BadParameter("give a rollout id or --deployment", param_hint="'ROLLOUT'")
    with globals_of(ctx).client() as client:
        r = client.rollouts.get(rollout, deployment=deployment)
        events = client.rollouts.events(r.id)
    if globals_of(ctx).output == "json":
        emit(ctx, [], (), raw={"rollout": to_dict(r), "events": [to_dict(e) for e in events]})
        return
    _one(ctx, r)
    if r.analysis:
        typer.echo("\nanalysis: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(r.analysis.items())))
    typer.echo(f"\nevents ({len(events)}):")
    for e in events:
        _print_event(ctx, e, r)


@app.command("watch")
def watch(
    ctx: typer.Context,
    rollout: int = typer.Argument(..., help="rollout id"),
    timeout: float = typer.Option(
        0.0, "--timeout", min=0.0, help="give up after this many seconds (0: never)"
    ),
) -> None:
    """Print a rollout's events as they happen until it finishes; exit 9 unless the candidate was promoted."""
    _watch(ctx, rollout, timeout or None)


@app.command("list")
def list_(
    ctx: typer.Context,
    deployment: str = typer.Option("", "--deployment", help="one deployment (default: all)"),
    active: bool = typer.Option(False, "--active", help="only scheduled, progressing or paused rollouts"),
    limit: int = typer.Option(50, "--limit", min=1),
) -> None:
    """List rollouts, newest first."""
    with globals_of(ctx).client() as client:
        items = client.rollouts.list(deployment=deployment, active_only=active, limit=limit)
    emit(ctx, [rollout_row(r) for r in items], COLUMNS, raw=[to_dict(r) for r in items])


@app.command("pause")
def pause(ctx: typer.Context, rollout: int, reason: str = typer.Option("", "--reason")) -> None:
    """Hold the current step (analysis goes on: a regression still rolls back)."""
    with globals_of(ctx).client() as client:
        _one(ctx, client.rollouts.pause(rollout, reason=reason))


@app.command("resume")
def resume(ctx: typer.Context, rollout: int) -> None:
    """Resume a paused rollout; its step holds its minimum duration again."""
    with globals_of(ctx).client() as client:
        _one(ctx, client.rollouts.resume(rollout))


@app.command("promote")
def promote(ctx: typer.Context, rollout: int, reason: str = typer.Option("", "--reason")) -> None:
    """Skip the remaining steps: the candidate takes all traffic now."""
    with globals_of(ctx).client() as client:
        _one(ctx, client.rollouts.promote(rollout, reason=reason))


@app.command("abort")
def abort(ctx: typer.Context, rollout: int, reason: str = typer.Option("", "--reason")) -> None:
    """Restore the stable version now."""
    with globals_of(ctx).client() as client:
        _one(ctx, client.rollouts.abort(rollout, reason=reason))
