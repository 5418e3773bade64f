"""The production options of `serve` read from SLASHING_SIDECAR_* variables, as the systemd unit and the
Kubernetes manifest of the operations guide configure them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ops.support import SERVE_OPTIONS, held_calls, http_get, insecure_client
from tests.support.processes import ServerProcess, serve_command

pytestmark = pytest.mark.timeout(60)


def test_production_options_from_the_environment(tmp_path: Path) -> None:
    env = {
        "SLASHING_SIDECAR_METRICS_LISTEN": "127.0.0.1:0",
        "SLASHING_SIDECAR_LOG_FORMAT": "json",
        "SLASHING_SIDECAR_MAX_CONCURRENT_RPCS": "1",
        "SLASHING_SIDECAR_SHUTDOWN_GRACE": "7",
    }
    server = ServerProcess.launch(
        serve_command(*SERVE_OPTIONS, data_dir=tmp_path / "data"), tmp_path / "serve.log", env
    )
    try:
        server.wait_serving()
        assert http_get(server.metrics_port(), "/readyz")[0] == 200
        with insecure_client(server.address) as client:
            assert client.health_status() == "SERVING"
            # One held call saturates a limit of 1 (held_calls waits for RESOURCE_EXHAUSTED); probes still answer.
            with held_calls(server.address, 1):
                assert client.health_status() == "SERVING"
        assert server.stop() == 0
    finally:
        server.ensure_dead()
    records = [json.loads(line) for line in server.lines]
    assert any(r["message"].startswith("shutting down") and "grace 7.0 s" in r["message"] for r in records)
