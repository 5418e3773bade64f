"""Fuzz targets: each takes arbitrary bytes and must end with an answer or one of the project's own errors.

``TARGETS`` maps a name to a function of ``bytes``. A target returns normally when the code under test gave an
answer (records read, a checkpoint loaded, a document parsed, a signing decision) or refused the input with
one of our errors (``SidecarError``, ``InterchangeError``, a gRPC status the servicer chose on purpose). Any
other exception escapes, and ``FuzzFinding`` is raised for what is not an exception but is still wrong (the
servicer answering "internal error", records handed out out of order). Hangs and memory are bounded by the
runner (``tests/fuzz/run.py``: libFuzzer's ``-timeout`` and ``-rss_limit_mb``).

* ``segment``: a decision-log segment, read in 1 MiB and in 7-byte chunks (which must agree), read by
  ``read_records`` (``verify``'s path) and recovered by
  ``Store.open_or_create`` (scan, replay through the state codec, torn-tail repair, opening for appends),
  which must then open again.
* ``checkpoint``: a checkpoint file, read by ``read_checkpoint`` and its body by the state codec, then
  recovered by ``Store.open_or_create``.
* ``interchange``: an EIP-3076 document, through ``parse_interchange`` and ``stream_interchange_parts``, which
  must agree (the same documents accepted, the same messages for the rest), and the store's import staging.
* ``request``: a request message of one of the signing and admin RPCs from raw protobuf bytes, through the
  servicer's validation and decision path against a real store (in a temporary directory, in process).

The first byte of a ``segment`` or ``checkpoint`` input is a mode, so that the fuzzer gets past checksums:
bit 0 recomputes every CRC (each record's, or the checkpoint's); for a segment, bit 1 splits the log into two
segments, bit 2 also recovers a store from it (ten times slower than reading alone) and bit 3 writes the segment
headers as format 1 (0.2.0's, still read; recovery then starts a format-2 segment). Files go to a scratch
directory (``$SIDECAR_FUZZ_SCRATCH``, or a temporary one under ``/dev/shm`` when it exists: recovery fsyncs, and
memory makes that cheap).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crc32c
import grpc
from google.protobuf.message import DecodeError

from interchange import InterchangeError, parse_interchange, stream_interchange_parts
from sidecar import records as codec
from sidecar.domain import valid_pubkey
from sidecar.errors import SidecarError
from sidecar.local import LocalBackend
from sidecar.metrics import Metrics
from sidecar.service import AdminServicer, BackendHolder, SigningServicer
from sidecar.storage import FileOps, read_checkpoint, read_records, verify_checkpoint
from sidecar.storage.framing import RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE, encode_segment_header
from sidecar.storage.reader import SegmentReader
from sidecar.storage.segments import SegmentInfo, segment_name
from sidecar.store import Store, StoreOptions, stage_import
from slashing_protection.v1 import admin_pb2, signing_pb2

GENESIS = bytes(range(32))
REGISTERED = (valid_pubkey(bytes([0xA1]) * 48), valid_pubkey(bytes([0xB2]) * 48))
IDENTITY = ('{"format": 1, "genesis_validators_root": "0x' + GENESIS.hex() + '"}\n').encode()
FIXED_NOW_NS = 1_700_000_000 * 10**9

_CHECKPOINT_HEADER = struct.Struct("<8sBQQ32s")


class FuzzFindingError(AssertionError):
    """An input made the code under test do something wrong without raising."""


# -- scratch space --------------------------------------------------------------------------------------------

_scratch_root: Path | None = None


def _scratch_base() -> Path:
    """``$SIDECAR_FUZZ_SCRATCH`` when set (the runner's callers set it: libFuzzer ends the process without
    running ``atexit``, so they remove it), else a temporary directory removed at exit."""
    global _scratch_root
    if _scratch_root is None:
        given = os.environ.get("SIDECAR_FUZZ_SCRATCH")
        if given:
            _scratch_root = Path(given)
            _scratch_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        else:
            base = "/dev/shm" if os.path.isdir("/dev/shm") else None
            _scratch_root = Path(tempfile.mkdtemp(prefix="sidecar-fuzz-", dir=base))
            atexit.register(shutil.rmtree, _scratch_root, True)
    return _scratch_root


def _scratch() -> Path:
    """An empty data directory, with its identity, for this input (the same path each time, emptied first)."""
    data_dir = _scratch_base() / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(mode=0o700)
    (data_dir / "IDENTITY.json").write_bytes(IDENTITY)
    return data_dir


def _options() -> StoreOptions:
    return StoreOptions(segment_bytes=4096, clock_ns=lambda: FIXED_NOW_NS)


def _recover(data_dir: Path) -> None:
    """Open the store as the sidecar does at start (refusing with our errors is fine) and close it; a directory
    that opened once (its torn tail repaired) must open again."""
    try:
        store = Store.open_or_create(data_dir, GENESIS, _options())
    except SidecarError:
        return
    store.close(final_checkpoint=False)
    try:
        store = Store.open_or_create(data_dir, GENESIS, _options())
    except SidecarError as error:
        raise FuzzFindingError(f"a directory that recovered once refuses to open again: {error}") from error
    store.close(final_checkpoint=False)


# -- segment --------------------------------------------------------------------------------------------------


def fix_record_crcs(body: bytes) -> bytes:
    """Recompute the CRC of every frame the length fields delimit, so that mutations reach what lies past it."""
    fixed = bytearray(body)
    offset = 0
    while offset + RECORD_HEADER_SIZE <= len(fixed):
        (length,) = struct.unpack_from("<I", fixed, offset)
        end = offset + RECORD_HEADER_SIZE + length
        if end > len(fixed):
            break
        struct.pack_into("<I", fixed, offset + 4, crc32c.crc32c(bytes(fixed[offset + 8 : end])))
        offset = end
    return bytes(fixed)


def _frame_boundaries(body: bytes) -> list[tuple[int, int]]:
    """(offset, sequence) of each frame start the length fields delimit."""
    found = []
    offset = 0
    while offset + RECORD_HEADER_SIZE <= len(body):
        length, _, _, sequence = struct.unpack_from("<IIBQ", body, offset)
        found.append((offset, sequence))
        offset += RECORD_HEADER_SIZE + length
    return found


def _read_segment(segment_info: SegmentInfo, chunk_bytes: int) -> tuple[object, ...]:
    reader = SegmentReader(FileOps(), segment_info, chunk_bytes=chunk_bytes, last_in_log=True)
    try:
        records = [record for batch in reader.batches() for record in batch]
    except SidecarError as error:
        return ("refused", str(error))
    return (records, reader.outcome, reader.end_offset, reader.detail, reader.file_size)


def segment(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    if mode & 1:
        body = fix_record_crcs(body)
    data_dir = _scratch()
    log_dir = data_dir / "log"
    log_dir.mkdir(mode=0o700)
    files = [(1, body)]
    frames = _frame_boundaries(body)
    if mode & 2 and len(frames) >= 2:
        split, sequence = frames[len(frames) // 2]
        if 0 < sequence < 2**64:
            files = [(1, body[:split]), (sequence, body[split:])]
    version = 1 if mode & 8 else 2
    for first_sequence, content in files:
        header = encode_segment_header(first_sequence, version=version)
        (log_dir / segment_name(first_sequence)).write_bytes(header + content)
    try:
        scan = read_records(log_dir, FileOps())
        previous = 0
        for record in scan:
            if previous and record.sequence != previous + 1:
                raise FuzzFindingError(f"record {record.sequence} handed out after {previous}")
            previous = record.sequence
    except SidecarError:
        pass
    if len(files) == 1:
        # Chunk boundaries are where a streaming reader goes wrong: a tiny read chunk must conclude the same.
        segment_info = SegmentInfo(log_dir / segment_name(1), 1, len(body) + SEGMENT_HEADER_SIZE)
        whole, chunked = (_read_segment(segment_info, chunk_bytes) for chunk_bytes in (1 << 20, 7))
        if whole != chunked:
            raise FuzzFindingError(f"read in 1 MiB chunks: {whole!r}; in 7-byte chunks: {chunked!r}")
    if mode & 4:
        _recover(data_dir)


# -- checkpoint ------------------------------------------------------------------------------------------------


def wrap_checkpoint(body: bytes, sequence: int = 1) -> bytes:
    """A checkpoint container, valid by its CRC and length, around ``body``."""
    header = _CHECKPOINT_HEADER.pack(b"SIDECKPT", 1, sequence, FIXED_NOW_NS, GENESIS)
    covered = header + body + struct.pack("<Q", len(body))
    return covered + struct.pack("<I", crc32c.crc32c(covered))


def checkpoint(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0], data[1:]
    content = wrap_checkpoint(rest) if mode & 1 else rest
    data_dir = _scratch()
    checkpoint_dir = data_dir / "checkpoints"
    checkpoint_dir.mkdir(mode=0o700)
    path = checkpoint_dir / "checkpoint-00000000000000000001.ckpt"
    path.write_bytes(content)
    problem = verify_checkpoint(path)
    try:
        loaded = read_checkpoint(path, FileOps())
    except SidecarError:
        if problem is None:
            raise FuzzFindingError("verify_checkpoint passed a checkpoint read_checkpoint refuses") from None
        return
    if problem is not None:
        raise FuzzFindingError(f"verify_checkpoint refused a checkpoint read_checkpoint loads: {problem}")
    with contextlib.suppress(codec.CodecError):
        for _ in codec.decode_checkpoint_body(loaded.body):
            pass
    _recover(data_dir)


# -- interchange ---------------------------------------------------------------------------------------------


def _outcome(read: Callable[[], object]) -> str:
    try:
        read()
    except InterchangeError as error:
        return f"refused: {error}"
    return "accepted"


def interchange(data: bytes) -> None:
    # The parser's contract: the in-memory and the streaming reader accept and refuse the same documents with
    # the same messages.
    whole = _outcome(lambda: parse_interchange(data))
    streamed = _outcome(lambda: list(stream_interchange_parts(io.BytesIO(data))))
    if whole != streamed:
        raise FuzzFindingError(f"parse_interchange {whole!r} but stream_interchange_parts {streamed!r}")
    with contextlib.suppress(SidecarError):
        stage_import(io.BytesIO(data), _options(), genesis_validators_root=GENESIS)


# -- request ---------------------------------------------------------------------------------------------------


class _AbortedError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class _Context:
    """The part of ``grpc.aio.ServicerContext`` the servicers use: no deadline, and ``abort`` raises."""

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _AbortedError(code, details)


class _Service:
    """One store (in a temporary directory, two keys registered) and the servicers over it, for the process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        data_dir = _scratch_base() / "service"
        self.store = Store.open_or_create(data_dir, GENESIS, _options())
        self.store.register_validators(list(REGISTERED))
        backend = LocalBackend(self.store, self.loop)
        holder = BackendHolder()
        holder.backend = backend
        holder.accepting = True
        self.signing = SigningServicer(holder, Metrics())
        self.admin = AdminServicer(holder, backend.save_checkpoint)
        atexit.register(self.close)

    def close(self) -> None:
        with contextlib.suppress(SidecarError):
            self.store.close(final_checkpoint=False)
        self.loop.close()

    def call(self, method: Callable[..., Any], request: Any) -> Any:
        async def run() -> Any:
            result = method(request, _Context())
            if hasattr(result, "__aiter__"):
                return [item async for item in result]
            return await result

        return self.loop.run_until_complete(run())


_service: _Service | None = None

# The first byte picks the RPC; the rest is its request message.
_RPCS: list[tuple[str, str, Any]] = [
    ("signing", "CheckAndRecordBlock", signing_pb2.CheckAndRecordBlockRequest),
    ("signing", "CheckAndRecordAttestation", signing_pb2.CheckAndRecordAttestationRequest),
    ("signing", "CheckAndRecordAttestations", signing_pb2.CheckAndRecordAttestationsRequest),
    ("admin", "RegisterValidators", admin_pb2.RegisterValidatorsRequest),
    ("admin", "GetValidatorSummary", admin_pb2.GetValidatorSummaryRequest),
    ("admin", "ListDecisions", admin_pb2.ListDecisionsRequest),
]


def request(data: bytes) -> None:
    global _service
    if not data:
        return
    servicer_name, method_name, message_type = _RPCS[data[0] % len(_RPCS)]
    try:
        message = message_type.FromString(data[1:])
    except DecodeError:
        return  # the transport refuses bytes that are not the message; our code never sees them
    if _service is None:
        _service = _Service()
    servicer = getattr(_service, servicer_name)
    try:
        _service.call(getattr(servicer, method_name), message)
    except _AbortedError as aborted:
        # A status chosen for a domain error is an answer; "internal error" or a storage failure on a healthy
        # temporary directory means an exception the servicer did not expect.
        if aborted.code is grpc.StatusCode.UNAVAILABLE and (
            "internal error" in aborted.details or "storage error" in aborted.details
        ):
            raise FuzzFindingError(f"{method_name} failed unexpectedly: {aborted}") from aborted


TARGETS: dict[str, Callable[[bytes], None]] = {
    "segment": segment,
    "checkpoint": checkpoint,
    "interchange": interchange,
    "request": request,
}


def quiet_logs() -> None:
    """The code under test logs every refusal and repair; a fuzzing run would drown in them."""
    logging.disable(logging.CRITICAL)
