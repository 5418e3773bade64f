"""Reading EIP-3076 interchange documents (format version "5"): from bytes in memory, or streamed from a file.

Contract
--------
``stream_interchange(fp)`` reads one JSON document from a binary file object and yields, in document order, the
``Metadata`` exactly once (as soon as the metadata object is complete and valid) and one ``ValidatorRecords``
per element of ``data`` (as soon as that element is complete and valid). JSON leaves key order free, so the
``Metadata`` may come before, between or after the records. The same pubkey may appear in several elements; each
is yielded as it stands. ``stream_interchange_parts(fp)`` is the same reader one level down: it hands over each
entry's records in bounded parts and ends the entry with its pubkey, so that not even one entry is held whole.
Anything wrong raises ``InterchangeError`` (see ``interchange.errors``) naming the JSON
path, at the point the reader gets there, which can be after records were already yielded: a consumer that must
take a document whole or not at all (an import) stages what it receives until the iterator is exhausted. For a
syntax or encoding error the path is where the reader was when the decoder stopped: the value being read, or
the member just before it.

``parse_interchange(data)`` reads a document held in memory into an ``Interchange``. It is the same reader, so
the two accept and refuse exactly the same documents with the same messages. A separate decoder (orjson, the
standard library) would be faster by a fraction of a second per 100,000 validators but keeps the last of
duplicate keys without telling, which this format must refuse.

What is refused: bytes that are not a single JSON text in UTF-8 (syntax errors, invalid or overlong UTF-8, a
NUL byte, anything but whitespace after the document, an empty input); a top level that is not an object; any
key outside the format, a missing key, a key twice in one object; JSON nesting deeper than the format's five
levels; and everything ``schema.json`` refuses (see ``interchange.schema``). Not JSON, failing the schema, a
duplicate key and a size limit all raise ``InterchangeFormatError``; a version string other than "5" raises
``InterchangeVersionError``.

A UTF-8 byte order mark at the very start is skipped. RFC 8259 lets a parser ignore one, Windows tools write
one, and it cannot change the meaning of the document. UTF-16 and UTF-32 are refused (not valid JSON here).

Hostile input
-------------
``stream_interchange_parts`` holds at most ``ParseLimits.part_records`` records plus a few buffers
(``stream_interchange`` holds one validator entry's records at a time), and a value that
cannot be valid is refused at its first token, before its content is read. The metadata object is
built whole for ``jsonschema``, so it is capped at ``_MAX_METADATA_EVENTS`` tokens (a valid one has 6).

The decoder (ijson over yajl, C backend when installed) buffers a token until it ends, so two limits stop one
token from growing without end. ``ParseLimits.max_token_bytes`` refuses a run of input longer than that in
which no token completes (a 2 GB string, or 2 GB of whitespace). No valid document has more than 96 decimal
digits in a row (the longest is a hex pubkey), so a run of more than ``_MAX_DIGIT_RUN`` digits is refused before
the decoder sees it: the decoder would turn a long number into a Python int and fail inside C on
``sys.int_max_str_digits`` in a way that cannot be caught cleanly. Nothing recurses on the document's nesting:
the reader descends the format's fixed shape and refuses anything else at its first token.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

import ijson

from interchange.errors import InterchangeFormatError
from interchange.models import (
    PUBKEY_BYTES,
    ROOT_BYTES,
    Interchange,
    Metadata,
    SignedAttestation,
    SignedBlock,
    ValidatorEntryEnd,
    ValidatorRecords,
    ValidatorRecordsPart,
)
from interchange.schema import (
    NOT_AN_ARRAY,
    NOT_AN_OBJECT,
    NOT_PUBKEY,
    NOT_ROOT,
    duplicate_key,
    hex_bytes,
    metadata_from_json,
    missing_key,
    u64,
    u64_reason,
    unknown_key,
)

try:
    _backend: Any = ijson.get_backend("yajl2_c")
except ImportError:  # pragma: no cover - the wheels ship the C backend; this keeps a source install working
    _backend = ijson

_BOM: Final = b"\xef\xbb\xbf"

# The document is level 1, data 2, a validator 3, signed_blocks 4, a block 5: no valid document goes deeper.
_MAX_DEPTH: Final = 5
_MAX_METADATA_EVENTS: Final = 64
_MAX_DIGIT_RUN: Final = 128
_DIGITS_AS_D: Final = bytes(0x64 if 0x30 <= byte <= 0x39 else 0x2E for byte in range(256))
_DIGIT_RUN_NEEDLE: Final = b"d" * (_MAX_DIGIT_RUN + 1)


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Bounds on what one document may make the reader hold.

    ``read_size`` is how much is asked of the file object at a time. ``max_token_bytes`` is the longest run of
    input in which no JSON token (a key, a scalar, a bracket) completes; valid documents have tokens of at most
    100 bytes, so the default only ever stops hostile input. ``part_records`` is how many blocks or attestations
    ``stream_interchange_parts`` gathers before handing them over.
    """

    read_size: int = 64 * 1024
    max_token_bytes: int = 1024 * 1024
    part_records: int = 1024

    def __post_init__(self) -> None:
        if self.read_size < 1 or self.max_token_bytes < 1 or self.part_records < 1:
            raise ValueError(f"parse limits must be positive: {self}")


DEFAULT_LIMITS: Final = ParseLimits()


class _RefusedError(Exception):
    """Raised by the guarded source, inside the decoder; the reader turns it into a format error with a path."""


class _SourceReadError(Exception):
    """The file object's own read() raised. Carried through the decoder and re-raised as it was: an I/O error
    (or a ValueError from a closed file) says nothing about the document and must not become a format error."""

    def __init__(self, original: Exception) -> None:
        super().__init__(original)
        self.original = original


class _GuardedSource:
    """The file object as the decoder sees it: BOM skipped, digit runs and token length bounded.

    ``bytes_without_token`` is reset by the reader on every event it receives. The decoder reads a chunk, emits
    all events it completes, then reads again, so the count is the input fed since a token last completed.
    """

    __slots__ = ("_at_start", "_fp", "_limits", "_trailing_digits", "bytes_without_token")

    def __init__(self, fp: BinaryIO, limits: ParseLimits) -> None:
        self._fp = fp
        self._limits = limits
        self._at_start = True
        self._trailing_digits = 0
        self.bytes_without_token = 0

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        chunk = self._next_chunk()
        if self._at_start:
            self._at_start = False
            # A short first read must not split the BOM, and an empty file deserves its own message.
            while 0 < len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                more = self._next_chunk()
                if not more:
                    break
                chunk += more
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :] or self._next_chunk()
            if not chunk:
                raise _RefusedError("empty document")
        self.bytes_without_token += len(chunk)
        if self.bytes_without_token > self._limits.max_token_bytes:
            raise _RefusedError(f"no JSON token completes within {self._limits.max_token_bytes} bytes")
        self._check_digit_runs(chunk)
        return chunk

    def _next_chunk(self) -> bytes:
        try:
            chunk: object = self._fp.read(self._limits.read_size)
        except Exception as error:
            raise _SourceReadError(error) from error
        if isinstance(chunk, bytes):
            return chunk
        if isinstance(chunk, (bytearray, memoryview)):
            return bytes(chunk)
        raise TypeError(
            f"interchange documents are read from binary files; read() returned {type(chunk).__name__}"
        )

    def _check_digit_runs(self, chunk: bytes) -> None:
        if not chunk:
            return
        shape = chunk.translate(_DIGITS_AS_D)
        leading = len(shape) - len(shape.lstrip(b"d"))
        if self._trailing_digits + leading > _MAX_DIGIT_RUN or shape.find(_DIGIT_RUN_NEEDLE) >= 0:
            raise _RefusedError(f"more than {_MAX_DIGIT_RUN} digits in a row, which no valid document has")
        if leading == len(shape):
            self._trailing_digits += leading
        else:
            self._trailing_digits = len(shape) - len(shape.rstrip(b"d"))


def _json_error_reason(error: Exception) -> str:
    if isinstance(error, _RefusedError):
        return str(error)
    if isinstance(error, UnicodeDecodeError):
        # yajl lets overlong forms and encoded surrogates through; Python's decoder then refuses them.
        return f"invalid JSON: invalid UTF-8 in a string ({error.reason})"
    detail: object = error.args[0] if isinstance(error, ijson.JSONError) and error.args else str(error)
    if isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")
    # yajl appends a multi-line excerpt with a caret; the first line says what is wrong.
    lines = str(detail).strip().splitlines()
    return f"invalid JSON: {lines[0].rstrip('.') if lines else type(error).__name__}"


_DECODER_ERRORS: Final = (_RefusedError, ijson.JSONError, ValueError, StopIteration)

_VALIDATOR_KEYS: Final = frozenset(("pubkey", "signed_blocks", "signed_attestations"))
_BLOCK_KEYS: Final = frozenset(("slot", "signing_root"))
_ATTESTATION_KEYS: Final = frozenset(("source_epoch", "target_epoch", "signing_root"))


def _record(index: int, field: str, position: int, *rest: str) -> tuple[str | int, ...]:
    """The path of a block or attestation (or one of its fields); built only when something is wrong."""
    return ("data", index, field, position, *rest)


def _decoder_error(error: Exception, where: Sequence[str | int]) -> Exception:
    """What to raise for an exception that came out of the decoder while it was reading at ``where``."""
    if isinstance(error, StopIteration):
        # yajl reports a truncated document itself; this only guards the iterator protocol.
        return InterchangeFormatError(where, "invalid JSON: premature end of document")
    return InterchangeFormatError(where, _json_error_reason(error))


class _Reader:
    """One pass over one document, as a recursive descent over the decoder's events.

    ``data`` is checked here, event by event, against ``$defs/validator`` of ``schema.json`` plus the u64 range:
    this is the fast path that ``interchange.schema`` describes, and tests hold it to ``jsonschema``. Building
    each element as dicts and lists first and checking those would double the time of a large import (half of
    it in the garbage collector). Checking as events arrive also refuses a wrong value at once, before whatever
    it contains has been read, so a hostile element never grows in memory.

    Python 3.11 exception handling costs nothing until something raises, so each level wraps its loop in a
    ``try`` that turns decoder errors into format errors naming the path it was reading.
    """

    def __init__(self, fp: BinaryIO, limits: ParseLimits) -> None:
        self._source = _GuardedSource(fp, limits)
        self._part_records = limits.part_records
        events = _backend.basic_parse(self._source, buf_size=limits.read_size)
        self._next_event: Callable[[], tuple[str, Any]] = events.__next__

    def _next(self, where: Sequence[str | int]) -> tuple[str, Any]:
        try:
            event: tuple[str, Any] = self._next_event()
        except _SourceReadError as failure:
            raise failure.original from None
        except _DECODER_ERRORS as error:
            raise _decoder_error(error, where) from error
        self._source.bytes_without_token = 0
        return event

    def read(self) -> Iterator[Metadata | ValidatorRecordsPart | ValidatorEntryEnd]:
        event, _ = self._next(())
        if event != "start_map":
            raise InterchangeFormatError((), NOT_AN_OBJECT)
        seen: set[str] = set()
        while True:
            event, key = self._next(())
            if event == "end_map":
                break
            if key in seen:
                raise InterchangeFormatError((), duplicate_key(key))
            seen.add(key)
            if key == "metadata":
                event, value = self._next(("metadata",))
                yield metadata_from_json(self._metadata_value(event, value))
            elif key == "data":
                event, _ = self._next(("data",))
                if event != "start_array":
                    raise InterchangeFormatError(("data",), NOT_AN_ARRAY)
                yield from self._data()
            else:
                raise InterchangeFormatError((), unknown_key(key))
        for required in ("metadata", "data"):
            if required not in seen:
                raise InterchangeFormatError((), missing_key(required))
        # The decoder reports bytes after the document only when asked for the event after it.
        try:
            self._next_event()
        except StopIteration:
            return
        except _SourceReadError as failure:
            raise failure.original from None
        except _DECODER_ERRORS as error:
            raise _decoder_error(error, ()) from error
        raise InterchangeFormatError((), "invalid JSON: more than one value")

    def _data(self) -> Iterator[ValidatorRecordsPart | ValidatorEntryEnd]:
        next_event = self._next_event
        source = self._source
        index = 0
        try:
            while True:
                event, _ = next_event()
                if event == "end_array":
                    return
                if event != "start_map":
                    raise InterchangeFormatError(("data", index), NOT_AN_OBJECT)
                yield from self._validator(index)
                source.bytes_without_token = 0
                index += 1
        except _SourceReadError as failure:
            raise failure.original from None
        except _DECODER_ERRORS as error:
            raise _decoder_error(error, ("data", index)) from error

    def _validator(self, index: int) -> Iterator[ValidatorRecordsPart | ValidatorEntryEnd]:
        next_event = self._next_event
        pubkey: bytes | None = None
        has_signed_blocks = False
        has_signed_attestations = False
        key = None
        try:
            while True:
                event, key = next_event()
                if event == "end_map":
                    break
                if key == "pubkey" and pubkey is None:
                    event, value = next_event()
                    pubkey = hex_bytes(value, PUBKEY_BYTES) if event == "string" else None
                    if pubkey is None:
                        raise InterchangeFormatError(("data", index, key), NOT_PUBKEY)
                elif key == "signed_blocks" and not has_signed_blocks:
                    event, _ = next_event()
                    if event != "start_array":
                        raise InterchangeFormatError(("data", index, key), NOT_AN_ARRAY)
                    has_signed_blocks = True
                    yield from self._signed_blocks(index)
                elif key == "signed_attestations" and not has_signed_attestations:
                    event, _ = next_event()
                    if event != "start_array":
                        raise InterchangeFormatError(("data", index, key), NOT_AN_ARRAY)
                    has_signed_attestations = True
                    yield from self._signed_attestations(index)
                else:
                    reason = duplicate_key(key) if key in _VALIDATOR_KEYS else unknown_key(key)
                    raise InterchangeFormatError(("data", index), reason)
        except _DECODER_ERRORS as error:
            raise _decoder_error(error, ("data", index) if key is None else ("data", index, key)) from error
        # Sorted order, like jsonschema's "required" list walked by the agreement test's oracle.
        if pubkey is None:
            raise InterchangeFormatError(("data", index), missing_key("pubkey"))
        if not has_signed_attestations:
            raise InterchangeFormatError(("data", index), missing_key("signed_attestations"))
        if not has_signed_blocks:
            raise InterchangeFormatError(("data", index), missing_key("signed_blocks"))
        yield ValidatorEntryEnd(index, pubkey)

    def _signed_blocks(self, index: int) -> Iterator[ValidatorRecordsPart]:
        next_event = self._next_event
        source = self._source
        part_records = self._part_records
        blocks: list[SignedBlock] = []
        position = 0
        try:
            while True:
                event, _ = next_event()
                if event == "end_array":
                    if blocks:
                        yield ValidatorRecordsPart(index, tuple(blocks), ())
                    return
                if event != "start_map":
                    raise InterchangeFormatError(_record(index, "signed_blocks", position), NOT_AN_OBJECT)
                slot: int | None = None
                signing_root: bytes | None = None
                has_signing_root = False
                while True:
                    event, key = next_event()
                    if event == "end_map":
                        break
                    if key == "slot" and slot is None:
                        event, value = next_event()
                        slot = u64(value) if event == "string" else None
                        if slot is None:
                            where = _record(index, "signed_blocks", position, key)
                            raise InterchangeFormatError(where, u64_reason(value if event == "string" else None))
                    elif key == "signing_root" and not has_signing_root:
                        event, value = next_event()
                        signing_root = hex_bytes(value, ROOT_BYTES) if event == "string" else None
                        if signing_root is None:
                            raise InterchangeFormatError(_record(index, "signed_blocks", position, key), NOT_ROOT)
                        has_signing_root = True
                    else:
                        reason = duplicate_key(key) if key in _BLOCK_KEYS else unknown_key(key)
                        raise InterchangeFormatError(_record(index, "signed_blocks", position), reason)
                if slot is None:
                    raise InterchangeFormatError(_record(index, "signed_blocks", position), missing_key("slot"))
                blocks.append(SignedBlock(slot, signing_root))
                source.bytes_without_token = 0
                position += 1
                if len(blocks) == part_records:
                    yield ValidatorRecordsPart(index, tuple(blocks), ())
                    blocks = []
        except _DECODER_ERRORS as error:
            raise _decoder_error(error, _record(index, "signed_blocks", position)) from error

    def _signed_attestations(self, index: int) -> Iterator[ValidatorRecordsPart]:
        next_event = self._next_event
        source = self._source
        part_records = self._part_records
        attestations: list[SignedAttestation] = []
        position = 0
        try:
            while True:
                event, _ = next_event()
                if event == "end_array":
                    if attestations:
                        yield ValidatorRecordsPart(index, (), tuple(attestations))
                    return
                if event != "start_map":
                    raise InterchangeFormatError(_record(index, "signed_attestations", position), NOT_AN_OBJECT)
                source_epoch: int | None = None
                target_epoch: int | None = None
                signing_root: bytes | None = None
                has_signing_root = False
                while True:
                    event, key = next_event()
                    if event == "end_map":
                        break
                    if key == "source_epoch" and source_epoch is None:
                        event, value = next_event()
                        source_epoch = u64(value) if event == "string" else None
                        if source_epoch is None:
                            where = _record(index, "signed_attestations", position, key)
                            raise InterchangeFormatError(where, u64_reason(value if event == "string" else None))
                    elif key == "target_epoch" and target_epoch is None:
                        event, value = next_event()
                        target_epoch = u64(value) if event == "string" else None
                        if target_epoch is None:
                            where = _record(index, "signed_attestations", position, key)
                            raise InterchangeFormatError(where, u64_reason(value if event == "string" else None))
                    elif key == "signing_root" and not has_signing_root:
                        event, value = next_event()
                        signing_root = hex_bytes(value, ROOT_BYTES) if event == "string" else None
                        if signing_root is None:
                            where = _record(index, "signed_attestations", position, key)
                            raise InterchangeFormatError(where, NOT_ROOT)
                        has_signing_root = True
                    else:
                        reason = duplicate_key(key) if key in _ATTESTATION_KEYS else unknown_key(key)
                        raise InterchangeFormatError(_record(index, "signed_attestations", position), reason)
                if source_epoch is None or target_epoch is None:
                    reason = missing_key("source_epoch" if source_epoch is None else "target_epoch")
                    raise InterchangeFormatError(_record(index, "signed_attestations", position), reason)
                attestations.append(SignedAttestation(source_epoch, target_epoch, signing_root))
                source.bytes_without_token = 0
                position += 1
                if len(attestations) == part_records:
                    yield ValidatorRecordsPart(index, (), tuple(attestations))
                    attestations = []
        except _DECODER_ERRORS as error:
            raise _decoder_error(error, _record(index, "signed_attestations", position)) from error

    def _metadata_value(self, event: str, value: Any) -> Any:
        """The value of ``metadata``, starting with ``event``, as dicts, lists and scalars for ``jsonschema``.

        Whatever it is, it is built before the schema judges it, so its size is bounded first: at most
        ``_MAX_METADATA_EVENTS`` events (a valid one has 6) and the format's depth. Iterative, so nesting cannot
        exhaust the interpreter's stack.
        """
        base: tuple[str | int, ...] = ("metadata",)
        max_depth = _MAX_DEPTH - 1
        if event not in {"start_map", "start_array"}:
            return value
        root: Any = {} if event == "start_map" else []
        building: list[Any] = [root]
        keys: list[str | None] = [None]

        def where(*, inside: bool) -> tuple[str | int, ...]:
            path: list[str | int] = list(base)
            for level, (container, key) in enumerate(zip(building, keys, strict=True)):
                innermost = level == len(building) - 1
                if innermost and not inside:
                    break
                if isinstance(container, dict):
                    if key is None:
                        break
                    path.append(key)
                else:
                    path.append(len(container) if innermost else len(container) - 1)
            return tuple(path)

        for _ in range(_MAX_METADATA_EVENTS):
            try:
                event, value = self._next_event()
            except _SourceReadError as failure:
                raise failure.original from None
            except _DECODER_ERRORS as error:
                raise _decoder_error(error, where(inside=True)) from error
            self._source.bytes_without_token = 0
            current = building[-1]
            if event == "map_key":
                if value in current:
                    raise InterchangeFormatError(where(inside=False), duplicate_key(value))
                keys[-1] = value
            elif event in {"end_map", "end_array"}:
                building.pop()
                keys.pop()
                if not building:
                    return root
            else:
                opens = event in {"start_map", "start_array"}
                child: Any = ({} if event == "start_map" else []) if opens else value
                if isinstance(current, dict):
                    current[keys[-1]] = child
                else:
                    current.append(child)
                if opens:
                    building.append(child)
                    keys.append(None)
                    if len(building) > max_depth:
                        raise InterchangeFormatError(
                            where(inside=False),
                            f"nested deeper than an interchange document can be ({_MAX_DEPTH} levels)",
                        )
        raise InterchangeFormatError(
            base, f"larger than valid metadata can be (over {_MAX_METADATA_EVENTS} JSON tokens)"
        )


def stream_interchange_parts(
    fp: BinaryIO, *, limits: ParseLimits = DEFAULT_LIMITS
) -> Iterator[Metadata | ValidatorRecordsPart | ValidatorEntryEnd]:
    """Yield the document's ``Metadata`` (once) and, for each element of ``data``, its records in parts of at most
    ``limits.part_records`` (``ValidatorRecordsPart``) followed by its ``ValidatorEntryEnd``.

    For consumers that must not hold one entry whole (a complete history of millions of records under one key).
    Same reader, same refusals, same messages as ``stream_interchange``; a part is only valid once its entry's end
    has been yielded, and the document only once the iterator is exhausted.
    """
    return _Reader(fp, limits).read()


def stream_interchange(
    fp: BinaryIO, *, limits: ParseLimits = DEFAULT_LIMITS
) -> Iterator[Metadata | ValidatorRecords]:
    """Yield the document's ``Metadata`` (once) and each ``ValidatorRecords`` as soon as each is read and valid.

    ``fp`` is read in ``limits.read_size`` pieces and never rewound; it may be a socket-like object whose
    ``read`` returns short pieces. Raises ``InterchangeError`` as described in the module docstring; records
    yielded before the error came from a document that is, as a whole, refused.
    """
    blocks: list[SignedBlock] = []
    attestations: list[SignedAttestation] = []
    for item in stream_interchange_parts(fp, limits=limits):
        if isinstance(item, ValidatorRecordsPart):
            blocks.extend(item.signed_blocks)
            attestations.extend(item.signed_attestations)
        elif isinstance(item, ValidatorEntryEnd):
            yield ValidatorRecords(item.pubkey, tuple(blocks), tuple(attestations))
            blocks = []
            attestations = []
        else:
            yield item


def parse_interchange(data: bytes, *, limits: ParseLimits = DEFAULT_LIMITS) -> Interchange:
    """Read a whole document held in memory. Raises ``InterchangeError`` as described in the module docstring."""
    metadata: Metadata | None = None
    records: list[ValidatorRecords] = []
    for item in stream_interchange(io.BytesIO(data), limits=limits):
        if isinstance(item, ValidatorRecords):
            records.append(item)
        else:
            metadata = item
    if metadata is None:  # stream_interchange refuses a document without metadata; this satisfies the types
        raise InterchangeFormatError((), missing_key("metadata"))
    return Interchange(metadata, tuple(records))


__all__ = ["DEFAULT_LIMITS", "ParseLimits", "parse_interchange", "stream_interchange", "stream_interchange_parts"]
