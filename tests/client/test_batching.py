"""`check_attestations`: split into batches of at most the cap, decisions reassembled in order, a key named
twice refused before anything is sent."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.client import (
    MAX_BATCH_SIZE,
    AsyncSidecarClient,
    Attestation,
    Reason,
    SidecarClient,
    SidecarRefusedRequestError,
)
from tests.service.helpers import ROOT
from tests.support.keys import pubkey, signing_root
from tests.support.server import Running


def test_the_client_cap_is_the_servers() -> None:
    from sidecar.service import MAX_BATCH_SIZE as SERVER_CAP

    assert MAX_BATCH_SIZE == SERVER_CAP


def _scenario(count: int) -> tuple[list[Attestation], list[Reason]]:
    """`count` keys, every third one unregistered (refused) and every third plus one a repeat of a vote
    recorded beforehand: a pattern that shows any reordering."""
    items, expected = [], []
    for index in range(count):
        kind = index % 3
        items.append(Attestation(pubkey(100 + index), 1, 2, signing_root(1 if kind == 1 else 2)))
        expected.append([Reason.VALIDATOR_NOT_REGISTERED, Reason.ALLOWED_REPEAT, Reason.ALLOWED_NEW][kind])
    return items, expected


def _prepare(server: Running, items: list[Attestation]) -> None:
    with SidecarClient(server.address, genesis_validators_root=ROOT) as setup:
        setup.register([item.pubkey for index, item in enumerate(items) if index % 3])
        for index, item in enumerate(items):
            if index % 3 == 1:
                assert setup.check_attestation(item.pubkey, 1, 2, signing_root(1)).allowed


def test_batches_are_split_and_decisions_keep_their_order(server: Running) -> None:
    items, expected = _scenario(23)
    _prepare(server, items)
    with SidecarClient(server.address, genesis_validators_root=ROOT, batch_size=5) as client:
        decisions = client.check_attestations(items)
    assert [decision.reason for decision in decisions] == expected
    assert [decision.allowed for decision in decisions] == [reason.allows for reason in expected]
    sequences = [decision.sequence for decision in decisions]
    assert sequences == sorted(sequences), "batches are sent one after the other, in order"


def test_async_batches_keep_order(server: Running) -> None:
    items, expected = _scenario(11)
    _prepare(server, items)

    async def run() -> list[Reason | None]:
        async with AsyncSidecarClient(server.address, genesis_validators_root=ROOT, batch_size=4) as sidecar:
            return [decision.reason for decision in await sidecar.check_attestations(items)]

    assert asyncio.run(run()) == expected


def test_more_than_the_server_cap_is_split(client: SidecarClient) -> None:
    count = MAX_BATCH_SIZE + 3
    items = [Attestation(pubkey(50_000 + index), 1, 2, signing_root(3)) for index in range(count)]
    decisions = client.check_attestations(items, timeout=60)
    assert len(decisions) == count
    assert {decision.reason for decision in decisions} == {Reason.VALIDATOR_NOT_REGISTERED}


def test_a_key_named_twice_is_refused_before_sending(client: SidecarClient) -> None:
    key = pubkey(7)
    client.register([key])
    items = [Attestation(key, 1, 2, signing_root(1)), Attestation(pubkey(8), 1, 2, signing_root(1))]
    items.append(Attestation(key, 2, 3, signing_root(2)))
    with pytest.raises(SidecarRefusedRequestError, match=r"named twice in one batch \(items 0 and 2\)"):
        client.check_attestations(items)
    assert client.summary(key).attestation_count == 0, "nothing was sent"


def test_no_items_no_call(client: SidecarClient) -> None:
    assert client.check_attestations([]) == []


@pytest.mark.parametrize("size", [0, MAX_BATCH_SIZE + 1])
def test_batch_size_beyond_the_cap_is_a_programming_error(server: Running, size: int) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        SidecarClient(server.address, batch_size=size)
