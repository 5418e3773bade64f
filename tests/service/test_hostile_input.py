"""Hostile input at scale: messages at and over gRPC's size limit, 10,000-item batches of garbage, a deeply nested
import. Each gets its status and a message, and nothing observable changes (the same proof as test_bad_input.py:
export, summaries and audit trail unchanged, and no log record appended).

What test_bad_input.py and tests/interchange already cover is not repeated: invalid UTF-8, duplicate keys,
numbers beyond u64 and nesting in interchange files, and batches one over the cap.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import grpc
import pytest

from sidecar.service import MAX_BATCH_SIZE
from slashing_protection.v1 import interchange_pb2, signing_pb2
from tests.service.helpers import ROOT, rpc_error
from tests.service.test_bad_input import (
    EMPTY,
    KNOWN,
    ROOT_A,
    assert_refused_without_change,
    shared,  # noqa: F401 (the module's server fixture)
)
from tests.support.keys import pubkey, signing_root
from tests.support.requests import AttestationItem, attestation_request, batch_request, block_request
from tests.support.server import Running

GRPC_DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024


def garbage_batch(rng: random.Random, count: int) -> signing_pb2.CheckAndRecordAttestationsRequest:
    """`count` attestations of random bytes and lengths, epochs anywhere in u64: none is well formed."""
    items = []
    for _ in range(count):
        items.append(
            attestation_request(
                rng.randbytes(rng.choice((0, 1, 47, 49, 96))),
                rng.randrange(2**64),
                rng.randrange(2**64),
                rng.randbytes(rng.choice((0, 31, 33, 32))),
                rng.randbytes(rng.choice((0, 31, 33))),
            )
        )
    # Each item names a genesis root of its own: batch_request's one root for all would not do.
    return signing_pb2.CheckAndRecordAttestationsRequest(attestations=items)


@pytest.mark.parametrize("seed", [1, 2])
def test_a_full_batch_of_garbage(shared: Running, seed: int) -> None:  # noqa: F811
    request = garbage_batch(random.Random(seed), MAX_BATCH_SIZE)
    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.signing.CheckAndRecordAttestations, request, timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_a_full_batch_whose_last_item_alone_is_garbage(shared: Running) -> None:  # noqa: F811
    """9,999 well-formed attestations for keys never registered, then one with a 47-byte key: refused whole."""
    items: list[AttestationItem] = [(pubkey(200_000 + index), 1, 2, ROOT_A) for index in range(MAX_BATCH_SIZE - 1)]
    items.append((pubkey(300_000)[:47], 1, 2, ROOT_A))
    request = batch_request(items, ROOT)
    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.signing.CheckAndRecordAttestations, request, timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def padded_block_request(total_size: int) -> signing_pb2.CheckAndRecordBlockRequest:
    """A block request for a registered key whose signing root is padded so the message is `total_size` bytes."""
    request = block_request(KNOWN, 99, b"", ROOT)
    overhead = request.ByteSize()
    length = total_size - overhead
    # The length prefix grows with the length: settle the padding so the message lands exactly on total_size.
    for _ in range(4):
        request.signing_root = b"\x01" * length
        length += total_size - request.ByteSize()
    request.signing_root = b"\x01" * length
    assert request.ByteSize() == total_size
    return request


def test_a_message_at_the_size_limit_is_read_and_refused_for_its_content(shared: Running) -> None:  # noqa: F811
    request = padded_block_request(GRPC_DEFAULT_MAX_RECEIVE)
    error = assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.signing.CheckAndRecordBlock, request, timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "signing_root" in str(error.details())


def test_a_message_over_the_size_limit_is_refused_by_grpc(shared: Running) -> None:  # noqa: F811
    request = padded_block_request(GRPC_DEFAULT_MAX_RECEIVE + 1)
    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.signing.CheckAndRecordBlock, request, timeout=30),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )


def test_an_import_chunk_over_the_size_limit_is_refused(shared: Running) -> None:  # noqa: F811
    def chunks() -> Iterator[interchange_pb2.ImportInterchangeRequest]:
        yield interchange_pb2.ImportInterchangeRequest(chunk=b'{"metadata": {"interchange_format_version": "5", ')
        yield interchange_pb2.ImportInterchangeRequest(chunk=b" " * (GRPC_DEFAULT_MAX_RECEIVE + 16))

    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.interchange.ImportInterchange, chunks(), timeout=30),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )


@pytest.mark.parametrize("opening", [b"[", b'{"a": '], ids=["arrays", "objects"])
def test_an_import_nested_a_million_deep_is_refused(shared: Running, opening: bytes) -> None:  # noqa: F811
    head = b'{"metadata": {"interchange_format_version": "5", "genesis_validators_root": "0x' + ROOT.hex().encode()
    document = head + b'"}, "data": [{"pubkey": ' + opening * 1_000_000

    def chunks() -> Iterator[interchange_pb2.ImportInterchangeRequest]:
        for start in range(0, len(document), 1 << 20):
            yield interchange_pb2.ImportInterchangeRequest(chunk=document[start : start + (1 << 20)])

    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.interchange.ImportInterchange, chunks(), timeout=60),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_the_server_still_answers_after_all_of_it(shared: Running) -> None:  # noqa: F811
    response = shared.signing.CheckAndRecordAttestation(
        attestation_request(EMPTY, 40, 41, signing_root(0xB), ROOT), timeout=10
    )
    assert response.decision.verdict == signing_pb2.VERDICT_ALLOWED
