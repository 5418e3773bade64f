"""Every interchange document of the EIP-3076 conformance vectors, through both readers and back out again."""

from __future__ import annotations

import json
from typing import Any

import pytest

from interchange import (
    SCHEMA,
    InterchangeJSON,
    dumps_interchange,
    parse_interchange,
)
from interchange.schema import definition_validator

from .documents import VECTORS_DIR, collect_stream, vector_steps


@pytest.mark.parametrize(("case", "document"), vector_steps())
def test_vector_document_reads_the_same_through_both_readers(case: str, document: dict[str, Any]) -> None:
    raw = json.dumps(document, indent=2).encode()

    parsed = parse_interchange(raw)

    assert collect_stream(raw) == parsed
    # An independent reading of the same JSON: pydantic's models, from the stdlib decoder's output.
    assert InterchangeJSON.model_validate(document).to_interchange() == parsed
    assert len(parsed.data) == len(document["data"])


@pytest.mark.parametrize(("case", "document"), vector_steps())
def test_vector_document_key_order_does_not_matter(case: str, document: dict[str, Any]) -> None:
    metadata_last = json.dumps({"data": document["data"], "metadata": document["metadata"]}).encode()

    assert (
        collect_stream(metadata_last)
        == parse_interchange(metadata_last)
        == parse_interchange(json.dumps(document).encode())
    )


@pytest.mark.parametrize(("case", "document"), vector_steps())
def test_vector_document_round_trips_through_the_writer(case: str, document: dict[str, Any]) -> None:
    parsed = parse_interchange(json.dumps(document).encode())

    written = dumps_interchange(parsed.metadata.genesis_validators_root, parsed.data)

    assert parse_interchange(written) == parsed
    assert collect_stream(written) == parsed
    again = parse_interchange(written)
    assert dumps_interchange(again.metadata.genesis_validators_root, again.data) == written


@pytest.mark.parametrize(("case", "document"), vector_steps())
def test_vector_document_is_valid_under_the_project_schema(case: str, document: dict[str, Any]) -> None:
    assert list(definition_validator("").iter_errors(document)) == []


def test_duplicate_pubkey_vectors_keep_every_entry() -> None:
    path = VECTORS_DIR / "duplicate_pubkey_not_slashable.json"
    if not path.is_file():
        pytest.skip(f"conformance vectors absent: {VECTORS_DIR}")
    document = json.loads(path.read_text(encoding="utf-8"))["steps"][0]["interchange"]

    parsed = parse_interchange(json.dumps(document).encode())

    assert [v.pubkey for v in parsed.data] == [bytes.fromhex(e["pubkey"][2:]) for e in document["data"]]
    assert parsed.data[0].pubkey == parsed.data[1].pubkey


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
