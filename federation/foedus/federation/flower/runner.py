"""Run a Flower federation on Flower's deployment engine: SuperLink, SuperNodes and ``flwr run``.

Everything runs as real processes with TLS and SuperNode authentication on:

* :func:`start_superlink` starts ``flower-superlink`` with the TLS certificate, key and CA
  (``--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile``), ``--enable-supernode-auth`` and
  ``--disable-runtime-dependency-installation``. Flower 1.42 serves its Fleet, Control and
  Runtime (ServerAppIo) APIs over HTTPS on one address (``--host``/``--port``). The SuperNodes'
  public keys are registered through the Control API with ``flwr supernode register``; a
  SuperNode whose key is not registered cannot activate (the SuperLink answers 412 and the
  SuperNode logs Flower's exit code 305 and exits).
* :func:`start_supernode` starts ``flower-supernode`` with ``--root-certificates`` (the CA),
  ``--auth-supernode-private-key`` and the node config (``data-path``, ...). Its Runtime API
  for its own ClientApp processes listens on a free loopback port. SuperNodes never install app
  dependencies unless ``--allow-runtime-dependency-installation`` is given (it is not).
* :func:`write_app_dir` writes the Flower app directory ``flwr run`` needs: only a
  ``pyproject.toml`` whose ``[tool.flwr.app.components]`` point at the apps in the installed
  ``foedus`` package and whose ``[tool.flwr.app.config]`` holds the run's settings.
* :func:`run` submits the app with ``flwr run``, follows it with ``flwr log --stream``, reads
  its status and network traffic with ``flwr ls``, and the ServerApp's ``summary.json`` and
  ``final_weights.npz`` into a :class:`RunResult`.

The ``flwr`` CLI reads its SuperLink connection from ``$FLWR_HOME/config.toml``; the runner
writes one (``[superlink.foedus]`` with the address and the CA as ``root-certificates``) into
its own directory. Every process gets its own ``FLWR_HOME``, telemetry and the update check
off, and logs to a file. :class:`LocalFederation` puts it all together for one machine, and
:func:`run_federation` runs one federated training end to end.

Processes stop with SIGTERM, then SIGKILL after a grace period; the SuperExec and app
processes Flower starts beneath them are stopped the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from foedus.federation.flower.certs import NodeKeyPair, TlsFiles, generate_node_keys, generate_tls
from foedus.federation.flower.task import DpConfig, NamedArrays, RoundRecord, RunSettings, SecAggConfig

__all__ = [
    "CONNECTION_NAME",
    "LocalFederation",
    "NodeSpec",
    "Process",
    "RunResult",
    "RunnerError",
    "SuperLink",
    "SuperLinkClient",
    "flower_env",
    "free_port",
    "pid_alive",
    "run",
    "run_federation",
    "start_superlink",
    "start_supernode",
    "write_app_dir",
]

CONNECTION_NAME = "foedus"
"""Name of the SuperLink connection the runner writes into the ``flwr`` CLI's config."""
MESSAGE_APP = ("foedus.federation.flower.server_app:app", "foedus.federation.flower.client_app:app")
SECAGG_APP = (
    "foedus.federation.flower.server_app:secagg_app",
    "foedus.federation.flower.client_app:secagg_app",
)
REJECTED_EXIT_CODE = 305
"""The Flower exit code ``flower-supernode`` logs (``Exit Code: 305``; the process exits with status 1)
when it cannot activate, e.g. because its key is not registered."""


class RunnerError(RuntimeError):
    """A Flower process or CLI command failed."""


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _executable(name: str) -> str:
    """The Flower executable next to this interpreter (the same environment), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise RunnerError(f"{name} not found; is flwr installed (pip install 'foedus[federation]')?")
    return found


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment of a Flower process: its own ``FLWR_HOME``, no telemetry, no update check,
    no runtime dependency installation, this environment's executables first on ``PATH``."""
    env = dict(os.environ)
    bin_dir = str(Path(_executable("flower-superlink")).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")
    env.setdefault("FOEDUS_TORCH_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time in clock ticks) from ``/proc/<pid>/stat``; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    after_name = stat[stat.rfind(")") + 2 :].split()
    if len(after_name) < 20:
        return None
    return int(after_name[1]), after_name[0], int(after_name[19])


def _descendants(pid: int) -> dict[int, int]:
    """Processes beneath ``pid`` as pid -> start time (empty where there is no ``/proc``)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[2]))
    out: dict[int, int] = {}
    stack = list(children.get(pid, []))
    while stack:
        child, started = stack.pop()
        out[child] = started
        stack.extend(children.get(child, []))
    return out


def pid_alive(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` is a live (not zombie) process, and the same one if its start time is given."""
    stat = _proc_stat(pid)
    if stat is None:
        if Path("/proc").is_dir():
            return False
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return stat[1] != "Z" and (started is None or stat[2] == started)


class Process:
    """A Flower process started by the runner, logging to ``log_path``."""

    def __init__(self, name: str, command: list[str], log_path: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.command = command
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = log_path.open("ab")
        self._log.write(f"$ {' '.join(command)}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(env)
        )
        self._known_descendants: dict[int, int] = {}

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, ``None`` while it runs."""
        return self.popen.poll()

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for it to exit; its exit status or ``None``."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self) -> str:
        """Everything it logged so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, pattern: str, timeout: float) -> re.Match[str] | None:
        """Wait until its log matches the regular expression ``pattern`` (or it exits)."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            found = regex.search(self.log_text())
            if found or time.monotonic() > deadline:
                return found
            if not self.alive():
                return regex.search(self.log_text())
            time.sleep(0.2)

    def remember_descendants(self) -> None:
        """Note the processes Flower started beneath this one (stopped with it)."""
        if self.alive():
            self._known_descendants.update(_descendants(self.pid))

    def leftovers(self) -> list[int]:
        """Processes noted beneath this one that still run (the very processes, not reused ids)."""
        return sorted(pid for pid, started in self._known_descendants.items() if pid_alive(pid, started))

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the same for what it started beneath it."""
        self.remember_descendants()
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.popen.kill()
                self.wait(5.0)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            leftover = self.leftovers()
            for pid in leftover:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + min(timeout, 5.0)
            while leftover and time.monotonic() < deadline and self.leftovers():
                time.sleep(0.1)
        self._known_descendants = {pid: t for pid, t in self._known_descendants.items() if pid_alive(pid, t)}
        self._log.close()
        return self.popen.returncode

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exited {self.returncode}"
        return f"<{type(self).__name__} {self.name} pid={self.pid} {state}>"


def _wait_listening(process: Process, host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RunnerError(
                f"{process.name} exited with status {process.returncode}; log {process.log_path}:\n"
                + process.log_text()[-3000:]
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.2)
    raise RunnerError(f"{process.name} did not listen on {host}:{port} within {timeout:.0f}s")


# ---------------------------------------------------------------------------------------------
# SuperLink and the flwr CLI
# ---------------------------------------------------------------------------------------------


def _toml_key(key: str) -> str:
    return ".".join(
        part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part) for part in key.split(".")
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} into a Flower config (bool, int, float, str only)")


class SuperLinkClient:
    """What the ``flwr`` CLI needs to talk to a SuperLink over TLS: its address and CA certificate.

    The CLI's own configuration (``$FLWR_HOME/config.toml``) lives in ``cli_home``; a SuperLink
    started elsewhere (``foedus federation superlink`` on another machine) is reached the same way.
    """

    def __init__(self, *, address: str, ca_cert: Path, cli_home: Path) -> None:
        self.address = address
        self.ca_cert = ca_cert
        self.cli_home = cli_home
        self.registered: dict[Path, int] = {}

    def write_cli_config(self) -> Path:
        """Write ``$FLWR_HOME/config.toml`` for the CLI: this SuperLink over TLS, as the default."""
        self.cli_home.mkdir(parents=True, exist_ok=True)
        path = self.cli_home / "config.toml"
        path.write_text(
            "[superlink]\n"
            f"default = {_toml_value(CONNECTION_NAME)}\n\n"
            f"[superlink.{CONNECTION_NAME}]\n"
            f"address = {_toml_value(self.address)}\n"
            f"root-certificates = {_toml_value(self.ca_cert.resolve())}\n",
            encoding="utf-8",
        )
        return path

    def flwr(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``flwr <args>`` against this SuperLink (its connection is the CLI's default)."""
        command = [_executable("flwr"), *args]
        done = subprocess.run(
            command,
            env=flower_env(self.cli_home),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise RunnerError(
                f"{' '.join(command)} failed with status {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def flwr_json(self, *args: str, timeout: float = 60.0) -> dict[str, Any]:
        """Run ``flwr <args> --format json`` and parse its JSON answer."""
        done = self.flwr(*args, "--format", "json", timeout=timeout, check=False)
        text = done.stdout
        start = text.find("{")
        try:
            payload = json.loads(text[start:]) if start >= 0 else None
        except json.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict) or done.returncode != 0 or payload.get("success") is False:
            raise RunnerError(
                f"flwr {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        return payload

    def register(self, public_keys: Sequence[Path]) -> dict[Path, int]:
        """Register SuperNode public keys (``flwr supernode register``, in parallel); key -> node id."""
        keys = [Path(k) for k in public_keys]
        if not keys:
            return {}
        with ThreadPoolExecutor(max_workers=min(4, len(keys))) as pool:
            answers = list(pool.map(lambda key: self.flwr_json("supernode", "register", str(key)), keys))
        ids = {key: int(answer["node-id"]) for key, answer in zip(keys, answers, strict=True)}
        self.registered.update(ids)
        return ids

    def nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode ls``: the registered SuperNodes and their status."""
        return list(self.flwr_json("supernode", "ls").get("nodes", []))


class SuperLink(Process, SuperLinkClient):
    """The SuperLink process plus what the ``flwr`` CLI needs to talk to it."""

    def __init__(
        self,
        command: list[str],
        log_path: Path,
        env: Mapping[str, str],
        *,
        address: str,
        ca_cert: Path,
        cli_home: Path,
    ) -> None:
        Process.__init__(self, "superlink", command, log_path, env)
        SuperLinkClient.__init__(self, address=address, ca_cert=ca_cert, cli_home=cli_home)


def start_superlink(
    workdir: Path,
    *,
    tls: TlsFiles,
    authorized_keys: Sequence[Path] | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    database: Path | None = None,
    node_auth: bool = True,
    ready_timeout: float = 60.0,
) -> SuperLink:
    """Start ``flower-superlink`` with TLS and SuperNode authentication; register ``authorized_keys``.

    The Fleet, Control and Runtime APIs share ``host:port`` (a free port by default). State is
    kept in memory unless ``database`` names an SQLite file. ``node_auth=False`` accepts any
    SuperNode (not recommended; TLS stays on either way). Log: ``workdir/superlink.log``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    home = workdir / "superlink-home"
    home.mkdir(parents=True, exist_ok=True)
    command = [
        _executable("flower-superlink"),
        "--ssl-ca-certfile",
        str(tls.ca_cert),
        "--ssl-certfile",
        str(tls.server_cert),
        "--ssl-keyfile",
        str(tls.server_key),
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
    ]
    if node_auth:
        command.append("--enable-supernode-auth")
    if database is not None:
        command += ["--database", str(database)]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    superlink = SuperLink(
        command,
        workdir / "superlink.log",
        flower_env(home),
        address=address,
        ca_cert=tls.ca_cert,
        cli_home=workdir / "flwr-cli",
    )
    try:
        superlink.write_cli_config()
        _wait_listening(superlink, host, port, ready_timeout)
        if authorized_keys:
            superlink.register(authorized_keys)
        superlink.remember_descendants()
    except BaseException:
        superlink.stop()
        raise
    return superlink


def _node_config_arg(node_config: Mapping[str, Any], directory: Path) -> str:
    """``--node-config`` value: ``k=v`` pairs, or a TOML file when a value cannot be quoted inline."""
    parts: list[str] = []
    for key, value in node_config.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
            break
        if isinstance(value, str | Path):
            text = str(value)
            if "'" in text or "\n" in text:
                break
            parts.append(f"{key}='{text}'")
        else:
            parts.append(f"{key}={_toml_value(value)}")
    else:
        return " ".join(parts)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "node-config.toml"
    path.write_text(
        "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in node_config.items()), encoding="utf-8"
    )
    return str(path)


def start_supernode(
    superlink_address: str,
    *,
    workdir: Path,
    name: str,
    ca_cert: Path,
    private_key: Path,
    node_config: Mapping[str, Any],
    host: str = "127.0.0.1",
    port: int | None = None,
    max_retries: int | None = None,
    max_wait_time: float | None = None,
) -> Process:
    """Start ``flower-supernode`` connecting to the SuperLink over TLS, authenticated by ``private_key``.

    ``node_config`` is what its ClientApps see (``data-path``, ``data-loader``, ...). Its
    Runtime API listens on ``host:port`` (a free loopback port by default). Log:
    ``workdir/supernode-<name>.log``.
    """
    node_dir = workdir / f"supernode-{name}"
    home = node_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    command = [
        _executable("flower-supernode"),
        "--superlink",
        superlink_address,
        "--root-certificates",
        str(ca_cert),
        "--auth-supernode-private-key",
        str(private_key),
        "--node-config",
        _node_config_arg(node_config, node_dir),
        "--host",
        host,
        "--port",
        str(port or free_port(host)),
    ]
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        command += ["--max-wait-time", str(max_wait_time)]
    return Process(f"supernode-{name}", command, workdir / f"supernode-{name}.log", flower_env(home))


# ---------------------------------------------------------------------------------------------
# Apps and runs
# ---------------------------------------------------------------------------------------------


def write_app_dir(
    directory: Path,
    settings: RunSettings,
    *,
    name: str = "foedus-federation",
    version: str = "1.0.0",
) -> Path:
    """Write the Flower app directory for ``flwr run``: a ``pyproject.toml`` only.

    Its components are the ServerApp/ClientApp of the installed ``foedus`` package (the SecAgg+
    pair when ``settings.secagg`` is set) and its ``[tool.flwr.app.config]`` is the run config.
    """
    directory.mkdir(parents=True, exist_ok=True)
    server, client = SECAGG_APP if settings.secagg is not None else MESSAGE_APP
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        f"name = {_toml_value(name)}",
        f"version = {_toml_value(version)}",
        'description = "Foedus federated training of an ops model"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        'publisher = "foedus"',
        "",
        "[tool.flwr.app.components]",
        f"serverapp = {_toml_value(server)}",
        f"clientapp = {_toml_value(client)}",
        "",
        "[tool.flwr.app.config]",
    ]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in settings.to_run_config().items()]
    (directory / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


@dataclass
class RunResult:
    """A finished (or abandoned) federated run.

    ``status`` is Flower's (``finished:completed``, ``finished:failed``, ``finished:stopped``) or
    ``timeout``. ``bytes_sent`` / ``bytes_received`` add up the rounds' record payloads;
    ``network`` is the SuperLink's own traffic count for the run (``flwr ls``: inbound, outbound
    and total bytes on the wire between it and the nodes). ``elapsed`` is wall-clock seconds
    from submission to the end.
    """

    run_id: int
    status: str
    rounds: list[RoundRecord]
    final_weights_path: Path | None
    elapsed: float
    bytes_sent: int = 0
    bytes_received: int = 0
    network: dict[str, int] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=dict)
    details: str = ""
    result_dir: Path | None = None
    log_path: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether Flower reports the run completed and the ServerApp wrote final weights."""
        return self.status == "finished:completed" and self.final_weights_path is not None

    @property
    def bytes(self) -> int:
        """Record payload bytes exchanged in all rounds, both directions."""
        return self.bytes_sent + self.bytes_received

    def final_weights(self) -> NamedArrays:
        """The final global weights (name -> array)."""
        if self.final_weights_path is None:
            raise RunnerError(
                f"run {self.run_id} has no final weights (status {self.status}: {self.details})"
            )
        with np.load(self.final_weights_path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}


def run(
    app_dir: Path,
    superlink: SuperLinkClient,
    *,
    run_config: Mapping[str, Any] | None = None,
    result_dir: Path | None = None,
    timeout: float = 600.0,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> RunResult:
    """Submit the app with ``flwr run`` and wait for the run to end; collect its results.

    ``on_round`` is called with each round's record as soon as the ServerApp has written it
    (every second the runner looks at the run's ``summary.json``), in order, each round once.

    ``run_config`` overrides keys of the app's ``[tool.flwr.app.config]`` (passed as a TOML file
    to ``--run-config``); ``result_dir`` (default: ``<app_dir>-results/<n>``, beside the app
    directory, which ``flwr run`` bundles) is where the ServerApp writes ``summary.json`` and
    ``final_weights.npz``. A run still going after ``timeout`` seconds is stopped with
    ``flwr stop`` and reported with status ``timeout``.
    """
    app_dir = app_dir.resolve()
    if result_dir is None:
        runs = app_dir.parent / f"{app_dir.name}-results"  # not inside: flwr run bundles the app dir
        runs.mkdir(parents=True, exist_ok=True)
        result_dir = runs / str(sum(1 for _ in runs.iterdir()) + 1)
    elif result_dir.resolve().is_relative_to(app_dir):
        raise ValueError("result_dir must not be inside app_dir (flwr run would bundle the results)")
    result_dir = result_dir.resolve()
    result_dir.mkdir(parents=True, exist_ok=True)
    overrides = {**(run_config or {}), "result-dir": str(result_dir)}
    overrides_file = result_dir / "run-config.toml"
    overrides_file.write_text(
        "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in overrides.items()), encoding="utf-8"
    )
    for stale in ("summary.json", "final_weights.npz"):
        (result_dir / stale).unlink(missing_ok=True)
    started = time.monotonic()
    deadline = started + timeout
    answer = superlink.flwr_json("run", str(app_dir), CONNECTION_NAME, "--run-config", str(overrides_file))
    run_id = int(answer["run-id"])
    log_path = result_dir / "serverapp.log"
    info: dict[str, Any] = {}
    with log_path.open("wb") as log:
        # the log stream ends when the run does; then (or if it broke off) ask for the status
        follower = subprocess.Popen(
            [_executable("flwr"), "log", str(run_id), CONNECTION_NAME, "--stream"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=flower_env(superlink.cli_home),
        )
        reported = 0

        def report_rounds() -> None:
            nonlocal reported
            if on_round is None:
                return
            try:
                done = json.loads((result_dir / "summary.json").read_text(encoding="utf-8")).get("rounds", [])
            except (OSError, ValueError):
                return  # not written yet, or caught mid-write: the next look gets it
            for entry in done[reported:]:
                on_round(RoundRecord.from_dict(entry))
            reported = max(reported, len(done))

        try:
            while True:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    follower.wait(max(0.1, min(1.0, deadline - time.monotonic())))
                report_rounds()
                if follower.poll() is not None:
                    info = _run_info(superlink, run_id)
                    if _finished(info) or time.monotonic() >= deadline:
                        break
                    time.sleep(3.0)
                elif time.monotonic() >= deadline:
                    break
            timed_out = not _finished(info)
            if timed_out:
                superlink.flwr("stop", str(run_id), CONNECTION_NAME, check=False)
                info = _run_info(superlink, run_id, attempts=10)
            report_rounds()
        finally:
            if follower.poll() is None:
                follower.terminate()
                try:
                    follower.wait(5)
                except subprocess.TimeoutExpired:
                    follower.kill()
                    follower.wait(5)
    elapsed = time.monotonic() - started
    status = "timeout" if timed_out or not _finished(info) else str(info["status"])
    details = str(info.get("status-details", ""))
    if timed_out:
        details = f"no result within {timeout:.0f}s, stopped with flwr stop ({info.get('status', '?')})"
    return _collect(run_id, status, "" if details == "N/A" else details, info, result_dir, log_path, elapsed)


def _finished(info: Mapping[str, Any]) -> bool:
    return str(info.get("status", "")).startswith("finished")


def _run_info(superlink: SuperLinkClient, run_id: int, attempts: int = 3) -> dict[str, Any]:
    """``flwr ls --run-id``'s entry for the run, asked a few times until it shows a final status."""
    info: dict[str, Any] = {}
    for attempt in range(attempts):
        runs = superlink.flwr_json("ls", CONNECTION_NAME, "--run-id", str(run_id)).get("runs", [])
        info = dict(runs[0]) if runs else {}
        if _finished(info):
            break
        if attempt + 1 < attempts:
            time.sleep(1.0)
    return info


def _collect(
    run_id: int,
    status: str,
    details: str,
    info: Mapping[str, Any],
    result_dir: Path,
    log_path: Path,
    elapsed: float,
) -> RunResult:
    summary_path = result_dir / "summary.json"
    summary: dict[str, Any] = {}
    if summary_path.exists():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    rounds = [RoundRecord.from_dict(r) for r in summary.get("rounds", [])]
    weights = result_dir / "final_weights.npz"
    traffic = info.get("network-traffic") or {}
    if summary.get("error") and not details:
        details = str(summary["error"])
    return RunResult(
        run_id=run_id,
        status=status,
        rounds=rounds,
        final_weights_path=weights if weights.exists() and summary.get("final_weights") else None,
        elapsed=elapsed,
        bytes_sent=sum(r.bytes_sent for r in rounds),
        bytes_received=sum(r.bytes_received for r in rounds),
        network={
            "inbound": int(traffic.get("inbound-bytes", 0)),
            "outbound": int(traffic.get("outbound-bytes", 0)),
            "total": int(traffic.get("total-bytes", 0)),
        },
        privacy=dict(summary.get("privacy") or {}),
        details=details,
        result_dir=result_dir,
        log_path=log_path,
        summary=summary,
    )


# ---------------------------------------------------------------------------------------------
# A whole federation on one machine
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    """One organisation's SuperNode: its name, its local data and extra node config.

    ``registered=False`` starts a SuperNode whose public key is *not* registered with the
    SuperLink (it must be refused; useful to check authentication).
    """

    name: str
    data_path: Path
    node_config: Mapping[str, Any] = field(default_factory=dict)
    data_loader: str | None = None
    registered: bool = True

    def full_node_config(self) -> dict[str, Any]:
        """The node config its ClientApps see."""
        config: dict[str, Any] = {"data-path": str(Path(self.data_path).resolve())}
        if self.data_loader:
            config["data-loader"] = self.data_loader
        config.update(self.node_config)
        return config


class LocalFederation:
    """A SuperLink and one SuperNode per :class:`NodeSpec` on this machine, TLS and node auth on.

    ``start()`` (or ``with``) creates a development CA, the SuperLink certificate and one key
    pair per node under ``workdir``, starts the SuperLink, registers the keys of the
    ``registered`` nodes and starts every SuperNode. ``run()`` trains once; it can be called
    several times, also from several threads at once (Flower runs the runs side by side).
    ``stop()`` (or leaving the ``with``) ends every process.
    """

    def __init__(
        self,
        workdir: Path,
        nodes: Sequence[NodeSpec],
        *,
        host: str = "127.0.0.1",
        tls: TlsFiles | None = None,
    ) -> None:
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        if not any(n.registered for n in nodes):
            raise ValueError("a federation needs at least one registered node")
        self.workdir = workdir.resolve()
        self.nodes = list(nodes)
        self.host = host
        self.tls = tls
        self.keys: dict[str, NodeKeyPair] = {}
        self.superlink: SuperLink | None = None
        self.supernodes: dict[str, Process] = {}
        self._runs = 0
        self._lock = threading.Lock()

    def start(self, *, ready_timeout: float = 60.0) -> LocalFederation:
        """Create keys and certificates, start the SuperLink and the SuperNodes."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if self.tls is None:
                self.tls = generate_tls(self.workdir / "certs", hosts=(self.host, "localhost"))
            for node in self.nodes:
                self.keys[node.name] = generate_node_keys(self.workdir / "keys", node.name)
            registered = [self.keys[n.name].public_key for n in self.nodes if n.registered]
            self.superlink = start_superlink(
                self.workdir,
                tls=self.tls,
                authorized_keys=registered,
                host=self.host,
                ready_timeout=ready_timeout,
            )
            for node in self.nodes:
                self.supernodes[node.name] = start_supernode(
                    self.superlink.address,
                    workdir=self.workdir,
                    name=node.name,
                    ca_cert=self.tls.ca_cert,
                    private_key=self.keys[node.name].private_key,
                    node_config=node.full_node_config(),
                    host=self.host,
                )
        except BaseException:
            self.stop()
            raise
        return self

    def wait_connected(self, timeout: float = 60.0) -> list[str]:
        """Wait until every registered node has activated (its log shows its node id).

        Returns the names of the registered nodes that did not (empty when all did).
        """
        deadline = time.monotonic() + timeout
        waiting = [n.name for n in self.nodes if n.registered]
        for name in list(waiting):
            left = max(0.1, deadline - time.monotonic())
            if self.supernodes[name].wait_for_log(r"SuperNode ID: \d+", left):
                waiting.remove(name)
        return waiting

    def run(
        self,
        settings: RunSettings,
        *,
        timeout: float = 600.0,
        run_config: Mapping[str, Any] | None = None,
        on_round: Callable[[RoundRecord], None] | None = None,
    ) -> RunResult:
        """Write the app directory for ``settings`` and run it on this federation (see :func:`run`)."""
        if self.superlink is None:
            raise RunnerError("the federation is not started")
        with self._lock:
            self._runs += 1
            number = self._runs
        base = self.workdir / "runs" / f"run-{number}"
        result = run(
            write_app_dir(base / "app", settings),
            self.superlink,
            run_config=run_config,
            result_dir=base / "result",
            timeout=timeout,
            on_round=on_round,
        )
        for process in (self.superlink, *self.supernodes.values()):
            process.remember_descendants()
        return result

    def stop(self) -> None:
        """Stop the SuperNodes, then the SuperLink."""
        with ThreadPoolExecutor(max_workers=max(1, len(self.supernodes))) as pool:
            list(pool.map(lambda p: p.stop(), self.supernodes.values()))
        if self.superlink is not None:
            self.superlink.stop()

    def __enter__(self) -> LocalFederation:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _secagg_config(secagg: bool | SecAggConfig) -> SecAggConfig | None:
    if isinstance(secagg, SecAggConfig):
        return secagg
    return SecAggConfig() if secagg else None


def run_federation(
    task_ref: str,
    nodes: Sequence[NodeSpec],
    *,
    workdir: Path,
    rounds: int = 3,
    strategy: str = "fedavg",
    dp: DpConfig | None = None,
    secagg: bool | SecAggConfig = False,
    task_options: Mapping[str, Any] | None = None,
    local_epochs: int = 1,
    proximal_mu: float = 0.0,
    min_nodes: int | None = None,
    evaluate: bool = True,
    timeout: float = 600.0,
) -> RunResult:
    """Start a :class:`LocalFederation`, train ``task_ref`` on it once, stop it; the result.

    ``min_nodes`` (default: every registered node) is how many nodes each round waits for and
    samples at least.
    """
    registered = sum(1 for n in nodes if n.registered)
    secagg_config = _secagg_config(secagg)
    settings = RunSettings(
        task=task_ref,
        task_options=dict(task_options or {}),
        rounds=rounds,
        strategy=strategy,
        local_epochs=local_epochs,
        proximal_mu=proximal_mu,
        min_nodes=min_nodes if min_nodes is not None else registered,
        evaluate=evaluate,
        round_timeout=timeout,
        dp=dp,
        secagg=secagg_config,
    )
    with LocalFederation(workdir, nodes) as federation:
        return federation.run(settings, timeout=timeout)
