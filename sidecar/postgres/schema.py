"""The database schema, its versions and migrations, and how histories map to rows.

Schema version 2 (every number is a BIGINT):

    sidecar_meta        one row: schema_version, genesis_validators_root (pinned by the first start), created_at
    sidecar_sequence    the sequence numbering decisions, registrations and imports (the audit trail's order)
    validators          id, pubkey (48 bytes, unique), version, slot_floor, source_epoch_floor,
                        target_epoch_floor, allowed_decisions, refused_decisions, last_decision,
                        registered_sequence
    blocks              (validator_id, slot) primary key, signing_root (NULL: unknown)
    attestations        (validator_id, target_epoch) primary key, source_epoch, signing_root (NULL: unknown)
    attestation_conflicts  (validator_id, target_epoch, source_epoch) primary key, signing_root: the second and
                        later votes at one target, which only imported slashable data holds
    decisions           sequence primary key, pubkey, kind (1 block, 2 attestation), slot | source_epoch and
                        target_epoch, signing_root, reason (the proto Reason number), unix_nanos: every decision
    high_watermark      at most one row (version 2): slot, epoch, set_at; no row, no watermark

Version 1 is version 2 without `high_watermark`; the migration to 2 only creates that table. A sidecar of
version 1 (0.2.0) refuses to start on a database of version 2 (newer than its code), but one started before the
migration keeps serving and knows nothing of the watermark: finish upgrading every replica before setting one.

How a `ValidatorHistory` is held, exactly: its blocks are the `blocks` rows; its attestations, ordered by (target,
source), are the `attestations` rows plus the `attestation_conflicts` rows; its floors are the validator row's
(NULL slot or target floor: none). The unique (validator, target) of `attestations` is the backstop the issue asks
for: a decision adds a vote only at a target where none is recorded (the rules refuse any other as a double vote),
so a second vote at one target can only come from an import of slashable data (EIP-3076's complete strategy
keeps it, which only ever refuses more), and goes to `attestation_conflicts` with every later one: loading the
union rebuilds the history the local backend would hold, so both backends decide identically.

`version` changes whenever the validator's records or floors change (an allowed new message, an import, pruning
riding along): a replica's cached history is used only while its version equals the row's, read under the row
lock (see `sidecar.postgres.backend`).

Slots and epochs are u64 and a BIGINT is signed: a value is stored as the BIGINT with the same 64 bits
(`to_db`/`from_db`), so every real value reads as itself and values at 2^63 and above read negative. No query
compares them by range (deletions name the exact rows), so the wrap changes no result. The high watermark is the
exception: it is compared by range, so it is stored as itself, and values from 2^63 are refused before they
reach the database (`sidecar.backend.valid_high_watermark`; the table's CHECKs are the backstop).

Versions: `SCHEMA_VERSION` is what this code knows. The first start on an empty database creates everything and
pins the root; a start on a database of an older version applies the missing migrations in one transaction; a
newer version, or another root, is refused with one clear line. Migrations and creation run under a
transaction-level advisory lock, so replicas starting together do it once.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "U64_WRAP", "from_db", "to_db"]

SCHEMA_VERSION = 2
U64_WRAP = 1 << 64
_I64_LIMIT = 1 << 63
# Arbitrary, fixed: the advisory lock key taken while the schema is created or migrated.
SCHEMA_LOCK_KEY = 0x5AF3_11DE_CA12


def to_db(value: int) -> int:
    """A u64 as the BIGINT with the same bits."""
    return value - U64_WRAP if value >= _I64_LIMIT else value


def from_db(value: int) -> int:
    return value + U64_WRAP if value < 0 else value


META_TABLE = """
CREATE TABLE IF NOT EXISTS sidecar_meta (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    schema_version BIGINT NOT NULL,
    genesis_validators_root BYTEA NOT NULL CHECK (octet_length(genesis_validators_root) = 32),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""

_V1 = (
    "CREATE SEQUENCE sidecar_sequence AS BIGINT",
    """
    CREATE TABLE validators (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        pubkey BYTEA NOT NULL UNIQUE CHECK (octet_length(pubkey) = 48),
        version BIGINT NOT NULL DEFAULT 0,
        slot_floor BIGINT,
        source_epoch_floor BIGINT NOT NULL DEFAULT 0,
        target_epoch_floor BIGINT,
        allowed_decisions BIGINT NOT NULL DEFAULT 0,
        refused_decisions BIGINT NOT NULL DEFAULT 0,
        last_decision BIGINT,
        registered_sequence BIGINT NOT NULL
    )
    """,
    """
    CREATE TABLE blocks (
        validator_id BIGINT NOT NULL REFERENCES validators (id),
        slot BIGINT NOT NULL,
        signing_root BYTEA CHECK (octet_length(signing_root) = 32),
        PRIMARY KEY (validator_id, slot)
    )
    """,
    """
    CREATE TABLE attestations (
        validator_id BIGINT NOT NULL REFERENCES validators (id),
        target_epoch BIGINT NOT NULL,
        source_epoch BIGINT NOT NULL,
        signing_root BYTEA CHECK (octet_length(signing_root) = 32),
        PRIMARY KEY (validator_id, target_epoch)
    )
    """,
    """
    CREATE TABLE attestation_conflicts (
        validator_id BIGINT NOT NULL REFERENCES validators (id),
        target_epoch BIGINT NOT NULL,
        source_epoch BIGINT NOT NULL,
        signing_root BYTEA CHECK (octet_length(signing_root) = 32),
        PRIMARY KEY (validator_id, target_epoch, source_epoch)
    )
    """,
    """
    CREATE TABLE decisions (
        sequence BIGINT PRIMARY KEY DEFAULT nextval('sidecar_sequence'),
        pubkey BYTEA NOT NULL,
        kind BIGINT NOT NULL CHECK (kind IN (1, 2)),
        slot BIGINT,
        source_epoch BIGINT,
        target_epoch BIGINT,
        signing_root BYTEA NOT NULL,
        reason BIGINT NOT NULL,
        unix_nanos BIGINT NOT NULL
    )
    """,
    "CREATE INDEX decisions_by_pubkey ON decisions (pubkey, sequence)",
)

_V2 = (
    """
    CREATE TABLE high_watermark (
        singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
        slot BIGINT NOT NULL CHECK (slot >= 0),
        epoch BIGINT NOT NULL CHECK (epoch >= 0 AND epoch <= slot),
        set_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
)

# (version reached, statements), in order. A migration never rewrites an older one: it only adds to the list.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = ((1, _V1), (2, _V2))


def history_rows(history: Any) -> tuple[list[tuple[int, bytes | None]], list[tuple[int, int, bytes | None]]]:
    """A history's blocks and attestations as rows (slot, root) and (target, source, root), DB-encoded."""
    blocks = [(to_db(slot), root) for slot, root in history.blocks.items()]
    attestations = [(to_db(a.target_epoch), to_db(a.source_epoch), a.signing_root) for a in history.attestations()]
    return blocks, attestations
