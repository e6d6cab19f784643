"""Entry point of the `foedus` command."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click
import typer

from foedus.client_sdk.cli import (
    agent,
    alerts,
    audit,
    certs,
    deployment,
    drift,
    exit_codes,
    federation,
    key,
    metrics,
    model,
    ops,
    performance,
    report,
    rollout,
    server,
    tenant,
)
from foedus.client_sdk.cli.common import DEFAULT_SERVER, Globals, emit, globals_of, resolve_key
from foedus.client_sdk.errors import FoedusError
from foedus.v1 import common_pb2

app = typer.Typer(
    name="foedus",
    help="Foedus: federated, multi-tenant MLOps control plane.\n\n"
    "Exit codes: " + "; ".join(f"{c} {h}" for c, h in exit_codes.HELP.items()),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(server.app, name="server")
app.add_typer(tenant.app, name="tenant")
app.add_typer(key.app, name="key")
app.add_typer(model.app, name="model")
app.add_typer(deployment.app, name="deployment")
app.add_typer(metrics.app, name="metrics")
app.add_typer(alerts.app, name="alerts")
app.add_typer(agent.app, name="agent")
app.add_typer(rollout.app, name="rollout")
app.add_typer(report.app, name="report")
app.add_typer(drift.app, name="drift")
app.add_typer(performance.app, name="performance")
app.add_typer(ops.app, name="ops")
app.add_typer(federation.app, name="federation")
app.add_typer(certs.app, name="certs")
app.command("audit")(audit.audit)


@app.callback()
def options(
    ctx: typer.Context,
    server_: str = typer.Option(
        DEFAULT_SERVER, "--server", envvar="FOEDUS_SERVER", help="control plane HOST:PORT"
    ),
    api_key: str | None = typer.Option(None, "--api-key", envvar="FOEDUS_API_KEY", help="API key (fds_...)"),
    api_key_file: str | None = typer.Option(
        None,
        "--api-key-file",
        help="file holding the API key, e.g. DATA_DIR/admin.key (env FOEDUS_API_KEY_FILE)",
    ),
    output: str = typer.Option(
        "table",
        "--output",
        "-o",
        envvar="FOEDUS_OUTPUT",
        help="table | json",
        click_type=click.Choice(["table", "json"]),
    ),
    tls: bool = typer.Option(False, "--tls", envvar="FOEDUS_TLS", help="connect with TLS (system CA roots)"),
    ca_cert: str | None = typer.Option(
        None, "--ca-cert", envvar="FOEDUS_CA_CERT", help="PEM CA file for TLS (implies --tls)"
    ),
    client_cert: str | None = typer.Option(
        None,
        "--client-cert",
        envvar="FOEDUS_CLIENT_CERT",
        help="PEM client certificate, for a server that requires mutual TLS (implies --tls)",
    ),
    client_key: str | None = typer.Option(
        None, "--client-key", envvar="FOEDUS_CLIENT_KEY", help="PEM private key of --client-cert"
    ),
) -> None:
    ctx.obj = Globals(
        server=server_,
        api_key=resolve_key(
            api_key,
            api_key_file,
            key_from_env=ctx.get_parameter_source("api_key") == click.core.ParameterSource.ENVIRONMENT,
        ),
        output=output,
        tls=tls,
        ca_cert=ca_cert,
        client_cert=client_cert,
        client_key=client_key,
    )


@app.command("whoami")
def whoami(ctx: typer.Context) -> None:
    """Show the key, role and tenant of the API key in use."""
    with globals_of(ctx).client() as client:
        me = client.whoami()
    role = common_pb2.Role.Name(me.role) if me.role in common_pb2.Role.values() else str(me.role)
    emit(
        ctx,
        [{"key_id": me.key_id, "role": role, "tenant": me.tenant or "(platform)"}],
        ("key_id", "role", "tenant"),
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the CLI; errors print one line to stderr and exit with a documented code."""
    try:
        # Without standalone mode, click returns the code of a `typer.Exit(code)` instead of exiting.
        code = app(args=list(argv) if argv is not None else None, prog_name="foedus", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except FoedusError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(exit_codes.for_error(exc))
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exit_codes.USAGE)
    except (OSError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exit_codes.ERROR)
    sys.exit(exit_codes.OK)


if __name__ == "__main__":
    main()
