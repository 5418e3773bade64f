"""The lifecycle shared by the baseline servers: bind, announce, serve health, drain on SIGTERM or SIGINT.

A baseline server prints ``serving on HOST:PORT`` on stdout once it is bound and its health service says
SERVING, which is the line the harness waits for (the sidecar logs the same words on stderr).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from slashing_protection.v1 import signing_pb2

SIGNING_SERVICE = signing_pb2.DESCRIPTOR.services_by_name["SlashingProtectionService"].full_name


async def serve_until_signalled(
    listen: str,
    register: Callable[[grpc.aio.Server], list[str]],
    *,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    grace_s: float = 2.0,
) -> None:
    """Serves the services that ``register`` adds (returning their full names) until SIGTERM or SIGINT."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    names = register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME, "grpc.health.v1.Health"], server)
    port = server.add_insecure_port(listen)
    await server.start()
    for service in ("", *names):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    host = listen.rsplit(":", 1)[0]
    print(f"serving on {host}:{port}", flush=True)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_s)
    if on_stop is not None:
        await on_stop()
