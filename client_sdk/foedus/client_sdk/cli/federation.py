"""`foedus federation ...`: SuperNode keys, federated runs and opt-ins."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import typer

from foedus.client_sdk.cli.common import emit, globals_of, to_dict
from foedus.client_sdk.cli.deployment import format_ms
from foedus.client_sdk.cli.rollout import parse_steps
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


def _metrics_text(metrics: Any) -> str:
    """A round's metrics for a table: the calibration (``calib-*``, per feature) only in JSON."""
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if not k.startswith("calib-"))


def _run_row(r: Any) -> dict[str, Any]:
    p = r.privacy
    privacy = p.mode or "none"
    if p.mode:
        privacy += (
            f" (noise {p.noise_multiplier:g}, clip {p.clipping_norm:g}"
            + (f", sample rate {p.sample_rate:g}" if p.mode == "record" else "")
            + (f", eps {p.epsilon:.3g})" if p.epsilon else ")")
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
        "last_round": _metrics_text(last.metrics) if last else "",
    }


@keys_app.command("register")
def keys_register(
    ctx: typer.Context,
    tenant: str = typer.Argument(..., help="the tenant whose SuperNode holds the key"),
    public_key: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="the SuperNode's public key (OpenSSH line or PEM file)"
    ),
    description: str = typer.Option("", "--description"),
) -> None:
    """Register a tenant's SuperNode public key (admin): its SuperNode may then join runs."""
    text = public_key.read_text()
    if not text.lstrip().startswith("-----BEGIN"):
        try:
            text = _pem(text.strip())
        except ValueError as exc:
            raise typer.BadParameter(
                f"{public_key} holds no public key ({exc})", param_hint="PUBLIC_KEY"
            ) from None
    with globals_of(ctx).client() as client:
        k = client.federation.register_node_key(tenant, text, description=description)
    emit(ctx, [_key_row(k)], KEY_COLUMNS, raw=to_dict(k))


@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="the key's name, e.g. the tenant's name"),
    directory: Path = typer.Option(Path("."), "--dir", help="where to write NAME and NAME.pub"),
) -> None:
    """Create a SuperNode key pair (a tenant, on the SuperNode's machine): the private key NAME
    (mode 0600) stays there; NAME.pub goes to the admin for `foedus federation keys register`."""
    from foedus.client_sdk.errors import AlreadyExists

    _federation_modules()
    from foedus.federation.flower.certs import generate_node_keys

    if (directory / name).exists():
        raise AlreadyExists(f"{directory / name} exists; choose another name or directory")
    try:
        pair = generate_node_keys(directory, name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="NAME") from None
    typer.echo(f"private key {pair.private_key}\npublic key  {pair.public_key}", err=True)
    typer.echo(_pem(pair.public_key_line), nl=False)


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
            "metrics": _metrics_text(h.metrics),
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


def _feature_names(given: str, features: int, paths: list[Path]) -> list[str]:
    from foedus.client_sdk.agent.history import HISTORY_METRICS
    from foedus.client_sdk.errors import InvalidArgument

    if given:
        names = [n.strip() for n in given.split(",")]
    elif paths and all(p.is_dir() for p in paths):
        names = list(HISTORY_METRICS)
    else:
        names = [f"f{i}" for i in range(features)]
    if len(names) != features or not all(names):
        raise InvalidArgument(
            f"--feature-names names {len(names)} metrics; the data has --features {features}"
        )
    return names


DELIVERY_COLUMNS = ("tenant", "deployment", "model", "version", "rollout", "skipped")


def _report_deliveries(items: list[Any]) -> None:
    if not items:
        typer.echo("no tenant has opted in to this kind of model; nothing was delivered", err=True)
    for d in items:
        if d.version:
            typer.echo(
                f"  {d.tenant}/{d.deployment}: {d.model} v{d.version}, canary rollout {d.rollout_id}",
                err=True,
            )
        else:
            typer.echo(f"  {d.tenant}/{d.deployment}: skipped: {d.skipped}", err=True)


STEP_HELP = "a canary step WEIGHT[:MIN_SECONDS[:MIN_REQUESTS]]; repeatable (default 10, 25, 50, 100 percent)"


@app.command("deliver")
def deliver(
    ctx: typer.Context,
    run: int = typer.Argument(..., help="a succeeded federated run"),
    step: list[str] = typer.Option([], "--step", help=STEP_HELP),
) -> None:
    """Send a run's result to the deployments of the tenants that opted in (admin): it becomes a new
    version of each deployment's model and a canary rollout of it starts, with the normal analysis."""
    with globals_of(ctx).client() as client:
        items = client.federation.deliver_result(run, steps=parse_steps(step))
    emit(
        ctx,
        [
            {
                "tenant": d.tenant,
                "deployment": d.deployment,
                "model": d.model,
                "version": d.version or "",
                "rollout": d.rollout_id or "",
                "skipped": d.skipped,
            }
            for d in items
        ],
        DELIVERY_COLUMNS,
        raw=[to_dict(d) for d in items],
    )


def _federation_modules() -> Any:
    """The federation extra's runner (a clear error without it)."""
    from foedus.client_sdk.errors import InvalidArgument

    try:
        from foedus.federation.flower import runner
    except ImportError as exc:
        raise InvalidArgument(
            f"this command needs the federation extra: pip install 'foedus[federation]' ({exc})"
        ) from exc
    return runner


def _stop_on_sigterm() -> None:
    """SIGTERM ends a long-running command like Ctrl-C does, so its Flower processes are stopped."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@app.command("run")
def run_federated(
    ctx: typer.Context,
    node: list[str] = typer.Option(
        [],
        "--node",
        help="TENANT=PATH: start a SuperNode on this machine for the tenant, on its local data (.npz "
        "or an agent's directory); repeatable. Without --superlink, a SuperLink is started too",
    ),
    superlink: str = typer.Option(
        "",
        "--superlink",
        help="HOST:PORT of a running SuperLink (foedus federation superlink) whose SuperNodes train; "
        "name the participating tenants with --tenant",
    ),
    superlink_ca: Path | None = typer.Option(
        None, "--superlink-ca", help="the CA certificate of --superlink's TLS certificate"
    ),
    tenant: list[str] = typer.Option(
        [], "--tenant", help="a participating tenant (with --superlink); repeatable"
    ),
    model: str = typer.Option(
        "anomaly",
        "--model",
        help="the ops model: anomaly (detector of the metrics) or resource (next-window CPU/memory "
        "quantiles; the nodes' data are agents' histories)",
    ),
    rounds: int = typer.Option(3, "--rounds", min=1),
    strategy: str = typer.Option("fedavg", "--strategy", help="fedavg, fedprox or fedadam"),
    features: int = typer.Option(6, "--features", min=1, help="metrics per row of the local data"),
    feature_names: str = typer.Option(
        "",
        "--feature-names",
        help="comma-separated metric names for the model (default: the agent's metrics when every "
        "--node is an agent's directory, else f0, f1, ...)",
    ),
    window: int = typer.Option(10, "--window", min=1),
    hidden: int = typer.Option(64, "--hidden", min=1),
    local_epochs: int = typer.Option(1, "--local-epochs", min=1, help="local epochs per round"),
    proximal_mu: float = typer.Option(0.1, "--proximal-mu", min=0.0, help="FedProx's mu (with fedprox)"),
    dp_mode: str = typer.Option(
        "",
        "--dp-mode",
        help="central-server, central-client, local, or record (DP-SGD at every node: a guarantee "
        "for each row of each organisation's data) (default: none)",
    ),
    dp_noise: float = typer.Option(1.0, "--dp-noise", help="noise multiplier"),
    dp_clip: float = typer.Option(
        1.0, "--dp-clip", help="clipping norm: of a row's gradient (record), of a node's update (the others)"
    ),
    dp_sample_rate: float = typer.Option(
        0.002,
        "--dp-sample-rate",
        min=1e-9,
        max=1.0,
        help="with --dp-mode record: the chance of each row to be in a DP-SGD step (1/rate steps per epoch)",
    ),
    secagg: bool = typer.Option(False, "--secagg", help="SecAgg+ secure aggregation"),
    result_model: str = typer.Option(
        "", "--result-model", help="platform-scope model of the result (default: federated-MODEL)"
    ),
    workdir: Path = typer.Option(Path("foedus-federation"), "--workdir", help="keys, certificates and logs"),
    timeout: float = typer.Option(3600.0, "--timeout", min=1.0, help="seconds before the run is stopped"),
    rollout: bool = typer.Option(
        False,
        "--rollout",
        help="then send the result to the deployments of the tenants that opted in, as canary rollouts",
    ),
    step: list[str] = typer.Option([], "--step", help=f"with --rollout, {STEP_HELP}"),
    secagg_max_weight: float = typer.Option(
        10_000.0,
        "--secagg-max-weight",
        min=1.0,
        help="with --secagg: the largest node's rows (weights above it are capped)",
    ),
) -> None:
    """Train an ops model federatedly (admin) and record it in the control plane.

    With --node, everything runs on this machine: a SuperLink and one SuperNode per tenant, with
    TLS and SuperNode authentication (a way to try it, or to evaluate). With --superlink, the run
    goes to a SuperLink started with `foedus federation superlink`, whose SuperNodes run at the
    tenants (`foedus federation supernode`), each on its own data. Rounds are recorded as they
    finish (FederationService); on success the global model is exported to ONNX and registered
    in the platform scope with its lineage: the global weights with the sites' calibration
    averaged (normalisation and threshold, weighted by rows). A site may instead fit its own with
    `AnomalyModel.from_shared_weights`. With --rollout it becomes a new version of every opted-in
    deployment's model and a canary rollout of it starts there (`foedus federation deliver RUN`
    does the same later).
    """
    from foedus.client_sdk.errors import AlreadyExists, InvalidArgument, NotFound

    runner = _federation_modules()
    from foedus.federation.anomaly import AnomalyConfig, global_model
    from foedus.federation.flower.task import DpConfig, RoundRecord, RunSettings, SecAggConfig

    if model not in ("anomaly", "resource"):
        raise InvalidArgument("--model is anomaly or resource")
    result_model = result_model or f"federated-{model}"
    if bool(node) == bool(superlink):
        raise InvalidArgument("give either --node (a federation on this machine) or --superlink")
    nodes: list[Any] = []
    for text in node:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"{text!r} is not TENANT=PATH", param_hint="'--node'")
        nodes.append(runner.NodeSpec(name=name, data_path=Path(path)))
    if superlink:
        if not tenant or superlink_ca is None:
            raise InvalidArgument("with --superlink, name the participants (--tenant) and --superlink-ca")
        if not superlink_ca.is_file():
            raise InvalidArgument(f"--superlink-ca {superlink_ca}: no such file")
    participants = [n.name for n in nodes] or list(tenant)
    names = _feature_names(feature_names, features, [n.data_path for n in nodes])
    try:
        dp = (
            DpConfig(
                mode=dp_mode,  # type: ignore[arg-type]  # validated by DpConfig
                noise_multiplier=dp_noise,
                clipping_norm=dp_clip,
                sample_rate=dp_sample_rate,
            )
            if dp_mode
            else None
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--dp-mode'") from exc
    if dp is not None and dp.mode == "record" and model == "resource":
        from foedus.federation.resources import RECORD_DP_REFUSAL

        raise typer.BadParameter(RECORD_DP_REFUSAL, param_hint="'--dp-mode'")
    # the resource model's first round only agrees on its standardisation (see its task)
    task_options: dict[str, Any] = (
        {"features": features, "window": window, "hidden": hidden}
        if model == "anomaly"
        else {"hidden": hidden, "agent_history": True}
    )
    total_rounds = rounds if model == "anomaly" else rounds + 1
    settings = RunSettings(
        task=f"foedus.federation.{'anomaly' if model == 'anomaly' else 'resources'}:federated_task",
        task_options=task_options,
        rounds=total_rounds,
        strategy=strategy,
        local_epochs=local_epochs,
        proximal_mu=proximal_mu if strategy == "fedprox" else 0.0,
        min_nodes=len(participants),
        dp=dp,
        secagg=SecAggConfig(max_weight=secagg_max_weight) if secagg else None,
        round_timeout=timeout,
    )
    g = globals_of(ctx)
    _stop_on_sigterm()
    with g.client() as admin:
        for name in participants:
            admin.tenants.get(name)  # NotFound for an unknown tenant, before anything starts
        with contextlib.ExitStack() as stack:
            if nodes:
                federation = stack.enter_context(runner.LocalFederation(workdir, nodes))
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
                "delta": dp.delta if dp else 0.0,
                "secagg": secagg,
                "sample_rate": dp.sample_rate if dp and dp.mode == "record" else 0.0,
            }
            record = admin.federation.create_run(
                model, participants, strategy=strategy, rounds=total_rounds, privacy=privacy
            )
            typer.echo(
                f"federated run {record.id}: {model} model, {len(participants)} organisations, "
                f"{total_rounds} rounds, {strategy}"
                + (f", dp {dp_mode}" if dp else "")
                + (", secagg+" if secagg else ""),
                err=True,
            )

            def on_round(r: RoundRecord) -> None:
                metrics = {
                    k: float(v)
                    for k, v in (("train_loss", r.train_loss), ("eval_loss", r.eval_loss))
                    if v is not None
                }
                metrics.update({k: float(v) for k, v in r.eval_metrics.items() if k != "eval-loss"})
                admin.federation.record_round(
                    record.id,
                    r.round,
                    metrics,
                    nodes=r.train_nodes,
                    size=r.bytes_sent + r.bytes_received,
                    seconds=r.elapsed_s,
                )
                shown = {k: v for k, v in metrics.items() if not k.startswith("calib-")}
                typer.echo(
                    f"  round {r.round}/{total_rounds}: {r.train_nodes} nodes, {r.elapsed_s:.1f}s, "
                    + ("standardisation agreed, " if model == "resource" and r.round == 1 else "")
                    + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()),
                    err=True,
                )

            try:
                if nodes:
                    result = federation.run(settings, timeout=timeout, on_round=on_round)
                else:
                    assert superlink_ca is not None
                    client = runner.SuperLinkClient(
                        address=superlink, ca_cert=superlink_ca.resolve(), cli_home=workdir / "flwr-cli"
                    )
                    client.write_cli_config()
                    base = workdir / "runs" / f"run-{record.id}"
                    result = runner.run(
                        runner.write_app_dir(base / "app", settings),
                        client,
                        result_dir=base / "result",
                        timeout=timeout,
                        on_round=on_round,
                    )
            except BaseException as exc:
                admin.federation.finish_run(
                    record.id, succeeded=False, message=f"interrupted: {exc!r}"[:10_000]
                )
                raise
        if not result.ok:
            done = admin.federation.finish_run(
                record.id, succeeded=False, message=f"{result.status}: {result.details}"[:10_000]
            )
            emit(ctx, [_run_row(done)], RUN_COLUMNS, raw=to_dict(done))
            raise typer.Exit(1)
        onnx_path = workdir / f"run-{record.id}" / f"federated-{model}.onnx"
        if model == "anomaly":
            last = result.rounds[-1].eval_metrics if result.rounds else {}
            detector = global_model(
                result.final_weights(),
                last,
                config=AnomalyConfig(window=window, hidden=hidden),
                feature_names=names,
            )
            detector.export_onnx(onnx_path)
            typer.echo(f"global model: threshold {detector.threshold:.4g}, {onnx_path}", err=True)
        else:
            from foedus.client_sdk.agent.history import HISTORY_METRICS
            from foedus.federation.resources import agent_columns_of, federated_resource_model

            columns = agent_columns_of(HISTORY_METRICS)
            assert columns is not None
            predictor = federated_resource_model(result.final_weights(), **task_options)
            predictor.export_agent_onnx(onnx_path, columns=columns)
            typer.echo(f"global model: next-window CPU/memory quantiles, {onnx_path}", err=True)
        with contextlib.suppress(AlreadyExists):
            admin.tenants.create("platform", display_name="platform scope (shared models)", owner_key=False)
        created = admin.keys.create("editor", tenant="platform", description=f"federated run {record.id}")
        try:
            with type(admin).connect(g.server, api_key=created.secret, tls=g.tls_config()) as platform:
                try:
                    platform.models.get(result_model)
                except NotFound:
                    platform.models.create(
                        result_model, description=f"federated {model} model of the ops metrics"
                    )
                version = platform.models.register(
                    result_model,
                    onnx_path,
                    framework="onnx",
                    create_model=False,
                    lineage={
                        "federation_run": str(record.id),
                        "rounds": str(rounds),
                        "strategy": strategy,
                        "organisations": str(len(participants)),
                        "privacy": dp_mode or "none",
                        "secagg": str(secagg).lower(),
                        "task": f"anomaly window={window} hidden={hidden} features={features}"
                        if model == "anomaly"
                        else f"resource hidden={hidden} agent history",
                    },
                )
        finally:
            admin.keys.revoke(created.key.key_id, tenant="platform")  # the key served this run only
        done = admin.federation.finish_run(
            record.id,
            succeeded=True,
            result_model=result_model,
            result_version=version.version,
            epsilon=float(result.privacy.get("epsilon", 0.0) or 0.0),
        )
        if rollout:
            _report_deliveries(admin.federation.deliver_result(record.id, steps=parse_steps(step)))
    emit(ctx, [_run_row(done)], RUN_COLUMNS, raw=to_dict(done))


def _tls_files(workdir: Path, cert: Path | None, key: Path | None, ca: Path | None, hosts: list[str]) -> Any:
    """The SuperLink's TLS files: the given ones, else a development CA kept in ``workdir/certs``."""
    from foedus.client_sdk.errors import InvalidArgument
    from foedus.federation.flower.certs import TlsFiles, generate_tls

    given = [x for x in (cert, key, ca) if x is not None]
    if given:
        if len(given) != 3:
            raise InvalidArgument("give all of --tls-cert, --tls-key and --tls-ca, or none (development CA)")
        for path in given:
            if not path.is_file():
                raise InvalidArgument(f"{path}: no such file")
        return TlsFiles(ca_cert=ca.resolve(), server_cert=cert.resolve(), server_key=key.resolve())  # type: ignore[union-attr]
    folder = workdir / "certs"
    existing = TlsFiles(
        ca_cert=folder / "ca.crt", server_cert=folder / "server.pem", server_key=folder / "server.key"
    )
    if all(p.is_file() for p in (existing.ca_cert, existing.server_cert, existing.server_key)):
        return existing
    return generate_tls(folder, hosts=hosts)


def _openssh(public_key_pem: str) -> bytes:
    """A PEM public key (as the control plane keeps it) as the OpenSSH line Flower registers."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public_key_pem.encode())
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def sync_node_keys(admin: Any, link: Any, keys_dir: Path, known: dict[str, tuple[str, int]]) -> list[str]:
    """Make the SuperLink's registered SuperNodes match the control plane's active node keys.

    ``known`` (fingerprint -> (tenant, node id)) is what this SuperLink has registered; keys new
    in the control plane are registered, revoked ones unregistered. Returns what changed.
    """
    wanted: dict[str, tuple[str, str]] = {}
    for t in admin.tenants.list():
        for k in admin.federation.node_keys(tenant=t.name):
            wanted[k.fingerprint] = (k.tenant, k.public_key)
    changes: list[str] = []
    for fp in sorted(set(known) - set(wanted)):
        tenant_name, node_id = known.pop(fp)
        link.flwr("supernode", "unregister", str(node_id), check=False)
        changes.append(f"unregistered {tenant_name}'s SuperNode {node_id} (key {fp[:12]}… revoked)")
    for fp in sorted(set(wanted) - set(known)):
        tenant_name, pem = wanted[fp]
        path = keys_dir / f"{fp[:16]}.pub"
        keys_dir.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_openssh(pem) + f" {tenant_name}\n".encode())
        node_id = link.register([path])[path]
        known[fp] = (tenant_name, node_id)
        changes.append(f"registered {tenant_name}'s SuperNode key {fp[:12]}… as node {node_id}")
    return changes


@app.command("superlink")
def superlink_command(
    ctx: typer.Context,
    workdir: Path = typer.Option(Path("foedus-superlink"), "--workdir", help="certificates, keys and logs"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(9092, "--port", min=1, max=65535),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="server certificate (PEM)"),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="its private key"),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", help="the CA certificate SuperNodes trust"),
    san: list[str] = typer.Option(
        [], "--san", help="extra host name or address for the development certificate; repeatable"
    ),
    sync_interval: float = typer.Option(
        15.0, "--sync-interval", min=1.0, help="seconds between syncs of the registered node keys"
    ),
) -> None:
    """Run Flower's SuperLink for the federation (admin), until Ctrl-C or SIGTERM.

    TLS always (the given certificate, else a development CA kept in WORKDIR/certs), SuperNode
    authentication on, no run-time dependency installation. Only SuperNodes whose public key
    is registered in the control plane (`foedus federation keys register`) may join: the keys
    are synced every --sync-interval seconds, and a revoked key's SuperNode is removed.
    """
    runner = _federation_modules()
    workdir = workdir.resolve()
    tls = _tls_files(workdir, tls_cert, tls_key, tls_ca, [host, "localhost", "127.0.0.1", *san])
    g = globals_of(ctx)
    _stop_on_sigterm()
    with g.client() as admin:
        admin.tenants.list()  # an admin key, before anything starts
        link = runner.start_superlink(workdir, tls=tls, host=host, port=port)
        known: dict[str, tuple[str, int]] = {}
        try:
            typer.echo(
                f"SuperLink on {link.address} (TLS; CA {tls.ca_cert}); log {link.log_path}\n"
                f"SuperNodes: foedus federation supernode --superlink {link.address} --ca {tls.ca_cert} "
                "--key KEY --data PATH",
                err=True,
            )
            while link.alive():
                for change in sync_node_keys(admin, link, workdir / "node-keys", known):
                    typer.echo(change, err=True)
                deadline = time.monotonic() + sync_interval
                while link.alive() and time.monotonic() < deadline:
                    time.sleep(0.2)
            typer.echo(f"the SuperLink exited with status {link.returncode}; log {link.log_path}", err=True)
            raise typer.Exit(1)
        except KeyboardInterrupt:
            typer.echo("stopping the SuperLink", err=True)
        finally:
            link.stop()


@app.command("supernode")
def supernode_command(
    superlink: str = typer.Option(..., "--superlink", help="HOST:PORT of the SuperLink"),
    ca: Path = typer.Option(..., "--ca", exists=True, dir_okay=False, help="the SuperLink's CA certificate"),
    key: Path = typer.Option(
        ...,
        "--key",
        exists=True,
        dir_okay=False,
        help="this SuperNode's private key (foedus federation keys create)",
    ),
    data: Path = typer.Option(
        ..., "--data", exists=True, help="the local history: an agent's directory or a .npz file"
    ),
    loader: str = typer.Option("", "--loader", help="data loader name or module:function (default: by path)"),
    name: str = typer.Option("", "--name", help="a name for logs (default: the key file's name)"),
    workdir: Path = typer.Option(Path("foedus-supernode"), "--workdir", help="logs"),
) -> None:
    """Run a Flower SuperNode beside this tenant's agents, until Ctrl-C or SIGTERM.

    It trains the federation's models on --data, which never leaves this machine; only model
    updates go to the SuperLink. The SuperLink admits it only if the admin registered its public
    key for this tenant (`foedus federation keys register TENANT KEY.pub`).
    """
    from foedus.client_sdk.errors import FailedPrecondition

    runner = _federation_modules()
    workdir = workdir.resolve()
    node_config: dict[str, Any] = {"data-path": str(data.resolve())}
    if loader:
        node_config["data-loader"] = loader
    _stop_on_sigterm()
    process = runner.start_supernode(
        superlink,
        workdir=workdir,
        name=name or key.stem,
        ca_cert=ca.resolve(),
        private_key=key.resolve(),
        node_config=node_config,
    )
    try:
        typer.echo(f"SuperNode started; log {process.log_path}", err=True)
        connected = False
        while process.alive():
            if not connected and (found := process.wait_for_log(r"SuperNode ID: (\d+)", 0.5)):
                typer.echo(f"connected to {superlink} as node {found[1]}", err=True)
                connected = True
            time.sleep(0.5)
        code = process.returncode
        if code and f"Exit Code: {runner.REJECTED_EXIT_CODE}" in process.log_text():
            raise FailedPrecondition(
                "the SuperLink refused this SuperNode: its public key is not registered "
                "(the admin runs: foedus federation keys register TENANT KEY.pub)"
            )
        typer.echo(f"the SuperNode exited with status {code}; log {process.log_path}", err=True)
        raise typer.Exit(1 if code else 0)
    except KeyboardInterrupt:
        typer.echo("stopping the SuperNode", err=True)
    finally:
        process.stop()
