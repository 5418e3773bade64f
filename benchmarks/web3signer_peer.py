"""Web3Signer's design, as a baseline: PostgreSQL, READ COMMITTED, one advisory-locked transaction per decision.

Web3Signer (Consensys, Java, JDBI over HikariCP) keeps its slashing protection in PostgreSQL. This module is that
design written again in Python (psycopg 3), served through our protos, so the sidecar's PostgreSQL backend can be
measured next to it in the same run against the same server. Its schema, after Web3Signer's migrations::

    validators(id SERIAL PRIMARY KEY, public_key BYTEA NOT NULL UNIQUE, enabled BOOLEAN NOT NULL DEFAULT TRUE)
    signed_blocks(id BIGSERIAL, validator_id -> validators, slot NUMERIC(20), signing_root BYTEA,
                  UNIQUE (validator_id, slot))                + a plain index on (validator_id, slot)
    signed_attestations(id BIGSERIAL, validator_id -> validators, source_epoch NUMERIC(20),
                        target_epoch NUMERIC(20), signing_root BYTEA,
                        UNIQUE (validator_id, target_epoch))  + a plain index on (validator_id, target_epoch)
    low_watermarks(validator_id UNIQUE -> validators, slot, source_epoch, target_epoch NUMERIC(20))
    metadata(id = 1, genesis_validators_root BYTEA, high_watermark_epoch, high_watermark_slot NUMERIC(20))
    database_version(id = 1, version)
    + the two triggers that keep every low watermark at or below the high watermark

A decision is one READ COMMITTED transaction on a pooled connection (10, HikariCP's default pool size), one
statement at a time, as JDBC runs them. For an attestation::

    BEGIN ISOLATION LEVEL READ COMMITTED
    SELECT pg_advisory_xact_lock(1, validator_id)            -- 1: the ATTESTATION lock type; BLOCK is 0
    SELECT enabled FROM validators WHERE id = ...
    SELECT high watermark FROM metadata                       -- refuse at or beyond it
    SELECT ... FROM low_watermarks WHERE validator_id = ...   -- refuse source or target below it
    SELECT ... same target epoch, different (or no) signing root          -- double vote
    SELECT ... source < new source AND target > new target LIMIT 1      -- surrounded by a recorded vote
    SELECT ... source > new source AND target < new target LIMIT 1      -- surrounds a recorded vote
    SELECT ... same target epoch and signing root            -- the same data again: allowed, not inserted
    INSERT INTO signed_attestations ...
    [INSERT INTO low_watermarks ... ON CONFLICT DO UPDATE]   -- only while the validator has no epoch watermark
    COMMIT                                                   -- the WAL flush (synchronous_commit=on)

11 statements and 11 round trips per new attestation in steady state (12 for a validator's first), counted as
they run (:attr:`Web3SignerStore.decision_statements`). psycopg sends ``BEGIN`` as a round trip of its own where
Web3Signer's JDBC driver sends it in the same message as the lock, so the Java original makes one round trip
fewer (10). A block runs the same shape with lock type 0, the watermark checks on slots and the double-proposal
query (9 statements). The validator's id comes from memory (Web3Signer's ``RegisteredValidators``), filled when
the server starts and by ``RegisterValidators``; the genesis validators root is checked once and cached.

Refusals are committed like any other transaction, as Web3Signer does, and nothing is recorded for them. Web3Signer
has no batch endpoint: a batch is one transaction per item, its items spread over the pool as the validator
client's concurrent HTTP requests would be.

The EIP-3076 import is Web3Signer's: the genesis validators root checked, then one transaction per validator
(default isolation, no advisory lock: the import does not take the signing lock), as many at once as there are
cores (a Java parallel stream). Per validator: register (upsert), per block and attestation the conflict and
"already there" queries (for attestations also both surround queries, which only log), the inserts, then the
low watermarks raised to the lowest imported values. A conflicting record is skipped, not fatal.

Commands (``python -m benchmarks.web3signer_peer ...``)::

    serve  --database-url URL [--genesis-validators-root HEX] [--listen HOST:PORT]   prints "serving on HOST:PORT"
    import FILE --database-url URL                 EIP-3076 v5, one transaction per validator, no signing lock
    export FILE --database-url URL
    bench  --database-url URL [--seconds S] [--depth N]   in-process decisions/s and statements per decision
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg

from benchmarks.common import GENESIS_VALIDATORS_ROOT, pubkeys, signing_root
from benchmarks.server_runtime import serve_until_signalled
from benchmarks.sqlite_peer import (
    EXPORT_CHUNK,
    ImportSummary,
    PeerDecision,
    PeerError,
    _hex,
    _parse_interchange,
    _unhex,
    check_signing_request,
)
from sidecar.domain import PUBKEY_SIZE, ROOT_SIZE
from slashing_protection.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    interchange_pb2,
    interchange_pb2_grpc,
    signing_pb2,
    signing_pb2_grpc,
)

POOL_SIZE = 10  # HikariCP's default maximumPoolSize, which Web3Signer keeps unless configured
METADATA_ROW = 1
BLOCK_LOCK, ATTESTATION_LOCK = 0, 1  # Web3Signer's LockType ordinals, the advisory lock's first key
SCHEMA_VERSION = 12

SCHEMA = """
CREATE TABLE IF NOT EXISTS validators (
    id SERIAL PRIMARY KEY,
    public_key BYTEA NOT NULL UNIQUE,
    enabled BOOLEAN NOT NULL DEFAULT TRUE
);
CREATE TABLE IF NOT EXISTS signed_blocks (
    id BIGSERIAL PRIMARY KEY,
    validator_id INTEGER NOT NULL REFERENCES validators(id),
    slot NUMERIC(20) NOT NULL,
    signing_root BYTEA,
    CONSTRAINT unique_signed_block UNIQUE (validator_id, slot)
);
CREATE INDEX IF NOT EXISTS signed_blocks_validator_id_slot_idx ON signed_blocks (validator_id, slot);
CREATE TABLE IF NOT EXISTS signed_attestations (
    id BIGSERIAL PRIMARY KEY,
    validator_id INTEGER REFERENCES validators(id),
    source_epoch NUMERIC(20) NOT NULL,
    target_epoch NUMERIC(20) NOT NULL,
    signing_root BYTEA,
    CONSTRAINT unique_signed_attestation UNIQUE (validator_id, target_epoch)
);
CREATE INDEX IF NOT EXISTS signed_attestations_validator_id_target_epoch_idx
    ON signed_attestations (validator_id, target_epoch);
CREATE TABLE IF NOT EXISTS low_watermarks (
    validator_id INTEGER NOT NULL UNIQUE REFERENCES validators(id),
    slot NUMERIC(20),
    target_epoch NUMERIC(20),
    source_epoch NUMERIC(20),
    CHECK ((source_epoch IS NULL) = (target_epoch IS NULL))
);
CREATE TABLE IF NOT EXISTS metadata (
    id INTEGER PRIMARY KEY,
    genesis_validators_root BYTEA NOT NULL,
    high_watermark_epoch NUMERIC(20),
    high_watermark_slot NUMERIC(20)
);
CREATE TABLE IF NOT EXISTS database_version (id INTEGER PRIMARY KEY, version INTEGER NOT NULL);
INSERT INTO database_version VALUES (1, 12) ON CONFLICT (id) DO NOTHING;

CREATE OR REPLACE FUNCTION check_high_watermarks() RETURNS TRIGGER AS $$
DECLARE max_slot NUMERIC(20); max_epoch NUMERIC(20);
BEGIN
    SELECT MAX(slot) INTO max_slot FROM low_watermarks;
    SELECT GREATEST(MAX(target_epoch), MAX(source_epoch)) INTO max_epoch FROM low_watermarks;
    IF NEW.high_watermark_slot <= max_slot THEN
        RAISE EXCEPTION 'high_watermark_slot must be greater than every low watermark slot';
    END IF;
    IF NEW.high_watermark_epoch <= max_epoch THEN
        RAISE EXCEPTION 'high_watermark_epoch must be greater than every low watermark epoch';
    END IF;
    RETURN NEW;
END; $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER check_before_insert_or_update_high_watermarks
    BEFORE INSERT OR UPDATE ON metadata FOR EACH ROW EXECUTE PROCEDURE check_high_watermarks();

CREATE OR REPLACE FUNCTION check_low_watermarks() RETURNS TRIGGER AS $$
DECLARE high_slot NUMERIC(20); high_epoch NUMERIC(20);
BEGIN
    SELECT MIN(high_watermark_slot) INTO high_slot FROM metadata;
    SELECT MIN(high_watermark_epoch) INTO high_epoch FROM metadata;
    IF NEW.slot > high_slot OR NEW.source_epoch > high_epoch OR NEW.target_epoch > high_epoch THEN
        RAISE EXCEPTION 'a low watermark must be at or below the high watermark';
    END IF;
    RETURN NEW;
END; $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER check_before_insert_or_update_low_watermarks
    BEFORE INSERT OR UPDATE ON low_watermarks FOR EACH ROW EXECUTE PROCEDURE check_low_watermarks();
"""

_V = signing_pb2
_ATTESTATION_COLUMNS = "validator_id, source_epoch, target_epoch, signing_root"


def _refused(reason: signing_pb2.Reason, message: str) -> PeerDecision:
    return PeerDecision(_V.VERDICT_REFUSED, reason, message)


_ALLOWED_NEW = PeerDecision(_V.VERDICT_ALLOWED, _V.REASON_ALLOWED_NEW)
_ALLOWED_REPEAT = PeerDecision(_V.VERDICT_ALLOWED, _V.REASON_ALLOWED_REPEAT, "same data")


@dataclass
class _Watermark:
    slot: int | None
    source_epoch: int | None
    target_epoch: int | None


class Web3SignerStore:
    """Web3Signer's slashing database over a pool of asyncio psycopg connections.

    Open with :meth:`open`; every public method is safe to call concurrently (each takes its own connection).
    """

    def __init__(self, url: str, genesis_validators_root: bytes | None, *, pool_size: int = POOL_SIZE) -> None:
        self.url = url
        self.requested_root = genesis_validators_root
        self.genesis_validators_root = b""
        self.pool_size = pool_size
        self._pool: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        self._connections: list[psycopg.AsyncConnection[Any]] = []
        self._validator_ids: dict[bytes, int] = {}
        self.statements = 0  # every statement sent, including BEGIN and COMMIT
        self.decisions = 0  # signing decisions (blocks and attestations) taken
        self.decision_statements = 0  # the statements those decisions took

    async def open(self) -> None:
        """Creates the schema if needed, checks (or records) the genesis validators root, loads the validator ids
        and fills the pool. Raises :class:`PeerError` for another network's database."""
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as setup:
            # Concurrent first starts (several importers) must not race on CREATE ... IF NOT EXISTS.
            await setup.execute("SELECT pg_advisory_lock(4242)")
            await setup.execute(SCHEMA)
            await setup.execute("SELECT pg_advisory_unlock(4242)")
            cursor = await setup.execute(
                "SELECT genesis_validators_root FROM metadata WHERE id = %s", (METADATA_ROW,)
            )
            row = await cursor.fetchone()
            if row is None:
                if self.requested_root is None:
                    raise PeerError(grpc.StatusCode.FAILED_PRECONDITION, "new database: give its genesis root")
                await setup.execute(
                    "INSERT INTO metadata (id, genesis_validators_root) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    (METADATA_ROW, self.requested_root),
                )
                self.genesis_validators_root = self.requested_root
            else:
                self.genesis_validators_root = bytes(row[0])
                if self.requested_root is not None and self.requested_root != self.genesis_validators_root:
                    raise PeerError(grpc.StatusCode.FAILED_PRECONDITION, "the database has another genesis root")
            cursor = await setup.execute("SELECT public_key, id FROM validators")
            self._validator_ids = {bytes(key): int(id_) for key, id_ in await cursor.fetchall()}
        for _ in range(self.pool_size):
            connection = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            self._connections.append(connection)
            self._pool.put_nowait(connection)

    async def close(self) -> None:
        for connection in self._connections:
            await connection.close()
        self._connections.clear()

    # --- connections and statements ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _transaction(self, isolation: str = "READ COMMITTED") -> AsyncIterator[_Transaction]:
        """A pooled connection inside ``BEGIN``; committed when the block ends, rolled back if it raises."""
        connection = await self._pool.get()
        transaction = _Transaction(self, connection)
        try:
            await transaction.execute(f"BEGIN ISOLATION LEVEL {isolation}")
            try:
                yield transaction
            except BaseException:
                await transaction.execute("ROLLBACK")
                raise
            await transaction.execute("COMMIT")
        finally:
            if connection.closed or connection.broken:
                connection = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            self._pool.put_nowait(connection)

    # --- registration --------------------------------------------------------------------------------------------

    async def register_validators(self, keys: Sequence[bytes]) -> tuple[int, int]:
        """Registers ``keys`` in one SERIALIZABLE transaction, as Web3Signer does at start-up; returns (new,
        already known)."""
        async with self._transaction("SERIALIZABLE") as tx:
            existing = await tx.fetchall(
                "SELECT id, public_key FROM validators WHERE public_key = ANY(%s)", (keys,)
            )
            known = {bytes(key) for _, key in existing}
            missing = [key for key in dict.fromkeys(keys) if key not in known]
            created = await tx.fetchall(
                "INSERT INTO validators (public_key) SELECT unnest(%s::bytea[]) ON CONFLICT (public_key)"
                " DO UPDATE SET public_key = EXCLUDED.public_key RETURNING id, public_key",
                (missing,),
            )
        for id_, key in [*existing, *created]:
            self._validator_ids[bytes(key)] = int(id_)
        return len(created), len(keys) - len(created)

    # --- the hot path --------------------------------------------------------------------------------------------

    async def check_and_record_attestation(
        self, key: bytes, source_epoch: int, target_epoch: int, root: bytes
    ) -> PeerDecision:
        """Web3Signer's ``maySignAttestation``: one READ COMMITTED transaction under the validator's
        attestation lock; the attestation is recorded when it is new and safe."""
        validator_id = self._validator_ids.get(key)
        if validator_id is None:
            return _refused(_V.REASON_VALIDATOR_NOT_REGISTERED, "validator not registered")
        async with self._transaction() as tx:
            await tx.execute("SELECT pg_advisory_xact_lock(%s, %s)", (ATTESTATION_LOCK, validator_id))
            decision = await self._attestation_locked(tx, validator_id, source_epoch, target_epoch, root)
        self._count_decision(tx)
        return decision

    async def _attestation_locked(
        self, tx: _Transaction, validator_id: int, source_epoch: int, target_epoch: int, root: bytes
    ) -> PeerDecision:
        """The checks and the insert; only inside a transaction holding the validator's attestation lock."""
        if not await tx.enabled(validator_id):
            return _refused(_V.REASON_VALIDATOR_NOT_REGISTERED, "validator disabled")
        if source_epoch > target_epoch:
            return _refused(_V.REASON_SOURCE_EPOCH_GREATER_THAN_TARGET_EPOCH, "source epoch > target epoch")
        high_epoch, _ = await tx.high_watermark()
        if high_epoch is not None and (source_epoch >= high_epoch or target_epoch >= high_epoch):
            return _refused(
                _V.REASON_UNSPECIFIED, f"source or target at or beyond the high watermark {high_epoch}"
            )
        low = await tx.low_watermark(validator_id)
        if low is not None and low.source_epoch is not None and source_epoch < low.source_epoch:
            return _refused(_V.REASON_SOURCE_EPOCH_BELOW_LOWER_BOUND, f"source epoch below {low.source_epoch}")
        if low is not None and low.target_epoch is not None and target_epoch < low.target_epoch:
            return _refused(
                _V.REASON_TARGET_EPOCH_AT_OR_BELOW_LOWER_BOUND, f"target epoch below {low.target_epoch}"
            )
        if await tx.fetchone(
            f"SELECT {_ATTESTATION_COLUMNS} FROM signed_attestations"
            " WHERE (validator_id = %s AND target_epoch = %s) AND (signing_root <> %s OR signing_root IS NULL)",
            (validator_id, target_epoch, root),
        ):
            return _refused(_V.REASON_DOUBLE_VOTE, f"double vote at target epoch {target_epoch}")
        surrounding = await tx.surrounding(validator_id, source_epoch, target_epoch)
        if surrounding is not None:
            return _refused(_V.REASON_SURROUNDED_BY_RECORDED_VOTE, f"previous vote {surrounding} surrounds new")
        surrounded = await tx.surrounded(validator_id, source_epoch, target_epoch)
        if surrounded is not None:
            return _refused(_V.REASON_SURROUNDS_RECORDED_VOTE, f"new vote surrounds previous {surrounded}")
        if await tx.fetchone(
            f"SELECT {_ATTESTATION_COLUMNS} FROM signed_attestations"
            " WHERE validator_id = %s AND target_epoch = %s AND signing_root = %s",
            (validator_id, target_epoch, root),
        ):
            return _ALLOWED_REPEAT
        await tx.execute(
            "INSERT INTO signed_attestations (validator_id, signing_root, source_epoch, target_epoch)"
            " VALUES (%s, %s, %s, %s)",
            (validator_id, root, source_epoch, target_epoch),
        )
        if low is None or (low.source_epoch is None and low.target_epoch is None):
            await tx.set_epoch_watermarks(validator_id, source_epoch, target_epoch)
        return _ALLOWED_NEW

    async def check_and_record_block(self, key: bytes, slot: int, root: bytes) -> PeerDecision:
        """Web3Signer's ``maySignBlock``: the same transaction shape under the validator's block lock."""
        validator_id = self._validator_ids.get(key)
        if validator_id is None:
            return _refused(_V.REASON_VALIDATOR_NOT_REGISTERED, "validator not registered")
        async with self._transaction() as tx:
            await tx.execute("SELECT pg_advisory_xact_lock(%s, %s)", (BLOCK_LOCK, validator_id))
            decision = await self._block_locked(tx, validator_id, slot, root)
        self._count_decision(tx)
        return decision

    async def _block_locked(self, tx: _Transaction, validator_id: int, slot: int, root: bytes) -> PeerDecision:
        """Only inside a transaction holding the validator's block lock."""
        if not await tx.enabled(validator_id):
            return _refused(_V.REASON_VALIDATOR_NOT_REGISTERED, "validator disabled")
        _, high_slot = await tx.high_watermark()
        if high_slot is not None and slot >= high_slot:
            return _refused(_V.REASON_UNSPECIFIED, f"slot at or beyond the high watermark {high_slot}")
        low = await tx.low_watermark(validator_id)
        if low is not None and low.slot is not None and slot < low.slot:
            return _refused(_V.REASON_SLOT_AT_OR_BELOW_LOWER_BOUND, f"slot below {low.slot}")
        if await tx.block_conflicts(validator_id, slot, root):
            return _refused(_V.REASON_DOUBLE_PROPOSAL, f"double proposal at slot {slot}")
        if await tx.block_exists(validator_id, slot, root):
            return _ALLOWED_REPEAT
        await tx.insert_block(validator_id, slot, root)
        if low is None or low.slot is None:
            await tx.set_slot_watermark(validator_id, slot)
        return _ALLOWED_NEW

    def _count_decision(self, tx: _Transaction) -> None:
        self.decisions += 1
        self.decision_statements += tx.statements

    # --- interchange ---------------------------------------------------------------------------------------------

    async def import_interchange(self, document: Any, *, parallelism: int | None = None) -> ImportSummary:
        """Web3Signer's EIP-3076 v5 import: one transaction per validator, ``parallelism`` at once (default: the
        cores, as a Java parallel stream), without the signing locks. A validator whose transaction fails is
        left out (and not counted as imported); conflicting records are skipped and counted."""
        records = _parse_interchange(document, self.genesis_validators_root)
        summary = ImportSummary(validators=len(records))
        work = iter(records)

        async def worker() -> None:
            for key, blocks, attestations in work:
                try:
                    async with self._transaction() as tx:
                        validator_id, skipped = await self._import_validator(tx, key, blocks, attestations)
                except psycopg.Error as error:
                    print(f"web3signer_peer: import of 0x{key.hex()} failed: {error}", file=sys.stderr)
                    continue
                self._validator_ids[key] = validator_id
                summary.slashable_records += skipped
                summary.imported += 1

        await asyncio.gather(*(worker() for _ in range(min(self.pool_size, parallelism or os.cpu_count() or 1))))
        return summary

    async def _import_validator(
        self,
        tx: _Transaction,
        key: bytes,
        blocks: list[tuple[int, bytes | None]],
        attestations: list[tuple[int, int, bytes | None]],
    ) -> tuple[int, int]:
        """Imports one validator's records; returns its id and the number of conflicting records skipped."""
        row = await tx.fetchone(
            "INSERT INTO validators (public_key) VALUES (%s) ON CONFLICT (public_key)"
            " DO UPDATE SET public_key = EXCLUDED.public_key RETURNING id",
            (key,),
        )
        assert row is not None
        validator_id = int(row[0])
        skipped = 0
        min_slot: int | None = None
        for slot, root in blocks:
            if root is None:
                if await tx.fetchone(
                    "SELECT COUNT(*) FROM signed_blocks WHERE validator_id = %s AND slot = %s"
                    " AND signing_root IS NULL HAVING COUNT(*) = 1",
                    (validator_id, slot),
                ):
                    continue
            elif await tx.block_conflicts(validator_id, slot, root):
                skipped += 1
                continue
            elif await tx.block_exists(validator_id, slot, root):
                continue
            await tx.insert_block(validator_id, slot, root)
            min_slot = slot if min_slot is None else min(min_slot, slot)
        low = await tx.low_watermark(validator_id)
        if min_slot is not None and (low is None or low.slot is None or min_slot > low.slot):
            await tx.set_slot_watermark(validator_id, min_slot)

        min_source: int | None = None
        min_target: int | None = None
        for source_epoch, target_epoch, root in attestations:
            # Web3Signer runs both surround queries here but only logs what they find.
            await tx.surrounding(validator_id, source_epoch, target_epoch)
            await tx.surrounded(validator_id, source_epoch, target_epoch)
            if root is None:
                if await tx.fetchone(
                    "SELECT COUNT(*) FROM signed_attestations WHERE validator_id = %s AND target_epoch = %s"
                    " AND signing_root IS NULL HAVING COUNT(*) = 1",
                    (validator_id, target_epoch),
                ):
                    continue
            else:
                if await tx.fetchone(
                    f"SELECT {_ATTESTATION_COLUMNS} FROM signed_attestations"
                    " WHERE (validator_id = %s AND target_epoch = %s)"
                    " AND (signing_root <> %s OR signing_root IS NULL)",
                    (validator_id, target_epoch, root),
                ):
                    skipped += 1
                    continue
                if await tx.fetchone(
                    f"SELECT {_ATTESTATION_COLUMNS} FROM signed_attestations"
                    " WHERE validator_id = %s AND target_epoch = %s AND signing_root = %s",
                    (validator_id, target_epoch, root),
                ):
                    continue
            await tx.execute(
                "INSERT INTO signed_attestations (validator_id, signing_root, source_epoch, target_epoch)"
                " VALUES (%s, %s, %s, %s)",
                (validator_id, root, source_epoch, target_epoch),
            )
            min_source = source_epoch if min_source is None else min(min_source, source_epoch)
            min_target = target_epoch if min_target is None else min(min_target, target_epoch)
        low = await tx.low_watermark(validator_id)
        new_source = _raised(min_source, None if low is None else low.source_epoch)
        new_target = _raised(min_target, None if low is None else low.target_epoch)
        if new_source is not None and new_target is not None:
            await tx.set_epoch_watermarks(validator_id, new_source, new_target)
        return validator_id, skipped

    async def export_interchange(self) -> dict[str, Any]:
        """An EIP-3076 v5 document of everything recorded, read in one transaction."""
        async with self._transaction("REPEATABLE READ") as tx:
            validators = await tx.fetchall("SELECT id, public_key FROM validators ORDER BY id")
            blocks = await tx.fetchall("SELECT validator_id, slot, signing_root FROM signed_blocks ORDER BY id")
            attestations = await tx.fetchall(f"SELECT {_ATTESTATION_COLUMNS} FROM signed_attestations ORDER BY id")
        entries: dict[int, dict[str, Any]] = {
            int(id_): {"pubkey": _hex(bytes(key)), "signed_blocks": [], "signed_attestations": []}
            for id_, key in validators
        }
        for validator_id, slot, root in blocks:
            block = {"slot": str(slot)} | ({"signing_root": _hex(bytes(root))} if root is not None else {})
            entries[int(validator_id)]["signed_blocks"].append(block)
        for validator_id, source, target, root in attestations:
            attestation = {"source_epoch": str(source), "target_epoch": str(target)}
            if root is not None:
                attestation["signing_root"] = _hex(bytes(root))
            entries[int(validator_id)]["signed_attestations"].append(attestation)
        return {
            "metadata": {
                "interchange_format_version": "5",
                "genesis_validators_root": _hex(self.genesis_validators_root),
            },
            "data": list(entries.values()),
        }

    async def seed_attestation_history(self, keys: Sequence[bytes], depth: int) -> None:
        """Gives each of ``keys`` (registering them) the attestations (t - 1, t) for t = 1..depth and the low
        watermark an import would leave, written directly: set-up for the in-process measurement, not timed."""
        await self.register_validators(keys)
        async with self._transaction() as tx:
            ids = [self._validator_ids[key] for key in keys]
            cursor = tx.connection.cursor()
            async with cursor.copy(
                "COPY signed_attestations (validator_id, source_epoch, target_epoch) FROM STDIN"
            ) as copy:
                for validator_id in ids:
                    for target in range(1, depth + 1):
                        await copy.write_row((validator_id, target - 1, target))
            await tx.execute(
                "INSERT INTO low_watermarks (validator_id, source_epoch, target_epoch)"
                " SELECT unnest(%s::integer[]), 0, 1 ON CONFLICT (validator_id) DO NOTHING",
                (ids,),
            )


def _raised(imported_min: int | None, current: int | None) -> int | None:
    """Web3Signer's rule for a low watermark after an import: the lowest imported value when it is above the
    current watermark (or there is none), else the current one."""
    if imported_min is not None and (current is None or imported_min > current):
        return imported_min
    return current


class _Transaction:
    """One connection inside one transaction; every statement is counted, one round trip each."""

    def __init__(self, store: Web3SignerStore, connection: psycopg.AsyncConnection[Any]) -> None:
        self.store = store
        self.connection = connection
        self.statements = 0

    async def execute(self, sql: str, params: Sequence[Any] | None = None) -> psycopg.AsyncCursor[Any]:
        self.statements += 1
        self.store.statements += 1
        return await self.connection.execute(sql, params)

    async def fetchone(self, sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
        return await (await self.execute(sql, params)).fetchone()

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await (await self.execute(sql, params)).fetchall()

    async def enabled(self, validator_id: int) -> bool:
        row = await self.fetchone("SELECT enabled FROM validators WHERE id = %s", (validator_id,))
        return row is not None and bool(row[0])

    async def high_watermark(self) -> tuple[int | None, int | None]:
        row = await self.fetchone(
            "SELECT high_watermark_epoch AS epoch, high_watermark_slot AS slot FROM metadata WHERE id = %s",
            (METADATA_ROW,),
        )
        if row is None:
            return None, None
        return (None if row[0] is None else int(row[0])), (None if row[1] is None else int(row[1]))

    async def low_watermark(self, validator_id: int) -> _Watermark | None:
        row = await self.fetchone(
            "SELECT validator_id, slot, source_epoch, target_epoch FROM low_watermarks WHERE validator_id = %s",
            (validator_id,),
        )
        if row is None:
            return None
        slot, source, target = (None if value is None else int(value) for value in row[1:])
        return _Watermark(slot, source, target)

    async def set_epoch_watermarks(self, validator_id: int, source_epoch: int, target_epoch: int) -> None:
        await self.execute(
            "INSERT INTO low_watermarks (validator_id, source_epoch, target_epoch) VALUES (%s, %s, %s)"
            " ON CONFLICT (validator_id) DO UPDATE SET source_epoch = EXCLUDED.source_epoch,"
            " target_epoch = EXCLUDED.target_epoch",
            (validator_id, source_epoch, target_epoch),
        )

    async def set_slot_watermark(self, validator_id: int, slot: int) -> None:
        await self.execute(
            "INSERT INTO low_watermarks (validator_id, slot) VALUES (%s, %s)"
            " ON CONFLICT (validator_id) DO UPDATE SET slot = EXCLUDED.slot",
            (validator_id, slot),
        )

    async def surrounding(self, validator_id: int, source_epoch: int, target_epoch: int) -> tuple[int, int] | None:
        row = await self.fetchone(
            f"SELECT {_ATTESTATION_COLUMNS} FROM signed_attestations"
            " WHERE validator_id = %s AND source_epoch < %s AND target_epoch > %s"
            " ORDER BY target_epoch DESC LIMIT 1",
            (validator_id, source_epoch, target_epoch),
        )
        return None if row is None else (int(row[1]), int(row[2]))

    async def surrounded(self, validator_id: int, source_epoch: int, target_epoch: int) -> tuple[int, int] | None:
        row = await self.fetchone(
            f"SELECT {_ATTESTATION_COLUMNS} FROM signed_attestations"
            " WHERE validator_id = %s AND source_epoch > %s AND target_epoch < %s"
            " ORDER BY target_epoch DESC LIMIT 1",
            (validator_id, source_epoch, target_epoch),
        )
        return None if row is None else (int(row[1]), int(row[2]))

    async def block_conflicts(self, validator_id: int, slot: int, root: bytes) -> bool:
        return (
            await self.fetchone(
                "SELECT validator_id, slot, signing_root FROM signed_blocks"
                " WHERE (validator_id = %s AND slot = %s)"
                " AND (signing_root <> %s OR signing_root IS NULL)",
                (validator_id, slot, root),
            )
            is not None
        )

    async def block_exists(self, validator_id: int, slot: int, root: bytes) -> bool:
        return (
            await self.fetchone(
                "SELECT validator_id, slot, signing_root FROM signed_blocks"
                " WHERE validator_id = %s AND slot = %s AND signing_root = %s",
                (validator_id, slot, root),
            )
            is not None
        )

    async def insert_block(self, validator_id: int, slot: int, root: bytes | None) -> None:
        await self.execute(
            "INSERT INTO signed_blocks (validator_id, slot, signing_root) VALUES (%s, %s, %s)",
            (validator_id, slot, root),
        )


# --- gRPC --------------------------------------------------------------------------------------------------------


class Web3SignerSigningServicer(signing_pb2_grpc.SlashingProtectionServiceServicer):  # type: ignore[misc,unused-ignore]
    def __init__(self, store: Web3SignerStore) -> None:
        self.store = store

    async def CheckAndRecordBlock(
        self, request: signing_pb2.CheckAndRecordBlockRequest, context: grpc.aio.ServicerContext
    ) -> signing_pb2.CheckAndRecordBlockResponse:
        try:
            check_signing_request(
                request.pubkey,
                request.signing_root,
                request.genesis_validators_root,
                self.store.genesis_validators_root,
            )
        except PeerError as error:
            await context.abort(error.code, str(error))
        decision = await self.store.check_and_record_block(request.pubkey, request.slot, request.signing_root)
        return signing_pb2.CheckAndRecordBlockResponse(decision=decision.to_proto())

    async def CheckAndRecordAttestation(
        self, request: signing_pb2.CheckAndRecordAttestationRequest, context: grpc.aio.ServicerContext
    ) -> signing_pb2.CheckAndRecordAttestationResponse:
        try:
            check_signing_request(
                request.pubkey,
                request.signing_root,
                request.genesis_validators_root,
                self.store.genesis_validators_root,
            )
        except PeerError as error:
            await context.abort(error.code, str(error))
        decision = await self.store.check_and_record_attestation(
            request.pubkey, request.source_epoch, request.target_epoch, request.signing_root
        )
        return signing_pb2.CheckAndRecordAttestationResponse(decision=decision.to_proto())

    async def CheckAndRecordAttestations(
        self, request: signing_pb2.CheckAndRecordAttestationsRequest, context: grpc.aio.ServicerContext
    ) -> signing_pb2.CheckAndRecordAttestationsResponse:
        items = list(request.attestations)
        try:
            if not items:
                raise PeerError(grpc.StatusCode.INVALID_ARGUMENT, "empty batch")
            if len({item.pubkey for item in items}) != len(items):
                raise PeerError(grpc.StatusCode.INVALID_ARGUMENT, "a batch may not name one pubkey twice")
            for item in items:
                check_signing_request(
                    item.pubkey,
                    item.signing_root,
                    item.genesis_validators_root,
                    self.store.genesis_validators_root,
                )
        except PeerError as error:
            await context.abort(error.code, str(error))
        # Web3Signer has no batch path: one transaction per item, as many at once as the pool allows.
        decisions = await asyncio.gather(
            *(
                self.store.check_and_record_attestation(
                    item.pubkey, item.source_epoch, item.target_epoch, item.signing_root
                )
                for item in items
            )
        )
        return signing_pb2.CheckAndRecordAttestationsResponse(decisions=[d.to_proto() for d in decisions])


class Web3SignerAdminServicer(admin_pb2_grpc.AdminServiceServicer):  # type: ignore[misc,unused-ignore]
    def __init__(self, store: Web3SignerStore) -> None:
        self.store = store

    async def RegisterValidators(
        self, request: admin_pb2.RegisterValidatorsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RegisterValidatorsResponse:
        keys = list(request.pubkeys)
        if any(len(key) != PUBKEY_SIZE for key in keys):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "every pubkey must be 48 bytes")
        new, known = await self.store.register_validators(keys)
        return admin_pb2.RegisterValidatorsResponse(registered=new, already_registered=known)


class Web3SignerInterchangeServicer(interchange_pb2_grpc.InterchangeServiceServicer):  # type: ignore[misc,unused-ignore]
    def __init__(self, store: Web3SignerStore) -> None:
        self.store = store

    async def ImportInterchange(
        self,
        request_iterator: AsyncIterator[interchange_pb2.ImportInterchangeRequest],
        context: grpc.aio.ServicerContext,
    ) -> interchange_pb2.ImportInterchangeResponse:
        chunks = [request.chunk async for request in request_iterator]
        try:
            summary = await self.store.import_interchange(json.loads(b"".join(chunks)))
        except json.JSONDecodeError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not JSON: {error}")
        except PeerError as error:
            await context.abort(error.code, str(error))
        return interchange_pb2.ImportInterchangeResponse(validators=summary.validators, imported=summary.imported)

    async def ExportInterchange(
        self, request: interchange_pb2.ExportInterchangeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[interchange_pb2.ExportInterchangeResponse]:
        document = await self.store.export_interchange()
        if request.pubkeys:
            wanted = {_hex(key) for key in request.pubkeys}
            document["data"] = [entry for entry in document["data"] if entry["pubkey"] in wanted]
        text = json.dumps(document).encode()
        for offset in range(0, len(text), EXPORT_CHUNK):
            yield interchange_pb2.ExportInterchangeResponse(chunk=text[offset : offset + EXPORT_CHUNK])


def statements_line(store: Web3SignerStore) -> str:
    per = store.decision_statements / store.decisions if store.decisions else 0.0
    return f"{store.decisions} decisions took {store.decision_statements} statements ({per:.2f} per decision)"


async def serve(url: str, genesis_validators_root: bytes | None, listen: str, pool_size: int = POOL_SIZE) -> None:
    store = Web3SignerStore(url, genesis_validators_root, pool_size=pool_size)
    await store.open()

    def register(server: grpc.aio.Server) -> list[str]:
        signing_pb2_grpc.add_SlashingProtectionServiceServicer_to_server(Web3SignerSigningServicer(store), server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(Web3SignerAdminServicer(store), server)
        interchange_pb2_grpc.add_InterchangeServiceServicer_to_server(Web3SignerInterchangeServicer(store), server)
        return [
            signing_pb2.DESCRIPTOR.services_by_name["SlashingProtectionService"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
            interchange_pb2.DESCRIPTOR.services_by_name["InterchangeService"].full_name,
        ]

    async def stop() -> None:
        print(f"web3signer_peer: {statements_line(store)}", flush=True)
        await store.close()

    await serve_until_signalled(listen, register, on_stop=stop)


# --- in-process measurement --------------------------------------------------------------------------------------


@dataclass
class InProcessResult:
    decisions: int
    seconds: float
    depth: int
    statements_per_decision: float

    @property
    def decisions_per_s(self) -> float:
        return self.decisions / self.seconds if self.seconds > 0 else 0.0


async def measure_in_process(
    url: str, *, seconds: float, depth: int, validators: int = 64, first_validator: int = 0
) -> InProcessResult:
    """Decisions per second of the store itself, one at a time, no gRPC, each validator starting with ``depth``
    recorded attestations; and the statements each decision took. ``url`` should name an empty database."""
    store = Web3SignerStore(url, GENESIS_VALIDATORS_ROOT, pool_size=1)
    await store.open()
    try:
        keys = pubkeys(first_validator, validators)
        await store.seed_attestation_history(keys, depth)
        decisions = 0
        started = time.monotonic()
        deadline = started + seconds
        target = depth
        statements_before = store.decision_statements
        while time.monotonic() < deadline:
            target += 1
            for offset, key in enumerate(keys):
                decision = await store.check_and_record_attestation(
                    key, target - 1, target, signing_root(first_validator + offset, target)
                )
                if not decision.allowed:
                    raise RuntimeError(f"in-process peer refused an ALLOWED-able attestation: {decision}")
                decisions += 1
                if decisions % 16 == 0 and time.monotonic() >= deadline:
                    break
        elapsed = time.monotonic() - started
        per = (store.decision_statements - statements_before) / decisions if decisions else 0.0
        return InProcessResult(decisions, elapsed, depth, per)
    finally:
        await store.close()


# --- command line ------------------------------------------------------------------------------------------------


def _parse_root(text: str) -> bytes:
    raw = bytes.fromhex(text.removeprefix("0x"))
    if len(raw) != ROOT_SIZE:
        raise argparse.ArgumentTypeError("expected 32 bytes of hex")
    return raw


async def _import_file(args: argparse.Namespace) -> int:
    document = json.loads(args.file.read_bytes())
    root = _unhex(document.get("metadata", {}).get("genesis_validators_root"), ROOT_SIZE, "root")
    store = Web3SignerStore(args.database_url, root, pool_size=max(1, os.cpu_count() or 1))
    await store.open()
    try:
        summary = await store.import_interchange(document)
    finally:
        await store.close()
    print(f"imported {summary.imported} of {summary.validators} validators ({store.statements} statements)")
    return 0 if summary.imported == summary.validators else 1


async def _export_file(args: argparse.Namespace) -> int:
    store = Web3SignerStore(args.database_url, None, pool_size=1)
    await store.open()
    try:
        document = await store.export_interchange()
    finally:
        await store.close()
    args.file.write_text(json.dumps(document))
    print(f"exported {len(document['data'])} validators")
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.web3signer_peer", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve our protos over this store")
    serve_parser.add_argument("--database-url", required=True)
    serve_parser.add_argument("--genesis-validators-root", type=_parse_root, default=None)
    serve_parser.add_argument("--listen", default="127.0.0.1:0")
    serve_parser.add_argument("--pool-size", type=int, default=POOL_SIZE)
    for name in ("import", "export"):
        command = commands.add_parser(name, help=f"{name} an EIP-3076 v5 file")
        command.add_argument("file", type=Path)
        command.add_argument("--database-url", required=True)
    bench_parser = commands.add_parser("bench", help="in-process decisions/s and statements per decision")
    bench_parser.add_argument("--database-url", required=True, help="an empty database")
    bench_parser.add_argument("--seconds", type=float, default=3.0)
    bench_parser.add_argument("--depth", type=int, default=10)
    args = parser.parse_args(list(argv) if argv is not None else None)

    try:
        if args.command == "serve":
            asyncio.run(serve(args.database_url, args.genesis_validators_root, args.listen, args.pool_size))
        elif args.command == "import":
            return asyncio.run(_import_file(args))
        elif args.command == "export":
            return asyncio.run(_export_file(args))
        else:
            result = asyncio.run(measure_in_process(args.database_url, seconds=args.seconds, depth=args.depth))
            print(
                f"{result.decisions_per_s:,.0f} decisions/s at history depth {result.depth}, "
                f"{result.statements_per_decision:.2f} statements (round trips) per decision"
            )
    except (PeerError, OSError, ValueError, psycopg.Error) as error:
        print(f"web3signer_peer: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
