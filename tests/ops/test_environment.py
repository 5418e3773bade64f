"""The production options of `serve` read from SLASHING_SIDECAR_* variables, as the systemd unit and the
Kubernetes manifest of the operations guide configure them."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from tests.ops.support import ServeProcess, http_get, insecure_client, watches

pytestmark = pytest.mark.timeout(60)


def test_production_options_from_the_environment(tmp_path: Path) -> None:
    env = {
        "SLASHING_SIDECAR_METRICS_LISTEN": "127.0.0.1:0",
        "SLASHING_SIDECAR_LOG_FORMAT": "json",
        "SLASHING_SIDECAR_MAX_CONCURRENT_RPCS": "1",
        "SLASHING_SIDECAR_SHUTDOWN_GRACE": "7",
    }
    server = ServeProcess(tmp_path / "data", env=env)
    try:
        server.start()
        assert http_get(server.metrics_port(), "/readyz")[0] == 200
        with insecure_client(server.address) as client:
            assert client.health_status() == "SERVING"
            with watches(server.address, 1), pytest.raises(grpc.RpcError) as caught:
                client.health_status()
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert server.stop() == 0
    finally:
        server.kill()
    records = [json.loads(line) for line in server.lines]
    assert any(r["message"].startswith("shutting down") and "grace 7.0 s" in r["message"] for r in records)
