"""`foedus federation ...`: SuperNode keys, federated runs and opt-ins."""

from __future__ import annotations

import contextlib
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


def _pem(openssh_public_key: str) -> str:
    """A SuperNode's OpenSSH public key line as the PEM the control plane registers."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_public_key(openssh_public_key.encode())
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@app.command("run")
def run_local(
    ctx: typer.Context,
    node: list[str] = typer.Option(
        ...,
        "--node",
        help="TENANT=PATH: a tenant's SuperNode and its local data (.npz or an agent's directory); repeatable",
    ),
    model: str = typer.Option("anomaly", "--model", help="the ops model to train (anomaly)"),
    rounds: int = typer.Option(3, "--rounds", min=1),
    strategy: str = typer.Option("fedavg", "--strategy", help="fedavg, fedprox or fedadam"),
    features: int = typer.Option(6, "--features", min=1, help="metrics per row of the local data"),
    window: int = typer.Option(10, "--window", min=1),
    hidden: int = typer.Option(64, "--hidden", min=1),
    dp_mode: str = typer.Option(
        "", "--dp-mode", help="central-server, central-client or local (default: none)"
    ),
    dp_noise: float = typer.Option(1.0, "--dp-noise", help="noise multiplier"),
    dp_clip: float = typer.Option(1.0, "--dp-clip", help="clipping norm"),
    secagg: bool = typer.Option(False, "--secagg", help="SecAgg+ secure aggregation"),
    result_model: str = typer.Option(
        "federated-anomaly", "--result-model", help="platform-scope model of the result"
    ),
    workdir: Path = typer.Option(Path("foedus-federation"), "--workdir", help="keys, certificates and logs"),
) -> None:
    """Run a federated training on this machine: a SuperLink and one SuperNode per --node, with TLS
    and SuperNode authentication (admin). The run, its rounds and privacy settings are recorded in
    the control plane; the global weights are registered in the platform scope.

    Each site keeps its own normalisation and threshold: `AnomalyModel.from_shared_weights` turns
    the registered weights into a site's detector.
    """
    import tempfile

    from foedus.client_sdk.errors import AlreadyExists, InvalidArgument, NotFound

    try:
        from foedus.federation.flower.runner import LocalFederation, NodeSpec
        from foedus.federation.flower.task import DpConfig, RunSettings, SecAggConfig
    except ImportError as exc:
        raise InvalidArgument(
            f"federated runs need the federation extra: pip install 'foedus[federation]' ({exc})"
        ) from exc
    if model != "anomaly":
        raise InvalidArgument("federated runs train the anomaly model for now (--model anomaly)")
    nodes: list[NodeSpec] = []
    for text in node:
        tenant, sep, path = text.partition("=")
        if not sep or not tenant or not path:
            raise typer.BadParameter(f"{text!r} is not TENANT=PATH", param_hint="'--node'")
        nodes.append(NodeSpec(name=tenant, data_path=Path(path)))
    dp = DpConfig(mode=dp_mode, noise_multiplier=dp_noise, clipping_norm=dp_clip) if dp_mode else None  # type: ignore[arg-type]
    g = globals_of(ctx)
    with g.client() as admin:
        for spec in nodes:
            admin.tenants.get(spec.name)  # NotFound for an unknown tenant, before anything starts
        with LocalFederation(workdir, nodes) as federation:
            for spec in nodes:
                with contextlib.suppress(AlreadyExists):
                    admin.federation.register_node_key(
                        spec.name,
                        _pem(federation.keys[spec.name].public_key_line),
                        description="local federation",
                    )
            privacy = {
                "mode": dp_mode,
                "noise_multiplier": dp_noise if dp else 0.0,
                "clipping_norm": dp_clip if dp else 0.0,
            }
            record = admin.federation.create_run(
                model,
                [n.name for n in nodes],
                strategy=strategy,
                rounds=rounds,
                privacy={**privacy, "secagg": secagg},
            )
            typer.echo(
                f"federated run {record.id}: {len(nodes)} organisations, {rounds} rounds, {strategy}",
                err=True,
            )
            settings = RunSettings(
                task="foedus.federation.anomaly:federated_task",
                task_options={"features": features, "window": window, "hidden": hidden},
                rounds=rounds,
                strategy=strategy,
                min_nodes=len(nodes),
                dp=dp,
                secagg=SecAggConfig() if secagg else None,
            )
            result = federation.run(settings)
        for r in result.rounds:
            metrics = {
                k: float(v)
                for k, v in (("train_loss", r.train_loss), ("eval_loss", r.eval_loss))
                if v is not None
            }
            admin.federation.record_round(
                record.id,
                r.round,
                metrics,
                nodes=r.train_nodes,
                size=r.bytes_sent + r.bytes_received,
                seconds=r.elapsed_s,
            )
            typer.echo(
                f"  round {r.round}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), err=True
            )
        if not result.ok:
            done = admin.federation.finish_run(
                record.id, succeeded=False, message=f"{result.status}: {result.details}"[:10_000]
            )
            emit(ctx, [_run_row(done)], RUN_COLUMNS, raw=to_dict(done))
            raise typer.Exit(1)
        with contextlib.suppress(AlreadyExists):
            admin.tenants.create("platform", display_name="platform scope (shared models)", owner_key=False)
        created = admin.keys.create("editor", tenant="platform", description=f"federated run {record.id}")
        editor = created.secret
        epsilon = float(result.privacy.get("epsilon", 0.0) or 0.0)
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "weights.npz"
            import numpy as np

            np.savez(weights, **result.final_weights())  # type: ignore[arg-type]
            with type(admin).connect(g.server, api_key=editor) as platform:
                try:
                    platform.models.get(result_model)
                except NotFound:
                    platform.models.create(
                        result_model, description="federated ops model (shared autoencoder weights)"
                    )
                version = platform.models.register(
                    result_model,
                    weights,
                    framework="custom",
                    create_model=False,
                    lineage={
                        "federation_run": str(record.id),
                        "rounds": str(rounds),
                        "strategy": strategy,
                        "organisations": str(len(nodes)),
                        "privacy": dp_mode or "none",
                        "secagg": str(secagg).lower(),
                        "task": f"anomaly window={window} hidden={hidden} features={features}",
                    },
                )
            admin.keys.revoke(created.key.key_id, tenant="platform")  # the key served this run only
        done = admin.federation.finish_run(
            record.id,
            succeeded=True,
            result_model=result_model,
            result_version=version.version,
            epsilon=epsilon,
        )
    emit(ctx, [_run_row(done)], RUN_COLUMNS, raw=to_dict(done))
