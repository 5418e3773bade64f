"""stream_interchange reads as it goes: incrementally, in bounded memory, from any binary file object."""

from __future__ import annotations

import gc
import io
import random
import tracemalloc

import pytest

from interchange import (
    Metadata,
    ParseLimits,
    ValidatorRecords,
    stream_interchange,
)
from interchange import parse as parse_module

from .documents import (
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
