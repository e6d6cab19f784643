"""The server's configuration: one typed model, read from a TOML file, the environment and flags.

Precedence: flags > environment (FOEDUS_<FIELD>, e.g. FOEDUS_DATA_DIR) > file > defaults.
Unknown keys in the file are rejected, so a typo does not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from foedus.client_sdk.apikeys import check_key


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


SECONDS_FIELDS = (
    "alert_group_gap_s",
    "alert_quiet_s",
    "alert_sweep_s",
    "label_sweep_s",
    "member_heartbeat_s",
)
"""ServerConfig fields that must be a positive, finite number of seconds."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    data_dir: Path = Path("foedus-data")
    """Holds the SQLite database, the artifact store and admin.key."""
    admin_key_file: str = ""
    """File holding the platform admin key, made beforehand with `foedus server admin-key` (a
    Kubernetes Secret, say): on a database without an admin key the server registers this key (its
    hash) instead of creating one, and writes no DATA_DIR/admin.key; replicas then need no shared
    volume. The server only reads the file. When the database has an admin key already it creates
    none; if the file's key is not one of them (or was revoked), it logs a warning and starts with
    the keys it has. A missing or malformed file stops the start. Empty: the first start creates
    the key and writes it to DATA_DIR/admin.key."""
    listen: str = "127.0.0.1:50051"
    """HOST:PORT to serve on; port 0 picks a free port."""
    db: str = ""
    """Database URL; empty means SQLite in data_dir. postgresql://user@host:5432/db for PostgreSQL."""
    artifact_store: str = "local"
    """Where artifacts live: "local" (data_dir/artifacts; replicas must share that directory, e.g.
    one ReadWriteMany volume) or "database" (in the database, chunked; replicas on one PostgreSQL
    then share nothing else, and data_dir/artifacts is only scratch space and a read cache)."""
    tls_cert: str = ""
    """PEM certificate chain of the server; with tls_key, the server speaks TLS only."""
    tls_key: str = ""
    """PEM private key of the server."""
    tls_client_ca: str = ""
    """PEM CA bundle for mutual TLS: when set, every client (agents, SDK, CLI, a load balancer)
    must present a certificate signed by one of these CAs, and the handshake fails without one.
    API keys are still checked on top."""
    health_listen: str = ""
    """HOST:PORT of an extra plaintext listener serving only grpc.health.v1, for probes that speak
    no TLS (Kubernetes gRPC probes, grpc_health_probe without certificates); empty: none."""
    allow_insecure: bool = False
    """Allow plaintext on a non-loopback address (behind a TLS-terminating proxy, say)."""
    max_artifact_bytes: int = 8 * 1024**3
    """Largest artifact a registration may upload."""
    max_message_bytes: int = 8 * 1024 * 1024
    """Largest single gRPC message accepted (artifact chunks are sent well below it)."""
    store_threads: int = 8
    """Threads for blocking store and artifact work."""
    workers: int = 1
    """Server processes sharing the port (SO_REUSEPORT), one event loop each; up to one per core.
    Revoking a key reaches the other processes at once on PostgreSQL, within auth_cache_s on SQLite."""
    gc_interval_s: float = 600.0
    """How often unreferenced artifacts and stale uploads are collected."""
    gc_grace_s: float = 3600.0
    """Minimum age of an unreferenced artifact before it is deleted."""
    latency_runs: int = 50
    """Timed runs of the registration gate's CPU latency profile."""
    rollout_tick_s: float = 5.0
    """How often the rollout controller looks at every active rollout."""
    watch_poll_s: float = 2.0
    """How often watch streams (WatchAssignments, WatchRollout, ...) re-read the store whatever they
    heard: a safety net under the change notifications (in-process, and PostgreSQL NOTIFY between
    replicas), for SQLite worker processes and notifications lost while a database was down."""
    auth_cache_s: float = 5.0
    """How long an authenticated API key is trusted without reading the store again. Revoking a key
    or disabling a tenant clears it at once in the replica that did it and, on PostgreSQL, in all
    the others; SQLite worker processes see it when their cache entry expires."""
    tenant_requests_per_s: float = 0.0
    """Calls per second each tenant's keys may make to the whole control plane; 0: unlimited. Over
    it, calls are refused with RESOURCE_EXHAUSTED and a `retry-after-ms` trailer. The admin is not
    limited. A token bucket per tenant in each server process enforces 1/N of the rate and burst,
    N the live server processes (replicas and workers, see member_heartbeat_s): exact when calls
    are spread evenly over them (round-robin), approximate otherwise."""
    tenant_burst: int = 0
    """Calls a tenant may make at once above the rate, in all; 0: twice the rate."""
    tenant_ingest_points_per_s: float = 0.0
    """Telemetry points per second each tenant's agents and SDK may send (intervals, alerts, metric
    points and series values, and delayed labels, one point each; bursts up to twice the rate);
    0: unlimited. A batch or LogLabels call over it is refused whole with RESOURCE_EXHAUSTED and
    `retry-after-ms`, and agents send their batch again later. Shared among the server processes
    like tenant_requests_per_s."""
    member_heartbeat_s: float = 5.0
    """With rate limits on, how often each server process renews its row in the database's members
    table. The rate limits are divided among the processes renewed within 3 times this; a process
    that dies without leaving stops counting after that long, and one that starts is counted by
    the others at their next renewal."""
    tenant_max_models: int = 0
    """Models each tenant may have; 0: unlimited. Over it, RESOURCE_EXHAUSTED."""
    tenant_max_artifact_bytes: int = 0
    """Bytes of artifacts all of a tenant's versions may hold (archived included); 0: unlimited."""
    alert_group_gap_s: float = 600.0
    """An agent's alert joins its deployment's open incident when it comes at most this long after
    the incident's last alert; otherwise it opens a new incident."""
    alert_quiet_s: float = 600.0
    """An open incident that no alert joined for this long is resolved by the server."""
    alert_sweep_s: float = 5.0
    """How often the server groups stray alerts and resolves quiet incidents."""
    label_retention_days: float = 30.0
    """Delayed labels older than this are deleted from the server (agents pull labels as they come,
    so by then every running agent has joined them); 0: kept forever. An agent that comes back
    after longer continues from the oldest label kept."""
    label_sweep_s: float = 600.0
    """How often labels past label_retention_days are deleted (in batches of 1000 rows, one
    transaction each)."""
    otlp_endpoint: str = ""
    """OpenTelemetry collector (OTLP over gRPC), e.g. http://collector:4317, for traces and metrics;
    empty: OTEL_EXPORTER_OTLP_ENDPOINT when set, else no export. OTEL_SERVICE_NAME names the service
    (default foedus-server)."""
    metrics_listen: str = ""
    """HOST:PORT of a Prometheus scrape endpoint (GET /metrics, text format); empty: none."""
    log_level: str = "INFO"

    def database_url(self) -> str:
        return self.db or f"sqlite:///{self.data_dir / 'foedus.db'}"

    def admin_key(self) -> str | None:
        """The key in admin_key_file, checked to be well-formed; None without the setting."""
        if not self.admin_key_file:
            return None
        try:
            text = Path(self.admin_key_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"admin_key_file: cannot read {self.admin_key_file}: {exc}") from exc
        try:
            check_key(text.strip())
        except ValueError as exc:
            raise ConfigError(f"admin_key_file {self.admin_key_file}: {exc}") from None
        return text.strip()

    def validate(self) -> ServerConfig:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"listen must be HOST:PORT, got {self.listen!r}")
        for name in ("health_listen", "metrics_listen"):
            value = getattr(self, name)
            if value:
                m_host, _, m_port = value.rpartition(":")
                if not m_host or not m_port.isdigit() or int(m_port) > 65535:
                    raise ConfigError(f"{name} must be HOST:PORT, got {value!r}")
        if self.artifact_store not in ("local", "database"):
            raise ConfigError(f"artifact_store must be local or database, got {self.artifact_store!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if not self.tls_cert and not self.allow_insecure and not _is_loopback(host):
            raise ConfigError(
                f"refusing plaintext on non-loopback address {host}: give tls_cert and tls_key, "
                "or allow_insecure (--insecure) when a proxy terminates TLS"
            )
        if self.workers > 1 and self.metrics_listen:
            raise ConfigError("metrics_listen serves one process: with workers > 1 export with otlp_endpoint")
        if self.workers > 1 and int(port) == 0 and not host:
            raise ConfigError("workers > 1 needs a listen address")
        for name in ("rollout_tick_s", "watch_poll_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")
        if not self.auth_cache_s >= 0:
            raise ConfigError("auth_cache_s must be >= 0")
        for name in SECONDS_FIELDS:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number of seconds")
        if not (math.isfinite(self.label_retention_days) and self.label_retention_days >= 0):
            raise ConfigError("label_retention_days must be a number >= 0 (0: kept forever)")
        if not (math.isfinite(self.tenant_requests_per_s) and self.tenant_requests_per_s >= 0):
            raise ConfigError("tenant_requests_per_s must be a number >= 0 (0: unlimited)")
        if not (math.isfinite(self.tenant_ingest_points_per_s) and self.tenant_ingest_points_per_s >= 0):
            raise ConfigError("tenant_ingest_points_per_s must be a number >= 0 (0: unlimited)")
        if self.tenant_burst < 0:
            raise ConfigError("tenant_burst must be >= 0 (0: twice the rate)")
        for name in ("tenant_max_models", "tenant_max_artifact_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0: unlimited)")
        for name in ("max_artifact_bytes", "max_message_bytes", "store_threads", "latency_runs", "workers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        self.admin_key()
        return self


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _coerce(name: str, value: Any, target: Any) -> Any:
    kind = target if isinstance(target, type) else type(target)
    try:
        if kind is bool and isinstance(value, str):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes")
        if kind is Path:
            return Path(value)
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}") from exc


def load_config(
    file: Path | None = None, *, env: dict[str, str] | None = None, **overrides: Any
) -> ServerConfig:
    """Builds the config from a file, the environment and explicit overrides (None = not given)."""
    env = dict(os.environ) if env is None else env
    defaults = ServerConfig()
    known = {f.name: getattr(defaults, f.name) for f in fields(ServerConfig)}
    values: dict[str, Any] = {}
    if file is not None:
        try:
            data = tomllib.loads(file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {file}: {exc}") from exc
        data = data.get("server", data)
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown setting(s) in {file}: {', '.join(unknown)}; known: {', '.join(known)}"
            )
        values.update(data)
    for name in known:
        env_value = env.get(f"FOEDUS_{name.upper()}")
        if env_value is not None:
            values[name] = env_value
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    coerced = {k: _coerce(k, v, known[k]) for k, v in values.items()}
    return dataclasses.replace(defaults, **coerced).validate()
