"""EIP-3076 slashing protection interchange format, version "5": models, schema, parsing and serialization.

Usable on its own, without the sidecar server::

    from interchange import parse_interchange, stream_interchange, write_interchange

    interchange = parse_interchange(path.read_bytes())          # whole document in memory
    with path.open("rb") as fp:
        for item in stream_interchange(fp):                     # bounded memory; Metadata once, records as read
            ...
        for item in stream_interchange_parts(fp):               # not even one entry whole: records in parts
            ...
    with out_path.open("wb") as out:
        write_interchange(out, genesis_validators_root, records) # streaming, deterministic

Every refusal is an ``InterchangeError``; see ``interchange.errors`` for the tree and ``interchange.parse`` for
exactly what is refused.
"""

from interchange.errors import InterchangeError, InterchangeFormatError, InterchangeVersionError
from interchange.models import (
    INTERCHANGE_FORMAT_VERSION,
    U64_MAX,
    Interchange,
    InterchangeJSON,
    Metadata,
    MetadataJSON,
    SignedAttestation,
    SignedAttestationJSON,
    SignedBlock,
    SignedBlockJSON,
    ValidatorEntryEnd,
    ValidatorRecords,
    ValidatorRecordsJSON,
    ValidatorRecordsPart,
)
from interchange.parse import (
    DEFAULT_LIMITS,
    ParseLimits,
    parse_interchange,
    stream_interchange,
    stream_interchange_parts,
)
from interchange.schema import SCHEMA
from interchange.serialize import dumps_interchange, write_interchange

__all__ = [
    "DEFAULT_LIMITS",
    "INTERCHANGE_FORMAT_VERSION",
    "SCHEMA",
    "U64_MAX",
    "Interchange",
    "InterchangeError",
    "InterchangeFormatError",
    "InterchangeJSON",
    "InterchangeVersionError",
    "Metadata",
    "MetadataJSON",
    "ParseLimits",
    "SignedAttestation",
    "SignedAttestationJSON",
    "SignedBlock",
    "SignedBlockJSON",
    "ValidatorEntryEnd",
    "ValidatorRecords",
    "ValidatorRecordsJSON",
    "ValidatorRecordsPart",
    "dumps_interchange",
    "parse_interchange",
    "stream_interchange",
    "stream_interchange_parts",
    "write_interchange",
]
