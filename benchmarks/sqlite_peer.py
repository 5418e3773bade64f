"""The peers' design, as a baseline: SQLite, one exclusive transaction per decision, as Lighthouse and Nimbus do.

The database is one file, ``slashing_protection.sqlite``, in WAL mode with ``synchronous=FULL`` and foreign keys
on. Its schema is Lighthouse's::

    validators(id INTEGER PRIMARY KEY, public_key BLOB NOT NULL UNIQUE, enabled BOOL NOT NULL DEFAULT TRUE)
    signed_blocks(validator_id, slot, signing_root,                UNIQUE (validator_id, slot))
    signed_attestations(validator_id, source_epoch, target_epoch,  UNIQUE (validator_id, target_epoch))
                       signing_root)
    metadata(genesis_validators_root BLOB NOT NULL)   -- ours: the root the database belongs to

The unique constraints are the only indexes, as in Lighthouse. Every decision is one ``BEGIN EXCLUSIVE``
transaction: look the validator up, run the double-vote query, the two surround queries and the lower-bound
query, insert, commit (the commit is the fsync). Refusals are not recorded, as in Lighthouse. The surround query
"is a recorded vote surrounded by the new one" scans every recorded attestation of the validator with a lower
target epoch, so the cost of a decision grows with the validator's history: the history-depth figure shows it.

Decisions run one at a time on a single database thread (one connection), which is the best SQLite can do:
concurrent writers would only queue on the exclusive lock. The gRPC servicers (our protos) validate requests as
a real server must (lengths, genesis validators root, repeated keys in a batch) and hand the work to that thread.

Commands (``python -m benchmarks.sqlite_peer ...``)::

    serve  --data-dir DIR [--genesis-validators-root HEX] [--listen HOST:PORT]   prints "serving on HOST:PORT"
    import FILE --data-dir DIR                                                   EIP-3076 v5, one transaction
    export FILE --data-dir DIR
    bench  --data-dir DIR [--seconds S] [--depth N]        in-process decisions/s, no gRPC
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import grpc

from benchmarks.common import GENESIS_VALIDATORS_ROOT, pubkeys, signing_root
from benchmarks.server_runtime import serve_until_signalled
from sidecar.domain import PUBKEY_SIZE, ROOT_SIZE
from slashing_protection.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    interchange_pb2,
    interchange_pb2_grpc,
    signing_pb2,
    signing_pb2_grpc,
)

DATABASE_FILE = "slashing_protection.sqlite"
EXPORT_CHUNK = 1024 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS validators (
    id INTEGER PRIMARY KEY,
    public_key BLOB NOT NULL UNIQUE,
    enabled BOOL NOT NULL DEFAULT TRUE
);
CREATE TABLE IF NOT EXISTS signed_blocks (
    validator_id INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    signing_root BLOB,
    FOREIGN KEY(validator_id) REFERENCES validators(id)
    UNIQUE (validator_id, slot)
);
CREATE TABLE IF NOT EXISTS signed_attestations (
    validator_id INTEGER,
    source_epoch INTEGER NOT NULL,
    target_epoch INTEGER NOT NULL,
    signing_root BLOB,
    FOREIGN KEY(validator_id) REFERENCES validators(id)
    UNIQUE (validator_id, target_epoch)
);
CREATE TABLE IF NOT EXISTS metadata (
    genesis_validators_root BLOB NOT NULL
);
"""

_V = signing_pb2


class PeerDecision(NamedTuple):
    verdict: signing_pb2.Verdict
    reason: signing_pb2.Reason
    message: str = ""
    sequence: int = 0

    @property
    def allowed(self) -> bool:
        return self.verdict == _V.VERDICT_ALLOWED

    def to_proto(self) -> signing_pb2.SigningDecision:
        return signing_pb2.SigningDecision(
            verdict=self.verdict, reason=self.reason, message=self.message, sequence=self.sequence
        )


def _refused(reason: signing_pb2.Reason, message: str) -> PeerDecision:
    return PeerDecision(_V.VERDICT_REFUSED, reason, message)


class PeerError(Exception):
    """A request or document the peer refuses whole; ``code`` is the gRPC status it maps to."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class ImportSummary:
    validators: int = 0
    imported: int = 0
    slashable_records: int = 0


class SqlitePeerStore:
    """Lighthouse's slashing database, in Python. Not thread-safe: one thread owns it (the servers use one)."""

    def __init__(self, path: Path, genesis_validators_root: bytes | None) -> None:
        """Opens or creates the database at ``path``; refuses a database of another genesis validators root."""
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(SCHEMA)
        row = self.conn.execute("SELECT genesis_validators_root FROM metadata").fetchone()
        if row is None:
            if genesis_validators_root is None:
                raise PeerError(grpc.StatusCode.FAILED_PRECONDITION, f"{path} is new: give its genesis root")
            self.conn.execute("INSERT INTO metadata VALUES (?)", (genesis_validators_root,))
            self.genesis_validators_root = genesis_validators_root
        else:
            self.genesis_validators_root = bytes(row[0])
            if genesis_validators_root is not None and genesis_validators_root != self.genesis_validators_root:
                raise PeerError(grpc.StatusCode.FAILED_PRECONDITION, f"{path} belongs to another genesis root")

    def close(self) -> None:
        self.conn.close()

    # --- transactions --------------------------------------------------------------------------------------------

    def _exclusive(self, work: Callable[[], _T]) -> _T:
        """Runs ``work`` in one ``BEGIN EXCLUSIVE`` transaction, committed (fsynced) on success."""
        self.conn.execute("BEGIN EXCLUSIVE")
        try:
            result = work()
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return result

    def register_validators(self, keys: Sequence[bytes]) -> tuple[int, int]:
        """Registers ``keys``; returns (newly registered, already known)."""

        def work() -> int:
            before = self.conn.total_changes
            self.conn.executemany(
                "INSERT OR IGNORE INTO validators (public_key) VALUES (?)", ((key,) for key in keys)
            )
            return self.conn.total_changes - before

        new = self._exclusive(work)
        return new, len(keys) - new

    def _validator_id_locked(self, key: bytes) -> int | None:
        row = self.conn.execute("SELECT id FROM validators WHERE public_key = ?1 AND enabled", (key,)).fetchone()
        return None if row is None else int(row[0])

    # --- the checks: each "_locked" helper runs inside the caller's exclusive transaction ------------------------

    def _check_attestation_locked(
        self, validator_id: int, source_epoch: int, target_epoch: int, root: bytes | None
    ) -> PeerDecision | None:
        """The refusal or repeat for this attestation, or None when it is new and safe to insert."""
        if source_epoch > target_epoch:
            return _refused(_V.REASON_SOURCE_EPOCH_GREATER_THAN_TARGET_EPOCH, "source epoch > target epoch")
        same_target = self.conn.execute(
            "SELECT source_epoch, signing_root FROM signed_attestations"
            " WHERE validator_id = ?1 AND target_epoch = ?2",
            (validator_id, target_epoch),
        ).fetchone()
        if same_target is not None:
            if root is not None and same_target[1] is not None and bytes(same_target[1]) == root:
                return PeerDecision(_V.VERDICT_ALLOWED, _V.REASON_ALLOWED_REPEAT, "same data")
            return _refused(_V.REASON_DOUBLE_VOTE, f"double vote at target epoch {target_epoch}")
        surrounding = self.conn.execute(
            "SELECT source_epoch, target_epoch FROM signed_attestations"
            " WHERE validator_id = ?1 AND source_epoch < ?2 AND target_epoch > ?3"
            " ORDER BY target_epoch DESC LIMIT 1",
            (validator_id, source_epoch, target_epoch),
        ).fetchone()
        if surrounding is not None:
            return _refused(
                _V.REASON_SURROUNDED_BY_RECORDED_VOTE, f"previous vote {tuple(surrounding)} surrounds new"
            )
        surrounded = self.conn.execute(
            "SELECT source_epoch, target_epoch FROM signed_attestations"
            " WHERE validator_id = ?1 AND source_epoch > ?2 AND target_epoch < ?3"
            " ORDER BY target_epoch DESC LIMIT 1",
            (validator_id, source_epoch, target_epoch),
        ).fetchone()
        if surrounded is not None:
            return _refused(_V.REASON_SURROUNDS_RECORDED_VOTE, f"new vote surrounds previous {tuple(surrounded)}")
        min_source, min_target = self.conn.execute(
            "SELECT MIN(source_epoch), MIN(target_epoch) FROM signed_attestations WHERE validator_id = ?1",
            (validator_id,),
        ).fetchone()
        if min_source is not None and source_epoch < min_source:
            return _refused(_V.REASON_SOURCE_EPOCH_BELOW_LOWER_BOUND, f"source epoch below {min_source}")
        if min_target is not None and target_epoch <= min_target:
            return _refused(
                _V.REASON_TARGET_EPOCH_AT_OR_BELOW_LOWER_BOUND, f"target epoch at or below {min_target}"
            )
        return None

    def _insert_attestation_locked(
        self, validator_id: int, source_epoch: int, target_epoch: int, root: bytes | None
    ) -> int:
        cursor = self.conn.execute(
            "INSERT INTO signed_attestations (validator_id, source_epoch, target_epoch, signing_root)"
            " VALUES (?1, ?2, ?3, ?4)",
            (validator_id, source_epoch, target_epoch, root),
        )
        return int(cursor.lastrowid or 0)

    def _check_block_locked(self, validator_id: int, slot: int, root: bytes | None) -> PeerDecision | None:
        same_slot = self.conn.execute(
            "SELECT signing_root FROM signed_blocks WHERE validator_id = ?1 AND slot = ?2", (validator_id, slot)
        ).fetchone()
        if same_slot is not None:
            if root is not None and same_slot[0] is not None and bytes(same_slot[0]) == root:
                return PeerDecision(_V.VERDICT_ALLOWED, _V.REASON_ALLOWED_REPEAT, "same data")
            return _refused(_V.REASON_DOUBLE_PROPOSAL, f"double proposal at slot {slot}")
        (min_slot,) = self.conn.execute(
            "SELECT MIN(slot) FROM signed_blocks WHERE validator_id = ?1", (validator_id,)
        ).fetchone()
        if min_slot is not None and slot <= min_slot:
            return _refused(_V.REASON_SLOT_AT_OR_BELOW_LOWER_BOUND, f"slot at or below {min_slot}")
        return None

    def _insert_block_locked(self, validator_id: int, slot: int, root: bytes | None) -> int:
        cursor = self.conn.execute(
            "INSERT INTO signed_blocks (validator_id, slot, signing_root) VALUES (?1, ?2, ?3)",
            (validator_id, slot, root),
        )
        return int(cursor.lastrowid or 0)

    # --- the hot path --------------------------------------------------------------------------------------------

    def check_and_record_attestation(
        self, key: bytes, source_epoch: int, target_epoch: int, root: bytes
    ) -> PeerDecision:
        """Checks and, if new and safe, records the attestation, in one exclusive transaction."""

        def work() -> PeerDecision:
            validator_id = self._validator_id_locked(key)
            if validator_id is None:
                return _refused(_V.REASON_VALIDATOR_NOT_REGISTERED, "validator not registered")
            decision = self._check_attestation_locked(validator_id, source_epoch, target_epoch, root)
            if decision is not None:
                return decision
            sequence = self._insert_attestation_locked(validator_id, source_epoch, target_epoch, root)
            return PeerDecision(_V.VERDICT_ALLOWED, _V.REASON_ALLOWED_NEW, "", sequence)

        return self._exclusive(work)

    def check_and_record_block(self, key: bytes, slot: int, root: bytes) -> PeerDecision:
        def work() -> PeerDecision:
            validator_id = self._validator_id_locked(key)
            if validator_id is None:
                return _refused(_V.REASON_VALIDATOR_NOT_REGISTERED, "validator not registered")
            decision = self._check_block_locked(validator_id, slot, root)
            if decision is not None:
                return decision
            return PeerDecision(
                _V.VERDICT_ALLOWED, _V.REASON_ALLOWED_NEW, "", self._insert_block_locked(validator_id, slot, root)
            )

        return self._exclusive(work)

    # --- interchange ---------------------------------------------------------------------------------------------

    def import_interchange(self, document: Any) -> ImportSummary:
        """Imports an EIP-3076 v5 document in one transaction, checking every record as Lighthouse does.

        Slashable records are skipped (and counted); a malformed document changes nothing.
        """
        records = _parse_interchange(document, self.genesis_validators_root)
        summary = ImportSummary(validators=len(records))

        def work() -> None:
            for key, blocks, attestations in records:
                self.conn.execute("INSERT OR IGNORE INTO validators (public_key) VALUES (?)", (key,))
                validator_id = self._validator_id_locked(key)
                assert validator_id is not None
                clean = True
                for slot, root in sorted(blocks, key=lambda block: block[0]):
                    decision = self._check_block_locked(validator_id, slot, root)
                    if decision is None:
                        self._insert_block_locked(validator_id, slot, root)
                    elif not decision.allowed:
                        clean = False
                        summary.slashable_records += 1
                for source_epoch, target_epoch, root in sorted(attestations, key=lambda att: att[1]):
                    decision = self._check_attestation_locked(validator_id, source_epoch, target_epoch, root)
                    if decision is None:
                        self._insert_attestation_locked(validator_id, source_epoch, target_epoch, root)
                    elif not decision.allowed:
                        clean = False
                        summary.slashable_records += 1
                summary.imported += clean

        self._exclusive(work)
        return summary

    def export_interchange(self) -> dict[str, Any]:
        """The whole database as an EIP-3076 v5 document."""
        data: dict[int, dict[str, Any]] = {}
        for validator_id, key in self.conn.execute("SELECT id, public_key FROM validators ORDER BY id"):
            data[validator_id] = {"pubkey": _hex(key), "signed_blocks": [], "signed_attestations": []}
        for validator_id, slot, root in self.conn.execute(
            "SELECT validator_id, slot, signing_root FROM signed_blocks ORDER BY validator_id, slot"
        ):
            block = {"slot": str(slot)}
            if root is not None:
                block["signing_root"] = _hex(root)
            data[validator_id]["signed_blocks"].append(block)
        for validator_id, source_epoch, target_epoch, root in self.conn.execute(
            "SELECT validator_id, source_epoch, target_epoch, signing_root FROM signed_attestations"
            " ORDER BY validator_id, target_epoch"
        ):
            attestation = {"source_epoch": str(source_epoch), "target_epoch": str(target_epoch)}
            if root is not None:
                attestation["signing_root"] = _hex(root)
            data[validator_id]["signed_attestations"].append(attestation)
        return {
            "metadata": {
                "interchange_format_version": "5",
                "genesis_validators_root": _hex(self.genesis_validators_root),
            },
            "data": list(data.values()),
        }

    # --- set-up for benchmarks -----------------------------------------------------------------------------------

    def seed_attestation_history(self, keys: Sequence[bytes], depth: int) -> None:
        """Registers ``keys`` and gives each attestations (t - 1, t) for t = 1..depth, without checks and without
        fsyncs: benchmark set-up, never a decision path."""
        self.conn.execute("PRAGMA synchronous=OFF")
        try:

            def work() -> None:
                self.conn.executemany(
                    "INSERT OR IGNORE INTO validators (public_key) VALUES (?)", ((key,) for key in keys)
                )
                ids = [self._validator_id_locked(key) for key in keys]
                self.conn.executemany(
                    "INSERT INTO signed_attestations (validator_id, source_epoch, target_epoch, signing_root)"
                    " VALUES (?, ?, ?, ?)",
                    (
                        (validator_id, target - 1, target, signing_root(validator_id or 0, target))
                        for validator_id in ids
                        for target in range(1, depth + 1)
                    ),
                )

            self._exclusive(work)
        finally:
            self.conn.execute("PRAGMA synchronous=FULL")


_T = TypeVar("_T")


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def _unhex(value: Any, length: int, what: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise PeerError(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: expected a 0x-prefixed hex string")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError as error:
        raise PeerError(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {error}") from error
    if len(raw) != length:
        raise PeerError(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: expected {length} bytes")
    return raw


def _uint(value: Any, what: str) -> int:
    if not isinstance(value, str) or not value.isdigit():
        raise PeerError(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: expected a decimal string")
    return int(value)


_ParsedValidator = tuple[bytes, list[tuple[int, bytes | None]], list[tuple[int, int, bytes | None]]]


def _parse_interchange(document: Any, genesis_validators_root: bytes) -> list[_ParsedValidator]:
    """Validates an EIP-3076 v5 document whole, before anything is written."""
    try:
        metadata = document["metadata"]
        if metadata["interchange_format_version"] != "5":
            raise PeerError(grpc.StatusCode.INVALID_ARGUMENT, "interchange format version is not 5")
        if _unhex(metadata["genesis_validators_root"], ROOT_SIZE, "root") != genesis_validators_root:
            raise PeerError(grpc.StatusCode.FAILED_PRECONDITION, "another genesis validators root")
        parsed = []
        for entry in document["data"]:
            key = _unhex(entry["pubkey"], PUBKEY_SIZE, "pubkey")
            blocks = [
                (
                    _uint(block["slot"], "slot"),
                    _unhex(block["signing_root"], ROOT_SIZE, "signing_root") if "signing_root" in block else None,
                )
                for block in entry["signed_blocks"]
            ]
            attestations = [
                (
                    _uint(att["source_epoch"], "source_epoch"),
                    _uint(att["target_epoch"], "target_epoch"),
                    _unhex(att["signing_root"], ROOT_SIZE, "signing_root") if "signing_root" in att else None,
                )
                for att in entry["signed_attestations"]
            ]
            parsed.append((key, blocks, attestations))
        return parsed
    except (KeyError, TypeError) as error:
        raise PeerError(grpc.StatusCode.INVALID_ARGUMENT, f"not an EIP-3076 document: {error!r}") from error


# --- gRPC --------------------------------------------------------------------------------------------------------


class _DatabaseThread:
    """The one thread that owns the store; every call queues behind the previous one."""

    def __init__(self, store: SqlitePeerStore) -> None:
        self.store = store
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    async def run(self, work: Callable[[SqlitePeerStore], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, self.store)

    async def close(self) -> None:
        await self.run(lambda store: store.close())
        self._executor.shutdown()


def check_signing_request(pubkey: bytes, signing_root: bytes, request_root: bytes, expected_root: bytes) -> None:
    """The sizes and the chain of a signing request, as both peer baselines check them."""
    if len(pubkey) != PUBKEY_SIZE or len(signing_root) != ROOT_SIZE:
        raise PeerError(grpc.StatusCode.INVALID_ARGUMENT, "pubkey must be 48 bytes, signing_root 32")
    if len(request_root) != ROOT_SIZE:
        raise PeerError(grpc.StatusCode.INVALID_ARGUMENT, "genesis_validators_root must be 32 bytes")
    if request_root != expected_root:
        raise PeerError(grpc.StatusCode.FAILED_PRECONDITION, "genesis_validators_root differs from the database's")


def _validate_attestation(
    request: signing_pb2.CheckAndRecordAttestationRequest, genesis_validators_root: bytes
) -> None:
    check_signing_request(
        request.pubkey, request.signing_root, request.genesis_validators_root, genesis_validators_root
    )


class PeerSigningServicer(signing_pb2_grpc.SlashingProtectionServiceServicer):  # type: ignore[misc,unused-ignore]
    def __init__(self, database: _DatabaseThread) -> None:
        self.database = database
        self.root = database.store.genesis_validators_root

    async def CheckAndRecordBlock(
        self, request: signing_pb2.CheckAndRecordBlockRequest, context: grpc.aio.ServicerContext
    ) -> signing_pb2.CheckAndRecordBlockResponse:
        if len(request.pubkey) != PUBKEY_SIZE or len(request.signing_root) != ROOT_SIZE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "pubkey must be 48 bytes, signing_root 32")
        if request.genesis_validators_root != self.root:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "genesis_validators_root differs")
        decision = await self.database.run(
            lambda store: store.check_and_record_block(request.pubkey, request.slot, request.signing_root)
        )
        return signing_pb2.CheckAndRecordBlockResponse(decision=decision.to_proto())

    async def CheckAndRecordAttestation(
        self, request: signing_pb2.CheckAndRecordAttestationRequest, context: grpc.aio.ServicerContext
    ) -> signing_pb2.CheckAndRecordAttestationResponse:
        try:
            _validate_attestation(request, self.root)
        except PeerError as error:
            await context.abort(error.code, str(error))
        decision = await self.database.run(
            lambda store: store.check_and_record_attestation(
                request.pubkey, request.source_epoch, request.target_epoch, request.signing_root
            )
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
                _validate_attestation(item, self.root)
        except PeerError as error:
            await context.abort(error.code, str(error))

        def work(store: SqlitePeerStore) -> list[PeerDecision]:
            # One exclusive transaction (one fsync) per item: the peers have no batch path.
            return [
                store.check_and_record_attestation(
                    item.pubkey, item.source_epoch, item.target_epoch, item.signing_root
                )
                for item in items
            ]

        decisions = await self.database.run(work)
        return signing_pb2.CheckAndRecordAttestationsResponse(decisions=[d.to_proto() for d in decisions])


class PeerAdminServicer(admin_pb2_grpc.AdminServiceServicer):  # type: ignore[misc,unused-ignore]
    def __init__(self, database: _DatabaseThread) -> None:
        self.database = database

    async def RegisterValidators(
        self, request: admin_pb2.RegisterValidatorsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RegisterValidatorsResponse:
        keys = list(request.pubkeys)
        if any(len(key) != PUBKEY_SIZE for key in keys):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "every pubkey must be 48 bytes")
        new, known = await self.database.run(lambda store: store.register_validators(keys))
        return admin_pb2.RegisterValidatorsResponse(registered=new, already_registered=known)


class PeerInterchangeServicer(interchange_pb2_grpc.InterchangeServiceServicer):  # type: ignore[misc,unused-ignore]
    def __init__(self, database: _DatabaseThread) -> None:
        self.database = database

    async def ImportInterchange(
        self,
        request_iterator: AsyncIterator[interchange_pb2.ImportInterchangeRequest],
        context: grpc.aio.ServicerContext,
    ) -> interchange_pb2.ImportInterchangeResponse:
        chunks = [request.chunk async for request in request_iterator]
        try:
            document = json.loads(b"".join(chunks))
            summary = await self.database.run(lambda store: store.import_interchange(document))
        except json.JSONDecodeError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not JSON: {error}")
        except PeerError as error:
            await context.abort(error.code, str(error))
        return interchange_pb2.ImportInterchangeResponse(validators=summary.validators, imported=summary.imported)

    async def ExportInterchange(
        self, request: interchange_pb2.ExportInterchangeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[interchange_pb2.ExportInterchangeResponse]:
        document = await self.database.run(lambda store: store.export_interchange())
        if request.pubkeys:
            wanted = {_hex(key) for key in request.pubkeys}
            document["data"] = [entry for entry in document["data"] if entry["pubkey"] in wanted]
        text = json.dumps(document).encode()
        for offset in range(0, len(text), EXPORT_CHUNK):
            yield interchange_pb2.ExportInterchangeResponse(chunk=text[offset : offset + EXPORT_CHUNK])


async def serve(data_dir: Path, genesis_validators_root: bytes | None, listen: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    database = _DatabaseThread(SqlitePeerStore(data_dir / DATABASE_FILE, genesis_validators_root))

    def register(server: grpc.aio.Server) -> list[str]:
        signing_pb2_grpc.add_SlashingProtectionServiceServicer_to_server(PeerSigningServicer(database), server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(PeerAdminServicer(database), server)
        interchange_pb2_grpc.add_InterchangeServiceServicer_to_server(PeerInterchangeServicer(database), server)
        return [
            signing_pb2.DESCRIPTOR.services_by_name["SlashingProtectionService"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
            interchange_pb2.DESCRIPTOR.services_by_name["InterchangeService"].full_name,
        ]

    await serve_until_signalled(listen, register, on_stop=database.close)


# --- in-process measurement --------------------------------------------------------------------------------------


@dataclass
class InProcessResult:
    decisions: int
    seconds: float
    depth: int

    @property
    def decisions_per_s(self) -> float:
        return self.decisions / self.seconds if self.seconds > 0 else 0.0


def measure_in_process(
    data_dir: Path, *, seconds: float, depth: int, validators: int = 64, first_validator: int = 0
) -> InProcessResult:
    """Decisions per second of the store itself, one at a time, no gRPC: each validator starts with ``depth``
    recorded attestations and receives the next epoch in turn. Uses a fresh database under ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"in-process-depth-{depth}.sqlite"
    for leftover in data_dir.glob(path.name + "*"):
        leftover.unlink()
    store = SqlitePeerStore(path, GENESIS_VALIDATORS_ROOT)
    try:
        keys = pubkeys(first_validator, validators)
        store.seed_attestation_history(keys, depth)
        decisions = 0
        started = time.monotonic()
        deadline = started + seconds
        target = depth
        while time.monotonic() < deadline:
            target += 1
            for offset, key in enumerate(keys):
                decision = store.check_and_record_attestation(
                    key, target - 1, target, signing_root(first_validator + offset, target)
                )
                if not decision.allowed:
                    raise RuntimeError(f"in-process peer refused an ALLOWED-able attestation: {decision}")
                decisions += 1
                if decisions % 16 == 0 and time.monotonic() >= deadline:
                    break
        return InProcessResult(decisions, time.monotonic() - started, depth)
    finally:
        store.close()


# --- command line ------------------------------------------------------------------------------------------------


def _parse_root(text: str) -> bytes:
    raw = bytes.fromhex(text.removeprefix("0x"))
    if len(raw) != ROOT_SIZE:
        raise argparse.ArgumentTypeError("expected 32 bytes of hex")
    return raw


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sqlite_peer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve our protos over this store")
    serve_parser.add_argument("--data-dir", type=Path, required=True)
    serve_parser.add_argument("--genesis-validators-root", type=_parse_root, default=None)
    serve_parser.add_argument("--listen", default="127.0.0.1:0")
    for name in ("import", "export"):
        command = commands.add_parser(name, help=f"{name} an EIP-3076 v5 file")
        command.add_argument("file", type=Path)
        command.add_argument("--data-dir", type=Path, required=True)
    bench_parser = commands.add_parser("bench", help="in-process decisions/s, no gRPC")
    bench_parser.add_argument("--data-dir", type=Path, required=True)
    bench_parser.add_argument("--seconds", type=float, default=3.0)
    bench_parser.add_argument("--depth", type=int, default=10)
    args = parser.parse_args(list(argv) if argv is not None else None)

    try:
        if args.command == "serve":
            asyncio.run(serve(args.data_dir, args.genesis_validators_root, args.listen))
        elif args.command == "import":
            document = json.loads(args.file.read_bytes())
            root = _unhex(document.get("metadata", {}).get("genesis_validators_root"), ROOT_SIZE, "root")
            args.data_dir.mkdir(parents=True, exist_ok=True)
            store = SqlitePeerStore(args.data_dir / DATABASE_FILE, root)
            summary = store.import_interchange(document)
            store.close()
            print(f"imported {summary.imported} of {summary.validators} validators cleanly")
            return 0 if summary.imported == summary.validators else 1
        elif args.command == "export":
            store = SqlitePeerStore(args.data_dir / DATABASE_FILE, None)
            document = store.export_interchange()
            store.close()
            args.file.write_text(json.dumps(document))
            print(f"exported {len(document['data'])} validators")
        else:
            result = measure_in_process(args.data_dir, seconds=args.seconds, depth=args.depth)
            print(f"{result.decisions_per_s:,.0f} decisions/s at history depth {result.depth}")
    except (PeerError, OSError, ValueError, sqlite3.Error) as error:
        print(f"sqlite_peer: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
