"""The fast path for ``data`` elements agrees with jsonschema plus the u64 range, and so do the pydantic models.

The oracle is ``schema.json``'s ``$defs/validator`` applied by ``jsonschema``, together with the one rule the
schema cannot state (a u64 is at most 2**64 - 1). The fast path is the streaming reader, fed the element inside an
otherwise valid document. For every generated element, valid or mutated, both must accept or both refuse; when
they refuse, the reader's (path, reason) must be one that the oracle reports too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interchange import (
    U64_MAX,
    InterchangeFormatError,
    SignedAttestation,
    SignedBlock,
    ValidatorRecords,
    ValidatorRecordsJSON,
    parse_interchange,
)
from interchange.errors import format_path
from interchange.schema import U64_OUT_OF_RANGE, definition_validator, schema_violations

from .documents import VECTORS_DIR, document

VALIDATOR_SCHEMA = definition_validator("validator")
U64_SCHEMA = definition_validator("u64")
UPSTREAM_SCHEMA_NAME = "SCHEMA-eip3076-upstream.json"


def hex_string(size: int) -> st.SearchStrategy[str]:
    return st.text("0123456789abcdefABCDEF", min_size=2 * size, max_size=2 * size).map("0x".__add__)


u64_strings = st.one_of(
    st.integers(0, U64_MAX), st.sampled_from([0, 1, U64_MAX, U64_MAX - 1, 2**63, 2**32 - 1])
).map(str)
roots = hex_string(32)
pubkeys = hex_string(48)
blocks = st.fixed_dictionaries({"slot": u64_strings}, optional={"signing_root": roots})
attestations = st.fixed_dictionaries(
    {"source_epoch": u64_strings, "target_epoch": u64_strings}, optional={"signing_root": roots}
)
valid_elements = st.fixed_dictionaries(
    {
        "pubkey": pubkeys,
        "signed_blocks": st.lists(blocks, max_size=3),
        "signed_attestations": st.lists(attestations, max_size=3),
    }
)

# Strings one step away from valid ones, where the two implementations could plausibly part ways.
near_misses = st.sampled_from(
    [
        "",
        "0x",
        "0",
        "00",
        "01",
        "-1",
        "+1",
        "-0",
        " 1",
        "1 ",
        "1\n",
        "\n1",
        "1.0",
        "1e3",
        "1_000",
        "0b1",
        "\u0661",
        "\u00b2",
        "\uff11",
        str(U64_MAX),
        str(U64_MAX + 1),
        "9" * 20,
        "1" + "0" * 19,
        "0" * 20,
        "1" * 21,
        "0x" + "00" * 32 + "\n",
        "0x" + "00" * 32 + " ",
        "0X" + "00" * 32,
        "00" * 33,
        "0x" + "00" * 31,
        "0x" + "00" * 33,
        "0x" + "0" * 63,
        "0x" + "0" * 63 + "g",
        "0x" + "0" * 63 + "\u0661",
        "0x" + "00" * 31 + " 0",
        "0x " + "00" * 32,
        "0x" + "00" * 48 + "\n",
        "0x" + "ab" * 47 + "a ",
        "0x" + "AB" * 48,
        "x0" + "00" * 48,
    ]
)
# Any JSON value, nested a little; no lone surrogates (JSON text cannot carry them faithfully).
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
replacements = st.one_of(near_misses, u64_strings, roots, pubkeys, json_values, blocks, attestations)
unknown_keys = st.one_of(
    st.sampled_from(["slot", "root", "pubkeys", "signingRoot", "Signed_blocks", ""]), st.text(max_size=8)
)


def _locations(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _locations(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _locations(child, (*path, index))


def _parent(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        value = value[step]
    return value


@st.composite
def mutated_elements(draw: st.DrawFn) -> Any:
    """A valid element with one to three edits: a value replaced, a key removed or an unknown key added."""
    value = draw(valid_elements)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_locations(value))))
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if not path:
            if action == "replace":
                value = draw(replacements)
            continue
        parent = _parent(value, path)
        if action == "replace":
            parent[path[-1]] = draw(replacements)
        elif action == "remove":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(unknown_keys)] = draw(json_values)
        else:
            parent.insert(path[-1], draw(replacements))
    return value


def _u64_range_violations(value: Any) -> set[tuple[str, str]]:
    """(path, reason) for every well-formed u64 string above 2**64 - 1: the rule the schema cannot state."""
    found: set[tuple[str, str]] = set()
    if not isinstance(value, dict):
        return found
    for field, keys in (("signed_blocks", ("slot",)), ("signed_attestations", ("source_epoch", "target_epoch"))):
        records = value.get(field)
        if not isinstance(records, list):
            continue
        for position, record in enumerate(records):
            if not isinstance(record, dict):
                continue
            for key in keys:
                text = record.get(key)
                if isinstance(text, str) and U64_SCHEMA.is_valid(text) and int(text) > U64_MAX:
                    found.add((format_path(("data", 0, field, position, key)), U64_OUT_OF_RANGE))
    return found


def _oracle(value: Any) -> set[tuple[str, str]]:
    """Everything jsonschema and the range rule find wrong with ``value`` as ``data[0]``; empty if valid."""
    return set(schema_violations(VALIDATOR_SCHEMA, value, ("data", 0))) | _u64_range_violations(value)


def _fast_path(value: Any) -> ValidatorRecords | InterchangeFormatError:
    try:
        return parse_interchange(document([json.dumps(value)])).data[0]
    except InterchangeFormatError as error:
        return error


def _expected_records(value: dict[str, Any]) -> ValidatorRecords:
    def root(record: dict[str, Any]) -> bytes | None:
        return bytes.fromhex(record["signing_root"][2:]) if "signing_root" in record else None

    return ValidatorRecords(
        bytes.fromhex(value["pubkey"][2:]),
        tuple(SignedBlock(int(b["slot"]), root(b)) for b in value["signed_blocks"]),
        tuple(
            SignedAttestation(int(a["source_epoch"]), int(a["target_epoch"]), root(a))
            for a in value["signed_attestations"]
        ),
    )


def _pydantic_accepts(value: Any) -> bool:
    try:
        ValidatorRecordsJSON.model_validate(value)
    except pydantic.ValidationError:
        return False
    return True


AGREEMENT = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@AGREEMENT
@given(valid_elements)
def test_fast_path_accepts_every_valid_element_as_jsonschema_does(value: dict[str, Any]) -> None:
    assert _oracle(value) == set()

    result = _fast_path(value)

    assert result == _expected_records(value)
    assert ValidatorRecordsJSON.model_validate(value).to_records() == result


@AGREEMENT
@given(mutated_elements())
def test_fast_path_and_jsonschema_agree_on_mutated_elements(value: Any) -> None:
    problems = _oracle(value)

    result = _fast_path(value)

    if problems:
        assert isinstance(result, InterchangeFormatError), f"fast path accepted; jsonschema found {problems}"
        assert (result.path, result.reason) in problems
    else:
        assert result == _expected_records(value)
    assert _pydantic_accepts(value) == (not problems)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"slot": "1"}, id="a block"),
        pytest.param([], id="an array"),
        pytest.param(None, id="null"),
        pytest.param(
            {"pubkey": "0x" + "00" * 48, "signed_blocks": [], "signed_attestations": [], "x": 1}, id="extra"
        ),
    ],
)
def test_known_refusals_agree(value: Any) -> None:
    result = _fast_path(value)

    assert isinstance(result, InterchangeFormatError)
    assert (result.path, result.reason) in _oracle(value)
    assert not _pydantic_accepts(value)


def test_the_project_schema_is_stricter_than_the_upstream_one() -> None:
    path = VECTORS_DIR / UPSTREAM_SCHEMA_NAME
    if not path.is_file():
        pytest.skip(f"conformance vectors absent: {VECTORS_DIR}")
    upstream_schema = json.loads(path.read_text(encoding="utf-8"))
    # It names no draft; its tuple-form "items" is only legal up to draft 2019-09, so read it as draft 7.
    upstream = jsonschema.Draft7Validator(upstream_schema)
    ours = definition_validator("")
    # Upstream's tuple-form "items" checks only the first element: the second block's bad slot slips through.
    blocks = [{"slot": "1"}, {"slot": 2}]
    weak_spot = json.loads(
        document([{"pubkey": "0x" + "00" * 48, "signed_blocks": blocks, "signed_attestations": []}])
    )

    assert upstream.is_valid(weak_spot)
    assert not ours.is_valid(weak_spot)
