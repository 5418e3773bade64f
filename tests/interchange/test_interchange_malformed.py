"""Malformed and hostile documents: each is refused with the right error, naming where, by both readers."""

from __future__ import annotations

import json

import pytest

from interchange import (
    InterchangeError,
    InterchangeFormatError,
    InterchangeVersionError,
    ParseLimits,
    parse_interchange,
    stream_interchange,
)

from .documents import METADATA, PUBKEY_HEX, ROOT_HEX, binary, collect_stream, document, element

ROOT = "0x" + "00" * 32
BLOCK = {"slot": "1"}
ATTESTATION = {"source_epoch": "1", "target_epoch": "2"}


def metadata(**overrides: object) -> dict[str, object]:
    """The valid metadata of ``documents.METADATA`` with some fields replaced."""
    value: dict[str, object] = dict(METADATA)
    value.update(overrides)
    return value


FORMAT = InterchangeFormatError
VERSION = InterchangeVersionError
B0 = "data[0].signed_blocks[0]"
A0 = "data[0].signed_attestations[0]"
LONG = 3_000_000


def with_element(**overrides: object) -> bytes:
    return document([element(**overrides)])


def with_blocks(*blocks: object) -> bytes:
    return document([element(signed_blocks=list(blocks))])


def with_attestations(*attestations: object) -> bytes:
    return document([element(signed_attestations=list(attestations))])


def with_metadata(**overrides: object) -> bytes:
    return document(metadata=metadata(**overrides))


def raw_element(blocks: str = "[]", attestations: str = "[]", head: str = "") -> str:
    """Element JSON written by hand, for what json.dumps cannot write (duplicate keys)."""
    return f'{{{head}"pubkey": "{PUBKEY_HEX}", "signed_blocks": {blocks}, "signed_attestations": {attestations}}}'


def replace_string(value: bytes) -> bytes:
    """A document whose pubkey string is the raw bytes ``value`` (for encoding errors)."""
    return with_element(pubkey="x").replace(b'"x"', b'"' + value + b'"')


VERSION_FIELD = "metadata.interchange_format_version"
ROOT_FIELD = "metadata.genesis_validators_root"
DUPLICATE_METADATA = '{"genesis_validators_root": 1, "genesis_validators_root": 2}'
DUPLICATE_ROOT = (
    f'[{{"source_epoch": "1", "target_epoch": "2", "signing_root": "{ROOT}", "signing_root": "{ROOT}"}}]'
)

# (id, document bytes, error class, path, words the reason contains)
CASES: list[tuple[str, bytes, type[InterchangeError], str, str]] = [
    # Not one JSON text in UTF-8.
    ("empty file", b"", FORMAT, "$", "empty document"),
    ("BOM only", b"\xef\xbb\xbf", FORMAT, "$", "empty document"),
    ("whitespace only", b" \n\t ", FORMAT, "$", "premature EOF"),
    ("truncated", document([element()])[:-3], FORMAT, "data[0].signed_attestations", "premature EOF"),
    ("trailing garbage", document() + b" x", FORMAT, "$", "trailing garbage"),
    ("two documents", document() + document(), FORMAT, "$", "trailing garbage"),
    ("comment", document().replace(b'"data"', b'/* c */ "data"'), FORMAT, "$", "comment"),
    ("single quotes", b"{'metadata': 1}", FORMAT, "$", "invalid JSON"),
    ("NaN", with_element(pubkey=None).replace(b"null", b"NaN"), FORMAT, "data[0].pubkey", "invalid JSON"),
    ("raw NUL in a key", document().replace(b'"data"', b'"da\x00ta"'), FORMAT, "$", "invalid character"),
    ("raw NUL between tokens", document().replace(b"[]", b"[\x00]"), FORMAT, "data[0]", "invalid char"),
    ("escaped NUL in a key", document().replace(b'"data"', b'"da\\u0000ta"'), FORMAT, "$", "unknown key"),
    ("escaped NUL in a value", with_element(pubkey=PUBKEY_HEX[:-1] + "\x00"), FORMAT, "data[0].pubkey", "48-byte"),
    ("invalid UTF-8", replace_string(b"\xff"), FORMAT, "data[0].pubkey", "invalid bytes in UTF8"),
    ("overlong UTF-8", replace_string(b"\xc0\xaf"), FORMAT, "data[0].pubkey", "invalid UTF-8 in a string"),
    ("UTF-8 surrogate", replace_string(b"\xed\xa0\x80"), FORMAT, "data[0].pubkey", "invalid UTF-8 in a string"),
    ("UTF-16", document().decode().encode("utf-16"), FORMAT, "$", "invalid char"),
    ("BOM twice", b"\xef\xbb\xbf\xef\xbb\xbf" + document(), FORMAT, "$", "invalid char"),
    # The wrong shape at the top.
    ("top level array", b"[]", FORMAT, "$", "not an object"),
    ("top level string", b'"metadata"', FORMAT, "$", "not an object"),
    ("top level null", b"null", FORMAT, "$", "not an object"),
    ("missing metadata", b'{"data": []}', FORMAT, "$", 'missing key "metadata"'),
    ("missing data", json.dumps({"metadata": METADATA}).encode(), FORMAT, "$", 'missing key "data"'),
    ("unknown top-level key", document()[:-1] + b', "extra": 1}', FORMAT, "$", 'unknown key "extra"'),
    ("duplicate data", b'{"data": [], "data": []}', FORMAT, "$", 'duplicate key "data"'),
    ("data is an object", document().replace(b'"data": []', b'"data": {}'), FORMAT, "data", "not an array"),
    ("data is null", document().replace(b'"data": []', b'"data": null'), FORMAT, "data", "not an array"),
    # Metadata.
    ("version 4", with_metadata(interchange_format_version="4"), VERSION, VERSION_FIELD, '"4"'),
    ("version 5.0", with_metadata(interchange_format_version="5.0"), VERSION, VERSION_FIELD, '"5.0"'),
    ("version a number", with_metadata(interchange_format_version=5), FORMAT, VERSION_FIELD, 'not the string "5"'),
    ("version null", with_metadata(interchange_format_version=None), FORMAT, VERSION_FIELD, 'not the string "5"'),
    (
        "version missing",
        document(metadata={"genesis_validators_root": ROOT_HEX}),
        FORMAT,
        "metadata",
        "missing key",
    ),
    ("root missing", document(metadata={"interchange_format_version": "5"}), FORMAT, "metadata", "missing key"),
    ("root short", with_metadata(genesis_validators_root=ROOT[:-2]), FORMAT, ROOT_FIELD, "32-byte hex"),
    ("root without 0x", with_metadata(genesis_validators_root="00" * 33), FORMAT, ROOT_FIELD, "32-byte hex"),
    ("root 0X", with_metadata(genesis_validators_root="0X" + ROOT[2:]), FORMAT, ROOT_FIELD, "32-byte hex"),
    ("root newline", with_metadata(genesis_validators_root=ROOT + "\n"), FORMAT, ROOT_FIELD, "32-byte hex"),
    ("root a number", with_metadata(genesis_validators_root=0), FORMAT, ROOT_FIELD, "32-byte hex"),
    ("metadata extra key", with_metadata(interchange_format="complete"), FORMAT, "metadata", "unknown key"),
    ("metadata duplicate key", document(metadata=DUPLICATE_METADATA), FORMAT, "metadata", "duplicate key"),
    ("metadata an array", document(metadata="[]"), FORMAT, "metadata", "not an object"),
    ("metadata deep", document(metadata="[" * 100_000 + "]" * 100_000), FORMAT, "metadata[0][0][0][0]", "deeper"),
    ("metadata huge", document(metadata=f'{{"a": [{", ".join(["1"] * 10_000)}]}}'), FORMAT, "metadata", "larger"),
    # Validator entries.
    ("element an array", document(["[]"]), FORMAT, "data[0]", "not an object"),
    ("element a number", document([element(), "7"]), FORMAT, "data[1]", "not an object"),
    ("element deep arrays", document(["[" * 100_000 + "]" * 100_000]), FORMAT, "data[0]", "not an object"),
    ("pubkey deep arrays", with_element(pubkey=[[[[[[[]]]]]]]), FORMAT, "data[0].pubkey", "48-byte hex"),
    (
        "pubkey missing",
        document([{"signed_blocks": [], "signed_attestations": []}]),
        FORMAT,
        "data[0]",
        "missing key",
    ),
    ("pubkey short", with_element(pubkey=PUBKEY_HEX[:-2]), FORMAT, "data[0].pubkey", "48-byte hex"),
    ("pubkey long", with_element(pubkey=PUBKEY_HEX + "00"), FORMAT, "data[0].pubkey", "48-byte hex"),
    ("pubkey odd length", with_element(pubkey=PUBKEY_HEX[:-1]), FORMAT, "data[0].pubkey", "48-byte hex"),
    ("pubkey not hex", with_element(pubkey=PUBKEY_HEX[:-1] + "g"), FORMAT, "data[0].pubkey", "48-byte hex"),
    (
        "pubkey with a space",
        with_element(pubkey=PUBKEY_HEX[:50] + " " + PUBKEY_HEX[51:]),
        FORMAT,
        "data[0].pubkey",
        "hex",
    ),
    ("pubkey as numbers", with_element(pubkey=list(range(48))), FORMAT, "data[0].pubkey", "48-byte hex"),
    (
        "pubkey twice",
        document([raw_element(head=f'"pubkey": "{PUBKEY_HEX}", ')]),
        FORMAT,
        "data[0]",
        "duplicate key",
    ),
    ("unknown element key", with_element(extra=[1, 2]), FORMAT, "data[0]", 'unknown key "extra"'),
    (
        "signed_blocks missing",
        document([{"pubkey": PUBKEY_HEX, "signed_attestations": []}]),
        FORMAT,
        "data[0]",
        "missing",
    ),
    ("signed_blocks null", with_element(signed_blocks=None), FORMAT, "data[0].signed_blocks", "not an array"),
    (
        "signed_attestations {}",
        with_element(signed_attestations={}),
        FORMAT,
        "data[0].signed_attestations",
        "not an array",
    ),
    # Blocks and attestations.
    ("block a string", with_blocks(BLOCK, "1"), FORMAT, "data[0].signed_blocks[1]", "not an object"),
    ("slot a number", with_blocks({"slot": 1}), FORMAT, f"{B0}.slot", "not a decimal u64 string"),
    ("slot negative", with_blocks({"slot": "-1"}), FORMAT, f"{B0}.slot", "not a decimal u64 string"),
    ("slot leading zero", with_blocks({"slot": "01"}), FORMAT, f"{B0}.slot", "not a decimal u64 string"),
    ("slot empty", with_blocks({"slot": ""}), FORMAT, f"{B0}.slot", "not a decimal u64 string"),
    ("slot 2**64", with_blocks({"slot": str(2**64)}), FORMAT, f"{B0}.slot", "greater than 2**64 - 1"),
    ("slot 21 digits", with_blocks({"slot": "1" * 21}), FORMAT, f"{B0}.slot", "not a decimal u64 string"),
    ("slot Arabic-Indic digit", with_blocks({"slot": "\u0661"}), FORMAT, f"{B0}.slot", "not a decimal u64 string"),
    ("slot newline", with_blocks({"slot": "1\n"}), FORMAT, f"{B0}.slot", "not a decimal u64 string"),
    ("slot missing", with_blocks({"signing_root": ROOT}), FORMAT, B0, 'missing key "slot"'),
    (
        "slot twice",
        document([raw_element(blocks='[{"slot": "1", "slot": "2"}]')]),
        FORMAT,
        B0,
        'duplicate key "slot"',
    ),
    (
        "block root null",
        with_blocks({"slot": "1", "signing_root": None}),
        FORMAT,
        f"{B0}.signing_root",
        "32-byte hex",
    ),
    (
        "block root short",
        with_blocks({"slot": "1", "signing_root": ROOT[:-2]}),
        FORMAT,
        f"{B0}.signing_root",
        "hex",
    ),
    (
        "block unknown key",
        with_blocks(BLOCK, {"slot": "2", "root": ROOT}),
        FORMAT,
        "data[0].signed_blocks[1]",
        "unknown",
    ),
    ("attestation null", with_attestations(None), FORMAT, A0, "not an object"),
    ("target_epoch missing", with_attestations({"source_epoch": "1"}), FORMAT, A0, 'missing key "target_epoch"'),
    (
        "source_epoch a float",
        with_attestations({"source_epoch": 1.5, "target_epoch": "2"}),
        FORMAT,
        f"{A0}.source_epoch",
        "u64",
    ),
    (
        "target_epoch true",
        with_attestations({"source_epoch": "1", "target_epoch": True}),
        FORMAT,
        f"{A0}.target_epoch",
        "u64",
    ),
    (
        "target_epoch 20 nines",
        with_attestations(dict(ATTESTATION, target_epoch="9" * 20)),
        FORMAT,
        f"{A0}.target_epoch",
        "2**64",
    ),
    ("attestation unknown key", with_attestations(dict(ATTESTATION, slot="1")), FORMAT, A0, 'unknown key "slot"'),
    ("attestation root twice", document([raw_element(attestations=DUPLICATE_ROOT)]), FORMAT, A0, "duplicate key"),
    # Sizes.
    ("number of 5000 digits", document(["1" * 5000]), FORMAT, "$", "more than 128 digits in a row"),
    ("3 MB string", with_element(pubkey="a" * LONG), FORMAT, "data[0].pubkey", "no JSON token completes within"),
    (
        "3 MB whitespace",
        document().replace(b": []", b": " + b" " * LONG + b"[]"),
        FORMAT,
        "data",
        "no JSON token completes",
    ),
    ("3 MB key", document([{"k" * LONG: 1}]), FORMAT, "data[0]", "no JSON token completes within"),
]


def _refusal(read: object, data: bytes) -> InterchangeError:
    with pytest.raises(InterchangeError) as caught:
        if read is parse_interchange:
            parse_interchange(data)
        else:
            collect_stream(data)
    return caught.value


@pytest.mark.parametrize(
    ("data", "error", "path", "words"), [pytest.param(*case[1:], id=case[0]) for case in CASES]
)
def test_malformed_document_is_refused_naming_the_path(
    data: bytes, error: type[InterchangeError], path: str, words: str
) -> None:
    from_memory = _refusal(parse_interchange, data)
    from_stream = _refusal(stream_interchange, data)

    assert type(from_memory) is error
    assert from_memory.path == path
    assert words in from_memory.reason
    assert str(from_memory) == f"{path}: {from_memory.reason}"
    assert (type(from_stream), str(from_stream)) == (type(from_memory), str(from_memory))


def test_version_error_carries_the_version() -> None:
    with pytest.raises(InterchangeVersionError) as caught:
        parse_interchange(document(metadata=metadata(interchange_format_version="4")))

    assert caught.value.version == "4"
    assert isinstance(caught.value, InterchangeError)
    assert not isinstance(caught.value, InterchangeFormatError)


def test_version_is_reported_before_other_metadata_problems() -> None:
    old = {"interchange_format_version": "4", "interchange_format": "complete", "genesis_validators_root": "0x00"}

    with pytest.raises(InterchangeVersionError):
        parse_interchange(document(metadata=old))


def test_a_utf8_byte_order_mark_is_skipped() -> None:
    data = document([element(signed_blocks=[BLOCK])])

    assert parse_interchange(b"\xef\xbb\xbf" + data) == parse_interchange(data)
    assert collect_stream(b"\xef\xbb\xbf" + data, limits=ParseLimits(read_size=1)) == parse_interchange(data)


def test_upper_and_mixed_case_hex_is_accepted_and_decoded() -> None:
    upper = "0x" + "AB" * 48
    root = "0x" + "cD" * 32

    parsed = parse_interchange(
        document([element(pubkey=upper, signed_blocks=[{"slot": "3", "signing_root": root}])])
    )

    assert parsed.data[0].pubkey == b"\xab" * 48
    assert parsed.data[0].signed_blocks[0].signing_root == b"\xcd" * 32


def test_u64_bounds_are_inclusive() -> None:
    parsed = parse_interchange(
        document(
            [element(signed_blocks=[{"slot": "0"}, {"slot": str(2**64 - 1)}], signed_attestations=[ATTESTATION])]
        )
    )

    assert [block.slot for block in parsed.data[0].signed_blocks] == [0, 2**64 - 1]


def test_escaped_characters_decode_before_they_are_checked() -> None:
    # "\u0031" is "1": what the JSON means counts, not how it is spelled.
    raw = raw_element(blocks='[{"slot": "\\u0031"}]')

    assert parse_interchange(document([raw])).data[0].signed_blocks[0].slot == 1


class Endless:
    """A binary file whose content is ``head`` followed by ``unit`` repeated forever."""

    def __init__(self, head: bytes, unit: bytes) -> None:
        self._head = head
        self._unit = unit
        self.served = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._head if self.served == 0 else self._unit * max(1, size // len(self._unit))
        self.served += len(chunk)
        return chunk


@pytest.mark.parametrize(
    ("head", "unit", "path", "words"),
    [
        pytest.param(b'{"data": [{"pubkey": "', b"a", "data[0].pubkey", "no JSON token completes", id="string"),
        pytest.param(b'{"data": [{"pubkey": "', b'\\"', "data[0].pubkey", "no JSON token", id="escaped quotes"),
        pytest.param(b'{"data": [{"', b"k", "data[0]", "no JSON token completes", id="key"),
        pytest.param(b'{"data":', b" ", "data", "no JSON token completes", id="whitespace"),
        pytest.param(b'{"data": [', b"1", "data[0]", "more than 128 digits", id="number"),
        pytest.param(b'{"data": [', b"[", "data[0]", "not an object", id="nested arrays in data"),
        pytest.param(b'{"metadata": ', b"[", "metadata[0][0][0][0]", "nested deeper", id="nested arrays"),
        pytest.param(b'{"metadata": {"a": [', b"1, ", "metadata", "larger than valid metadata", id="big metadata"),
    ],
)
def test_endless_input_is_refused_after_bounded_reading(head: bytes, unit: bytes, path: str, words: str) -> None:
    source = Endless(head, unit)
    limits = ParseLimits(read_size=4096, max_token_bytes=64 * 1024)

    with pytest.raises(InterchangeFormatError) as caught:
        list(stream_interchange(binary(source), limits=limits))

    assert caught.value.path == path
    assert words in caught.value.reason
    assert source.served <= limits.max_token_bytes + 3 * limits.read_size
