"""Decisions come back as typed values from a real server, through both flavours."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.client import (
    AsyncSidecarClient,
    Reason,
    SidecarClient,
    SidecarRefusedRequestError,
    SidecarWrongNetworkError,
    SigningDecision,
)
from tests.service.helpers import OTHER_ROOT, ROOT
from tests.support.keys import pubkey, signing_root
from tests.support.server import Running


def test_block_decisions_are_typed(client: SidecarClient) -> None:
    key = pubkey(1)
    client.register([key])
    first = client.check_block(key, 10, signing_root(1))
    assert isinstance(first, SigningDecision)
    assert (first.allowed, first.reason) == (True, Reason.ALLOWED_NEW)
    assert first.sequence > 0 and first.message
    repeat = client.check_block(key, 10, signing_root(1))
    assert (repeat.allowed, repeat.reason) == (True, Reason.ALLOWED_REPEAT)
    double = client.check_block(key, 10, signing_root(2))
    assert (double.allowed, double.reason) == (False, Reason.DOUBLE_PROPOSAL)
    assert double.sequence > repeat.sequence > first.sequence


def test_attestation_decisions_are_typed(client: SidecarClient) -> None:
    key = pubkey(2)
    assert client.check_attestation(key, 1, 2, signing_root(1)).reason is Reason.VALIDATOR_NOT_REGISTERED
    client.register([key])
    assert client.check_attestation(key, 1, 2, signing_root(1)).allowed
    double = client.check_attestation(key, 1, 2, signing_root(9))
    assert (double.allowed, double.reason) == (False, Reason.DOUBLE_VOTE)
    surrounding = client.check_attestation(key, 0, 3, signing_root(3))
    assert (surrounding.allowed, surrounding.reason) == (False, Reason.SURROUNDS_RECORDED_VOTE)
    backwards = client.check_attestation(key, 5, 4, signing_root(4))
    assert backwards.reason is Reason.SOURCE_EPOCH_GREATER_THAN_TARGET_EPOCH and not backwards.allowed


def test_another_network_is_an_error(server: Running) -> None:
    with (
        SidecarClient(server.address, genesis_validators_root=OTHER_ROOT) as other,
        pytest.raises(SidecarWrongNetworkError) as caught,
    ):
        other.check_block(pubkey(3), 1, signing_root(1))
    assert caught.value.code is not None and caught.value.code.name == "FAILED_PRECONDITION"
    assert str(caught.value).startswith(f"server {server.address}: FAILED_PRECONDITION: ")


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ((b"\x01" * 47, 1, signing_root(1)), "pubkey must be 48 bytes, got 47"),
        ((pubkey(4), -1, signing_root(1)), "slot must be an integer"),
        ((pubkey(4), 2**64, signing_root(1)), "slot must be an integer"),
        ((pubkey(4), 1, b"\x00" * 31), "signing_root must be 32 bytes"),
    ],
)
def test_malformed_requests_are_refused_before_sending(
    client: SidecarClient, server: Running, arguments: tuple[bytes, int, bytes], complaint: str
) -> None:
    with pytest.raises(SidecarRefusedRequestError, match=complaint) as caught:
        client.check_block(*arguments)
    assert caught.value.code is None


def test_signing_needs_the_genesis_validators_root(server: Running) -> None:
    with SidecarClient(server.address) as rootless:
        with pytest.raises(SidecarRefusedRequestError, match="genesis_validators_root"):
            rootless.check_block(pubkey(5), 1, signing_root(1))
        assert rootless.register([pubkey(5)]).registered == 1  # admin calls need no root


def test_async_client_decides_the_same(server: Running) -> None:
    key = pubkey(6)

    async def scenario() -> list[SigningDecision]:
        async with AsyncSidecarClient(server.address, genesis_validators_root=ROOT) as sidecar:
            await sidecar.register([key])
            return [
                await sidecar.check_block(key, 7, signing_root(1)),
                await sidecar.check_block(key, 7, signing_root(1)),
                await sidecar.check_attestation(key, 2, 3, signing_root(2)),
                await sidecar.check_attestation(key, 2, 3, signing_root(3)),
            ]

    reasons = [(decision.allowed, decision.reason) for decision in asyncio.run(scenario())]
    assert reasons == [
        (True, Reason.ALLOWED_NEW),
        (True, Reason.ALLOWED_REPEAT),
        (True, Reason.ALLOWED_NEW),
        (False, Reason.DOUBLE_VOTE),
    ]
