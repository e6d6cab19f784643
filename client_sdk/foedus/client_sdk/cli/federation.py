"""`foedus federation ...`: SuperNode keys, federated runs and opt-ins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from foedus.client_sdk.cli.common import emit, globals_of, to_dict
from foedus.client_sdk.cli.deployment import format_ms
from foedus.client_sdk.federation import RUN_STATES

app = typer.Typer(
    help="Federated learning of the ops models: SuperNode keys, runs, opt-ins.", no_args_is_help=True
)
keys_app = typer.Typer(
    help="SuperNode public keys: only registered keys may join a run.", no_args_is_help=True
)
runs_app = typer.Typer(help="Federated runs recorded by the control plane.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(runs_app, name="runs")

KEY_COLUMNS = ("fingerprint", "tenant", "description", "created", "revoked")
RUN_COLUMNS = ("id", "kind", "strategy", "rounds", "state", "tenants", "privacy", "result", "last_round")


def _ms(ts: Any) -> int:
    return int(ts.seconds * 1000 + ts.nanos // 1_000_000)


def _key_row(k: Any) -> dict[str, Any]:
    return {
        "fingerprint": k.fingerprint[:16] + "…",
        "tenant": k.tenant,
        "description": k.description,
        "created": format_ms(_ms(k.meta.created_at)),
        "revoked": format_ms(_ms(k.revoked_at)) if k.HasField("revoked_at") else "",
    }


def _run_row(r: Any) -> dict[str, Any]:
    p = r.privacy
    privacy = p.mode or "none"
    if p.mode:
        privacy += f" (noise {p.noise_multiplier:g}, clip {p.clipping_norm:g}" + (
            f", eps {p.epsilon:.3g})" if p.epsilon else ")"
        )
    if p.secagg:
        privacy += " + secagg"
    last = r.history[-1] if r.history else None
    return {
        "id": r.id,
        "kind": r.model_kind,
        "strategy": r.strategy,
        "rounds": f"{len(r.history)}/{r.rounds}",
        "state": RUN_STATES.get(r.state, "unknown"),
        "tenants": ",".join(r.tenants)
        + (f" (+{r.tenant_count - len(r.tenants)})" if r.tenant_count > len(r.tenants) else ""),
        "privacy": privacy,
        "result": f"{r.result_model} v{r.result_version}" if r.result_model else "",
        "last_round": ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.metrics.items())) if last else "",
    }


@keys_app.command("register")
def keys_register(
    ctx: typer.Context,
    tenant: str = typer.Argument(..., help="the tenant whose SuperNode holds the key"),
    public_key: Path = typer.Argument(..., exists=True, help="the SuperNode's public key (PEM file)"),
    description: str = typer.Option("", "--description"),
) -> None:
    """Register a tenant's SuperNode public key (admin)."""
    with globals_of(ctx).client() as client:
        k = client.federation.register_node_key(tenant, public_key.read_text(), description=description)
    emit(ctx, [_key_row(k)], KEY_COLUMNS, raw=to_dict(k))


@keys_app.command("list")
def keys_list(
    ctx: typer.Context,
    tenant: str = typer.Option("", "--tenant", help="required for the admin"),
    revoked: bool = typer.Option(False, "--revoked", help="include revoked keys"),
) -> None:
    """List SuperNode keys of a tenant."""
    with globals_of(ctx).client() as client:
        items = client.federation.node_keys(tenant=tenant, include_revoked=revoked)
    emit(ctx, [_key_row(k) for k in items], KEY_COLUMNS, raw=[to_dict(k) for k in items])


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, tenant: str, fingerprint: str) -> None:
    """Revoke a SuperNode key (admin); its SuperNode cannot join later runs."""
    with globals_of(ctx).client() as client:
        k = client.federation.revoke_node_key(tenant, fingerprint)
    emit(ctx, [_key_row(k)], KEY_COLUMNS, raw=to_dict(k))


@runs_app.command("list")
def runs_list(ctx: typer.Context, limit: int = typer.Option(50, "--limit", min=1)) -> None:
    """Federated runs, newest first (a tenant sees the runs it took part in)."""
    with globals_of(ctx).client() as client:
        items = client.federation.runs(limit=limit)
    emit(ctx, [_run_row(r) for r in items], RUN_COLUMNS, raw=[to_dict(r) for r in items])


@runs_app.command("get")
def runs_get(ctx: typer.Context, run: int) -> None:
    """A run and its rounds."""
    with globals_of(ctx).client() as client:
        r = client.federation.get_run(run)
    if globals_of(ctx).output == "json":
        emit(ctx, [], (), raw=to_dict(r))
        return
    emit(ctx, [_run_row(r)], RUN_COLUMNS)
    rows = [
        {
            "round": h.round,
            "nodes": h.nodes,
            "bytes": h.bytes,
            "seconds": f"{h.seconds:.2f}",
            "metrics": ", ".join(f"{k}={v:.4g}" for k, v in sorted(h.metrics.items())),
        }
        for h in r.history
    ]
    typer.echo("")
    emit(ctx, rows, ("round", "nodes", "bytes", "seconds", "metrics"))


@app.command("opt-in")
def opt_in(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="anomaly or resource"),
    deployment: str = typer.Argument(
        "", help="the deployment that receives the federated models; empty to opt out"
    ),
) -> None:
    """Opt a deployment of your tenant in (or out) of the federated models of a kind (owner)."""
    with globals_of(ctx).client() as client:
        items = client.federation.opt_in(kind, deployment)
    emit(
        ctx,
        [{"tenant": o.tenant, "kind": o.model_kind, "deployment": o.deployment} for o in items],
        ("tenant", "kind", "deployment"),
        raw=[to_dict(o) for o in items],
    )
