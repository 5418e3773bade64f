"""In-memory types of an EIP-3076 interchange document (format version "5"), and pydantic models of its JSON.

The dataclasses are what the rest of the project passes around. They hold decoded values: raw bytes for keys and
roots (a pubkey is 48 bytes, a signing root or genesis validators root 32 bytes) and Python ints for slots and
epochs (0 <= n <= 2**64 - 1). ``signing_root`` is ``None`` when the document did not give one; an unknown root
never equals any other root. They do not re-check their fields when built, because a parse creates them by the
hundred thousand: values that come out of ``interchange.parse`` are already valid, and ``interchange.serialize``
checks what it is asked to write.

The pydantic models (``*JSON``) describe the document as it is on the wire: every number a decimal string, every
byte string ``0x``-prefixed hex, no key other than the format's, ``signing_root`` either absent or a string (an
explicit ``null`` is refused). They accept exactly what ``schema.json`` plus the u64 range check accept (a test
holds them to it) and are meant for callers that want a typed view or a generated JSON Schema; the parsers in
this package do not go through them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints, field_validator

INTERCHANGE_FORMAT_VERSION = "5"
U64_MAX = 2**64 - 1
PUBKEY_BYTES = 48
ROOT_BYTES = 32


@dataclass(frozen=True, slots=True)
class SignedBlock:
    slot: int
    signing_root: bytes | None


@dataclass(frozen=True, slots=True)
class SignedAttestation:
    source_epoch: int
    target_epoch: int
    signing_root: bytes | None


@dataclass(frozen=True, slots=True)
class ValidatorRecords:
    """One entry of ``data``. The same pubkey may appear in several entries of one document."""

    pubkey: bytes
    signed_blocks: tuple[SignedBlock, ...]
    signed_attestations: tuple[SignedAttestation, ...]


@dataclass(frozen=True, slots=True)
class ValidatorRecordsPart:
    """Some of the records of entry ``index`` of ``data``, in document order, as ``stream_interchange_parts``
    reads them: a bounded piece, so that one entry with a long history is never held whole. Not to be trusted
    before the entry's ``ValidatorEntryEnd`` (and the document) has been read to the end."""

    index: int
    signed_blocks: tuple[SignedBlock, ...]
    signed_attestations: tuple[SignedAttestation, ...]


@dataclass(frozen=True, slots=True)
class ValidatorEntryEnd:
    """Entry ``index`` of ``data`` is complete and valid; every part of it came before. The pubkey comes last
    because JSON leaves key order free: an entry may name its pubkey after its records."""

    index: int
    pubkey: bytes


@dataclass(frozen=True, slots=True)
class Metadata:
    interchange_format_version: str
    genesis_validators_root: bytes


@dataclass(frozen=True, slots=True)
class Interchange:
    metadata: Metadata
    data: tuple[ValidatorRecords, ...]


def _u64_in_range(value: str) -> str:
    if int(value) > U64_MAX:
        raise ValueError("decimal u64 string greater than 2**64 - 1")
    return value


# Pydantic runs these patterns with Rust's regex engine, where `$` is the end of the text (Python's `re` would
# also let a trailing newline through; schema.json needs extra keywords for that, these do not).
PubkeyHex = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{96}$")]
RootHex = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{64}$")]
U64String = Annotated[str, StringConstraints(pattern=r"^(0|[1-9][0-9]{0,19})$"), AfterValidator(_u64_in_range)]

_JSON_CONFIG = ConfigDict(strict=True, extra="forbid", frozen=True)


def _refuse_explicit_null(value: object) -> object:
    # A "before" validator runs only when the key is present, so an absent signing_root still defaults to None.
    if value is None:
        raise ValueError("signing_root must be a hex string when present")
    return value


class SignedBlockJSON(BaseModel):
    model_config = _JSON_CONFIG

    slot: U64String
    signing_root: RootHex | None = None

    @field_validator("signing_root", mode="before")
    @classmethod
    def refuse_null_signing_root(cls, value: object) -> object:
        return _refuse_explicit_null(value)

    def to_record(self) -> SignedBlock:
        return SignedBlock(int(self.slot), _root_bytes(self.signing_root))


class SignedAttestationJSON(BaseModel):
    model_config = _JSON_CONFIG

    source_epoch: U64String
    target_epoch: U64String
    signing_root: RootHex | None = None

    @field_validator("signing_root", mode="before")
    @classmethod
    def refuse_null_signing_root(cls, value: object) -> object:
        return _refuse_explicit_null(value)

    def to_record(self) -> SignedAttestation:
        return SignedAttestation(int(self.source_epoch), int(self.target_epoch), _root_bytes(self.signing_root))


class ValidatorRecordsJSON(BaseModel):
    model_config = _JSON_CONFIG

    pubkey: PubkeyHex
    # Lists, not tuples: in strict mode a tuple field refuses a list, which is what decoded JSON holds.
    signed_blocks: list[SignedBlockJSON]
    signed_attestations: list[SignedAttestationJSON]

    def to_records(self) -> ValidatorRecords:
        return ValidatorRecords(
            bytes.fromhex(self.pubkey[2:]),
            tuple(block.to_record() for block in self.signed_blocks),
            tuple(attestation.to_record() for attestation in self.signed_attestations),
        )


class MetadataJSON(BaseModel):
    model_config = _JSON_CONFIG

    interchange_format_version: Literal["5"]
    genesis_validators_root: RootHex

    def to_metadata(self) -> Metadata:
        return Metadata(self.interchange_format_version, bytes.fromhex(self.genesis_validators_root[2:]))


class InterchangeJSON(BaseModel):
    model_config = _JSON_CONFIG

    metadata: MetadataJSON
    data: list[ValidatorRecordsJSON]

    def to_interchange(self) -> Interchange:
        return Interchange(self.metadata.to_metadata(), tuple(entry.to_records() for entry in self.data))


def _root_bytes(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value[2:])
