"""The Web3Signer-design baseline is a real peer: driven through gRPC against a real PostgreSQL server, it refuses
a double vote, a surround (both ways) and a double block, and allows the honest next vote and a repeat."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks import postgres_server
from benchmarks.common import GENESIS_VALIDATORS_ROOT, ServerProcess, pubkey, python_module_argv
from slashing_protection.v1 import admin_pb2_grpc, signing_pb2, signing_pb2_grpc
from tests.support.requests import attestation_request, block_request, register_request

grpc = pytest.importorskip("grpc")

_V = signing_pb2
KEY = pubkey(7)


@pytest.fixture(scope="module")
def database_url(benchmark_postgres: postgres_server.PostgresServer) -> str:
    return benchmark_postgres.create_database("web3signer_test")


@pytest.fixture(scope="module")
def stubs(database_url: str) -> Iterator[tuple[signing_pb2_grpc.SlashingProtectionServiceStub, object]]:
    argv = python_module_argv(
        "benchmarks.web3signer_peer", "serve", "--database-url", database_url,
        "--genesis-validators-root", "0x" + GENESIS_VALIDATORS_ROOT.hex(), "--listen", "127.0.0.1:0",
    )  # fmt: skip
    server = ServerProcess(argv, name="web3signer peer")
    import asyncio

    asyncio.run(server.start(timeout_s=60))
    channel = grpc.insecure_channel(server.address)
    try:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        admin.RegisterValidators(register_request(KEY), timeout=30)
        yield signing_pb2_grpc.SlashingProtectionServiceStub(channel), server
    finally:
        channel.close()
        status = server.stop()
        assert server.process is not None
        for pipe in (server.process.stdout, server.process.stderr):
            if pipe is not None:
                pipe.close()  # the drain threads have read to EOF; an unclosed pipe is a ResourceWarning
        assert status == 0


def _vote(stub, source: int, target: int, root: bytes) -> signing_pb2.SigningDecision:
    request = attestation_request(KEY, source, target, root, GENESIS_VALIDATORS_ROOT)
    response: signing_pb2.CheckAndRecordAttestationResponse = stub.CheckAndRecordAttestation(request, timeout=30)
    return response.decision


def _block(stub, slot: int, root: bytes) -> signing_pb2.SigningDecision:
    request = block_request(KEY, slot, root, GENESIS_VALIDATORS_ROOT)
    response: signing_pb2.CheckAndRecordBlockResponse = stub.CheckAndRecordBlock(request, timeout=30)
    return response.decision


def test_refuses_slashable_votes_and_allows_the_honest_next_one(stubs) -> None:
    stub, _ = stubs
    assert _vote(stub, 10, 11, b"\x01" * 32).reason == _V.REASON_ALLOWED_NEW
    assert _vote(stub, 10, 11, b"\x01" * 32).reason == _V.REASON_ALLOWED_REPEAT  # the same data again
    double = _vote(stub, 10, 11, b"\x02" * 32)
    assert (double.verdict, double.reason) == (_V.VERDICT_REFUSED, _V.REASON_DOUBLE_VOTE)
    assert _vote(stub, 20, 25, b"\x03" * 32).reason == _V.REASON_ALLOWED_NEW
    surrounds = _vote(stub, 19, 26, b"\x04" * 32)
    assert (surrounds.verdict, surrounds.reason) == (_V.VERDICT_REFUSED, _V.REASON_SURROUNDS_RECORDED_VOTE)
    surrounded = _vote(stub, 21, 24, b"\x05" * 32)
    assert (surrounded.verdict, surrounded.reason) == (_V.VERDICT_REFUSED, _V.REASON_SURROUNDED_BY_RECORDED_VOTE)
    below = _vote(stub, 5, 9, b"\x06" * 32)  # below the low watermark the first vote set
    assert below.verdict == _V.VERDICT_REFUSED
    honest = _vote(stub, 25, 26, b"\x07" * 32)
    assert (honest.verdict, honest.reason) == (_V.VERDICT_ALLOWED, _V.REASON_ALLOWED_NEW)


def test_refuses_a_double_block(stubs) -> None:
    stub, _ = stubs
    assert _block(stub, 100, b"\x11" * 32).reason == _V.REASON_ALLOWED_NEW
    assert _block(stub, 100, b"\x11" * 32).reason == _V.REASON_ALLOWED_REPEAT
    double = _block(stub, 100, b"\x12" * 32)
    assert (double.verdict, double.reason) == (_V.VERDICT_REFUSED, _V.REASON_DOUBLE_PROPOSAL)
    assert _block(stub, 101, b"\x13" * 32).reason == _V.REASON_ALLOWED_NEW


def test_an_unregistered_validator_is_refused(stubs) -> None:
    stub, _ = stubs
    request = attestation_request(pubkey(8), 1, 2, b"\x01" * 32, GENESIS_VALIDATORS_ROOT)
    assert (
        stub.CheckAndRecordAttestation(request, timeout=30).decision.reason == _V.REASON_VALIDATOR_NOT_REGISTERED
    )
