"""stream_interchange reads as it goes: incrementally, in bounded memory, from any binary file object."""

from __future__ import annotations

import gc
import io
import json
import random
import tracemalloc
from collections.abc import Iterator

import pytest

from interchange import (
    Metadata,
    ParseLimits,
    ValidatorEntryEnd,
    ValidatorRecords,
    ValidatorRecordsPart,
    stream_interchange,
    stream_interchange_parts,
)
from interchange import parse as parse_module

from .documents import (
    METADATA,
    PUBKEY_HEX,
    GeneratedDocument,
    binary,
    collect_stream,
    generated_document_bytes,
    generated_validator_json,
)

# 20,000 entries of about 450 bytes: a 9 MB document, never held whole by these tests.
VALIDATORS = 20_000


def test_records_are_yielded_as_soon_as_they_have_been_read() -> None:
    source = GeneratedDocument(VALIDATORS)
    limits = ParseLimits(read_size=16 * 1024)
    entry = len(generated_validator_json(VALIDATORS)) + 2
    served_at_yield: list[int] = []

    items = []
    for item in stream_interchange(binary(source), limits=limits):
        served_at_yield.append(source.bytes_served)
        items.append(item)

    assert isinstance(items[0], Metadata)
    assert len(items) == VALIDATORS + 1
    assert source.bytes_served > VALIDATORS * entry // 2
    # Each record arrives no later than one read past its own end: nothing waits for the rest of the document.
    for index, served in enumerate(served_at_yield[1:]):
        assert served <= 200 + (index + 1) * entry + limits.read_size, index


def test_streaming_memory_stays_bounded_while_the_document_grows() -> None:
    def peak_while_streaming(validators: int) -> int:
        gc.collect()
        tracemalloc.start()
        try:
            count = sum(1 for _ in stream_interchange(binary(GeneratedDocument(validators))))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert count == validators + 1
        return peak

    # tracemalloc slows every allocation down, so this document is smaller than VALIDATORS: 3.6 MB.
    small = peak_while_streaming(1_000)
    large = peak_while_streaming(8_000)

    # Eight times the document, about the same peak: a few read buffers, not the document or its records.
    assert large < small + 256 * 1024
    assert large < 2 * 1024 * 1024


def test_metadata_is_yielded_once_wherever_it_is() -> None:
    first = list(stream_interchange(binary(GeneratedDocument(50))))
    last = list(stream_interchange(binary(GeneratedDocument(50, metadata_first=False))))

    assert isinstance(first[0], Metadata)
    assert isinstance(last[-1], Metadata)
    assert first[0] == last[-1]
    assert first[1:] == last[:-1]
    assert all(isinstance(item, ValidatorRecords) for item in first[1:])


def test_short_reads_give_the_same_result() -> None:
    data = b"\xef\xbb\xbf" + generated_document_bytes(200)
    chooser = random.Random(3076)

    class Trickle(io.RawIOBase):
        def __init__(self) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            return self._data.read(min(size, chooser.randint(1, 7)) if size > 0 else size)

    streamed = collect_stream(data)

    items = list(stream_interchange(binary(Trickle())))

    assert items[0] == streamed.metadata
    assert tuple(items[1:]) == streamed.data


def test_read_errors_pass_through_unchanged() -> None:
    class Failing:
        def __init__(self, error: Exception) -> None:
            self.error = error
            self.calls = 0

        def read(self, size: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 1:
                raise self.error
            return b'{"data": [' + generated_validator_json(0)

    disk = OSError(5, "Input/output error")
    with pytest.raises(OSError) as caught:
        list(stream_interchange(binary(Failing(disk))))
    assert caught.value is disk

    closed = ValueError("I/O operation on closed file")
    with pytest.raises(ValueError) as caught_value:
        list(stream_interchange(binary(Failing(closed))))
    assert caught_value.value is closed


def test_a_text_file_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="binary"):
        list(stream_interchange(io.StringIO('{"data": []}')))  # type: ignore[arg-type]


def test_the_c_backend_is_in_use() -> None:
    assert parse_module._backend.backend_name == "yajl2_c"


class OneLongEntry:
    """A binary file object producing one entry of ``votes`` attestations, its pubkey last, never held whole."""

    def __init__(self, votes: int) -> None:
        def pieces() -> Iterator[bytes]:
            yield b'{"metadata": ' + json.dumps(METADATA).encode() + b', "data": [{"signed_attestations": ['
            for target in range(1, votes + 1):
                yield (b", " if target > 1 else b"") + (
                    f'{{"source_epoch": "{target - 1}", "target_epoch": "{target}", '
                    f'"signing_root": "0x{target.to_bytes(32, "big").hex()}"}}'
                ).encode()
            yield b'], "signed_blocks": [{"slot": "9"}], "pubkey": "' + PUBKEY_HEX.encode() + b'"}]}'

        self._pieces = pieces()
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while len(self._buffer) < size:
            piece = next(self._pieces, None)
            if piece is None:
                break
            self._buffer += piece
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def test_parts_are_bounded_and_the_entry_ends_with_its_pubkey() -> None:
    limits = ParseLimits(part_records=1000)
    items = list(stream_interchange_parts(binary(OneLongEntry(4500)), limits=limits))

    parts = [item for item in items if isinstance(item, ValidatorRecordsPart)]
    assert [len(part.signed_attestations) for part in parts] == [1000, 1000, 1000, 1000, 500, 0]
    assert [len(part.signed_blocks) for part in parts] == [0, 0, 0, 0, 0, 1]
    assert {part.index for part in parts} == {0}
    assert items[-1] == ValidatorEntryEnd(0, bytes.fromhex(PUBKEY_HEX[2:]))
    # The same document, whole entries: the parts put together.
    [records] = [
        item for item in stream_interchange(binary(OneLongEntry(4500))) if isinstance(item, ValidatorRecords)
    ]
    assert records.signed_attestations == tuple(a for part in parts for a in part.signed_attestations)


def test_one_long_entry_is_streamed_in_bounded_memory() -> None:
    """stream_interchange must hold an entry whole; stream_interchange_parts never does."""

    def peak_while_streaming(votes: int) -> int:
        gc.collect()
        tracemalloc.start()
        try:
            for _ in stream_interchange_parts(binary(OneLongEntry(votes))):
                pass
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return peak

    small = peak_while_streaming(5_000)
    large = peak_while_streaming(40_000)

    assert large < small + 256 * 1024
    assert large < 2 * 1024 * 1024
