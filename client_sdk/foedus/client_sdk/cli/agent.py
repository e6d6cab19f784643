"""`foedus agent run`: serve a deployment beside production."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from pathlib import Path

import typer

from foedus.client_sdk.cli.common import globals_of

app = typer.Typer(help="Run an agent beside production models (agent-role key).", no_args_is_help=True)


@app.command("run")
def run(
    ctx: typer.Context,
    deployment: str = typer.Option(..., "--deployment", help="the deployment to serve"),
    listen: str = typer.Option(
        "127.0.0.1:8001", "--listen", help="HOST:PORT of the Open Inference Protocol service"
    ),
    data_dir: Path = typer.Option(
        Path("foedus-agent"), "--data-dir", help="model cache, telemetry queue, history"
    ),
    name: str = typer.Option(socket.gethostname(), "--name", help="agent name, unique within the deployment"),
    interval: float = typer.Option(10.0, "--interval", min=0.1, help="telemetry interval in seconds"),
    provider: list[str] = typer.Option(
        [], "--provider", help="execution provider to consider (repeatable); default: all the host offers"
    ),
    history_days: float = typer.Option(
        7.0, "--history-days", min=0.01, help="days of local metric history kept"
    ),
    prediction_days: float = typer.Option(
        7.0,
        "--prediction-days",
        min=0.01,
        help="days predictions of requests with an id wait on local disk for their delayed labels",
    ),
    anomaly_deployment: str | None = typer.Option(
        None,
        "--anomaly-deployment",
        help="deployment serving a learned anomaly scorer (default: statistical)",
    ),
    resource_deployment: str | None = typer.Option(
        None, "--resource-deployment", help="deployment serving a resource predictor"
    ),
    otlp_endpoint: str = typer.Option(
        "",
        "--otlp-endpoint",
        help="OpenTelemetry collector for traces and metrics (OTLP/gRPC), e.g. http://collector:4317 "
        "(env OTEL_EXPORTER_OTLP_ENDPOINT; default: no export; OTEL_SERVICE_NAME, default foedus-agent)",
    ),
    metrics_listen: str = typer.Option(
        "", "--metrics-listen", help="HOST:PORT of a Prometheus scrape endpoint (/metrics) (default: off)"
    ),
) -> None:
    """Register with the control plane, serve the deployment's versions and report telemetry."""
    try:
        from foedus.client_sdk.agent.runtime import AgentConfig, run_agent
    except ImportError as exc:
        typer.echo(
            f"error: the agent is not installed ({exc.name} missing): pip install 'foedus[agent]'", err=True
        )
        raise typer.Exit(1) from None
    g = globals_of(ctx)
    if not g.api_key:
        typer.echo("error: no API key: pass --api-key or set FOEDUS_API_KEY (an agent-role key)", err=True)
        raise typer.Exit(4)
    tls = g.tls_config()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = AgentConfig(
        deployment=deployment,
        server=g.server,
        api_key=g.api_key,
        listen=listen,
        data_dir=data_dir,
        name=name,
        interval_s=interval,
        providers=tuple(provider) or None,
        history_retention_s=history_days * 86_400,
        prediction_retention_s=prediction_days * 86_400,
        anomaly_deployment=anomaly_deployment,
        resource_deployment=resource_deployment,
        channel_credentials=tls.channel_credentials() if tls is not None else None,
        otlp_endpoint=otlp_endpoint,
        metrics_listen=metrics_listen,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await run_agent(config, stop=stop)

    asyncio.run(main())
