"""`foedus alerts ...`: alerts raised by agents, the incidents they are grouped into, and webhooks."""

from __future__ import annotations

import json
import secrets
from typing import Any

import typer

from foedus.client_sdk.cli.common import emit, globals_of, to_dict
from foedus.client_sdk.cli.deployment import format_ms
from foedus.v1 import monitoring_pb2

app = typer.Typer(
    help="Alerts raised by agents, grouped into incidents per deployment: list, watch, acknowledge, "
    "resolve, explain (ranked causes), and webhooks that receive incidents.",
    no_args_is_help=True,
)
webhook_app = typer.Typer(
    help="Webhooks that receive incidents (signed JSON POSTs).\n\n"
    "Incidents opened, acknowledged and resolved are POSTed with the header X-Foedus-Signature: "
    "t=<unix>,v1=<hex HMAC-SHA256 over '<t>.<body>'>.",
    no_args_is_help=True,
)
app.add_typer(webhook_app, name="webhook")

COLUMNS = (
    "id",
    "time",
    "deployment",
    "agent",
    "version",
    "kind",
    "score",
    "threshold",
    "detector",
    "incident",
)
INCIDENT_COLUMNS = ("id", "deployment", "state", "severity", "alerts", "first", "last", "versions", "metrics")
CAUSE_COLUMNS = ("rank", "kind", "cause", "score", "detail")
WEBHOOK_COLUMNS = ("id", "url", "description", "created", "created_by")


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
        "incident": a.incident_id or "",
        "top": ", ".join(f"{c.metric}={c.value:.3g}" for c in a.alert.top),
    }


def _name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


def incident_row(i: monitoring_pb2.Incident) -> dict[str, Any]:
    return {
        "id": i.id,
        "deployment": i.deployment,
        "state": _name(monitoring_pb2.IncidentState, i.state, "INCIDENT_STATE_"),
        "severity": _name(monitoring_pb2.Severity, i.severity, "SEVERITY_"),
        "alerts": i.alert_count,
        "first": format_ms(i.first_alert_unix_ms),
        "last": format_ms(i.last_alert_unix_ms),
        "versions": ",".join(f"v{v}" for v in i.versions),
        "metrics": ", ".join(f"{m.metric} {m.weight:.0%}" for m in i.metrics[:3]),
    }


@app.command("list")
def list_(
    ctx: typer.Context,
    deployment: str = typer.Option("", "--deployment", help="one deployment (default: all of them)"),
    limit: int = typer.Option(100, "--limit", min=1, help="newest alerts to show"),
) -> None:
    """List single alerts, newest first, with the incident each one is grouped into."""
    with globals_of(ctx).client() as client:
        items = client.monitoring.alerts(deployment, limit=limit)
    emit(ctx, [_row(a) for a in items], COLUMNS, raw=[to_dict(a) for a in items])


@app.command("incidents")
def incidents(
    ctx: typer.Context,
    deployment: str = typer.Option("", "--deployment", help="one deployment (default: all of them)"),
    open_only: bool = typer.Option(False, "--open", help="only firing and acknowledged incidents"),
    limit: int = typer.Option(50, "--limit", min=1, help="newest incidents to show"),
) -> None:
    """List incidents (alerts grouped per deployment while they keep coming), newest first."""
    with globals_of(ctx).client() as client:
        items = client.monitoring.incidents(deployment, open_only=open_only, limit=limit)
    emit(ctx, [incident_row(i) for i in items], INCIDENT_COLUMNS, raw=[to_dict(i) for i in items])


@app.command("show")
def show(ctx: typer.Context, incident: int = typer.Argument(..., help="incident id")) -> None:
    """Show one incident and its newest alerts."""
    with globals_of(ctx).client() as client:
        resp = client.monitoring.incident(incident)
    if globals_of(ctx).output == "json":
        emit(ctx, [], (), raw=to_dict(resp))
        return
    emit(ctx, [incident_row(resp.incident)], INCIDENT_COLUMNS)
    typer.echo("")
    emit(ctx, [_row(a) for a in resp.alerts], COLUMNS)


@app.command("ack")
def ack(ctx: typer.Context, incident: int = typer.Argument(..., help="incident id")) -> None:
    """Acknowledge a firing incident (it keeps collecting alerts; webhooks are told)."""
    with globals_of(ctx).client() as client:
        got = client.monitoring.acknowledge(incident)
    emit(ctx, [incident_row(got)], INCIDENT_COLUMNS, raw=to_dict(got))


@app.command("resolve")
def resolve(ctx: typer.Context, incident: int = typer.Argument(..., help="incident id")) -> None:
    """Resolve an incident; the deployment's next alert opens a new one."""
    with globals_of(ctx).client() as client:
        got = client.monitoring.resolve(incident)
    emit(ctx, [incident_row(got)], INCIDENT_COLUMNS, raw=to_dict(got))


@app.command("explain")
def explain(
    ctx: typer.Context,
    incident: int = typer.Argument(..., help="incident id"),
    window: int = typer.Option(1800, "--window", min=1, help="seconds before onset in which changes count"),
    top: int = typer.Option(10, "--top", min=1, help="causes to show"),
) -> None:
    """Rank the likely causes of an incident.

    Causes are the metrics its alerts' SHAP attributions blame (score: their share) and the
    deployment's changes in the window before onset: rollout events, traffic switches, its creation
    (score: proximity to onset, times 0.25 unless the change brought in a version that is alerting).
    """
    with globals_of(ctx).client() as client:
        resp = client.monitoring.explain(incident, window_s=window)
    if globals_of(ctx).output == "json":
        emit(ctx, [], (), raw=to_dict(resp))
        return
    i = resp.incident
    row = incident_row(i)
    typer.echo(
        f"incident {i.id} on {i.deployment}: {row['state']}, {row['severity']}, {i.alert_count} alert(s) "
        f"of {row['versions']} from {row['first']} to {row['last']}"
    )
    rows = [
        {
            "rank": n,
            "kind": c.kind,
            "cause": c.name,
            "score": f"{c.score:.2f}",
            "detail": c.detail,
        }
        for n, c in enumerate(resp.causes[:top], start=1)
    ]
    emit(ctx, rows, CAUSE_COLUMNS)


@app.command("watch")
def watch(
    ctx: typer.Context,
    deployment: str = typer.Option("", "--deployment", help="one deployment (default: all of them)"),
    count: int = typer.Option(0, "--count", min=0, help="stop after this many events (0: never)"),
    new_only: bool = typer.Option(False, "--new-only", help="skip the incidents open when the watch begins"),
) -> None:
    """Print incident events as they happen (a stream from the server).

    First the incidents open now, then each incident opened, updated by new alerts, acknowledged
    or resolved; one line each, or one JSON object per line with -o json.
    """
    g = globals_of(ctx)
    printed = 0
    skip = {monitoring_pb2.INCIDENT_EVENT_KIND_CAUGHT_UP}
    if new_only:
        skip.add(monitoring_pb2.INCIDENT_EVENT_KIND_OPEN)
    with g.client() as client:
        for event in client.monitoring.watch_alerts(deployment):
            if event.kind in skip:
                continue
            if g.output == "json":
                typer.echo(json.dumps(to_dict(event), sort_keys=True))
            else:
                r = incident_row(event.incident)
                kind = _name(monitoring_pb2.IncidentEventKind, event.kind, "INCIDENT_EVENT_KIND_")
                typer.echo(
                    f"{format_ms(event.time_unix_ms)}  {kind:<12}  incident {r['id']}  {r['deployment']}  "
                    f"{r['state']}  {r['severity']}  {r['alerts']} alert(s)  {r['versions']}  {r['metrics']}"
                )
            printed += 1
            if count and printed >= count:
                break


@webhook_app.command("set")
def webhook_set(
    ctx: typer.Context,
    url: str = typer.Argument(..., help="http:// or https:// URL that receives the POSTs"),
    secret: str = typer.Option(
        "",
        "--secret",
        envvar="FOEDUS_WEBHOOK_SECRET",
        help="signing secret, 16-256 characters (default: a new random one, printed only now)",
    ),
    description: str = typer.Option("", "--description"),
) -> None:
    """Add the tenant's webhook for URL, or replace its secret.

    The server never shows the secret again; receivers verify deliveries with
    foedus.client_sdk.webhooks.verify_signature(secret, header, body).
    """
    chosen = secret or secrets.token_urlsafe(32)
    with globals_of(ctx).client() as client:
        hook = client.monitoring.set_webhook(url, chosen, description=description)
    row = _webhook_row(hook)
    if not secret:
        row["secret"] = chosen
    emit(ctx, [row], (*WEBHOOK_COLUMNS, *(("secret",) if not secret else ())))


@webhook_app.command("list")
def webhook_list(ctx: typer.Context) -> None:
    """List the tenant's webhooks (never their secrets)."""
    with globals_of(ctx).client() as client:
        hooks = client.monitoring.webhooks()
    emit(ctx, [_webhook_row(h) for h in hooks], WEBHOOK_COLUMNS, raw=[to_dict(h) for h in hooks])


@webhook_app.command("delete")
def webhook_delete(ctx: typer.Context, webhook: int = typer.Argument(..., help="webhook id")) -> None:
    """Delete a webhook; deliveries already under way may still arrive."""
    with globals_of(ctx).client() as client:
        client.monitoring.delete_webhook(webhook)
    emit(ctx, [{"id": webhook, "deleted": True}], ("id", "deleted"))


def _webhook_row(h: monitoring_pb2.Webhook) -> dict[str, Any]:
    return {
        "id": h.id,
        "url": h.url,
        "description": h.description,
        "created": format_ms(h.created_unix_ms),
        "created_by": h.created_by,
    }
