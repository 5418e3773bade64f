"""Health and reflection: NOT_SERVING until recovery, SERVING after, NOT_SERVING when the log cannot be made
durable and from the start of shutdown; signing answers UNAVAILABLE whenever the server is not ready."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from slashing_protection.v1 import admin_pb2, interchange_pb2, signing_pb2
from tests.service.helpers import (
    ROOT,
    DurableImageFileOps,
    assert_decision,
    register,
    rpc_error,
    sign_block,
    summary,
)
from tests.support.keys import pubkey, signing_root
from tests.support.requests import attestation_request, batch_request, block_request, register_request
from tests.support.server import Running, running_server

SIGNING_SERVICE = "slashing_protection.v1.SlashingProtectionService"
HEALTH_SERVICES = ("", SIGNING_SERVICE)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
A = signing_root(0xA)


def status(server: Running, service: str) -> int:
    response: health_pb2.HealthCheckResponse = server.health.Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(response.status)


def wait_for_status(server: Running, expected: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while {status(server, s) for s in HEALTH_SERVICES} != {expected}:
        assert time.monotonic() < deadline, (
            f"health never became {health_pb2.HealthCheckResponse.ServingStatus.Name(expected)}"
        )
        time.sleep(0.02)


def signing_calls(server: Running) -> list[Callable[[], grpc.RpcError]]:
    key = pubkey(1)
    return [
        lambda: rpc_error(server.signing.CheckAndRecordBlock, block_request(key, 1, A, ROOT)),
        lambda: rpc_error(server.signing.CheckAndRecordAttestation, attestation_request(key, 1, 2, A, ROOT)),
        lambda: rpc_error(server.signing.CheckAndRecordAttestations, batch_request([(key, 1, 2, A)], ROOT)),
    ]


def test_serving_after_recovery(server: Running) -> None:
    for service in HEALTH_SERVICES:
        assert status(server, service) == SERVING


def test_unknown_service_is_not_found(server: Running) -> None:
    error = rpc_error(server.health.Check, health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_not_serving_and_unavailable_until_recovery(tmp_path: Path) -> None:
    with running_server(tmp_path / "db", ROOT, recover=False) as server:
        for service in HEALTH_SERVICES:
            assert status(server, service) == NOT_SERVING
        for call in signing_calls(server):
            assert call().code() == grpc.StatusCode.UNAVAILABLE
        other_calls: list[tuple[Any, Any]] = [
            (server.admin.RegisterValidators, register_request(pubkey(1))),
            (server.admin.GetValidatorSummary, admin_pb2.GetValidatorSummaryRequest(pubkey=pubkey(1))),
            (server.admin.SaveCheckpoint, admin_pb2.SaveCheckpointRequest()),
            (server.admin.ListDecisions, admin_pb2.ListDecisionsRequest()),
            (server.interchange.ExportInterchange, interchange_pb2.ExportInterchangeRequest()),
            (server.interchange.ImportInterchange, iter([interchange_pb2.ImportInterchangeRequest(chunk=b"{}")])),
        ]
        for call, request in other_calls:
            assert rpc_error(call, request).code() == grpc.StatusCode.UNAVAILABLE

        server.call(server.server.recover())

        for service in HEALTH_SERVICES:
            assert status(server, service) == SERVING
        register(server, pubkey(1))
        # Nothing was recorded while not ready: the first block at slot 1 is new.
        assert_decision(sign_block(server, pubkey(1), 1, A), signing_pb2.REASON_ALLOWED_NEW)


def test_not_serving_from_the_start_of_shutdown(server: Running) -> None:
    """A Watch open before shutdown sees SERVING, then NOT_SERVING, before its stream ends."""
    seen: dict[str, list[Any]] = {service: [] for service in HEALTH_SERVICES}
    streams = {
        service: server.health.Watch(health_pb2.HealthCheckRequest(service=service)) for service in HEALTH_SERVICES
    }

    def follow(service: str) -> None:
        try:
            for response in streams[service]:
                seen[service].append(response.status)
        except grpc.RpcError as error:
            seen[service].append(error.code())

    followers = [threading.Thread(target=follow, args=(service,)) for service in HEALTH_SERVICES]
    for follower in followers:
        follower.start()
    deadline = time.monotonic() + 5
    while not all(seen.values()) and time.monotonic() < deadline:
        time.sleep(0.01)

    server.call(server.server.stop(grace=0.5))

    for follower in followers:
        follower.join(10)
    for service in HEALTH_SERVICES:
        assert seen[service][:2] == [SERVING, NOT_SERVING], (service, seen[service])
    # Stopped: a signing call cannot be answered OK.
    for call in signing_calls(server):
        assert call().code() == grpc.StatusCode.UNAVAILABLE


def test_not_serving_while_the_log_cannot_be_made_durable(tmp_path: Path) -> None:
    """fsync fails: the call that needed it is refused UNAVAILABLE (never ALLOWED), health goes NOT_SERVING and
    every signing call is UNAVAILABLE; once the disk heals the log is rewritten and the server serves again."""
    fileops = DurableImageFileOps()
    key = pubkey(1)
    with running_server(tmp_path / "db", ROOT, fileops=fileops) as server:
        register(server, key)
        fileops.fail_syncs = True

        error = rpc_error(server.signing.CheckAndRecordBlock, block_request(key, 10, A, ROOT))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        wait_for_status(server, NOT_SERVING)
        for call in signing_calls(server):
            assert call().code() == grpc.StatusCode.UNAVAILABLE

        fileops.fail_syncs = False
        wait_for_status(server, SERVING)
        # The refused call's record was rewritten durably, so it still refuses a conflicting block (safe side).
        assert_decision(sign_block(server, key, 10, signing_root(0xB)), signing_pb2.REASON_DOUBLE_PROPOSAL)
        assert summary(server, key).block_count == 1


def test_reflection_lists_every_service(server: Running) -> None:
    database = ProtoReflectionDescriptorDatabase(server.channel)
    services = set(database.get_services())
    assert {
        SIGNING_SERVICE,
        "slashing_protection.v1.InterchangeService",
        "slashing_protection.v1.AdminService",
        "grpc.health.v1.Health",
    } <= services
    described = database.FindFileContainingSymbol(SIGNING_SERVICE)
    assert described.package == "slashing_protection.v1"
    assert {service.name for service in described.service} == {"SlashingProtectionService"}
