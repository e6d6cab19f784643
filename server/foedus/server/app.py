"""Builds and runs the control plane: `build_server(config)` returns it, only `main()` blocks."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from foedus.client_sdk.decoding import RequestDecoding
from foedus.client_sdk.observability import Observability, ObservabilitySettings
from foedus.client_sdk.registrar import WrappingRegistrar
from foedus.client_sdk.targets import listen_on
from foedus.client_sdk.tracing import ServerTracing
from foedus.server.artifacts.database import DatabaseBlobStore
from foedus.server.artifacts.local import LocalBlobStore
from foedus.server.config import ServerConfig
from foedus.server.deployments.feed import BROADCAST, ChangeFeed
from foedus.server.deployments.service import DeploymentService
from foedus.server.federation.service import FederationService
from foedus.server.interceptors import SERVICE_MODULES, CallGuard
from foedus.server.monitoring.incidents import IncidentService, IncidentSettings
from foedus.server.monitoring.performance import PerformanceService
from foedus.server.monitoring.service import MonitoringService
from foedus.server.monitoring.webhooks import WebhookDispatcher
from foedus.server.observability import ControlPlaneMetrics
from foedus.server.registry.gates import GateConfig
from foedus.server.registry.service import RegistryLimits, RegistryService
from foedus.server.rollouts.controller import RolloutController
from foedus.server.rollouts.service import RolloutService
from foedus.server.servicers.admin import AdminServicer, KeyServicer
from foedus.server.servicers.agent import AgentServicer
from foedus.server.servicers.base import BlockingRunner
from foedus.server.servicers.deployment import DeploymentServicer
from foedus.server.servicers.federation import FederationServicer
from foedus.server.servicers.monitoring import ALERTS_FEED_KEY, MonitoringServicer
from foedus.server.servicers.performance import PerformanceServicer
from foedus.server.servicers.registry import RegistryServicer
from foedus.server.servicers.rollout import RolloutServicer, feed_key
from foedus.server.store.sql import SqlStore
from foedus.server.tenancy.limits import Membership, RateLimiter
from foedus.server.tenancy.service import ADMIN_KEY_FILE, TenancyService
from foedus.v1 import (
    admin_pb2_grpc,
    agent_pb2_grpc,
    deployment_pb2_grpc,
    federation_pb2_grpc,
    monitoring_pb2_grpc,
    performance_pb2_grpc,
    registry_pb2_grpc,
    rollout_pb2_grpc,
)

log = logging.getLogger("foedus.server")


@dataclass
class FoedusServer:
    """A built control plane. `await start()`, then `await stop()`; `port` is the bound port."""

    config: ServerConfig
    grpc_server: grpc.aio.Server
    store: SqlStore
    executor: ThreadPoolExecutor
    tenancy: TenancyService
    registry: RegistryService
    health: health_aio.HealthServicer
    port: int
    admin_key_id: str | None
    controller: RolloutController
    feed: ChangeFeed
    incidents: IncidentService | None = None
    """Groups alerts into incidents; its sweep runs in the background."""
    webhooks: WebhookDispatcher | None = None
    performance: PerformanceService | None = None
    """Holds the delayed labels; its sweep deletes those past the retention."""
    background: bool = True
    """Run background work (garbage collection, label retention); with several workers only the
    first one does."""
    health_server: grpc.aio.Server | None = None
    """The plaintext listener that serves only grpc.health.v1 (config.health_listen)."""
    health_port: int = 0
    observability: Observability | None = None
    """The OpenTelemetry providers the server reports with; None when OpenTelemetry is off."""
    membership: Membership | None = None
    """This process's row among the server processes that share the rate limits; None when no
    rate limit is set."""
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def target(self) -> str:
        host = self.config.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    @property
    def admin_key_path(self) -> Path:
        return _admin_key_path(self.config)

    async def start(self) -> None:
        membership = self.membership
        if membership is not None:
            # Counted before serving, so that the first calls already get this process's share.
            await asyncio.get_running_loop().run_in_executor(self.executor, membership.renew)
            self._repeat(self.config.member_heartbeat_s, membership.renew, "the member renewal")
        await self.grpc_server.start()
        if self.health_server is not None:
            await self.health_server.start()
        for service in _service_names():
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        if self.background:
            self._repeat(self.config.gc_interval_s, self._collect_garbage, "garbage collection")
            performance = self.performance
            if performance is not None and self.config.label_retention_days > 0:
                self._repeat(
                    self.config.label_sweep_s, lambda: self._expire_labels(performance), "label retention"
                )
        # Every process runs the controller; a lease in the store lets one of them tick at a time.
        self._tasks.append(asyncio.create_task(self.controller.run()))
        if self.incidents is not None:
            # Every process sweeps: grouping and resolving are safe to run concurrently.
            self._repeat(self.incidents.settings.sweep_s, self.incidents.sweep, "the incident sweep")
        log.info("foedus control plane serving on %s (store: %s)", self.target, self.store.dialect)

    async def stop(self, grace: float | None = 5.0) -> None:
        for task in self._tasks:
            task.cancel()
        await self.health.enter_graceful_shutdown()
        await self.grpc_server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(None)
        self.feed.close()
        if self.webhooks is not None:
            self.webhooks.close()
        self.executor.shutdown(wait=True)
        if self.membership is not None:
            try:  # the others take over this process's share at their next renewal
                self.membership.leave()
            except Exception:
                log.exception("leaving the server members failed")
        self.store.close()
        if self.observability is not None:
            self.observability.shutdown()

    @property
    def metrics_port(self) -> int:
        """Bound port of the Prometheus endpoint (config.metrics_listen); 0 when there is none."""
        return self.observability.metrics_port if self.observability is not None else 0

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()

    def _repeat(self, interval_s: float, work: Callable[[], object], what: str) -> None:
        """Runs `work` in the store's threads every `interval_s` until the server stops."""

        async def loop() -> None:
            running = asyncio.get_running_loop()
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await running.run_in_executor(self.executor, work)
                except Exception:
                    log.exception("%s failed", what)

        self._tasks.append(asyncio.create_task(loop()))

    def _collect_garbage(self) -> None:
        removed = self.registry.collect_garbage(self.config.gc_grace_s)
        if removed:
            log.info("garbage collection removed %d unreferenced artifact file(s)", removed)

    def _expire_labels(self, performance: PerformanceService) -> None:
        removed = performance.expire_labels()
        if removed:
            log.info(
                "label retention deleted %d label(s) older than %g days",
                removed,
                self.config.label_retention_days,
            )


def _service_names() -> list[str]:
    names = [s.full_name for m in SERVICE_MODULES for s in m.DESCRIPTOR.services_by_name.values()]
    return [*names, health.SERVICE_NAME, reflection.SERVICE_NAME]


def _make_data_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise OSError(f"the data directory {path} is a file, not a directory")
    path.mkdir(parents=True, exist_ok=True)


def build_server(config: ServerConfig, *, reuse_port: bool = False, background: bool = True) -> FoedusServer:
    """Opens the store (running migrations), bootstraps the admin key and binds the port.

    Call it inside the event loop that will run the server. `reuse_port` lets several worker
    processes bind the same port; `background` runs garbage collection in this process.
    """
    _make_data_dir(config.data_dir)
    store = SqlStore(config.database_url(), pool_size=config.store_threads)
    blobs = (
        DatabaseBlobStore(store, config.data_dir / "artifacts")
        if config.artifact_store == "database"
        else LocalBlobStore(config.data_dir / "artifacts")
    )
    blobs.remove_stale_uploads()
    tenancy = TenancyService(store, cache_ttl_s=config.auth_cache_s)
    feed = ChangeFeed(asyncio.get_running_loop(), poll_s=config.watch_poll_s)
    if store.dialect == "postgresql":
        # Replicas on one database hear of each other's changes at once (LISTEN/NOTIFY).
        feed.connect_postgres(config.database_url())
    feed.subscribe("principals", tenancy.forget_cached)
    tenancy.on_keys_changed = lambda: feed.notify(BROADCAST, "principals")
    registry = RegistryService(
        store,
        blobs,
        gate_config=GateConfig(latency_runs=config.latency_runs),
        limits=RegistryLimits(
            max_artifact_bytes=config.max_artifact_bytes,
            tenant_max_models=config.tenant_max_models,
            tenant_max_artifact_bytes=config.tenant_max_artifact_bytes,
        ),
    )
    admin_key_id = tenancy.bootstrap_admin(config.data_dir, config.admin_key())
    executor = ThreadPoolExecutor(max_workers=config.store_threads, thread_name_prefix="foedus-store")
    runner = BlockingRunner(executor, inline_reads=store.dialect == "sqlite")
    try:
        observability = Observability.start(
            ObservabilitySettings("foedus-server", config.otlp_endpoint, config.metrics_listen)
        )
    except OSError:
        feed.close()
        store.close()
        raise
    limiter = (
        RateLimiter(config.tenant_requests_per_s, config.tenant_burst)
        if config.tenant_requests_per_s > 0
        else None
    )
    interceptors: list[grpc.aio.ServerInterceptor] = []  # type: ignore[type-arg]
    metrics = None
    if observability is not None:
        # Tracing is outermost, so that its span covers (and records) what the guard rejects.
        interceptors.append(
            ServerTracing(
                tracer_provider=observability.tracer_provider, meter_provider=observability.meter_provider
            )
        )
        metrics = ControlPlaneMetrics(observability.meter_provider, store)
    server = grpc.aio.server(
        interceptors=interceptors or None,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    # Every method handler is wrapped once, as services are added: requests that do not parse, or
    # hold text PostgreSQL cannot store, are refused before the guard, which sees only messages
    # the services can take.
    # (The registrar offers the two calls that adding a service makes on a server.)
    services = cast(
        grpc.aio.Server,
        WrappingRegistrar(
            server,
            [RequestDecoding(reject_nul_text=True).wrap, CallGuard(tenancy, runner, limiter=limiter).wrap],
        ),
    )
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(tenancy, runner), services)
    admin_pb2_grpc.add_KeyServiceServicer_to_server(KeyServicer(tenancy, runner), services)
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(registry, runner), services)
    deployments = DeploymentService(store, on_change=feed.notify)
    webhooks = WebhookDispatcher()
    incidents = IncidentService(
        store,
        IncidentSettings(
            gap_s=config.alert_group_gap_s, quiet_s=config.alert_quiet_s, sweep_s=config.alert_sweep_s
        ),
        on_change=lambda tenant: feed.notify(tenant, ALERTS_FEED_KEY),
        webhooks=webhooks,
    )
    monitoring = MonitoringService(store, on_alerts=incidents.group)
    # Telemetry points and labels count against one ingest limit per tenant.
    ingest_limiter = (
        RateLimiter(config.tenant_ingest_points_per_s) if config.tenant_ingest_points_per_s > 0 else None
    )
    limiters = [limit for limit in (limiter, ingest_limiter) if limit is not None]
    # The limits hold for the whole control plane: each process enforces its share of them.
    membership = Membership(store, limiters, timeout_s=3 * config.member_heartbeat_s) if limiters else None
    performance = PerformanceService(
        store, retention_s=config.label_retention_days * 86_400, ingest_limiter=ingest_limiter
    )
    deployment_pb2_grpc.add_DeploymentServiceServicer_to_server(
        DeploymentServicer(deployments, runner), services
    )
    agent_pb2_grpc.add_AgentServiceServicer_to_server(
        AgentServicer(
            deployments,
            monitoring,
            feed,
            runner,
            metrics=metrics,
            ingest_limiter=ingest_limiter,
            performance=performance,
        ),
        services,
    )
    performance_pb2_grpc.add_PerformanceServiceServicer_to_server(
        PerformanceServicer(performance, runner), services
    )
    monitoring_pb2_grpc.add_MonitoringServiceServicer_to_server(
        MonitoringServicer(monitoring, incidents, feed, runner), services
    )
    rollouts = RolloutService(store, on_change=feed.notify)
    federation_pb2_grpc.add_FederationServiceServicer_to_server(
        FederationServicer(FederationService(store, rollouts=rollouts), runner), services
    )
    rollout_pb2_grpc.add_RolloutServiceServicer_to_server(RolloutServicer(rollouts, feed, runner), services)
    controller = RolloutController(
        rollouts,
        store,
        executor,
        interval_s=config.rollout_tick_s,
        on_tick=lambda tenant, rollout_id: feed.notify(tenant, feed_key(rollout_id)),
    )
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
    # The asyncio reflection servicer by name: enable_server_reflection picks it only for a server
    # object that is a grpc.aio.Server, which the registrar is not.
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection_aio.ReflectionServicer(_service_names()), services
    )
    if config.tls_cert:
        credentials = grpc.ssl_server_credentials(
            [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
            root_certificates=Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None,
            require_client_auth=bool(config.tls_client_ca),
        )
    else:
        credentials = None
    try:
        port = listen_on(server, config.listen, credentials)
    except OSError:
        feed.close()
        store.close()
        if observability is not None:
            observability.shutdown()
        raise
    health_server, health_port = None, 0
    if config.health_listen:
        # Kubernetes' gRPC probes and a plain grpc_health_probe speak no TLS: they get a listener
        # of their own that serves the health service and nothing else.
        health_server = grpc.aio.server(
            interceptors=[RequestDecoding()], options=[("grpc.so_reuseport", 1 if reuse_port else 0)]
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        try:
            health_port = listen_on(health_server, config.health_listen)
        except OSError:
            feed.close()
            store.close()
            raise
    return FoedusServer(
        config=config,
        grpc_server=server,
        store=store,
        executor=executor,
        tenancy=tenancy,
        registry=registry,
        health=health_servicer,
        port=port,
        admin_key_id=admin_key_id,
        controller=controller,
        feed=feed,
        incidents=incidents,
        webhooks=webhooks,
        performance=performance,
        background=background,
        health_server=health_server,
        health_port=health_port,
        observability=observability,
        membership=membership,
    )


async def serve(
    config: ServerConfig, *, ready: asyncio.Event | None = None, worker: int | None = None
) -> None:
    """Runs the server until SIGINT or SIGTERM, then stops it gracefully.

    `worker` is set in the processes of a multi-process server (see `run_workers`).
    """
    server = build_server(config, reuse_port=worker is not None, background=not worker)
    _log_new_admin_key(config, server.admin_key_id)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    # One write, line end included: print() writes its end separately, and a log line from
    # another thread could land in between, on the same line, when stdout and stderr share a file.
    sys.stdout.write(f"foedus server listening on {server.target}\n")
    sys.stdout.flush()
    await stop.wait()
    log.info("shutting down")
    await server.stop()


def _admin_key_path(config: ServerConfig) -> Path:
    return Path(config.admin_key_file) if config.admin_key_file else config.data_dir / ADMIN_KEY_FILE


def _log_new_admin_key(config: ServerConfig, key_id: str | None) -> None:
    if key_id is None:
        return
    if config.admin_key_file:
        log.warning("first start: registered platform admin key %s of %s", key_id, config.admin_key_file)
    else:
        log.warning(
            "first start: created platform admin key %s and wrote it to %s (mode 0600); it is not shown again",
            key_id,
            _admin_key_path(config),
        )


def _configure_logging(config: ServerConfig) -> None:
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    )


def _worker_main(config: ServerConfig, index: int) -> None:
    _configure_logging(config)
    asyncio.run(serve(config, worker=index))


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host.strip("[]"), 0))
        return int(sock.getsockname()[1])


def run_workers(config: ServerConfig) -> int:
    """Runs `config.workers` server processes on one port (SO_REUSEPORT) and waits for them.

    The parent migrates the database and creates the admin key once, so the workers never race
    for it; then it supervises: SIGINT/SIGTERM stop all workers gracefully, and when one worker
    dies the others are stopped too and the exit code says so (systemd or Kubernetes restart it).
    """
    host, _, port = config.listen.rpartition(":")
    if int(port) == 0:
        config = dataclasses.replace(config, listen=f"{host}:{_free_port(host)}")
    _make_data_dir(config.data_dir)
    store = SqlStore(config.database_url(), pool_size=1)
    try:
        key_id = TenancyService(store).bootstrap_admin(config.data_dir, config.admin_key())
    finally:
        store.close()
    _log_new_admin_key(config, key_id)
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker_main, args=(config, i), name=f"foedus-worker-{i}")
        for i in range(config.workers)
    ]
    for process in workers:
        process.start()
    log.info("started %d worker processes on %s", len(workers), config.listen)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    while any(p.is_alive() for p in workers):
        for process in workers:
            process.join(timeout=0.5)
            if not process.is_alive() and process.exitcode not in (0, None) and not stopping:
                log.error("worker %s exited with %s; stopping the others", process.name, process.exitcode)
                exit_code = 1
                stop(signal.SIGTERM, None)
    return exit_code


def main(config: ServerConfig) -> None:
    """Runs the server in this process, or in `config.workers` processes; blocks until stopped."""
    _configure_logging(config)
    if config.workers > 1:
        sys.exit(run_workers(config))
    asyncio.run(serve(config))
