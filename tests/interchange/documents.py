"""Documents for the interchange tests: conformance vectors, hand-made documents, and large generated ones."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest

from interchange import Interchange, Metadata, ValidatorRecords, stream_interchange

VECTORS_DIR = Path(__file__).resolve().parents[3] / "shared" / "interchange-tests"

ROOT_HEX = "0x" + "04" * 32
PUBKEY_HEX = "0x" + "a9" * 48
METADATA = {"interchange_format_version": "5", "genesis_validators_root": ROOT_HEX}


def vector_steps() -> list[Any]:
    """One pytest param per (vector file, step), or a single skipped param when the vectors are absent."""
    if not VECTORS_DIR.is_dir():
        return [
            pytest.param(None, None, marks=pytest.mark.skip(reason=f"conformance vectors absent: {VECTORS_DIR}"))
        ]
    params = []
    for path in sorted(VECTORS_DIR.glob("*.json")):
        if path.name.startswith("SCHEMA"):
            continue
        case = json.loads(path.read_text(encoding="utf-8"))
        for number, step in enumerate(case["steps"]):
            params.append(pytest.param(path.stem, step["interchange"], id=f"{path.stem}[{number}]"))
    return params


def document(data: Any = (), metadata: Any = None, *, metadata_first: bool = True) -> bytes:
    """A document from JSON values; ``data`` elements may be dicts or raw JSON text (str)."""
    elements = [item if isinstance(item, str) else json.dumps(item) for item in data]
    data_text = "[" + ", ".join(elements) + "]"
    metadata_text = (
        metadata if isinstance(metadata, str) else json.dumps(METADATA if metadata is None else metadata)
    )
    members = [f'"metadata": {metadata_text}', f'"data": {data_text}']
    if not metadata_first:
        members.reverse()
    return ("{" + ", ".join(members) + "}").encode()


def binary(reader: object) -> BinaryIO:
    """A test double with a ``read(size) -> bytes`` method, typed as the binary file the API takes."""
    return cast(BinaryIO, reader)


def element(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"pubkey": PUBKEY_HEX, "signed_blocks": [], "signed_attestations": []}
    value.update(overrides)
    return value


def collect_stream(data: bytes, **kwargs: Any) -> Interchange:
    """Read ``data`` with stream_interchange and assemble what it yields, checking Metadata comes exactly once."""
    metadata: list[Metadata] = []
    records: list[ValidatorRecords] = []
    for item in stream_interchange(io.BytesIO(data), **kwargs):
        if isinstance(item, ValidatorRecords):
            records.append(item)
        else:
            assert isinstance(item, Metadata)
            metadata.append(item)
    assert len(metadata) == 1
    return Interchange(metadata[0], tuple(records))


def generated_validator_json(index: int) -> bytes:
    """Element ``index`` of a generated document: one block and one attestation, with signing roots."""
    pubkey = index.to_bytes(48, "big").hex()
    root = index.to_bytes(32, "little").hex()
    return (
        f'{{"pubkey": "0x{pubkey}", "signed_blocks": [{{"slot": "{index * 7}", "signing_root": "0x{root}"}}], '
        f'"signed_attestations": [{{"source_epoch": "{index}", "target_epoch": "{index + 1}", '
        f'"signing_root": "0x{root}"}}]}}'
    ).encode()


class GeneratedDocument:
    """A binary file object that produces a document of ``validators`` entries on the fly, never held whole.

    ``bytes_served`` counts what ``read`` has handed out, so a test can see how far a reader had to read.
    """

    def __init__(self, validators: int, *, metadata_first: bool = True) -> None:
        self._pieces = self.generate(validators, metadata_first=metadata_first)
        self._buffer = b""
        self.bytes_served = 0

    @staticmethod
    def generate(validators: int, *, metadata_first: bool) -> Iterator[bytes]:
        metadata = b'"metadata": ' + json.dumps(METADATA).encode()
        yield b"{" + (metadata + b", " if metadata_first else b"") + b'"data": [\n'
        for index in range(validators):
            yield (b",\n" if index else b"") + generated_validator_json(index)
        yield b"\n]" + (b"" if metadata_first else b", " + metadata) + b"}\n"

    def read(self, size: int = -1) -> bytes:
        # Pieces are small, so the buffer never grows much past ``size``; read() with no size is not offered
        # because a reader that asks for everything at once is exactly what these tests must not reward.
        if size < 0:
            raise ValueError("GeneratedDocument.read needs a size")
        parts = [self._buffer]
        have = len(self._buffer)
        while have < size:
            piece = next(self._pieces, None)
            if piece is None:
                break
            parts.append(piece)
            have += len(piece)
        joined = b"".join(parts)
        out, self._buffer = joined[:size], joined[size:]
        self.bytes_served += len(out)
        return out


def generated_document_bytes(validators: int) -> bytes:
    return b"".join(GeneratedDocument.generate(validators, metadata_first=True))
