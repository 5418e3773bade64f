"""A real sidecar server for tests, in this process: bound to 127.0.0.1:0 in a background event loop, driven by
real gRPC stubs. The one in-process launcher; `tests.support.processes` is the one for a server in a child
process."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from sidecar.domain import valid_genesis_validators_root
from sidecar.server import ServeConfig, SidecarServer
from sidecar.store import StoreOptions
from slashing_protection.v1 import admin_pb2_grpc, interchange_pb2_grpc, signing_pb2_grpc
from tests.support.keys import ZERO_ROOT


@dataclass
class Running:
    server: SidecarServer
    port: int
    channel: grpc.Channel
    signing: signing_pb2_grpc.SlashingProtectionServiceStub
    interchange: interchange_pb2_grpc.InterchangeServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    health: health_pb2_grpc.HealthStub
    loop: asyncio.AbstractEventLoop

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, coroutine: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


@contextlib.contextmanager
def running_server(
    data_dir: Path | None, genesis_validators_root: bytes | None = ZERO_ROOT, recover: bool = True, **options: Any
) -> Iterator[Running]:
    """Starts a server in a thread of its own; on exit stops it gracefully (final checkpoint, lock released).
    `options` are ServeConfig's or StoreOptions' fields (strategy=..., fileops=..., database_url=... with
    `data_dir` None for a PostgreSQL replica)."""
    store_fields = {option.name for option in fields(StoreOptions)}
    store = StoreOptions(**{name: value for name, value in options.items() if name in store_fields})
    config = replace(
        ServeConfig(
            data_dir=data_dir,
            genesis_validators_root=None
            if genesis_validators_root is None
            else valid_genesis_validators_root(genesis_validators_root),
            listen="127.0.0.1:0",
            checkpoint_interval=0,
            shutdown_grace=2.0,
            store=store,
        ),
        **{name: value for name, value in options.items() if name not in store_fields},
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-server-loop", daemon=True)
    thread.start()
    server = SidecarServer(config)

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(120)

    try:
        port = run(server.start())
        if recover:
            try:
                run(server.recover())
            except BaseException:
                run(server.stop(grace=0))
                raise
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        try:
            yield Running(
                server=server,
                port=port,
                channel=channel,
                signing=signing_pb2_grpc.SlashingProtectionServiceStub(channel),
                interchange=interchange_pb2_grpc.InterchangeServiceStub(channel),
                admin=admin_pb2_grpc.AdminServiceStub(channel),
                health=health_pb2_grpc.HealthStub(channel),
                loop=loop,
            )
        finally:
            channel.close()
            run(server.stop())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
