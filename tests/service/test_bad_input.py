"""Malformed requests: each gets its status code, and nothing observable changes.

"Nothing changed" is proven three ways: the export, the watched keys' summaries and the audit trail are
identical before and after, and two probe decisions around the bad call have consecutive log sequence numbers
(so the bad call appended no record at all, not even one the audit trail does not show).

The tests share one server per module (with some history recorded up front): each compares the state right
before and right after its own call, so they do not depend on one another.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar.service import MAX_BATCH_SIZE
from slashing_protection.v1 import admin_pb2, interchange_pb2, signing_pb2
from tests.service.helpers import (
    OTHER_ROOT,
    ROOT,
    Entry,
    fingerprint,
    import_chunks,
    interchange_document,
    interchange_json,
    probe_sequence,
    register,
    rpc_error,
    sign_attestation,
    sign_block,
)
from tests.support.keys import hex0x, pubkey, signing_root
from tests.support.requests import attestation_request, batch_request, block_request, register_request
from tests.support.server import Running, running_server

KNOWN = pubkey(1)  # registered, with a block and an attestation
EMPTY = pubkey(2)  # registered, no history
NEW = pubkey(3)  # never registered; the bad imports below name it
WATCHED = (KNOWN, EMPTY, NEW)
ROOT_A = signing_root(0xA)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_server(tmp_path_factory.mktemp("bad-input") / "db", ROOT) as running:
        register(running, KNOWN, EMPTY)
        sign_block(running, KNOWN, 10, ROOT_A)
        sign_attestation(running, KNOWN, 1, 2, ROOT_A)
        yield running


def assert_refused_without_change(
    server: Running, call: Callable[[], grpc.RpcError], code: grpc.StatusCode, mentions: str = ""
) -> grpc.RpcError:
    first_probe = probe_sequence(server)
    before = fingerprint(server, WATCHED)
    error = call()
    assert error.code() == code, (error.code(), error.details())
    assert error.details(), "a refusal should say why"
    assert mentions in error.details()
    assert fingerprint(server, WATCHED) == before
    assert probe_sequence(server) == first_probe + 1, "the refused call appended a log record"
    return error


def with_length(value: bytes, length: int) -> bytes:
    """`value` cut or padded to `length` bytes: only the length is wrong."""
    return (value + b"\x01" * length)[:length]


FIELD_LENGTHS = [("pubkey", length) for length in (0, 47, 49)] + [
    (field, length) for field in ("signing_root", "genesis_validators_root") for length in (0, 31, 33)
]


def _ids(item: tuple[str, int]) -> str:
    return f"{item[0]}-{item[1]}"


# ------------------------------------------------------------------------------------------------ signing RPCs


@pytest.mark.parametrize("field_length", FIELD_LENGTHS, ids=_ids)
def test_block_with_a_wrong_byte_length(shared: Running, field_length: tuple[str, int]) -> None:
    field, length = field_length
    request = block_request(KNOWN, 11, ROOT_A, ROOT)
    setattr(request, field, with_length(getattr(request, field), length))
    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.signing.CheckAndRecordBlock, request),
        grpc.StatusCode.INVALID_ARGUMENT,
        mentions=field,
    )


@pytest.mark.parametrize("field_length", FIELD_LENGTHS, ids=_ids)
def test_attestation_with_a_wrong_byte_length(shared: Running, field_length: tuple[str, int]) -> None:
    field, length = field_length
    request = attestation_request(KNOWN, 2, 3, ROOT_A, ROOT)
    setattr(request, field, with_length(getattr(request, field), length))
    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.signing.CheckAndRecordAttestation, request),
        grpc.StatusCode.INVALID_ARGUMENT,
        mentions=field,
    )


@pytest.mark.parametrize("field_length", FIELD_LENGTHS, ids=_ids)
def test_batch_item_with_a_wrong_byte_length(shared: Running, field_length: tuple[str, int]) -> None:
    """The bad item comes second: the valid first item must not be recorded either."""
    field, length = field_length
    request = batch_request([(EMPTY, 5, 6, ROOT_A), (KNOWN, 2, 3, ROOT_A)], ROOT)
    bad = request.attestations[1]
    setattr(bad, field, with_length(getattr(bad, field), length))
    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.signing.CheckAndRecordAttestations, request),
        grpc.StatusCode.INVALID_ARGUMENT,
        mentions=field,
    )


def test_wrong_genesis_validators_root_on_a_block(shared: Running) -> None:
    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.signing.CheckAndRecordBlock, block_request(KNOWN, 11, ROOT_A, OTHER_ROOT)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


def test_wrong_genesis_validators_root_on_an_attestation(shared: Running) -> None:
    request = attestation_request(KNOWN, 2, 3, ROOT_A, OTHER_ROOT)
    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.signing.CheckAndRecordAttestation, request),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


def test_wrong_genesis_validators_root_on_a_later_batch_item(shared: Running) -> None:
    request = batch_request([(EMPTY, 5, 6, ROOT_A), (KNOWN, 2, 3, ROOT_A)], ROOT)
    request.attestations[1].genesis_validators_root = OTHER_ROOT
    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.signing.CheckAndRecordAttestations, request),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


def test_wrong_genesis_validators_root_on_an_unregistered_key(shared: Running) -> None:
    """The root is checked before anything is decided, so not even a refusal is recorded."""
    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.signing.CheckAndRecordBlock, block_request(NEW, 11, ROOT_A, OTHER_ROOT)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


def test_empty_batch(shared: Running) -> None:
    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.signing.CheckAndRecordAttestations, batch_request([], ROOT)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_batch_naming_one_pubkey_twice(shared: Running) -> None:
    request = batch_request([(KNOWN, 2, 3, ROOT_A), (EMPTY, 5, 6, ROOT_A), (KNOWN, 3, 4, ROOT_A)], ROOT)
    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.signing.CheckAndRecordAttestations, request),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_batch_over_the_cap(shared: Running) -> None:
    """One item over the cap, every key distinct: only the size is wrong."""
    items = [(pubkey(100_000 + index), 1, 2, ROOT_A) for index in range(MAX_BATCH_SIZE + 1)]
    request = batch_request(items, ROOT)
    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.signing.CheckAndRecordAttestations, request),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


# ------------------------------------------------------------------------------------------------ admin and export


@pytest.mark.parametrize("length", [0, 47, 49])
def test_register_with_a_wrong_length_registers_none_of_the_batch(shared: Running, length: int) -> None:
    request = register_request(NEW, with_length(NEW, length))
    assert_refused_without_change(
        shared, lambda: rpc_error(shared.admin.RegisterValidators, request), grpc.StatusCode.INVALID_ARGUMENT
    )


def test_register_nothing(shared: Running) -> None:
    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.admin.RegisterValidators, register_request()),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


@pytest.mark.parametrize("length", [0, 47, 49])
def test_summary_with_a_wrong_length(shared: Running, length: int) -> None:
    request = admin_pb2.GetValidatorSummaryRequest(pubkey=with_length(KNOWN, length))
    assert_refused_without_change(
        shared, lambda: rpc_error(shared.admin.GetValidatorSummary, request), grpc.StatusCode.INVALID_ARGUMENT
    )


@pytest.mark.parametrize("length", [47, 49])  # an empty pubkey means "every key"
def test_list_decisions_with_a_wrong_length(shared: Running, length: int) -> None:
    request = admin_pb2.ListDecisionsRequest(pubkey=with_length(KNOWN, length))
    assert_refused_without_change(
        shared, lambda: rpc_error(shared.admin.ListDecisions, request), grpc.StatusCode.INVALID_ARGUMENT
    )


@pytest.mark.parametrize("length", [0, 47, 49])
def test_export_with_a_wrong_length(shared: Running, length: int) -> None:
    request = interchange_pb2.ExportInterchangeRequest(pubkeys=[KNOWN, with_length(KNOWN, length)])
    assert_refused_without_change(
        shared, lambda: rpc_error(shared.interchange.ExportInterchange, request), grpc.StatusCode.INVALID_ARGUMENT
    )


# ------------------------------------------------------------------------------------------------ imports


def _document(**changes: Any) -> dict[str, Any]:
    document = interchange_json([Entry(NEW, blocks=((5, ROOT_A),), attestations=((1, 2, ROOT_A),))])
    for path, value in changes.items():
        target: Any = document
        *parents, last = path.split("__")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return document


_DELETE = object()
VALID = json.dumps(_document()).encode()


def _many_then_bad() -> bytes:
    """3000 valid validators and the new key, then one whose slot is not a number: everything before the bad
    record was read (and must not be imported)."""
    document = interchange_json(
        [Entry(pubkey(50_000 + i), blocks=((i, ROOT_A),)) for i in range(3000)]
        + [Entry(NEW, blocks=((1, ROOT_A),)), Entry(pubkey(49_999), blocks=((1, ROOT_A),))]
    )
    document["data"][-1]["signed_blocks"][0]["slot"] = "x"
    return json.dumps(document).encode()


INVALID_DOCUMENTS = {
    "not JSON": b"this is not JSON",
    "a JSON array": b"[]",
    "a JSON string": b'"metadata"',
    "truncated in the middle": VALID[: len(VALID) // 2],
    "truncated by one byte": VALID[:-1],
    "two documents": VALID + VALID,
    "trailing garbage": VALID + b" x",
    "invalid UTF-8": VALID.replace(b"signed_blocks", b"signed_\xffblocks"),
    "metadata missing": json.dumps(_document(metadata=_DELETE)).encode(),
    "data missing": json.dumps(_document(data=_DELETE)).encode(),
    "unknown top-level key": json.dumps({**_document(), "extra": 1}).encode(),
    "data is an object": json.dumps(_document(data={})).encode(),
    "version 4": json.dumps(_document(metadata__interchange_format_version="4")).encode(),
    "version 5 as a number": json.dumps(_document(metadata__interchange_format_version=5)).encode(),
    "root not hex": json.dumps(_document(metadata__genesis_validators_root="0x" + "zz" * 32)).encode(),
    "root 31 bytes": json.dumps(_document(metadata__genesis_validators_root=hex0x(ROOT[:31]))).encode(),
    "pubkey 47 bytes": json.dumps(_document(data__0__pubkey=hex0x(NEW[:47]))).encode(),
    "pubkey without 0x": json.dumps(_document(data__0__pubkey=NEW.hex())).encode(),
    "slot as a number": json.dumps(_document(data__0__signed_blocks__0__slot=5)).encode(),
    "slot negative": json.dumps(_document(data__0__signed_blocks__0__slot="-1")).encode(),
    "slot beyond uint64": json.dumps(_document(data__0__signed_blocks__0__slot=str(2**64))).encode(),
    "signing_root 33 bytes": json.dumps(
        _document(data__0__signed_blocks__0__signing_root=hex0x(ROOT + b"\x00"))
    ).encode(),
    "signing_root null": json.dumps(_document(data__0__signed_blocks__0__signing_root=None)).encode(),
    "target epoch missing": json.dumps(_document(data__0__signed_attestations__0__target_epoch=_DELETE)).encode(),
    "unknown key in a block": json.dumps(_document(data__0__signed_blocks__0__extra="1")).encode(),
    "duplicate key": VALID.replace(b'"slot": "5"', b'"slot": "5", "slot": "6"'),
    "bad record after 3000 good validators": _many_then_bad(),
}


def _chunks(document: bytes, size: int = 4093) -> list[bytes]:
    return [document[i : i + size] for i in range(0, len(document), size)]


@pytest.mark.parametrize("name", sorted(INVALID_DOCUMENTS))
def test_import_of_an_invalid_document(shared: Running, name: str) -> None:
    document = INVALID_DOCUMENTS[name]
    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.interchange.ImportInterchange, _requests(_chunks(document))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def _requests(chunks: list[bytes]) -> Iterator[interchange_pb2.ImportInterchangeRequest]:
    return (interchange_pb2.ImportInterchangeRequest(chunk=chunk) for chunk in chunks)


@pytest.mark.parametrize(
    "chunks", [[], [b""], [b"", b"", b""], [b" \n\t "]], ids=["none", "one", "three", "blank"]
)
def test_import_of_an_empty_stream(shared: Running, chunks: list[bytes]) -> None:
    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.interchange.ImportInterchange, _requests(chunks)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


@pytest.mark.parametrize("metadata_last", [False, True], ids=["metadata-first", "metadata-last"])
def test_import_for_another_network(shared: Running, metadata_last: bool) -> None:
    """FAILED_PRECONDITION whether the root is read before or after the records."""
    document = interchange_json([Entry(NEW, blocks=((5, ROOT_A),))], OTHER_ROOT)
    if metadata_last:
        document = {"data": document["data"], "metadata": document["metadata"]}
    raw = json.dumps(document).encode()
    assert_refused_without_change(
        shared,
        lambda: rpc_error(shared.interchange.ImportInterchange, _requests(_chunks(raw, 64))),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


def test_import_abandoned_by_the_client(shared: Running) -> None:
    """The client stream breaks off after a valid prefix: the import fails and changes nothing."""
    document = interchange_document([Entry(NEW, blocks=((5, ROOT_A),))])
    sent = threading.Event()

    def abandoning() -> Iterator[interchange_pb2.ImportInterchangeRequest]:
        yield interchange_pb2.ImportInterchangeRequest(chunk=document[:-10])
        sent.set()
        raise ConnectionError("client gives up")

    first_probe = probe_sequence(shared)
    before = fingerprint(shared, WATCHED)
    with pytest.raises(grpc.RpcError) as raised:
        shared.interchange.ImportInterchange(abandoning())
    assert raised.value.code() != grpc.StatusCode.OK
    assert sent.is_set()
    assert fingerprint(shared, WATCHED) == before
    assert probe_sequence(shared) == first_probe + 1


def test_a_valid_import_does_change_the_fingerprint(shared: Running, tmp_path: Path) -> None:
    """Control: the fingerprint and the probe do see an import, so the tests above can fail."""
    other = pubkey(4)
    first_probe = probe_sequence(shared)
    before = fingerprint(shared, (*WATCHED, other))
    import_chunks(shared, _chunks(interchange_document([Entry(other, blocks=((5, ROOT_A),))])))
    assert fingerprint(shared, (*WATCHED, other)) != before
    assert probe_sequence(shared) > first_probe + 1


def test_fingerprint_sees_a_registration(shared: Running) -> None:
    """Control: a registration alone (no decision) changes the fingerprint and the probe sequence."""
    other = pubkey(5)
    first_probe = probe_sequence(shared)
    before = fingerprint(shared, (*WATCHED, other))
    register(shared, other)
    assert fingerprint(shared, (*WATCHED, other)) != before
    assert probe_sequence(shared) == first_probe + 2


def test_unknown_pubkey_in_export_is_not_found(shared: Running) -> None:
    request = interchange_pb2.ExportInterchangeRequest(pubkeys=[KNOWN, pubkey(999)])
    assert_refused_without_change(
        shared, lambda: rpc_error(shared.interchange.ExportInterchange, request), grpc.StatusCode.NOT_FOUND
    )


def test_a_well_formed_call_on_the_same_server_is_answered(shared: Running) -> None:
    """A well-formed call on the same server is answered OK: the refusals above come from the input alone."""
    response = shared.signing.CheckAndRecordBlock(block_request(EMPTY, 1, ROOT_A, ROOT))
    assert response.decision.verdict == signing_pb2.VERDICT_ALLOWED
