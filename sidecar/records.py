"""Codecs of the domain's records: the payloads of log records and the body of checkpoints, what the store writes
inside the storage containers.

The containers (framing, segments, checkpoint files, checksums) are `sidecar.storage`'s, which treats these
payloads as opaque bytes; this module, above it, fixes what they mean. It depends on the domain (history, rules,
`sidecar.domain`) and on storage's framing limit, never on the store. All integers are little-endian; roots are
32 raw bytes, pubkeys 48.

Log record types (1..127: type 0 is reserved by the framing, and bit 7 of the type byte is its mark of the first
record of a write):

=====  ======================  =============================================================================
type   name                    payload
=====  ======================  =============================================================================
1      BLOCK_DECISION          pubkey[48] slot:u64 signing_root[32] reason:u8 reserved:u8 unix_nanos:u64
2      ATTESTATION_DECISION    pubkey[48] source:u64 target:u64 signing_root[32] reason:u8 reserved:u8
                               unix_nanos:u64
3      REGISTER                count:u32 then count x pubkey[48]
4      IMPORT_VALIDATOR        strategy:u8 pubkey[48] blocks:u32 attestations:u32, then per block
                               slot:u64 root_known:u8 root[32], then per attestation source:u64 target:u64
                               root_known:u8 root[32]
                               (written by v0.1 only; still read)
5      IMPORT_COMMIT           validators:u32 (how many import records it commits; see below)
6      IMPORT_PRUNED_VALIDATOR strategy:u8 pubkey[48] floors_present:u8 (bit 0 slot, bit 1 source, bit 2
                               target) slot_floor:u64 source_floor:u64 target_floor:u64 blocks:u32
                               attestations:u32, then per block slot:u64 root_known:u8 root[32] (slots strictly
                               increasing), then targets:u64[n] sources:u64[n] root_known:u8[n] roots:32[n]
                               ordered by (target, source), no pair twice
7      HIGH_WATERMARK          present:u8 slot:u64 epoch:u64 (present 0: the watermark was removed; slot and
                               epoch are then 0)
=====  ======================  =============================================================================

`reason` is the `Reason` number; the verdict follows from it (reasons 1 and 2 allow). `strategy` is 0 for
complete, 1 for minimal (the history is minified after the records are merged).

An import is its import records (type 4 or 6), one per validator, followed by its IMPORT_COMMIT: replay applies it
only at the commit, so an import cut short by a crash is not applied at all. The commit applies the last
`validators` import records before it. Decisions, registrations and high watermarks may come between them (the
records are written before the commit without stopping signing), but never another import's records or a checkpoint
boundary: the store runs one import at a time and takes no checkpoint while one is being written. Import records
before the last `validators` are the remains of an import that a crash cut short, and are dropped; so are import
records that no commit follows. (v0.1 wrote an import as one run, records and commit together, which this reads the
same.)

Type 6 replaced type 4 when imports began to prune each validator's records to the history window while reading
the document (sidecar.history.StagedHistory), so that a file of any length is held as about a window of records
per key. The records alone then no longer imply the bounds: a vote pruned from the file may have had a higher
source, or a dropped block a higher slot, than anything kept, and merging the kept records without those floors
would lower a bound and could let a surround or a double vote through. Type 6 carries them explicitly (floor
values as in the checkpoint body: a floor whose bit is clear is "none", and its field is 0). Type 4 is applied
as if its records were staged the same way, without floors, which is what its records meant. The attestation
arrays are laid out as in checkpoints, so a large import encodes and replays at C speed.

A HIGH_WATERMARK record sets the global high watermark (`sidecar.rules.HighWatermark`) to its value, replacing
any before it, or removes it: replay keeps the last one, and a checkpoint carries the value in force at its
sequence. A sidecar older than the type (0.2.0) refuses to open a directory whose log holds one, naming the
record and its type.

Checkpoint body (the checkpoint container carries its own format version):

    version 1:  body_version:u8 (1)  validators:u64  then the validators
    version 2:  body_version:u8 (2)  validators:u64  high_watermark_slot:u64 high_watermark_epoch:u64
                then the validators

Version 2 is version 1 with the high watermark in force at the checkpoint's sequence; a body is written as
version 1 when no watermark is in force, so a directory that never sets one stays readable by 0.2.0, which knows
version 1 only (and refuses version 2 naming it). Each validator:

      pubkey[48] applied_sequence:u64 allowed_count:u64 refused_count:u64
      floors_present:u8 (bit 0 slot, bit 1 source, bit 2 target) slot_floor:u64 source_floor:u64 target_floor:u64
      last_decision_type:u8 (0 = none) last_decision_sequence:u64 last_decision_length:u32
      last_decision[...]
      blocks:u32 then per block slot:u64 root_known:u8 root[32]
      attestations:u32 targets:u64[n] sources:u64[n] root_known:u8[n] roots:32[n]

The attestation arrays are stored as they sit in memory, ordered by (target, source), so a checkpoint of 100,000
validators is mostly a copy of arrays rather than per-record packing.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sidecar.domain import PUBKEY_SIZE, ROOT_SIZE
from sidecar.history import EPOCH_FLOOR_NONE, SLOT_FLOOR_NONE, SOURCE_FLOOR_NONE, ValidatorHistory
from sidecar.rules import HighWatermark, Reason
from sidecar.storage import MAX_PAYLOAD_SIZE

__all__ = [
    "ATTESTATION_DECISION",
    "BLOCK_DECISION",
    "CHECKPOINT_BODY_VERSION",
    "HIGH_WATERMARK",
    "IMPORT_COMMIT",
    "IMPORT_PRUNED_VALIDATOR",
    "IMPORT_VALIDATOR",
    "MAX_IMPORT_RECORDS",
    "REGISTER",
    "AttestationDecisionRecord",
    "BlockDecisionRecord",
    "CheckpointHeader",
    "CodecError",
    "ImportValidatorRecord",
    "ImportedValidator",
    "decode_attestation_decision",
    "decode_block_decision",
    "decode_checkpoint_body",
    "decode_checkpoint_header",
    "decode_high_watermark",
    "decode_import_commit",
    "decode_import_pruned_validator",
    "decode_import_validator",
    "decode_register",
    "encode_attestation_decision",
    "encode_block_decision",
    "encode_checkpoint_header",
    "encode_checkpoint_validator",
    "encode_high_watermark",
    "encode_import_commit",
    "encode_import_pruned_validator",
    "encode_import_validator",
    "encode_register",
    "last_decision_type",
]

BLOCK_DECISION = 1
ATTESTATION_DECISION = 2
REGISTER = 3
IMPORT_VALIDATOR = 4
IMPORT_COMMIT = 5
IMPORT_PRUNED_VALIDATOR = 6
HIGH_WATERMARK = 7

# The newest body version this code writes and reads; it reads every version from 1 up.
CHECKPOINT_BODY_VERSION = 2
_CHECKPOINT_BODY_WITHOUT_WATERMARK = 1

_BLOCK = struct.Struct("<48sQ32sBBQ")
_ATTESTATION = struct.Struct("<48sQQ32sBBQ")
_U32 = struct.Struct("<I")
_IMPORT_HEAD = struct.Struct("<B48sII")
_BLOCK_ENTRY = struct.Struct("<QB32s")
_ATTESTATION_ENTRY = struct.Struct("<QQB32s")
_VALIDATOR_HEAD = struct.Struct("<48sQQQBQQQBQI")
_IMPORT_PRUNED_HEAD = struct.Struct("<B48sBQQQII")
_HIGH_WATERMARK = struct.Struct("<BQQ")
_CHECKPOINT_HEAD_V1 = struct.Struct("<BQ")
_CHECKPOINT_HEAD_V2 = struct.Struct("<BQQQ")
_ATTESTATION_COLUMNS_SIZE = 8 + 8 + 1 + ROOT_SIZE
_ZERO_ROOT = bytes(ROOT_SIZE)
# Bytes per attestation in a checkpoint: target, source, root_known and root, each in its own array.
_ATTESTATION_ARRAYS_ENTRY_SIZE = 8 + 8 + 1 + ROOT_SIZE

# array("Q").tobytes() is native-endian; the formats are little-endian.
_NEEDS_BYTESWAP = sys.byteorder != "little"

# The most blocks and attestations one IMPORT_PRUNED_VALIDATOR record can hold (an attestation is the larger
# entry): a validator with more, inside its history window, cannot be imported.
MAX_IMPORT_RECORDS = (MAX_PAYLOAD_SIZE - _IMPORT_PRUNED_HEAD.size) // _ATTESTATION_COLUMNS_SIZE


class CodecError(ValueError):
    """A payload does not decode: the bytes passed their checksum, so this is a bug or a foreign file."""


@dataclass(frozen=True, slots=True)
class BlockDecisionRecord:
    pubkey: bytes
    slot: int
    signing_root: bytes
    reason: Reason
    unix_nanos: int


@dataclass(frozen=True, slots=True)
class AttestationDecisionRecord:
    pubkey: bytes
    source_epoch: int
    target_epoch: int
    signing_root: bytes
    reason: Reason
    unix_nanos: int


@dataclass(frozen=True, slots=True)
class ImportValidatorRecord:
    minimal: bool
    pubkey: bytes
    blocks: tuple[tuple[int, bytes | None], ...]
    attestations: tuple[tuple[int, int, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class ImportedValidator:
    """An IMPORT_PRUNED_VALIDATOR record: the staged history (records and floors) to merge into `pubkey`'s."""

    minimal: bool
    pubkey: bytes
    history: ValidatorHistory


def _reason(value: int) -> Reason:
    try:
        return Reason(value)
    except ValueError as error:
        raise CodecError(f"unknown reason {value}") from error


# ---------------------------------------------------------------- decisions (the hot path: plain struct calls)


def encode_block_decision(pubkey: bytes, slot: int, signing_root: bytes, reason: int, unix_nanos: int) -> bytes:
    return _BLOCK.pack(pubkey, slot, signing_root, reason, 0, unix_nanos)


def decode_block_decision(payload: bytes) -> BlockDecisionRecord:
    if len(payload) != _BLOCK.size:
        raise CodecError(f"block decision payload is {len(payload)} bytes, expected {_BLOCK.size}")
    pubkey, slot, root, reason, _reserved, nanos = _BLOCK.unpack(payload)
    return BlockDecisionRecord(pubkey, slot, root, _reason(reason), nanos)


def encode_attestation_decision(
    pubkey: bytes, source_epoch: int, target_epoch: int, signing_root: bytes, reason: int, unix_nanos: int
) -> bytes:
    return _ATTESTATION.pack(pubkey, source_epoch, target_epoch, signing_root, reason, 0, unix_nanos)


def unpack_attestation_decision(payload: bytes) -> tuple[bytes, int, int, bytes, int, int, int]:
    """The raw fields (pubkey, source, target, root, reason, reserved, unix_nanos), for replay's hot loop."""
    return _ATTESTATION.unpack(payload)


def decode_attestation_decision(payload: bytes) -> AttestationDecisionRecord:
    if len(payload) != _ATTESTATION.size:
        raise CodecError(f"attestation decision payload is {len(payload)} bytes, expected {_ATTESTATION.size}")
    pubkey, source, target, root, reason, _reserved, nanos = _ATTESTATION.unpack(payload)
    return AttestationDecisionRecord(pubkey, source, target, root, _reason(reason), nanos)


# ---------------------------------------------------------------- registration and import


def encode_register(pubkeys: Sequence[bytes]) -> bytes:
    return _U32.pack(len(pubkeys)) + b"".join(pubkeys)


def decode_register(payload: bytes) -> list[bytes]:
    if len(payload) < _U32.size:
        raise CodecError("register payload too short")
    (count,) = _U32.unpack_from(payload)
    if len(payload) != _U32.size + count * PUBKEY_SIZE:
        raise CodecError(f"register payload length {len(payload)} does not hold {count} pubkeys")
    return [payload[4 + i * PUBKEY_SIZE : 4 + (i + 1) * PUBKEY_SIZE] for i in range(count)]


def encode_import_validator(
    minimal: bool,
    pubkey: bytes,
    blocks: list[tuple[int, bytes | None]],
    attestations: list[tuple[int, int, bytes | None]],
) -> bytes:
    parts = [_IMPORT_HEAD.pack(1 if minimal else 0, pubkey, len(blocks), len(attestations))]
    block_entry = _BLOCK_ENTRY.pack
    parts.extend(block_entry(slot, root is not None, root or _ZERO_ROOT) for slot, root in blocks)
    attestation_entry = _ATTESTATION_ENTRY.pack
    parts.extend(
        attestation_entry(source, target, root is not None, root or _ZERO_ROOT)
        for source, target, root in attestations
    )
    return b"".join(parts)


def decode_import_validator(payload: bytes) -> ImportValidatorRecord:
    if len(payload) < _IMPORT_HEAD.size:
        raise CodecError("import payload too short")
    minimal, pubkey, block_count, attestation_count = _IMPORT_HEAD.unpack_from(payload)
    expected = _IMPORT_HEAD.size + block_count * _BLOCK_ENTRY.size + attestation_count * _ATTESTATION_ENTRY.size
    if len(payload) != expected:
        raise CodecError(f"import payload length {len(payload)}, expected {expected}")
    offset = _IMPORT_HEAD.size
    blocks = []
    for slot, known, root in _BLOCK_ENTRY.iter_unpack(payload[offset : offset + block_count * _BLOCK_ENTRY.size]):
        blocks.append((slot, root if known else None))
    offset += block_count * _BLOCK_ENTRY.size
    attestations = []
    for source, target, known, root in _ATTESTATION_ENTRY.iter_unpack(payload[offset:]):
        attestations.append((source, target, root if known else None))
    return ImportValidatorRecord(bool(minimal), pubkey, tuple(blocks), tuple(attestations))


def _floor_bits(history: ValidatorHistory) -> int:
    floors = 0
    if history.slot_floor != SLOT_FLOOR_NONE:
        floors |= 1
    if history.source_epoch_floor != SOURCE_FLOOR_NONE:
        floors |= 2
    if history.target_epoch_floor != EPOCH_FLOOR_NONE:
        floors |= 4
    return floors


def _raise_floors_from(history: ValidatorHistory, floors: int, slot: int, source: int, target: int) -> None:
    history.raise_floors(
        slot if floors & 1 else SLOT_FLOOR_NONE,
        source if floors & 2 else SOURCE_FLOOR_NONE,
        target if floors & 4 else EPOCH_FLOOR_NONE,
    )


def encode_import_pruned_validator(minimal: bool, pubkey: bytes, history: ValidatorHistory) -> bytes:
    """The record of one validator of an import: `history` is its staged records and floors
    (StagedHistory.finish). Raises ValueError when it holds more than MAX_IMPORT_RECORDS records."""
    if len(history.blocks) + len(history.targets) > MAX_IMPORT_RECORDS:
        raise ValueError(f"an import record holds at most {MAX_IMPORT_RECORDS} blocks and attestations")
    roots, known = history.root_arrays()
    parts = [
        _IMPORT_PRUNED_HEAD.pack(
            1 if minimal else 0,
            pubkey,
            _floor_bits(history),
            max(history.slot_floor, 0),
            history.source_epoch_floor,
            max(history.target_epoch_floor, 0),
            len(history.blocks),
            len(history.targets),
        )
    ]
    block_entry = _BLOCK_ENTRY.pack
    parts.extend(
        block_entry(slot, root is not None, root or _ZERO_ROOT) for slot, root in sorted(history.blocks.items())
    )
    parts += [_array_bytes(history.targets), _array_bytes(history.sources), bytes(known), bytes(roots)]
    return b"".join(parts)


def decode_import_pruned_validator(payload: bytes) -> ImportedValidator:
    if len(payload) < _IMPORT_PRUNED_HEAD.size:
        raise CodecError("import payload too short")
    minimal, pubkey, floors, slot_floor, source_floor, target_floor, block_count, attestation_count = (
        _IMPORT_PRUNED_HEAD.unpack_from(payload)
    )
    expected = (
        _IMPORT_PRUNED_HEAD.size + block_count * _BLOCK_ENTRY.size + attestation_count * _ATTESTATION_COLUMNS_SIZE
    )
    if len(payload) != expected:
        raise CodecError(f"import payload length {len(payload)}, expected {expected}")
    if minimal > 1 or floors > 7:
        raise CodecError(f"import record with strategy {minimal} and floor bits {floors}")
    history = ValidatorHistory()
    view = memoryview(payload)
    offset = _IMPORT_PRUNED_HEAD.size
    previous_slot = -1
    for slot, known, root in _BLOCK_ENTRY.iter_unpack(view[offset : offset + block_count * _BLOCK_ENTRY.size]):
        if slot <= previous_slot:
            raise CodecError("import record blocks out of order")
        previous_slot = slot
        history.add_block(slot, bytes(root) if known else None)
    offset += block_count * _BLOCK_ENTRY.size
    _load_attestation_columns(history, view, offset, attestation_count, f"import record of 0x{pubkey.hex()}")
    targets, sources = history.targets, history.sources
    for i in range(1, attestation_count):
        if targets[i - 1] == targets[i] and sources[i - 1] == sources[i]:
            raise CodecError(f"import record of 0x{pubkey.hex()}: attestation ({sources[i]}, {targets[i]}) twice")
    _raise_floors_from(history, floors, slot_floor, source_floor, target_floor)
    return ImportedValidator(bool(minimal), pubkey, history)


def _load_attestation_columns(
    history: ValidatorHistory, view: memoryview, offset: int, count: int, whose: str
) -> int:
    """Loads `count` attestations stored as columns at `offset` (targets:u64[n] sources:u64[n] root_known:u8[n]
    roots:32[n], as import records and checkpoints hold them) into `history`; returns the offset after them.
    The caller has checked that the bytes are there."""
    width = count * 8
    targets = array("Q")
    targets.frombytes(view[offset : offset + width])
    offset += width
    sources = array("Q")
    sources.frombytes(view[offset : offset + width])
    offset += width
    known_flags = bytearray(view[offset : offset + count])
    offset += count
    roots = bytearray(view[offset : offset + count * ROOT_SIZE])
    offset += count * ROOT_SIZE
    if _NEEDS_BYTESWAP:
        targets.byteswap()
        sources.byteswap()
    try:
        history.load_attestation_arrays(targets, sources, roots, known_flags)
    except ValueError as error:
        raise CodecError(f"{whose}: {error}") from error
    return offset


def encode_import_commit(validators: int) -> bytes:
    return _U32.pack(validators)


def decode_import_commit(payload: bytes) -> int:
    if len(payload) != _U32.size:
        raise CodecError("import commit payload must be 4 bytes")
    return int(_U32.unpack(payload)[0])


# ---------------------------------------------------------------- the high watermark


def encode_high_watermark(high_watermark: HighWatermark | None) -> bytes:
    """The payload of a HIGH_WATERMARK record: set to `high_watermark`, or removed (None)."""
    if high_watermark is None:
        return _HIGH_WATERMARK.pack(0, 0, 0)
    return _HIGH_WATERMARK.pack(1, high_watermark.slot, high_watermark.epoch)


def decode_high_watermark(payload: bytes) -> HighWatermark | None:
    if len(payload) != _HIGH_WATERMARK.size:
        raise CodecError(f"high watermark payload is {len(payload)} bytes, expected {_HIGH_WATERMARK.size}")
    present, slot, epoch = _HIGH_WATERMARK.unpack(payload)
    if present == 1:
        return HighWatermark(slot, epoch)
    if present == 0 and slot == 0 and epoch == 0:
        return None
    raise CodecError(f"high watermark record with present {present}, slot {slot}, epoch {epoch}")


# ---------------------------------------------------------------- checkpoint body


@dataclass(frozen=True, slots=True)
class CheckpointHeader:
    """What a checkpoint body says before its validators; `size` is where they start."""

    version: int
    validators: int
    high_watermark: HighWatermark | None
    size: int


def encode_checkpoint_header(validator_count: int, high_watermark: HighWatermark | None = None) -> bytes:
    """Version 1 without a watermark (readable by 0.2.0), version 2 with one (see the module doc)."""
    if high_watermark is None:
        return _CHECKPOINT_HEAD_V1.pack(_CHECKPOINT_BODY_WITHOUT_WATERMARK, validator_count)
    return _CHECKPOINT_HEAD_V2.pack(
        CHECKPOINT_BODY_VERSION, validator_count, high_watermark.slot, high_watermark.epoch
    )


def decode_checkpoint_header(body: bytes | memoryview) -> CheckpointHeader:
    """The header of a body of any known version; raises CodecError for a short one or an unknown version (a
    newer sidecar's: the message says so)."""
    if len(body) < _CHECKPOINT_HEAD_V1.size:
        raise CodecError("checkpoint body too short")
    version = body[0]
    if version == _CHECKPOINT_BODY_WITHOUT_WATERMARK:
        _, count = _CHECKPOINT_HEAD_V1.unpack_from(body)
        return CheckpointHeader(version, count, None, _CHECKPOINT_HEAD_V1.size)
    if version == CHECKPOINT_BODY_VERSION:
        if len(body) < _CHECKPOINT_HEAD_V2.size:
            raise CodecError("checkpoint body too short")
        _, count, slot, epoch = _CHECKPOINT_HEAD_V2.unpack_from(body)
        return CheckpointHeader(version, count, HighWatermark(slot, epoch), _CHECKPOINT_HEAD_V2.size)
    raise CodecError(
        f"unknown checkpoint body version {version} (this sidecar reads versions 1 to {CHECKPOINT_BODY_VERSION}; "
        "a newer sidecar wrote it?)"
    )


def _array_bytes(values: array[int]) -> bytes:
    if _NEEDS_BYTESWAP:
        values = array("Q", values)
        values.byteswap()
    return values.tobytes()


def last_decision_type(payload: bytes) -> int:
    """The record type of a decision payload, told apart by its fixed length."""
    if len(payload) == _BLOCK.size:
        return BLOCK_DECISION
    if len(payload) == _ATTESTATION.size:
        return ATTESTATION_DECISION
    raise CodecError(f"a decision payload of {len(payload)} bytes")


def encode_checkpoint_validator(pubkey: bytes, history: ValidatorHistory) -> bytes:
    """One validator's entry. The caller holds whatever lock keeps `history` still while this runs."""
    floors = _floor_bits(history)
    last = history.last_decision or b""
    parts = [
        _VALIDATOR_HEAD.pack(
            pubkey,
            history.applied_sequence,
            history.allowed_count,
            history.refused_count,
            floors,
            max(history.slot_floor, 0),
            history.source_epoch_floor,
            max(history.target_epoch_floor, 0),
            last_decision_type(last) if last else 0,
            history.last_decision_sequence,
            len(last),
        ),
        last,
        _U32.pack(len(history.blocks)),
    ]
    block_entry = _BLOCK_ENTRY.pack
    parts.extend(
        block_entry(slot, root is not None, root or _ZERO_ROOT) for slot, root in sorted(history.blocks.items())
    )
    roots, known = history.root_arrays()
    parts += [
        _U32.pack(len(history.targets)),
        _array_bytes(history.targets),
        _array_bytes(history.sources),
        bytes(known),
        bytes(roots),
    ]
    return b"".join(parts)


@dataclass(slots=True)
class CheckpointValidator:
    pubkey: bytes
    history: ValidatorHistory


def decode_checkpoint_body(body: bytes) -> Iterator[CheckpointValidator]:
    """Yields every validator of a checkpoint body (its high watermark is `decode_checkpoint_header`'s); raises
    CodecError on any inconsistency."""
    view = memoryview(body)
    header = decode_checkpoint_header(view)
    count = header.validators
    offset = header.size
    # 100,000 validators per checkpoint: the loop binds what it calls once, and copies each array in one go.
    unpack_head = _VALIDATOR_HEAD.unpack_from
    head_size = _VALIDATOR_HEAD.size
    unpack_u32 = _U32.unpack_from
    unpack_block = _BLOCK_ENTRY.unpack_from
    block_size = _BLOCK_ENTRY.size
    new_history = ValidatorHistory
    last_types = (0, BLOCK_DECISION, ATTESTATION_DECISION)
    body_length = len(view)
    try:
        for _ in range(count):
            (
                pubkey,
                applied,
                allowed,
                refused,
                floors,
                slot_floor,
                source_floor,
                target_floor,
                last_type,
                last_sequence,
                last_length,
            ) = unpack_head(view, offset)
            offset += head_size
            history = new_history()
            history.applied_sequence = applied
            history.allowed_count = allowed
            history.refused_count = refused
            history.last_decision_sequence = last_sequence
            if last_length:
                history.last_decision = body[offset : offset + last_length]
                offset += last_length
            (block_count,) = unpack_u32(view, offset)
            offset += 4
            for _ in range(block_count):
                slot, known, root = unpack_block(view, offset)
                offset += block_size
                history.add_block(slot, root if known else None)
            # Floors after the records, as saved: raised first, they would clear the known root of a record at or
            # below them (an import's lowest record sits exactly at the floor it raised), and the reopened state
            # would refuse a repeat the live one allowed.
            _raise_floors_from(history, floors, slot_floor, source_floor, target_floor)
            (attestation_count,) = unpack_u32(view, offset)
            offset += 4
            if offset + attestation_count * _ATTESTATION_ARRAYS_ENTRY_SIZE > body_length:
                # Checked before slicing: a short slice of the targets would fail in array.frombytes instead.
                raise CodecError("checkpoint body truncated inside a validator")
            offset = _load_attestation_columns(
                history, view, offset, attestation_count, f"validator 0x{pubkey.hex()}"
            )
            if last_type not in last_types:
                raise CodecError(f"unknown last decision type {last_type}")
            yield CheckpointValidator(pubkey, history)
    except struct.error as error:
        raise CodecError(f"checkpoint body truncated at byte {offset}") from error
    if offset != len(view):
        raise CodecError(f"checkpoint body has {len(view) - offset} bytes after its last validator")
