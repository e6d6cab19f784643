"""`foedus certs ca|server|client`: a development CA and certificates for TLS and mutual TLS."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from foedus.client_sdk.cli import exit_codes
from foedus.client_sdk.cli.common import emit

if TYPE_CHECKING:
    from foedus.client_sdk.pki import KeyPair

app = typer.Typer(
    help="Create a development CA and certificates signed by it (PEM; keys mode 0600).\n\n"
    "Typical use: `foedus certs ca`, `foedus certs server --host cp.example.com`, "
    "`foedus certs client agent-1`; then `foedus server start --tls-cert certs/server.pem "
    "--tls-key certs/server.key --tls-client-ca certs/ca.pem` and clients with "
    "`--ca-cert certs/ca.pem --client-cert certs/agent-1.pem --client-key certs/agent-1.key`.",
    no_args_is_help=True,
)

DIR_OPTION = typer.Option(Path("certs"), "--dir", help="folder for the PEM files (created mode 0700)")
DAYS_OPTION = typer.Option(365, "--days", min=1, help="days the certificate is valid")
FORCE_OPTION = typer.Option(False, "--force", help="overwrite existing files")
CA_OPTION = typer.Option(
    None, "--ca", help="the signing CA's files PREFIX.pem and PREFIX.key (default: DIR/ca)"
)


def _require_cryptography() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        typer.echo("error: `foedus certs` needs the cryptography package: pip install cryptography", err=True)
        raise typer.Exit(exit_codes.ERROR) from None


def _prepare(directory: Path, names: list[str], force: bool) -> list[Path]:
    paths = [directory / n for n in names]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        typer.echo(f"error: {', '.join(existing)} exist(s); pass --force to overwrite", err=True)
        raise typer.Exit(exit_codes.CONFLICT)
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
    return paths


def _write(ctx: typer.Context, pair: KeyPair, cert_path: Path, key_path: Path) -> None:
    from foedus.client_sdk import pki

    pki.write_private_key(key_path, pair.key)
    pki.write_certificate(cert_path, pair.cert)
    emit(
        ctx,
        [
            {
                "subject": pair.cert.subject.rfc4514_string(),
                "certificate": str(cert_path),
                "key": str(key_path),
                "not_after": pair.cert.not_valid_after_utc.isoformat(),
            }
        ],
        ("subject", "certificate", "key", "not_after"),
    )


@app.command("ca")
def ca(
    ctx: typer.Context,
    directory: Path = DIR_OPTION,
    name: str = typer.Option("Foedus development CA", "--name", help="the CA's common name"),
    days: int = DAYS_OPTION,
    force: bool = FORCE_OPTION,
) -> None:
    """Create a CA: DIR/ca.pem (give it to servers as --tls-client-ca and to clients as --ca-cert)
    and DIR/ca.key (keep it private)."""
    _require_cryptography()
    from foedus.client_sdk import pki

    cert_path, key_path = _prepare(directory, ["ca.pem", "ca.key"], force)
    _write(ctx, pki.new_ca(name, valid_days=days), cert_path, key_path)


def _leaf(
    ctx: typer.Context,
    directory: Path,
    name: str,
    usage: str,
    hosts: list[str],
    days: int,
    force: bool,
    ca: Path | None,
) -> None:
    _require_cryptography()
    from foedus.client_sdk import pki

    prefix = str(ca or directory / "ca")
    try:
        authority = pki.load_key_pair(Path(f"{prefix}.pem"), Path(f"{prefix}.key"))
    except FileNotFoundError as exc:
        typer.echo(
            f"error: no CA at {exc.filename}: run `foedus certs ca` first, or pass --ca PREFIX",
            err=True,
        )
        raise typer.Exit(exit_codes.NOT_FOUND) from None
    if "/" in name or name.startswith(".") or name in ("ca", ""):
        typer.echo(f"error: invalid certificate name {name!r}", err=True)
        raise typer.Exit(exit_codes.USAGE)
    cert_path, key_path = _prepare(directory, [f"{name}.pem", f"{name}.key"], force)
    pair = pki.issue(authority, name, pki.CertificateUsage(usage), hosts=hosts, valid_days=days)
    _write(ctx, pair, cert_path, key_path)


@app.command("server")
def server(
    ctx: typer.Context,
    host: list[str] = typer.Option(
        ...,
        "--host",
        help="name or address clients dial (repeatable); becomes a subject alternative name",
    ),
    name: str = typer.Option(
        "server", "--name", help="file name and common name: DIR/NAME.pem, DIR/NAME.key"
    ),
    directory: Path = DIR_OPTION,
    days: int = DAYS_OPTION,
    force: bool = FORCE_OPTION,
    ca: Path | None = CA_OPTION,
) -> None:
    """Create a server certificate signed by the CA (for `foedus server start --tls-cert/--tls-key`,
    a SuperLink, or a load balancer)."""
    _leaf(ctx, directory, name, "server", host, days, force, ca)


@app.command("client")
def client(
    ctx: typer.Context,
    name: str = typer.Argument(
        ..., help="the client's common name, e.g. agent-1; files DIR/NAME.pem, DIR/NAME.key"
    ),
    directory: Path = DIR_OPTION,
    days: int = DAYS_OPTION,
    force: bool = FORCE_OPTION,
    ca: Path | None = CA_OPTION,
) -> None:
    """Create a client certificate signed by the CA, for agents and SDK clients of a server that
    requires mutual TLS (`--client-cert/--client-key`)."""
    _leaf(ctx, directory, name, "client", [], days, force, ca)
