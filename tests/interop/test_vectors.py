"""Interop tier: every EIP-3076 conformance vector through a real server and a real gRPC client, in both
strategies, followed by an export -> import into a fresh directory -> export round trip; on each backend: a data
directory, and a PostgreSQL replica on a fresh database of a real private server.

The vectors live in ../shared/interchange-tests (not in this repository); without them these tests skip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar.store import Strategy
from slashing_protection.v1 import interchange_pb2, signing_pb2
from tests.support.requests import attestation_request, block_request
from tests.support.server import Running, running_server
from tests.support.vectors import hex_bytes, load, vector_params


def import_document(
    server: Running, document: bytes, chunk: int = 7919
) -> interchange_pb2.ImportInterchangeResponse:
    requests = (
        interchange_pb2.ImportInterchangeRequest(chunk=document[i : i + chunk])
        for i in range(0, max(len(document), 1), chunk)
    )
    return server.interchange.ImportInterchange(requests)  # type: ignore[no-any-return]


def export_document(server: Running, pubkeys: list[bytes] | None = None) -> bytes:
    stream = server.interchange.ExportInterchange(interchange_pb2.ExportInterchangeRequest(pubkeys=pubkeys or []))
    return b"".join(response.chunk for response in stream)


def expected(attempt: dict[str, Any], strategy: Strategy) -> bool:
    if strategy is Strategy.COMPLETE:
        return bool(attempt.get("should_succeed_complete", attempt["should_succeed"]))
    return bool(attempt["should_succeed"])


def run_case(server: Running, case: dict[str, Any], strategy: Strategy) -> None:
    root = hex_bytes(case["genesis_validators_root"])
    for step_index, step in enumerate(case["steps"]):
        document = json.dumps(step["interchange"]).encode()
        try:
            response = import_document(server, document)
            imported = True
        except grpc.RpcError as error:
            assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), error
            imported = False
            response = None
        if step["contains_slashable_data"] and not imported:
            return  # allowed to refuse slashable data; the rest of the case is then skipped
        assert imported == step["should_succeed"], f"step {step_index}: import succeeded={imported}"
        if response is not None:
            assert response.validators == len({v["pubkey"] for v in step["interchange"]["data"]})
        for index, block in enumerate(step["blocks"]):
            decision = server.signing.CheckAndRecordBlock(
                block_request(
                    hex_bytes(block["pubkey"]),
                    int(block["slot"]),
                    hex_bytes(block.get("signing_root", "0x" + "00" * 32)),
                    root,
                )
            ).decision
            allowed = decision.verdict == signing_pb2.VERDICT_ALLOWED
            assert allowed == expected(block, strategy), (
                f"step {step_index} block {index} slot {block['slot']}: {decision.message}"
            )
        for index, attestation in enumerate(step["attestations"]):
            decision = server.signing.CheckAndRecordAttestation(
                attestation_request(
                    hex_bytes(attestation["pubkey"]),
                    int(attestation["source_epoch"]),
                    int(attestation["target_epoch"]),
                    hex_bytes(attestation.get("signing_root", "0x" + "00" * 32)),
                    root,
                )
            ).decision
            allowed = decision.verdict == signing_pb2.VERDICT_ALLOWED
            assert allowed == expected(attestation, strategy), (
                f"step {step_index} attestation {index} "
                f"({attestation['source_epoch']}, {attestation['target_epoch']}): {decision.message}"
            )


def fresh_database(backend: str, request: pytest.FixtureRequest, tmp_path: Path, name: str) -> dict[str, Any]:
    """running_server's arguments for a fresh database of `backend`."""
    if backend == "local":
        return {"data_dir": tmp_path / name}
    server = request.getfixturevalue("postgres_server")
    database = server.acquire_database()
    request.addfinalizer(lambda: server.release_database(database))
    return {"data_dir": None, "database_url": server.url(database)}


@pytest.mark.parametrize("backend", ["local", "postgres"])
@pytest.mark.parametrize("strategy", [Strategy.COMPLETE, Strategy.MINIMAL], ids=lambda s: s.value)
@pytest.mark.parametrize("vector", vector_params())
def test_vector_through_real_server(
    vector: Path, strategy: Strategy, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    case = load(vector)
    root = hex_bytes(case["genesis_validators_root"])
    with running_server(
        genesis_validators_root=root, strategy=strategy, **fresh_database(backend, request, tmp_path, "db")
    ) as server:
        run_case(server, case, strategy)
        first_export = export_document(server)
    # Round trip: what we export, a fresh database imports and exports again identically.
    with running_server(
        genesis_validators_root=root,
        strategy=Strategy.COMPLETE,
        **fresh_database(backend, request, tmp_path, "fresh"),
    ) as fresh:
        import_document(fresh, first_export)
        assert export_document(fresh) == first_export
    exported = json.loads(first_export)
    assert exported["metadata"] == {
        "interchange_format_version": "5",
        "genesis_validators_root": "0x" + root.hex(),
    }
