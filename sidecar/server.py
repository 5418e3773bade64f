"""The server's lifecycle: bind, recover, serve, checkpoint on a schedule, drain and close.

Order of events, and why:

1. The gRPC server starts first with health NOT_SERVING and every signing call answered UNAVAILABLE, so probes
   and clients see "not ready" rather than a refused connection while recovery runs.
2. Recovery (lock, identity, checkpoint, log replay) runs in a worker thread; on success the health service goes
   SERVING. On failure the server stops and `run` raises the error (the CLI prints it as one line).
3. A durability failure of the log flips health to NOT_SERVING and refuses signing until the log heals.
4. Shutdown (SIGTERM/SIGINT or `stop`): NOT_SERVING, stop taking calls, let calls in flight finish within the
   grace period, make the log durable, write a final checkpoint, release the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from sidecar import __version__
from sidecar.authz import AccessPolicy, AuthorizationInterceptor
from sidecar.backend import CheckpointInfo, DatabaseLocation, open_backend
from sidecar.domain import GenesisRoot
from sidecar.errors import ConfigurationError
from sidecar.metrics import Metrics
from sidecar.metrics_http import MetricsHttpServer
from sidecar.overload import concurrency_interceptors
from sidecar.service import AdminServicer, BackendHolder, InterchangeServicer, SigningServicer
from sidecar.store import StoreOptions
from sidecar.vocabulary import describe_high_watermark
from slashing_protection.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    interchange_pb2,
    interchange_pb2_grpc,
    signing_pb2,
    signing_pb2_grpc,
)

__all__ = ["ServeConfig", "SidecarServer", "run"]

log = logging.getLogger("sidecar.server")

SIGNING_SERVICE = signing_pb2.DESCRIPTOR.services_by_name["SlashingProtectionService"].full_name
HEALTH_SERVICES = ("", SIGNING_SERVICE)
# Time between reporting NOT_SERVING and closing the port, within the shutdown grace period.
SHUTDOWN_NOTICE_SECONDS = 0.5


@dataclass(frozen=True)
class ServeConfig:
    # Where the protection database is: a data directory, or a shared PostgreSQL database (exactly one).
    data_dir: Path | None = None
    genesis_validators_root: GenesisRoot | None = None
    listen: str = "127.0.0.1:50051"
    checkpoint_interval: float = 300.0
    # The database's own options (strategy, history window, and the local backend's log and checkpoints).
    store: StoreOptions = field(default_factory=StoreOptions)
    metrics_listen: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Client identities (certificate CN, DNS or URI SAN) allowed per role; both empty: no access policy.
    tls_signer_identities: tuple[str, ...] = ()
    tls_admin_identities: tuple[str, ...] = ()
    insecure_listen: bool = False
    max_concurrent_rpcs: int | None = None
    shutdown_grace: float = 20.0
    database_url: str | None = None
    allow_unsafe_database: bool = False

    @property
    def location(self) -> Path | DatabaseLocation:
        if (self.data_dir is None) == (self.database_url is None):
            raise ConfigurationError("give either --data-dir or --database-url (exactly one)")
        if self.database_url is not None:
            return DatabaseLocation(self.database_url, self.allow_unsafe_database)
        assert self.data_dir is not None
        return self.data_dir

    def describe_location(self) -> str:
        if self.database_url is not None:
            from sidecar.postgres import describe_url

            return describe_url(self.database_url)
        return f"data directory {self.data_dir}"


def _is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen_security(config: ServeConfig) -> None:
    """Plaintext only on loopback, unless the operator says --insecure-listen."""
    if ":" not in config.listen:
        raise ConfigurationError(f"--listen {config.listen!r} must be HOST:PORT")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigurationError("--tls-cert and --tls-key go together")
    if config.tls_client_ca is not None and config.tls_cert is None:
        raise ConfigurationError("--tls-client-ca needs --tls-cert and --tls-key")
    if (config.tls_signer_identities or config.tls_admin_identities) and config.tls_client_ca is None:
        raise ConfigurationError(
            "--tls-signer-identity and --tls-admin-identity need mutual TLS: give --tls-client-ca "
            "(with --tls-cert and --tls-key), so that clients present a certificate naming them"
        )
    if config.tls_cert is None and not _is_loopback(config.listen) and not config.insecure_listen:
        raise ConfigurationError(
            f"refusing to listen in plaintext on {config.listen}, which is not a loopback address: "
            "give --tls-cert/--tls-key, or --insecure-listen if the network is private"
        )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigurationError(f"cannot read {what} {path}: {error.strerror}") from error


class SidecarServer:
    """One sidecar: gRPC server, store, checkpoint schedule and optional metrics endpoint."""

    def __init__(self, config: ServeConfig) -> None:
        check_listen_security(config)
        config.location  # noqa: B018 (raises ConfigurationError unless exactly one is given)
        self.config = config
        self.metrics = Metrics()
        self.holder = BackendHolder()
        self.port = 0
        self._server: aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._metrics_http: MetricsHttpServer | None = None
        self._serving = False
        self._health_update: asyncio.Future[None] | None = None
        self._started_unix = time.time()
        self.metrics.bind_server(config.data_dir, config.checkpoint_interval, serving=lambda: self._serving)

    # ---------------------------------------------------------------- start

    async def start(self) -> int:
        """Binds and starts serving (NOT_SERVING until recovered); returns the bound port."""
        config = self.config
        self._loop = asyncio.get_running_loop()
        policy = AccessPolicy.of(config.tls_signer_identities, config.tls_admin_identities)
        server = aio.server(
            # Authorization first, so that a denied call never takes a concurrency slot. Not gRPC's
            # maximum_concurrent_rpcs, which counts health checks too (see sidecar.overload).
            interceptors=[
                *([AuthorizationInterceptor(policy)] if policy.enforced else []),
                *concurrency_interceptors(config.max_concurrent_rpcs),
            ],
            options=[("grpc.so_reuseport", 0)],
        )
        signing_pb2_grpc.add_SlashingProtectionServiceServicer_to_server(
            SigningServicer(self.holder, self.metrics), server
        )
        interchange_pb2_grpc.add_InterchangeServiceServicer_to_server(
            InterchangeServicer(self.holder, self.metrics), server
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(self.holder, self.save_checkpoint), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        service_names = (
            SIGNING_SERVICE,
            interchange_pb2.DESCRIPTOR.services_by_name["InterchangeService"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(service_names, server)
        for service in HEALTH_SERVICES:
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        if config.tls_cert is not None and config.tls_key is not None:
            client_ca = _read(config.tls_client_ca, "TLS client CA") if config.tls_client_ca else None
            credentials = grpc.ssl_server_credentials(
                [(_read(config.tls_key, "TLS key"), _read(config.tls_cert, "TLS certificate"))],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            port = int(server.add_secure_port(config.listen, credentials))
        else:
            port = int(server.add_insecure_port(config.listen))
        if port == 0:
            raise ConfigurationError(f"cannot listen on {config.listen}")
        await server.start()
        self._server = server
        self.port = port
        if config.metrics_listen:
            self._metrics_http = MetricsHttpServer(
                config.metrics_listen, self.metrics.registry, ready=lambda: self._serving
            )
            self._metrics_http.start()
            metrics_host = config.metrics_listen.rsplit(":", 1)[0]
            log.info("metrics on http://%s:%d/metrics (/healthz, /readyz)", metrics_host, self._metrics_http.port)
        host = config.listen.rsplit(":", 1)[0]
        if config.tls_client_ca is not None:
            access = f"mutual TLS, {policy.describe()}"
        else:
            access = "TLS" if config.tls_cert is not None else "plaintext"
        log.info("serving on %s:%d (%s; not ready until recovery finishes)", host, port, access)
        return port

    async def recover(self) -> None:
        """Opens the backend (recovering it, off the loop); SERVING when done. Raises what recovery raised."""
        config = self.config
        loop = asyncio.get_running_loop()
        options = replace(
            config.store,
            on_health_change=lambda healthy: self._call_soon(loop, healthy),
            on_fsync=self.metrics.observe_fsync,
        )
        backend = await open_backend(config.location, config.genesis_validators_root, options)
        self.holder.backend = backend
        self.holder.accepting = True
        startup = backend.startup
        self.metrics.bind_state(
            lambda: backend.validator_count, lambda: backend.last_checkpoint_unix, self._started_unix
        )
        self.metrics.recovery_seconds.set(startup.seconds)
        self.metrics.replayed_records.set(startup.replayed_records)
        self.metrics.log_healthy.set(1)
        await self._set_serving(True)
        log.info(
            "ready: version %s, %s, genesis validators root 0x%s, strategy %s, %d validators "
            "loaded, checkpoint at sequence %d, %d log records replayed%s, recovery took %.3f s",
            __version__,
            config.describe_location(),
            backend.genesis_validators_root.hex(),
            config.store.strategy.value,
            startup.validators,
            startup.checkpoint_sequence,
            startup.replayed_records,
            " (torn tail repaired)" if startup.repaired_torn_tail else "",
            startup.seconds,
            extra={
                "genesis_validators_root": "0x" + backend.genesis_validators_root.hex(),
                "version": __version__,
                "data_dir": str(config.data_dir) if config.data_dir is not None else None,
                "validators": startup.validators,
                "recovery_seconds": round(startup.seconds, 6),
                "strategy": config.store.strategy.value,
            },
        )
        if startup.high_watermark is not None:
            # Said at every start: a cluster stopped at a watermark for a migration must not look healthy and idle.
            log.warning(
                "%s; `slashing-sidecar watermark remove` lifts it",
                describe_high_watermark(startup.high_watermark),
                extra={"high_watermark": [startup.high_watermark.slot, startup.high_watermark.epoch]},
            )
        if config.checkpoint_interval > 0:
            self._checkpoint_task = asyncio.create_task(self._checkpoint_loop())

    async def _set_serving(self, serving: bool) -> None:
        self._serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in HEALTH_SERVICES:
            await self._health.set(service, status)

    def _call_soon(self, loop: asyncio.AbstractEventLoop, healthy: bool) -> None:
        """From the backend's thread (the log's flusher, the database's watchdog): hand the change to the loop."""
        loop.call_soon_threadsafe(self._on_log_health, healthy)

    def _on_log_health(self, healthy: bool) -> None:
        self.holder.healthy = healthy
        self.metrics.log_healthy.set(1 if healthy else 0)
        if not healthy:
            self.metrics.log_failures.inc()
        # Said in the backend's words: an operator of a shared database looks at the database, not at a log file.
        where = "the database" if self.config.database_url is not None else "the decision log"
        if healthy:
            log.warning("%s makes decisions durable again: serving", where)
        else:
            log.error("%s cannot make decisions durable: refusing every signing request until it recovers", where)
        if self.holder.accepting:
            self._health_update = asyncio.ensure_future(self._set_serving(healthy))

    @property
    def metrics_port(self) -> int | None:
        """The bound metrics port (useful with --metrics-listen HOST:0), or None when metrics are off."""
        return self._metrics_http.port if self._metrics_http is not None else None

    # ---------------------------------------------------------------- checkpoints

    async def save_checkpoint(self) -> CheckpointInfo:
        """Takes a checkpoint now, measured and logged (scheduled, or asked for over gRPC)."""
        info = await self.holder.require().save_checkpoint()
        self.metrics.checkpoint_seconds.observe(info.seconds)
        log.info(
            "checkpoint %s: %d validators up to sequence %d in %.3f s",
            info.name,
            info.validators,
            info.sequence,
            info.seconds,
        )
        return info

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.checkpoint_interval)
            try:
                await self.save_checkpoint()
            except Exception as error:  # a failed checkpoint is retried next time; the log still holds everything
                self.metrics.checkpoint_failures.inc()
                log.error("scheduled checkpoint failed: %s", error)

    # ---------------------------------------------------------------- stop

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown (see module doc). Safe to call more than once."""
        grace = self.config.shutdown_grace if grace is None else grace
        if self._serving or self.holder.accepting:
            log.info("shutting down: draining calls in flight (grace %.1f s)", grace)
        await self._set_serving(False)
        self.holder.accepting = False
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoint_task
            self._checkpoint_task = None
        if self._server is not None:
            # Calls that arrive now are answered UNAVAILABLE by the servicers (safe to retry elsewhere or later);
            # gRPC itself would cancel those still queued once stop() begins, so give clients that watch health a
            # moment to notice NOT_SERVING first.
            drain = min(SHUTDOWN_NOTICE_SECONDS, grace)
            if drain > 0:
                await asyncio.sleep(drain)
            await self._server.stop(max(grace - drain, 0))
            self._server = None
        backend, self.holder.backend = self.holder.backend, None
        if backend is not None:
            await backend.close()
            log.info("log durable, final checkpoint written, data directory released")
        if self._metrics_http is not None:
            self._metrics_http.stop()
            self._metrics_http = None


async def run(config: ServeConfig, on_ready: Callable[[SidecarServer], Any] | None = None) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully. Raises if recovery fails.

    Further signals during the shutdown are logged and ignored: the drain, the final fsync and the final
    checkpoint finish within the grace period anyway, and a supervisor that must stop the process sooner uses
    SIGKILL, which recovery handles.
    """
    server = SidecarServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            log.warning("received %s while shutting down: still finishing the shutdown", signum.name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        try:
            await server.recover()
        except BaseException:
            await server.stop(grace=0)
            raise
        if on_ready is not None:
            on_ready(server)
        await stop.wait()
        await server.stop()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
