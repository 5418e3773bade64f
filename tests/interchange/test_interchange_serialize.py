"""Writing interchange documents: a fixed layout, deterministic bytes, streaming output, exact round trips."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interchange import (
    U64_MAX,
    Interchange,
    Metadata,
    SignedAttestation,
    SignedBlock,
    ValidatorRecords,
    dumps_interchange,
    parse_interchange,
    write_interchange,
)

from .documents import collect_stream

GENESIS = bytes.fromhex("04700007fabc8282644aed6d1c7c9e21d38a03a0c4ba193f3afe428824b3a673")
PUBKEY = bytes(range(48))

u64s = st.integers(0, U64_MAX)
roots = st.none() | st.binary(min_size=32, max_size=32)
validators = st.builds(
    ValidatorRecords,
    st.binary(min_size=48, max_size=48),
    st.lists(st.builds(SignedBlock, u64s, roots), max_size=4).map(tuple),
    st.lists(st.builds(SignedAttestation, u64s, u64s, roots), max_size=4).map(tuple),
)

GOLDEN = (
    "{\n"
    '  "metadata": {\n'
    '    "interchange_format_version": "5",\n'
    '    "genesis_validators_root": "0x04700007fabc8282644aed6d1c7c9e21d38a03a0c4ba193f3afe428824b3a673"\n'
    "  },\n"
    '  "data": [\n'
    "    {\n"
    f'      "pubkey": "0x{PUBKEY.hex()}",\n'
    '      "signed_blocks": [\n'
    f'        {{"slot": "81952", "signing_root": "0x{"ab" * 32}"}},\n'
    '        {"slot": "0"}\n'
    "      ],\n"
    '      "signed_attestations": [\n'
    f'        {{"source_epoch": "2290", "target_epoch": "3007", "signing_root": "0x{"cd" * 32}"}},\n'
    f'        {{"source_epoch": "0", "target_epoch": "{U64_MAX}"}}\n'
    "      ]\n"
    "    },\n"
    "    {\n"
    f'      "pubkey": "0x{PUBKEY.hex()}",\n'
    '      "signed_blocks": [],\n'
    '      "signed_attestations": []\n'
    "    }\n"
    "  ]\n"
    "}\n"
).encode()

GOLDEN_RECORDS = (
    ValidatorRecords(
        PUBKEY,
        (SignedBlock(81952, b"\xab" * 32), SignedBlock(0, None)),
        (SignedAttestation(2290, 3007, b"\xcd" * 32), SignedAttestation(0, U64_MAX, None)),
    ),
    ValidatorRecords(PUBKEY, (), ()),
)


def test_layout_is_the_documented_one() -> None:
    assert dumps_interchange(GENESIS, GOLDEN_RECORDS) == GOLDEN


def test_empty_data_is_an_empty_array() -> None:
    written = dumps_interchange(GENESIS, [])

    assert written.endswith(b'  "data": []\n}\n')
    assert parse_interchange(written) == Interchange(Metadata("5", GENESIS), ())


def test_write_and_dumps_produce_the_same_bytes() -> None:
    out = io.BytesIO()

    write_interchange(out, GENESIS, iter(GOLDEN_RECORDS))

    assert out.getvalue() == GOLDEN


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=32, max_size=32), st.lists(validators, max_size=6))
def test_round_trip_is_exact_and_output_deterministic(genesis: bytes, records: list[ValidatorRecords]) -> None:
    written = dumps_interchange(genesis, records)

    expected = Interchange(Metadata("5", genesis), tuple(records))
    assert parse_interchange(written) == expected
    assert collect_stream(written) == expected
    assert dumps_interchange(genesis, iter(records)) == written
    # Lowercase hex only, and no key for an unknown root.
    assert re.findall(rb'"0x[0-9a-fA-F]*"', written) == re.findall(rb'"0x[0-9a-f]*"', written)
    roots_given = [block.signing_root for v in records for block in v.signed_blocks] + [
        attestation.signing_root for v in records for attestation in v.signed_attestations
    ]
    assert written.count(b'"signing_root"') == sum(root is not None for root in roots_given)


def test_validators_are_written_while_they_are_iterated() -> None:
    out = io.BytesIO()
    written_when_asked: list[int] = []

    def records() -> Iterator[ValidatorRecords]:
        for index in range(3000):
            written_when_asked.append(len(out.getvalue()))
            yield ValidatorRecords(index.to_bytes(48, "big"), (SignedBlock(index, None),), ())

    write_interchange(out, GENESIS, records())

    # Output grows before the iterable is exhausted, and the first validator is not held back either.
    assert written_when_asked[-1] > 0
    assert written_when_asked[-1] < len(out.getvalue())
    assert len(parse_interchange(out.getvalue()).data) == 3000


def test_a_large_validator_is_written_in_bounded_pieces() -> None:
    class Recording(io.BytesIO):
        def __init__(self) -> None:
            super().__init__()
            self.sizes: list[int] = []

        def write(self, data: bytes) -> int:  # type: ignore[override]
            self.sizes.append(len(data))
            return super().write(data)

    out = Recording()
    attestations = tuple(SignedAttestation(epoch, epoch + 1, bytes(32)) for epoch in range(50_000))

    write_interchange(out, GENESIS, [ValidatorRecords(PUBKEY, (), attestations)])

    assert len(out.sizes) > 5
    assert max(out.sizes) < 1_000_000 < len(out.getvalue())
    assert parse_interchange(out.getvalue()).data[0].signed_attestations == attestations


@pytest.mark.parametrize(
    ("genesis", "records", "message"),
    [
        pytest.param(
            bytes(31), [], "genesis_validators_root: expected 32 bytes, got 31 bytes", id="short genesis"
        ),
        pytest.param(
            GENESIS, [ValidatorRecords(bytes(47), (), ())], r"validators\[0\]\.pubkey", id="short pubkey"
        ),
        pytest.param(
            GENESIS,
            [ValidatorRecords(PUBKEY, (), ()), ValidatorRecords(PUBKEY, (SignedBlock(-1, None),), ())],
            r"validators\[1\]\.signed_blocks\[0\]\.slot: expected an int in 0\.\.2\*\*64 - 1, got -1",
            id="negative slot",
        ),
        pytest.param(
            GENESIS,
            [ValidatorRecords(PUBKEY, (SignedBlock(U64_MAX + 1, None),), ())],
            r"validators\[0\]\.signed_blocks\[0\]\.slot",
            id="slot above u64",
        ),
        pytest.param(
            GENESIS,
            [ValidatorRecords(PUBKEY, (SignedBlock(True, None),), ())],
            "got True",
            id="bool slot",
        ),
        pytest.param(
            GENESIS,
            [ValidatorRecords(PUBKEY, (), (SignedAttestation(1, 2, bytes(33)),))],
            r"validators\[0\]\.signed_attestations\[0\]\.signing_root: expected 32 bytes, got 33 bytes",
            id="long root",
        ),
        pytest.param(
            GENESIS,
            [ValidatorRecords("0x00", (), ())],  # type: ignore[arg-type]
            r"validators\[0\]\.pubkey: expected 48 bytes, got str",
            id="hex string pubkey",
        ),
    ],
)
def test_records_that_cannot_be_written_raise_value_error(
    genesis: bytes, records: list[ValidatorRecords], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        dumps_interchange(genesis, records)


def test_a_refused_validator_is_not_partly_written() -> None:
    out = io.BytesIO()
    bad = ValidatorRecords(PUBKEY, (SignedBlock(1, None),), (SignedAttestation(1, -2, None),))

    with pytest.raises(ValueError, match="target_epoch"):
        write_interchange(out, GENESIS, [GOLDEN_RECORDS[1], bad])

    # The bad validator's block comes before its bad attestation, and still none of it reached the output.
    assert b'"slot": "1"' not in out.getvalue()
