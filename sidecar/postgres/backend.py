"""`PostgresBackend`: the `sidecar.backend.Backend` of a shared PostgreSQL database (see the package doc).

A decision, and why it is linearizable per validator across replicas:

1. Round trip 1 (pipelined): `BEGIN`; `SELECT id, version, floors FROM validators WHERE pubkey = ANY(..) ORDER
   BY pubkey FOR UPDATE`. The row locks are the arbiter: until this transaction ends, no other replica (and no
   import) can decide for these keys. They are taken in pubkey order, so batches never deadlock each other.
2. The replica's cached `ValidatorHistory` of each key is used if its version equals the row's; otherwise (another
   replica or an import changed it) the key's rows are loaded in the same transaction (one more round trip).
3. The decision is taken by `sidecar.rules` on that history, the one source of truth, and applied to it in
   memory as the local store applies it (pruning included).
4. Round trip 2 (pipelined): the decision rows, the new records, the pruned rows' deletion, the validator rows'
   counters, floors and version, `COMMIT`. Only once the COMMIT's reply has come back is ALLOWED returned: the
   database holds it, as durably as its settings say (checked at start: `sidecar.postgres.durability`).

The high watermark is read in round trip 1 too, by the statement that locks the rows (a join with the one-row
`high_watermark` table), so it costs no round trip and no replica caches it. Before that statement, in the same
round trip, the decision takes a shared transaction-level advisory lock (`HIGH_WATERMARK_LOCK_KEY`), which
`SetHighWatermark` takes exclusively while it writes. Two things follow. The Set waits until every decision that
may have read the old value has committed or rolled back, so once it returns nothing decided under the old value
can still be answered, and an export taken then holds everything it did not stop. And a decision that starts
after the Set has returned reads the new value: the lock is its own statement, so the statement that reads the
watermark takes its snapshot after the lock was granted, i.e. after the Set committed (under READ COMMITTED each
statement has its own snapshot; the lock inside the reading statement would not do, its snapshot would predate
the wait). Removing a watermark takes no lock: a decision still reading the old one only refuses more.

An in-process lock per key (taken in pubkey order too) keeps a replica's own concurrent calls for one key off the
same cached history; it also spares the database from queuing them.

Failures: any error inside the transaction discards the connection and the cached histories of the keys
involved (they may hold a decision that never committed), and raises `BackendUnavailableError`. A connection
lost after COMMIT was sent is such an error: the commit may or may not have happened, and the answer is never a
guess. Both are safe to retry: a decision that did commit is recorded with its root, so the same message comes
back as a repeat and any other as a refusal. A lost connection, or no connection within the pool's timeout, also
reports the backend unhealthy (the server goes NOT_SERVING and refuses calls); a watchdog reconnects every
`PROBE_SECONDS`, checks the durability settings again, and reports it healthy once a fresh connection works.

Time bounds, all within a 12-second slot: connecting 2 s, a statement 4 s, a lock wait 3 s, a whole decision 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import psycopg
import psycopg_pool
from psycopg import AsyncConnection, sql

from interchange import ValidatorRecords, write_interchange
from sidecar.audit import ATTESTATION, BLOCK, DecisionRecord
from sidecar.backend import (
    AttestationRequest,
    CheckpointInfo,
    ImportResult,
    ImportStatus,
    Registration,
    StartupReport,
    Strategy,
    ValidatorSummary,
    valid_high_watermark,
)
from sidecar.domain import GenesisRoot, Pubkey, SigningRoot
from sidecar.errors import (
    BackendUnavailableError,
    DatabaseError,
    GenesisRootMismatchError,
    UnknownValidatorError,
    UnsafeDatabaseError,
)
from sidecar.history import EPOCH_FLOOR_NONE, SLOT_FLOOR_NONE, SOURCE_FLOOR_NONE, ValidatorHistory
from sidecar.import_merge import count_import, interchange_records, merge_imported, staged_status, summarize
from sidecar.local.gc import bulk_loading
from sidecar.local.imports import StagedImport, stage_import
from sidecar.local.options import StoreOptions
from sidecar.postgres.durability import DURABILITY_QUERY, DatabaseDurability
from sidecar.postgres.schema import (
    META_TABLE,
    MIGRATIONS,
    SCHEMA_LOCK_KEY,
    SCHEMA_VERSION,
    from_db,
    history_rows,
    to_db,
)
from sidecar.rules import Decision, HighWatermark, Reason, check_attestation, check_block
from sidecar.worker_thread import run_in_own_thread

__all__ = ["PostgresBackend", "describe_url"]

log = logging.getLogger("sidecar.postgres")

T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS = 2
STATEMENT_TIMEOUT_MS = 4000
LOCK_TIMEOUT_MS = 3000
# A whole decision, from asking the pool for a connection to the COMMIT's reply.
OPERATION_TIMEOUT_SECONDS = 5.0
# Imports and exports lock or read many keys: their statements get longer.
BULK_STATEMENT_TIMEOUT = "10min"
PROBE_SECONDS = 0.5
COUNT_REFRESH_SECONDS = 10.0
POOL_MIN_SIZE = 2
POOL_MAX_SIZE = 16
LOAD_CHUNK = 1000
DECISIONS_BATCH = 512
KIND_BLOCK = 1
KIND_ATTESTATION = 2
_ALLOWED_REASONS = (int(Reason.ALLOWED_NEW), int(Reason.ALLOWED_REPEAT))

SELECT_VALIDATORS_SQL = (
    "SELECT id, pubkey, version, slot_floor, source_epoch_floor, target_epoch_floor FROM validators"
)
# The rows of the keys, locked, each with the high watermark (NULLs: none); see the module doc.
LOCK_SQL = (
    "SELECT v.id, v.pubkey, v.version, v.slot_floor, v.source_epoch_floor, v.target_epoch_floor, w.slot, w.epoch "
    "FROM validators v LEFT JOIN high_watermark w ON TRUE "
    "WHERE v.pubkey = ANY(%s) ORDER BY v.pubkey FOR UPDATE OF v"
)
# Arbitrary, fixed: the advisory lock decisions share and SetHighWatermark takes alone (see the module doc).
HIGH_WATERMARK_LOCK_KEY = 0x5AF3_11DE_CA13
SHARE_HIGH_WATERMARK_SQL = "SELECT pg_advisory_xact_lock_shared(%s)"
SELECT_HIGH_WATERMARK_SQL = "SELECT slot, epoch FROM high_watermark"
SET_HIGH_WATERMARK_SQL = """
INSERT INTO high_watermark (slot, epoch) VALUES (%s, %s)
ON CONFLICT (singleton) DO UPDATE SET slot = excluded.slot, epoch = excluded.epoch, set_at = now()
"""
RECORD_DECISIONS_SQL = """
WITH d AS (
    INSERT INTO decisions (pubkey, kind, slot, source_epoch, target_epoch, signing_root, reason, unix_nanos)
    SELECT * FROM unnest(%s::bytea[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bytea[],
                         %s::bigint[], %s::bigint[])
    RETURNING sequence, pubkey, reason
), counted AS (
    UPDATE validators v SET
        allowed_decisions = v.allowed_decisions + CASE WHEN d.reason IN (1, 2) THEN 1 ELSE 0 END,
        refused_decisions = v.refused_decisions + CASE WHEN d.reason IN (1, 2) THEN 0 ELSE 1 END,
        last_decision = d.sequence
    FROM d WHERE v.pubkey = d.pubkey
)
SELECT sequence, pubkey FROM d
"""
INSERT_BLOCKS_SQL = (
    "INSERT INTO blocks (validator_id, slot, signing_root) "
    "SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bytea[])"
)
INSERT_ATTESTATIONS_SQL = (
    "INSERT INTO attestations (validator_id, target_epoch, source_epoch, signing_root) "
    "SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bytea[])"
)
DELETE_BLOCKS_SQL = (
    "DELETE FROM blocks b USING unnest(%s::bigint[], %s::bigint[]) AS u(id, slot) "
    "WHERE b.validator_id = u.id AND b.slot = u.slot"
)
DELETE_ATTESTATIONS_SQL = (
    "DELETE FROM {table} a USING unnest(%s::bigint[], %s::bigint[]) AS u(id, target) "
    "WHERE a.validator_id = u.id AND a.target_epoch = u.target"
)
UPDATE_HISTORY_SQL = """
UPDATE validators v SET version = u.version, slot_floor = u.slot_floor, source_epoch_floor = u.source_floor,
    target_epoch_floor = u.target_floor
FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[])
    AS u(id, version, slot_floor, source_floor, target_floor)
WHERE v.id = u.id
"""
DECISION_COLUMNS = "sequence, kind, pubkey, slot, source_epoch, target_epoch, signing_root, reason, unix_nanos"


def describe_url(url: str) -> str:
    """The database a URL names, without its password, for logs and errors."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "an unparsable database URL"
    host = params.get("host", "localhost")
    port = params.get("port", "5432")
    return f"postgresql database {params.get('dbname', '?')} on {host}:{port} as {params.get('user', '?')}"


@dataclass(slots=True)
class _Cached:
    """A replica's copy of one validator's history, valid while the row's version equals `version`."""

    validator_id: int
    version: int
    history: ValidatorHistory


@dataclass(slots=True)
class _Locked:
    """A validator row read under its lock in this transaction."""

    validator_id: int
    version: int
    floors: tuple[int, int, int]


def _floors_of_row(slot_floor: int | None, source_floor: int, target_floor: int | None) -> tuple[int, int, int]:
    return (
        SLOT_FLOOR_NONE if slot_floor is None else from_db(slot_floor),
        from_db(source_floor) if source_floor else SOURCE_FLOOR_NONE,
        EPOCH_FLOOR_NONE if target_floor is None else from_db(target_floor),
    )


def _floors_to_row(history: ValidatorHistory) -> tuple[int | None, int, int | None]:
    return (
        None if history.slot_floor == SLOT_FLOOR_NONE else to_db(history.slot_floor),
        to_db(history.source_epoch_floor),
        None if history.target_epoch_floor == EPOCH_FLOOR_NONE else to_db(history.target_epoch_floor),
    )


def build_history(
    floors: tuple[int, int, int],
    blocks: Sequence[tuple[int, bytes | None]],
    attestations: Sequence[tuple[int, int, bytes | None]],
) -> ValidatorHistory:
    """A history from its rows (DB-encoded): exactly the one they were written from (see sidecar.postgres.schema).
    Records go in before the floors, so that no root is cleared: they were kept with their roots."""
    history = ValidatorHistory()
    for slot, root in sorted((from_db(slot), root) for slot, root in blocks):
        history.add_block(slot, root)
    ordered = sorted((from_db(target), from_db(source), root) for target, source, root in attestations)
    roots = bytearray()
    known = bytearray()
    for _, _, root in ordered:
        roots += root if root is not None else bytes(32)
        known.append(0 if root is None else 1)
    history.load_attestation_arrays(
        array("Q", [target for target, _, _ in ordered]),
        array("Q", [source for _, source, _ in ordered]),
        roots,
        known,
    )
    history.slot_floor, history.source_epoch_floor, history.target_epoch_floor = floors
    return history


# Why this class is longer than the house's ~300 lines: every call it serves follows one protocol (a pooled
# connection, row locks in pubkey order, the version-checked cache, a failure discarding the connection and the
# keys' cached histories, the health reported to the server), and that protocol is its state: the pool, the cache,
# the per-key locks, the watchdog. The SQL is in module constants and the pure parts (building a history from
# rows, the durability verdict) in functions and sidecar.postgres.durability; what is left reads and moves that
# state, and split into classes the protocol would be restated at each boundary.
class PostgresBackend:
    """A shared database behind the seam. Create with `open` on the event loop that will call it."""

    def __init__(
        self,
        url: str,
        genesis_validators_root: GenesisRoot,
        options: StoreOptions,
        allow_unsafe_database: bool,
        durability: DatabaseDurability,
        validators: int,
        started: float,
        high_watermark: HighWatermark | None = None,
    ) -> None:
        self.url = url
        self._root = genesis_validators_root
        self.options = options
        self._allow_unsafe = allow_unsafe_database
        self._durability = durability
        self._window = options.history_window_epochs
        self._minimal = options.strategy is Strategy.MINIMAL
        self._now = options.clock_ns
        self._cache: dict[bytes, _Cached] = {}
        self._locks: dict[bytes, asyncio.Lock] = {}
        self._validator_count = validators
        self._healthy = True
        self._closed = False
        self._last_checkpoint_unix: float | None = None
        self._sync_rep_cancelled: weakref.WeakSet[AsyncConnection[Any]] = weakref.WeakSet()
        self._pool = self._new_pool()
        self._watchdog: asyncio.Task[None] | None = None
        self._startup = StartupReport(
            validators=validators,
            seconds=time.monotonic() - started,
            problems=tuple(durability.unsafe() + durability.warnings()),
            high_watermark=high_watermark,
        )

    # ---------------------------------------------------------------- opening

    @classmethod
    async def open(
        cls,
        url: str,
        genesis_validators_root: GenesisRoot | None,
        options: StoreOptions,
        allow_unsafe_database: bool = False,
    ) -> PostgresBackend:
        """Connects, checks the database keeps commits, creates or migrates the schema and pins or checks the
        genesis validators root. Raises DatabaseError (UnsafeDatabaseError, GenesisRootMismatchError) with one
        clear line, or BackendUnavailableError when the database cannot be reached."""
        started = time.monotonic()
        where = describe_url(url)
        try:
            async with await AsyncConnection.connect(url, autocommit=True, **_connect_options()) as connection:
                durability = await _read_durability(connection)
                _judge(durability, allow_unsafe_database, where)
                root = await _open_schema(connection, genesis_validators_root, where)
                row = await (await connection.execute("SELECT count(*) FROM validators")).fetchone()
                validators = int(row[0]) if row else 0
                high_watermark = await _read_high_watermark(connection)
        except psycopg.OperationalError as error:
            raise BackendUnavailableError(f"cannot reach the {where}: {_first_line(error)}") from error
        for line in durability.warnings():
            log.warning("%s", line)
        if durability.unsafe():
            log.warning(
                "serving on a database that can lose a commit (--allow-unsafe-database): %s",
                "; ".join(durability.unsafe()),
            )
        # A warning when a commit would not survive the loss of the primary: operators grep for warnings.
        level = logging.INFO if durability.survives_primary_loss() else logging.WARNING
        log.log(level, "%s", durability.describe())
        backend = cls(url, root, options, allow_unsafe_database, durability, validators, started, high_watermark)
        try:
            await backend._pool.open(wait=True, timeout=OPERATION_TIMEOUT_SECONDS)
        except psycopg_pool.PoolTimeout as error:
            await backend._pool.close()
            raise BackendUnavailableError(f"cannot open connections to the {where}") from error
        backend._watchdog = asyncio.create_task(backend._watch())
        return backend

    def _new_pool(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        return psycopg_pool.AsyncConnectionPool(
            self.url,
            kwargs={"autocommit": True, **_connect_options()},
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            open=False,
            configure=self._configure,
            timeout=OPERATION_TIMEOUT_SECONDS,
            reconnect_timeout=24 * 3600,
            name="sidecar",
        )

    async def _configure(self, connection: AsyncConnection[Any]) -> None:
        """Every new connection: its durability settings are checked before it serves a decision (a failover
        may have put us on a server configured otherwise), and the notices that tell a COMMIT's wait for the
        synchronous standby was cancelled are watched (see `_transaction`)."""
        durability = await _read_durability(connection)
        if durability.in_recovery:
            raise DatabaseError("connected to a standby in recovery (read-only); use target_session_attrs")
        if not self._allow_unsafe and durability.unsafe():
            raise UnsafeDatabaseError("; ".join(durability.unsafe()))
        cancelled = self._sync_rep_cancelled

        def on_notice(diagnostic: psycopg.errors.Diagnostic) -> None:
            if "synchronous replication" in (diagnostic.message_primary or ""):
                cancelled.add(connection)

        connection.add_notice_handler(on_notice)

    # ---------------------------------------------------------------- facts

    @property
    def genesis_validators_root(self) -> GenesisRoot:
        return self._root

    @property
    def startup(self) -> StartupReport:
        return self._startup

    @property
    def validator_count(self) -> int:
        return self._validator_count

    @property
    def last_checkpoint_unix(self) -> float | None:
        return self._last_checkpoint_unix

    @property
    def durability(self) -> DatabaseDurability:
        return self._durability

    # ---------------------------------------------------------------- health

    def _set_healthy(self, healthy: bool) -> None:
        if healthy == self._healthy:
            return
        self._healthy = healthy
        if healthy:
            log.warning("the database is reachable again: serving")
        else:
            log.error("the database is unreachable: refusing every signing request until it is back")
        callback = self.options.on_health_change
        if callback is not None:
            callback(healthy)

    async def _watch(self) -> None:
        """Probes the database: every PROBE_SECONDS while unhealthy (reconnecting by itself), and while healthy
        too, so that NOT_SERVING does not wait for the next request; refreshes the validator count."""
        next_count = time.monotonic() + COUNT_REFRESH_SECONDS
        while not self._closed:
            await asyncio.sleep(PROBE_SECONDS)
            try:
                async with asyncio.timeout(OPERATION_TIMEOUT_SECONDS):
                    if self._healthy:
                        async with self._pool.connection(timeout=OPERATION_TIMEOUT_SECONDS) as connection:
                            cursor = await connection.execute(
                                "SELECT count(*) FROM validators" if time.monotonic() >= next_count else "SELECT 1"
                            )
                            row = await cursor.fetchone()
                            if time.monotonic() >= next_count and row is not None:
                                self._validator_count = int(row[0])
                                next_count = time.monotonic() + COUNT_REFRESH_SECONDS
                    else:
                        await self._reconnect()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if self._healthy:
                    log.error("database probe failed: %s", _first_line(error))
                self._set_healthy(False)

    async def _reconnect(self) -> None:
        """A fresh connection that passes the durability check, then a fresh pool (the old one's connections
        died with the server); raises while the database is not back."""
        async with await AsyncConnection.connect(self.url, autocommit=True, **_connect_options()) as connection:
            durability = await _read_durability(connection)
            if durability.in_recovery:
                raise DatabaseError("the database reached is a standby in recovery")
            if durability.unsafe() and not self._allow_unsafe:
                log.error("the database is back but can lose a commit, still refusing: %s", durability.unsafe())
                raise UnsafeDatabaseError("; ".join(durability.unsafe()))
            if durability != self._durability:
                self._durability = durability
                log.warning("%s", durability.describe())
        old, self._pool = self._pool, self._new_pool()
        await self._pool.open(wait=True, timeout=OPERATION_TIMEOUT_SECONDS)
        asyncio.create_task(old.close(timeout=1.0))  # noqa: RUF006 (fire and forget: its connections are dead)
        self._cache.clear()
        self._set_healthy(True)

    # ---------------------------------------------------------------- transactions

    @contextlib.asynccontextmanager
    async def _locked_keys(self, pubkeys: Sequence[bytes]) -> AsyncIterator[None]:
        """This replica's locks of the keys, in pubkey order (the database's own locks are taken in that order
        too)."""
        async with contextlib.AsyncExitStack() as stack:
            for pubkey in sorted(set(pubkeys)):
                lock = self._locks.get(pubkey)
                if lock is None:
                    lock = self._locks[pubkey] = asyncio.Lock()
                await stack.enter_async_context(lock)
            yield

    async def _transaction(
        self,
        pubkeys: Sequence[bytes],
        body: Callable[[AsyncConnection[Any]], Awaitable[T]],
        timeout: float | None = OPERATION_TIMEOUT_SECONDS,
    ) -> T:
        """Runs `body` on a pooled connection (it sends its own BEGIN and COMMIT) and translates every failure
        into BackendUnavailableError, forgetting the cached histories of `pubkeys` (they may hold changes that
        never committed) and discarding the connection (its state is unknown)."""
        if self._closed:
            raise BackendUnavailableError("the backend is closed")
        connection: AsyncConnection[Any] | None = None
        try:
            async with asyncio.timeout(timeout):
                async with self._pool.connection() as connection:
                    try:
                        result = await body(connection)
                    except BaseException:
                        await connection.close()
                        raise
                    if connection in self._sync_rep_cancelled:
                        # Committed here, but the wait for the synchronous standby was cancelled: not on the
                        # standby yet. A retry's own commit waits for it again (and covers this one).
                        self._sync_rep_cancelled.discard(connection)
                        raise BackendUnavailableError(
                            "the commit was not confirmed by the synchronous standby; retry"
                        )
                    return result
        except BackendUnavailableError:
            self._forget(pubkeys)
            raise
        except (psycopg.Error, psycopg_pool.PoolTimeout, TimeoutError, OSError) as error:
            self._forget(pubkeys)
            lost = isinstance(error, psycopg_pool.PoolTimeout | psycopg.OperationalError) and (
                connection is None or connection.broken or connection.closed
            )
            if isinstance(error, psycopg_pool.PoolTimeout) or (lost and not _is_query_error(error)):
                self._set_healthy(False)
            if isinstance(error, TimeoutError):
                raise BackendUnavailableError(
                    f"the database did not answer within {timeout} s (the outcome is unknown: retry)"
                ) from error
            raise BackendUnavailableError(f"database error, nothing allowed: {_first_line(error)}") from error
        except BaseException:
            self._forget(pubkeys)
            raise

    def _forget(self, pubkeys: Sequence[bytes]) -> None:
        for pubkey in pubkeys:
            self._cache.pop(pubkey, None)

    async def _lock_and_load(
        self, connection: AsyncConnection[Any], pubkeys: Sequence[bytes], deciding: bool = True
    ) -> tuple[dict[bytes, _Locked], HighWatermark | None]:
        """Round trip 1: the rows of the registered keys, locked, and the high watermark in force; when `deciding`,
        BEGIN and the shared watermark lock before them (see the module doc). Then, for keys whose cached history
        is stale or missing, their records (one more round trip)."""
        if deciding:
            await connection.execute("BEGIN")
            await connection.execute(SHARE_HIGH_WATERMARK_SQL, (HIGH_WATERMARK_LOCK_KEY,))
        cursor = await connection.execute(LOCK_SQL, (sorted(set(pubkeys)),))
        locked: dict[bytes, _Locked] = {}
        high_watermark: HighWatermark | None = None
        for row in await cursor.fetchall():
            validator_id, pubkey, version, slot_floor, source_floor, target_floor, slot, epoch = row
            locked[bytes(pubkey)] = _Locked(
                validator_id, version, _floors_of_row(slot_floor, source_floor, target_floor)
            )
            if slot is not None:
                high_watermark = HighWatermark(slot, epoch)
        stale = []
        for pubkey, row in locked.items():
            cached = self._cache.get(pubkey)
            if cached is None or cached.version != row.version or cached.validator_id != row.validator_id:
                stale.append(pubkey)
        if stale:
            histories = await self._load_histories(connection, {pubkey: locked[pubkey] for pubkey in stale})
            for pubkey, history in histories.items():
                row = locked[pubkey]
                self._cache[pubkey] = _Cached(row.validator_id, row.version, history)
        return locked, high_watermark

    async def _load_histories(
        self, connection: AsyncConnection[Any], rows: dict[bytes, _Locked]
    ) -> dict[bytes, ValidatorHistory]:
        """The records of these validators, read in the current transaction (pipelined: one round trip)."""
        by_id = {row.validator_id: pubkey for pubkey, row in rows.items()}
        ids = list(by_id)
        blocks: dict[int, list[tuple[int, bytes | None]]] = {validator_id: [] for validator_id in ids}
        attestations: dict[int, list[tuple[int, int, bytes | None]]] = {validator_id: [] for validator_id in ids}
        async with connection.pipeline():
            block_rows = await connection.execute(
                "SELECT validator_id, slot, signing_root FROM blocks WHERE validator_id = ANY(%s)", (ids,)
            )
            attestation_rows = await connection.execute(
                "SELECT validator_id, target_epoch, source_epoch, signing_root FROM attestations "
                "WHERE validator_id = ANY(%s) UNION ALL "
                "SELECT validator_id, target_epoch, source_epoch, signing_root FROM attestation_conflicts "
                "WHERE validator_id = ANY(%s)",
                (ids, ids),
            )
            for validator_id, slot, root in await block_rows.fetchall():
                blocks[validator_id].append((slot, None if root is None else bytes(root)))
            for validator_id, target, source, root in await attestation_rows.fetchall():
                attestations[validator_id].append((target, source, None if root is None else bytes(root)))
        return {
            by_id[validator_id]: build_history(
                rows[by_id[validator_id]].floors, blocks[validator_id], attestations[validator_id]
            )
            for validator_id in ids
        }

    # ---------------------------------------------------------------- the hot path

    async def check_and_record_block(
        self, pubkey: Pubkey, slot: int, signing_root: SigningRoot
    ) -> tuple[Decision, int]:
        async with self._locked_keys([pubkey]):
            ((decision, sequence),) = await self._transaction(
                [pubkey],
                lambda connection: self._decide(connection, KIND_BLOCK, [(pubkey, slot, 0, signing_root)]),
            )
        return decision, sequence

    async def check_and_record_attestation(
        self, pubkey: Pubkey, source_epoch: int, target_epoch: int, signing_root: SigningRoot
    ) -> tuple[Decision, int]:
        request = (pubkey, source_epoch, target_epoch, signing_root)
        async with self._locked_keys([pubkey]):
            ((decision, sequence),) = await self._transaction(
                [pubkey], lambda connection: self._decide(connection, KIND_ATTESTATION, [request])
            )
        return decision, sequence

    async def check_and_record_attestations(
        self, requests: Sequence[AttestationRequest]
    ) -> list[tuple[Decision, int]]:
        items = [(pubkey, source, target, root) for pubkey, source, target, root in requests]
        pubkeys = [item[0] for item in items]
        async with self._locked_keys(pubkeys):
            return await self._transaction(
                pubkeys, lambda connection: self._decide(connection, KIND_ATTESTATION, items)
            )

    async def _decide(
        self, connection: AsyncConnection[Any], kind: int, items: Sequence[tuple[bytes, int, int, bytes]]
    ) -> list[tuple[Decision, int]]:
        """One transaction deciding `items` (distinct keys; blocks carry (pubkey, slot, 0, root)), in order.
        Returns once the COMMIT is acknowledged (see the module doc)."""
        now = self._now()
        window = self._window
        async with connection.pipeline() as pipeline:
            locked, high_watermark = await self._lock_and_load(connection, [item[0] for item in items])
            decisions: list[Decision] = []
            columns: list[list[Any]] = [[] for _ in range(8)]
            inserted: list[list[Any]] = [[], [], [], []]
            dropped_blocks: list[list[int]] = [[], []]
            dropped_targets: list[list[int]] = [[], []]
            changed: list[list[Any]] = [[], [], [], [], []]
            new_versions: dict[bytes, int] = {}
            for pubkey, first, second, root in items:
                row = locked.get(pubkey)
                history = self._cache[pubkey].history if row is not None else None
                if kind == KIND_BLOCK:
                    decision = check_block(history, first, root, high_watermark)
                else:
                    decision = check_attestation(history, first, second, root, high_watermark)
                decisions.append(decision)
                for column, value in zip(
                    columns,
                    (
                        pubkey,
                        kind,
                        to_db(first) if kind == KIND_BLOCK else None,
                        to_db(first) if kind == KIND_ATTESTATION else None,
                        to_db(second) if kind == KIND_ATTESTATION else None,
                        root,
                        int(decision.reason),
                        now,
                    ),
                    strict=True,
                ):
                    column.append(value)
                if history is None or row is None or decision.reason is not Reason.ALLOWED_NEW:
                    continue
                # Applied in memory as the local store applies it (pruning included); written below.
                vid = row.validator_id
                if kind == KIND_BLOCK:
                    slots_before = list(history.blocks)
                    history.add_block(first, root)
                    if window is not None:
                        history.prune_blocks(window)
                    inserted[0].append(vid)
                    inserted[1].append(to_db(first))
                    inserted[2].append(history.blocks[first])
                    for slot in slots_before:
                        if slot not in history.blocks:
                            dropped_blocks[0].append(vid)
                            dropped_blocks[1].append(to_db(slot))
                else:
                    targets_before = history.targets[:]
                    if not history.add_attestation_if_newest(first, second, root):
                        history.add_attestation(first, second, root)
                    if window is not None:
                        history.prune_attestations(window)
                    inserted[0].append(vid)
                    inserted[1].append(to_db(second))
                    inserted[2].append(to_db(first))
                    inserted[3].append(root)
                    lowest_kept = history.targets[0]
                    for target in sorted(set(targets_before)):
                        if target >= lowest_kept:
                            break
                        dropped_targets[0].append(vid)
                        dropped_targets[1].append(to_db(target))
                version = row.version + 1
                new_versions[pubkey] = version
                for column, value in zip(changed, (vid, version, *_floors_to_row(history)), strict=True):
                    column.append(value)
            # Round trip 2: everything, then COMMIT.
            recorded = await connection.execute(RECORD_DECISIONS_SQL, columns)
            if inserted[0]:
                if kind == KIND_BLOCK:
                    await connection.execute(INSERT_BLOCKS_SQL, inserted[:3])
                else:
                    await connection.execute(INSERT_ATTESTATIONS_SQL, inserted)
            if dropped_blocks[0]:
                await connection.execute(DELETE_BLOCKS_SQL, dropped_blocks)
            if dropped_targets[0]:
                for table in ("attestations", "attestation_conflicts"):
                    await connection.execute(
                        sql.SQL(DELETE_ATTESTATIONS_SQL).format(table=sql.Identifier(table)), dropped_targets
                    )
            if changed[0]:
                await connection.execute(UPDATE_HISTORY_SQL, changed)
            await connection.execute("COMMIT")
            await pipeline.sync()
            sequences = {bytes(pubkey): sequence for sequence, pubkey in await recorded.fetchall()}
        for pubkey, version in new_versions.items():
            self._cache[pubkey].version = version
        return [(decision, sequences[item[0]]) for decision, item in zip(decisions, items, strict=True)]

    # ---------------------------------------------------------------- operators

    async def register_validators(self, pubkeys: Sequence[Pubkey]) -> Registration:
        distinct = sorted(set(pubkeys))

        async def body(connection: AsyncConnection[Any]) -> tuple[int, int]:
            async with connection.transaction():
                sequence_row = await (await connection.execute("SELECT nextval('sidecar_sequence')")).fetchone()
                sequence = int(sequence_row[0]) if sequence_row else 0
                cursor = await connection.execute(
                    "INSERT INTO validators (pubkey, registered_sequence) SELECT unnest(%s::bytea[]), %s "
                    "ON CONFLICT (pubkey) DO NOTHING RETURNING id",
                    (distinct, sequence),
                )
                added = len(await cursor.fetchall())
            return added, sequence

        added, sequence = await self._transaction(distinct, body)
        self._validator_count += added
        return Registration(added, len(distinct) - added, sequence if added else 0)

    async def import_interchange(
        self, source: BinaryIO, progress: Callable[[int], None] | None = None
    ) -> ImportResult:
        """Reads and stages the whole document off the loop (nothing locked meanwhile), then applies it in one
        transaction under the same row locks as signing: all or nothing, floors only ever rising."""

        def stage() -> StagedImport:
            with bulk_loading():
                return stage_import(source, self.options, progress=progress, genesis_validators_root=self._root)

        staged = await _in_thread(stage)
        pubkeys = [pubkey for pubkey, _ in staged.validators]
        async with self._locked_keys(pubkeys):
            return await self._transaction(
                pubkeys, lambda connection: self._apply_import(connection, staged), None
            )

    async def _apply_import(self, connection: AsyncConnection[Any], staged: StagedImport) -> ImportResult:
        result = ImportResult(validators=len(staged.validators))
        keys = sorted(pubkey for pubkey, _ in staged.validators)
        await connection.execute("BEGIN")
        await connection.execute(f"SET LOCAL statement_timeout = '{BULK_STATEMENT_TIMEOUT}'")
        await connection.execute(f"SET LOCAL lock_timeout = '{BULK_STATEMENT_TIMEOUT}'")
        sequence_row = await (await connection.execute("SELECT nextval('sidecar_sequence')")).fetchone()
        sequence = int(sequence_row[0]) if sequence_row else 0
        # Registered by the import: new keys (locked by their insertion), inserted in pubkey order.
        cursor = await connection.execute(
            "INSERT INTO validators (pubkey, registered_sequence) SELECT unnest(%s::bytea[]), %s "
            "ON CONFLICT (pubkey) DO NOTHING RETURNING pubkey",
            (keys, sequence),
        )
        new = {bytes(row[0]) for row in await cursor.fetchall()}
        locked, _ = await self._lock_and_load(connection, keys, deciding=False)
        merged: dict[bytes, ValidatorHistory] = {}
        for pubkey, stage in staged.validators:
            cached = self._cache[pubkey]
            existing = None if pubkey in new else cached.history
            history, status, raised = merge_imported(existing, stage.history, self._minimal, self._window)
            cached.history = history
            if status is not ImportStatus.UNCHANGED:
                merged[pubkey] = history
            count_import(result, pubkey, staged_status(stage, status), raised)
        if merged:
            await self._rewrite_histories(connection, {pubkey: locked[pubkey] for pubkey in merged}, merged)
        await connection.execute("COMMIT")
        for pubkey in merged:
            self._cache[pubkey].version = locked[pubkey].version + 1
        self._validator_count += len(new)
        result.sequence = sequence
        return result

    async def _rewrite_histories(
        self,
        connection: AsyncConnection[Any],
        rows: dict[bytes, _Locked],
        histories: dict[bytes, ValidatorHistory],
    ) -> None:
        """Replaces these validators' records and floors with the histories' and bumps their versions."""
        ids = [rows[pubkey].validator_id for pubkey in histories]
        for table in ("blocks", "attestations", "attestation_conflicts"):
            await connection.execute(
                sql.SQL("DELETE FROM {} WHERE validator_id = ANY(%s)").format(sql.Identifier(table)), (ids,)
            )
        changed: list[list[Any]] = [[], [], [], [], []]
        cursor = connection.cursor()
        async with cursor.copy("COPY blocks (validator_id, slot, signing_root) FROM STDIN") as copy:
            for pubkey, history in histories.items():
                blocks, _ = history_rows(history)
                for slot, root in blocks:
                    await copy.write_row((rows[pubkey].validator_id, slot, root))
        conflicts: list[tuple[int, int, int, bytes | None]] = []
        async with cursor.copy(
            "COPY attestations (validator_id, target_epoch, source_epoch, signing_root) FROM STDIN"
        ) as copy:
            for pubkey, history in histories.items():
                validator_id = rows[pubkey].validator_id
                _, attestations = history_rows(history)
                previous_target: int | None = None
                for target, source, root in attestations:
                    if target == previous_target:
                        conflicts.append((validator_id, target, source, root))
                    else:
                        await copy.write_row((validator_id, target, source, root))
                    previous_target = target
        if conflicts:
            async with cursor.copy(
                "COPY attestation_conflicts (validator_id, target_epoch, source_epoch, signing_root) FROM STDIN"
            ) as copy:
                for conflict in conflicts:
                    await copy.write_row(conflict)
        for pubkey, history in histories.items():
            row = rows[pubkey]
            for column, value in zip(
                changed, (row.validator_id, row.version + 1, *_floors_to_row(history)), strict=True
            ):
                column.append(value)
        await connection.execute(UPDATE_HISTORY_SQL, changed)

    async def export_interchange(
        self, out: BinaryIO, pubkeys: Sequence[Pubkey] | None = None, progress: Callable[[int], None] | None = None
    ) -> int:
        """Writes the document from one consistent snapshot (REPEATABLE READ), a chunk of keys at a time."""
        loop = asyncio.get_running_loop()

        async def body(connection: AsyncConnection[Any]) -> int:
            await connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            await connection.execute(f"SET LOCAL statement_timeout = '{BULK_STATEMENT_TIMEOUT}'")
            if pubkeys is None:
                cursor = await connection.execute(f"{SELECT_VALIDATORS_SQL} ORDER BY pubkey")
            else:
                cursor = await connection.execute(
                    f"{SELECT_VALIDATORS_SQL} WHERE pubkey = ANY(%s) ORDER BY pubkey",
                    (list(set(pubkeys)),),
                )
            rows = {
                bytes(pubkey): _Locked(validator_id, version, _floors_of_row(slot_floor, source, target))
                for validator_id, pubkey, version, slot_floor, source, target in await cursor.fetchall()
            }
            if pubkeys is not None:
                missing = [pubkey for pubkey in pubkeys if pubkey not in rows]
                if missing:
                    raise UnknownValidatorError(f"validator 0x{missing[0].hex()} is not registered")
            selected = list(rows)

            def records() -> Iterator[ValidatorRecords]:
                for start in range(0, len(selected), LOAD_CHUNK):
                    if progress is not None and start:
                        progress(start)
                    chunk = {pubkey: rows[pubkey] for pubkey in selected[start : start + LOAD_CHUNK]}
                    histories = asyncio.run_coroutine_threadsafe(
                        self._load_histories(connection, chunk), loop
                    ).result()
                    for pubkey in chunk:
                        yield interchange_records(pubkey, histories[pubkey])

            await _in_thread(lambda: write_interchange(out, self._root, records()))
            await connection.execute("COMMIT")
            if progress is not None:
                progress(len(selected))
            return len(selected)

        return await self._transaction([], body, None)

    async def summary(self, pubkey: Pubkey) -> ValidatorSummary | None:
        async def body(connection: AsyncConnection[Any]) -> ValidatorSummary | None:
            await connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursor = await connection.execute(
                "SELECT id, version, slot_floor, source_epoch_floor, target_epoch_floor, allowed_decisions, "
                "refused_decisions, last_decision FROM validators WHERE pubkey = %s",
                (pubkey,),
            )
            row = await cursor.fetchone()
            if row is None:
                await connection.execute("COMMIT")
                return None
            validator_id, version, slot_floor, source, target, allowed, refused, last = row
            locked = _Locked(validator_id, version, _floors_of_row(slot_floor, source, target))
            history = (await self._load_histories(connection, {pubkey: locked}))[pubkey]
            last_decision = None
            if last is not None:
                cursor = await connection.execute(
                    f"SELECT {DECISION_COLUMNS} FROM decisions WHERE sequence = %s", (last,)
                )
                found = await cursor.fetchone()
                last_decision = _decision_record(found) if found is not None else None
            await connection.execute("COMMIT")
            return summarize(pubkey, history, allowed, refused, last_decision)

        return await self._transaction([], body)

    async def decisions(
        self, pubkey: Pubkey | None = None, since_sequence: int = 0
    ) -> AsyncIterator[DecisionRecord]:
        """Committed decisions, by sequence. Sequence numbers are taken when a decision is written, so one
        committing late can appear below a sequence a follower already read past (several replicas write at once):
        read again from a little earlier to be sure."""
        after = since_sequence
        while True:
            if pubkey is None:
                query = f"SELECT {DECISION_COLUMNS} FROM decisions WHERE sequence > %s ORDER BY sequence LIMIT %s"
                params: tuple[Any, ...] = (after, DECISIONS_BATCH)
            else:
                query = (
                    f"SELECT {DECISION_COLUMNS} FROM decisions WHERE pubkey = %s AND sequence > %s "
                    "ORDER BY sequence LIMIT %s"
                )
                params = (pubkey, after, DECISIONS_BATCH)

            async def body(
                connection: AsyncConnection[Any], query: str = query, params: Any = params
            ) -> list[Any]:
                return await (await connection.execute(query, params)).fetchall()

            rows = await self._transaction([], body)
            for row in rows:
                yield _decision_record(row)
            if len(rows) < DECISIONS_BATCH:
                return
            after = rows[-1][0]

    async def set_high_watermark(self, slot: int, epoch: int) -> HighWatermark:
        """Writes the watermark under the exclusive watermark lock, which waits for every decision in flight (see
        the module doc); durable once the COMMIT's reply is back."""
        high_watermark = valid_high_watermark(slot, epoch)

        async def body(connection: AsyncConnection[Any]) -> None:
            async with connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock(%s)", (HIGH_WATERMARK_LOCK_KEY,))
                await connection.execute(SET_HIGH_WATERMARK_SQL, (high_watermark.slot, high_watermark.epoch))

        await self._transaction([], body)
        return high_watermark

    async def high_watermark(self) -> HighWatermark | None:
        async def body(connection: AsyncConnection[Any]) -> HighWatermark | None:
            return await _read_high_watermark(connection)

        return await self._transaction([], body)

    async def remove_high_watermark(self) -> None:
        async def body(connection: AsyncConnection[Any]) -> None:
            await connection.execute("DELETE FROM high_watermark")

        await self._transaction([], body)

    async def save_checkpoint(self) -> CheckpointInfo:
        """Nothing to write: every decision is in the database's WAL once committed, and the database takes its
        own checkpoints. Reports the newest sequence number and the validator count."""
        started = time.monotonic()

        async def body(connection: AsyncConnection[Any]) -> tuple[int, int]:
            cursor = await connection.execute(
                "SELECT (SELECT last_value FROM sidecar_sequence), (SELECT count(*) FROM validators)"
            )
            row = await cursor.fetchone()
            return (int(row[0]), int(row[1])) if row else (0, 0)

        sequence, validators = await self._transaction([], body)
        self._validator_count = validators
        self._last_checkpoint_unix = time.time()
        return CheckpointInfo(
            sequence, validators, "postgresql (every commit is durable)", time.monotonic() - started
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        await self._pool.close(timeout=2.0)


# ---------------------------------------------------------------- helpers


def _connect_options() -> dict[str, Any]:
    """Time bounds that fit a slot (see the module doc), and keepalives so a dead peer is noticed."""
    return {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS} "
        "-c idle_in_transaction_session_timeout=10000",
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 2,
        "application_name": "slashing-sidecar",
    }


def _is_query_error(error: BaseException) -> bool:
    """A query that failed on a live connection (timeout, lock wait): not a reason to stop serving."""
    return isinstance(error, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


async def _read_durability(connection: AsyncConnection[Any]) -> DatabaseDurability:
    row = await (await connection.execute(DURABILITY_QUERY)).fetchone()
    assert row is not None
    return DatabaseDurability.of_row(row)


def _judge(durability: DatabaseDurability, allow_unsafe: bool, where: str) -> None:
    if durability.in_recovery:
        raise DatabaseError(
            f"the {where} is a standby in recovery (read-only): name the primary, or every host with "
            "target_session_attrs=read-write"
        )
    unsafe = durability.unsafe()
    if unsafe and not allow_unsafe:
        raise UnsafeDatabaseError(
            f"refusing to serve from the {where}, which can lose a commit: {'; '.join(unsafe)}; fix the setting "
            "(e.g. ALTER SYSTEM SET ... and reload), or pass --allow-unsafe-database to accept the risk"
        )


async def _open_schema(connection: AsyncConnection[Any], root: GenesisRoot | None, where: str) -> GenesisRoot:
    """Creates or migrates the schema and pins or checks the root, in one transaction under an advisory lock."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        await connection.execute(META_TABLE)
        row = await (
            await connection.execute("SELECT schema_version, genesis_validators_root FROM sidecar_meta")
        ).fetchone()
        if row is None:
            if root is None:
                raise DatabaseError(
                    f"the {where} holds no slashing protection yet: give --network or --genesis-validators-root "
                    "to create it"
                )
            version = 0
            await connection.execute(
                "INSERT INTO sidecar_meta (schema_version, genesis_validators_root) VALUES (0, %s)", (root,)
            )
            pinned = root
        else:
            # The root this database was created with, by `_open_schema` itself: a valid one.
            version, pinned = int(row[0]), GenesisRoot(bytes(row[1]))
        if version > SCHEMA_VERSION:
            raise DatabaseError(
                f"the {where} has schema version {version}, newer than this sidecar's ({SCHEMA_VERSION}): "
                "upgrade the sidecar"
            )
        if root is not None and root != pinned:
            raise GenesisRootMismatchError(
                f"the {where} was created for genesis validators root 0x{pinned.hex()}, not 0x{root.hex()}"
            )
        for target, statements in MIGRATIONS:
            if target <= version:
                continue
            log.info("database schema: migrating to version %d", target)
            for statement in statements:
                await connection.execute(statement)
            await connection.execute("UPDATE sidecar_meta SET schema_version = %s", (target,))
    return pinned


async def _read_high_watermark(connection: AsyncConnection[Any]) -> HighWatermark | None:
    row = await (await connection.execute(SELECT_HIGH_WATERMARK_SQL)).fetchone()
    return None if row is None else HighWatermark(int(row[0]), int(row[1]))


def _decision_record(row: Sequence[Any]) -> DecisionRecord:
    sequence, kind, pubkey, slot, source, target, root, reason, unix_nanos = row
    return DecisionRecord(
        sequence=int(sequence),
        kind=BLOCK if kind == KIND_BLOCK else ATTESTATION,
        pubkey=bytes(pubkey),
        slot=None if slot is None else from_db(slot),
        source_epoch=None if source is None else from_db(source),
        target_epoch=None if target is None else from_db(target),
        signing_root=bytes(root),
        reason=Reason(reason),
        unix_nanos=int(unix_nanos),
    )


def _in_thread(function: Callable[[], T]) -> asyncio.Future[T]:
    return run_in_own_thread(function, "postgres-bulk")
