"""`--max-concurrent-rpcs N` on a real `serve` process: the call beyond N in flight gets RESOURCE_EXHAUSTED, and
the probes still answer, so an overloaded sidecar is reported as overloaded, not as dead.

Import streams that send one chunk and wait are the calls held in flight (`held_calls`); health checks and
watches are not counted at all.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from slashing_protection.v1 import admin_pb2, interchange_pb2, signing_pb2
from tests.ops.support import SERVE_OPTIONS, Client, held_calls, http_get, insecure_client, watches
from tests.support.keys import ZERO_ROOT_HEX, pubkey, signing_root
from tests.support.processes import serve_command, serving
from tests.support.server import running_server

pytestmark = pytest.mark.timeout(60)

LIMIT = 3


def block_after_release(client: Client, key: bytes, slot: int) -> signing_pb2.SigningDecision:
    """The server may take a moment to see a cancelled call end: retry while it still says RESOURCE_EXHAUSTED."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return client.block(key, slot, signing_root(slot))
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_calls_beyond_the_maximum_are_exhausted_while_probes_still_answer(tmp_path: Path) -> None:
    options = ("--max-concurrent-rpcs", str(LIMIT), "--metrics-listen", "127.0.0.1:0")
    with serving(
        serve_command(*SERVE_OPTIONS, *options, data_dir=tmp_path / "data"), tmp_path / "serve.log"
    ) as server:
        metrics_port = server.metrics_port()
        key = pubkey(60)
        with insecure_client(server.address) as client:
            client.register(key)
            # Health watches are not counted: more of them than the limit leave room for a signing call.
            with watches(server.address, LIMIT + 2):
                assert client.block(key, 1, signing_root(1)).reason == signing_pb2.REASON_ALLOWED_NEW
            with held_calls(server.address, LIMIT):
                # Signers are refused before anything is decided, several at once...
                with ThreadPoolExecutor(max_workers=4) as pool:
                    outcomes = list(
                        pool.map(lambda _: _code_of(lambda: client.block(key, 2, signing_root(2))), range(8))
                    )
                assert outcomes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 8
                # ...while every probe says the process is alive and ready.
                for service in ("", "slashing_protection.v1.SlashingProtectionService"):
                    response = client.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                    assert response.status == health_pb2.HealthCheckResponse.SERVING
                with watches(server.address, 2):
                    pass  # a watch delivers its first status (SERVING) under saturation too
                assert http_get(metrics_port, "/healthz")[0] == 200
                assert http_get(metrics_port, "/readyz")[0] == 200
            # Once capacity is back, the same block is new, not a repeat: nothing was recorded for the refusals.
            decision = block_after_release(client, key, 2)
            assert decision.reason == signing_pb2.REASON_ALLOWED_NEW


def _code_of(call) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return None


def test_every_kind_of_call_works_under_a_limit_of_one_and_gives_its_slot_back(tmp_path: Path) -> None:
    """Unary, server-streaming, client-streaming and bidirectional calls through the limit: each gives its slot
    back when it ends (normally or cut short), or the next call would be refused."""
    key = pubkey(61)
    document = json.dumps(
        {
            "metadata": {"interchange_format_version": "5", "genesis_validators_root": ZERO_ROOT_HEX},
            "data": [
                {"pubkey": "0x" + pubkey(62).hex(), "signed_blocks": [{"slot": "5"}], "signed_attestations": []}
            ],
        }
    ).encode()
    with running_server(tmp_path / "data", max_concurrent_rpcs=1) as running:
        client = Client(running.channel)
        reflection = reflection_pb2_grpc.ServerReflectionStub(running.channel)
        for slot in range(1, 4):
            client.register(key)
            assert client.block(key, slot, signing_root(slot)).reason == signing_pb2.REASON_ALLOWED_NEW
            exported = b"".join(
                r.chunk
                for r in running.interchange.ExportInterchange(
                    interchange_pb2.ExportInterchangeRequest(), timeout=10
                )
            )
            assert json.loads(exported)["data"]
            running.interchange.ImportInterchange(
                iter([interchange_pb2.ImportInterchangeRequest(chunk=document)]), timeout=10
            )
            with pytest.raises(grpc.RpcError) as refused:  # a call that fails gives its slot back too
                running.interchange.ImportInterchange(
                    iter([interchange_pb2.ImportInterchangeRequest(chunk=b"[")]), timeout=10
                )
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert list(running.admin.ListDecisions(admin_pb2.ListDecisionsRequest(pubkey=key), timeout=10))
            (answer,) = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
            assert answer.list_services_response.service
            stream = running.admin.ListDecisions(admin_pb2.ListDecisionsRequest(), timeout=10)
            next(stream)
            stream.cancel()  # cut short by the client
            block_after_release(client, key, 100 + slot)
