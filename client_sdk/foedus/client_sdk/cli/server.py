"""`foedus server start`: run the control plane; `foedus server admin-key`: make its admin key."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from foedus.client_sdk import apikeys
from foedus.client_sdk.cli import exit_codes

app = typer.Typer(help="Run the control plane (administrators).", no_args_is_help=True)


@app.command("admin-key")
def admin_key(
    out: Path = typer.Option(..., "--out", help="file to write the key to (created mode 0600)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Make a platform admin key offline, for `foedus server start --admin-key-file FILE`.

    The server registers it on its first start instead of creating a key of its own, e.g. from a
    Kubernetes Secret: `kubectl create secret generic foedus-admin-key --from-file=admin.key=FILE`.
    Prints the key id, never the secret.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(out, flags, 0o600)
    except FileExistsError:
        typer.echo(f"error: {out} exists; pass --force to overwrite", err=True)
        raise typer.Exit(exit_codes.CONFLICT) from None
    except OSError as exc:
        typer.echo(f"error: cannot write {out}: {exc.strerror}", err=True)
        raise typer.Exit(exit_codes.ERROR) from None
    key_id, secret = apikeys.new_key()
    with os.fdopen(fd, "w") as f:
        f.write(apikeys.format_key(key_id, secret) + "\n")
    os.chmod(out, 0o600)
    typer.echo(f"wrote platform admin key {key_id} to {out} (mode 0600)")


@app.command("start")
def start(
    data_dir: Path | None = typer.Option(
        None,
        "--data-dir",
        help="SQLite database, artifacts and admin.key live here (env FOEDUS_DATA_DIR; default ./foedus-data)",
    ),
    listen: str | None = typer.Option(
        None, "--listen", help="HOST:PORT (env FOEDUS_LISTEN; default 127.0.0.1:50051)"
    ),
    admin_key_file: str | None = typer.Option(
        None,
        "--admin-key-file",
        help="file with a platform admin key made by `foedus server admin-key`: a new database gets "
        "this key instead of one written to DATA_DIR/admin.key (env FOEDUS_ADMIN_KEY_FILE)",
    ),
    db: str | None = typer.Option(
        None,
        "--db",
        help="database URL, e.g. postgresql://user@host:5432/foedus (default: SQLite in --data-dir)",
    ),
    artifact_store: str | None = typer.Option(
        None,
        "--artifact-store",
        help="where artifacts live: local (DATA_DIR/artifacts; replicas share that directory) or "
        "database (chunked in the database; replicas on one PostgreSQL share nothing else) (default local)",
    ),
    config: Path | None = typer.Option(
        None, "--config", help="TOML file with ServerConfig settings ([server] table)"
    ),
    tls_cert: str | None = typer.Option(None, "--tls-cert", help="PEM certificate chain; serve TLS only"),
    tls_key: str | None = typer.Option(None, "--tls-key", help="PEM private key for --tls-cert"),
    tls_client_ca: str | None = typer.Option(
        None,
        "--tls-client-ca",
        help="PEM CA bundle: require client certificates signed by it (mutual TLS)",
    ),
    health_listen: str | None = typer.Option(
        None,
        "--health-listen",
        help="HOST:PORT of a plaintext listener serving only grpc.health.v1 (for probes without TLS)",
    ),
    otlp_endpoint: str | None = typer.Option(
        None,
        "--otlp-endpoint",
        help="OpenTelemetry collector for traces and metrics (OTLP/gRPC), e.g. http://collector:4317 "
        "(env FOEDUS_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT; default: no export; "
        "OTEL_SERVICE_NAME names the service, default foedus-server)",
    ),
    metrics_listen: str | None = typer.Option(
        None,
        "--metrics-listen",
        help="HOST:PORT of a Prometheus scrape endpoint (/metrics) (env FOEDUS_METRICS_LISTEN; default: off)",
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="server processes sharing the port, up to one per core (default 1)"
    ),
    insecure: bool | None = typer.Option(
        None, "--insecure/--no-insecure", help="allow plaintext on a non-loopback address"
    ),
    tenant_rate: float | None = typer.Option(
        None,
        "--tenant-rate",
        min=0.0,
        help="calls per second each tenant may make to the whole control plane (shared among the "
        "replicas and workers); over it RESOURCE_EXHAUSTED with retry-after-ms "
        "(env FOEDUS_TENANT_REQUESTS_PER_S; default 0: unlimited)",
    ),
    tenant_burst: int | None = typer.Option(
        None, "--tenant-burst", min=0, help="calls a tenant may make at once (default: twice --tenant-rate)"
    ),
    tenant_ingest_rate: float | None = typer.Option(
        None,
        "--tenant-ingest-rate",
        min=0.0,
        help="telemetry points and labels per second each tenant may send (default 0: unlimited)",
    ),
    tenant_max_models: int | None = typer.Option(
        None, "--tenant-max-models", min=0, help="models each tenant may have (default 0: unlimited)"
    ),
    tenant_max_artifact_bytes: int | None = typer.Option(
        None,
        "--tenant-max-artifact-bytes",
        min=0,
        help="bytes of artifacts each tenant's versions may hold (default 0: unlimited)",
    ),
    label_retention_days: float | None = typer.Option(
        None,
        "--label-retention-days",
        min=0.0,
        help="days the server keeps delayed labels (env FOEDUS_LABEL_RETENTION_DAYS; default 30; 0: for ever)",
    ),
    alert_gap: float | None = typer.Option(
        None,
        "--alert-gap",
        min=0.001,
        help="seconds after an incident's last alert in which a new alert still joins it (default 600)",
    ),
    alert_quiet: float | None = typer.Option(
        None,
        "--alert-quiet",
        min=0.001,
        help="seconds without alerts after which an open incident resolves itself (default 600)",
    ),
) -> None:
    """Start the control plane; on the first start it writes the platform admin key to DATA_DIR/admin.key
    (or registers the one in --admin-key-file)."""
    try:
        from foedus.server.app import main
        from foedus.server.config import ConfigError, load_config
    except ImportError as exc:
        typer.echo(
            f"error: the server is not installed ({exc.name} missing): pip install 'foedus[server]'", err=True
        )
        raise typer.Exit(1) from None
    try:
        cfg = load_config(
            config,
            data_dir=data_dir,
            listen=listen,
            admin_key_file=admin_key_file,
            db=db,
            artifact_store=artifact_store,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            health_listen=health_listen,
            otlp_endpoint=otlp_endpoint,
            metrics_listen=metrics_listen,
            allow_insecure=insecure,
            workers=workers,
            tenant_requests_per_s=tenant_rate,
            tenant_burst=tenant_burst,
            tenant_ingest_points_per_s=tenant_ingest_rate,
            tenant_max_models=tenant_max_models,
            tenant_max_artifact_bytes=tenant_max_artifact_bytes,
            label_retention_days=label_retention_days,
            alert_group_gap_s=alert_gap,
            alert_quiet_s=alert_quiet,
        )
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    main(cfg)
