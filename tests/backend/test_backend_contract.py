"""The seam's contract (`sidecar.backend.Backend`), driven directly, without gRPC: what every backend must do
for the servicers to be right. Every test runs against each backend: the local one on a real data directory and
the PostgreSQL one on a fresh database of a real private server (`tests.support.postgres`). Written against the
Protocol only, plus one look below it (how far the backend is durable) and one local fault injected below it.

* an ALLOWED decision is durable when the coroutine returns, and refusals and repeats are decided by the rules;
* a batch is decided in order and durable as a whole;
* a durability failure raises the backend-neutral `BackendUnavailableError`, never an answer;
* registration, import, export, summary, the audit trail and checkpoints do what the contract says, and what was
  acknowledged survives close and reopen;
* the global high watermark refuses what is at or beyond it (after the unregistered key, before the key's own
  rules), batches included, is durable when set or removed, survives close and reopen, and a value no database
  can hold is refused without changing anything.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest

from sidecar.backend import AttestationRequest, Backend, DatabaseLocation, ImportStatus, open_backend
from sidecar.errors import BackendUnavailableError, InvalidRequestError, UnknownValidatorError
from sidecar.local import LocalBackend
from sidecar.postgres import PostgresBackend
from sidecar.rules import HighWatermark, Reason
from sidecar.store import StoreOptions
from tests.storage.fakes import FaultyFileOps
from tests.support.keys import ZERO_ROOT, pubkey, signing_root

GENESIS = ZERO_ROOT
A, B = signing_root(0xAA), signing_root(0xBB)
T = TypeVar("T")


Location = Path | DatabaseLocation


@pytest.fixture(params=["local", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    """Where the backend under test keeps its database: a data directory, or a fresh PostgreSQL database."""
    if request.param == "local":
        return tmp_path / "d"
    return DatabaseLocation(request.getfixturevalue("postgres_url"))


def run(test: Callable[[Backend], Awaitable[T]], location: Location, options: StoreOptions | None = None) -> T:
    async def body() -> T:
        backend = await open_backend(location, GENESIS, options or StoreOptions())
        try:
            return await test(backend)
        finally:
            await backend.close()

    return asyncio.run(body())


def durable_through(backend: Backend) -> int:
    """How far the backend is durable (the one look below the seam: the contract's durability). Local: the log's
    fsynced sequence. PostgreSQL: the newest sequence another session sees, i.e. committed."""
    if isinstance(backend, LocalBackend):
        return backend.store.log.durable_sequence
    assert isinstance(backend, PostgresBackend)
    with psycopg.connect(backend.url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT greatest((SELECT max(sequence) FROM decisions), "
            "(SELECT max(registered_sequence) FROM validators))"
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def test_allowed_decisions_are_durable_when_returned(location: Location) -> None:
    async def scenario(backend: Backend) -> None:
        registration = await backend.register_validators([pubkey(1), pubkey(2), pubkey(1)])
        assert (registration.registered, registration.already_registered) == (2, 0)
        assert durable_through(backend) >= registration.sequence

        decision, sequence = await backend.check_and_record_block(pubkey(1), 10, A)
        assert decision.reason is Reason.ALLOWED_NEW and durable_through(backend) >= sequence
        decision, sequence = await backend.check_and_record_attestation(pubkey(1), 1, 2, A)
        assert decision.reason is Reason.ALLOWED_NEW and durable_through(backend) >= sequence
        assert (await backend.check_and_record_block(pubkey(1), 10, A))[0].reason is Reason.ALLOWED_REPEAT
        assert (await backend.check_and_record_block(pubkey(1), 10, B))[0].reason is Reason.DOUBLE_PROPOSAL
        assert (await backend.check_and_record_attestation(pubkey(1), 1, 2, B))[0].reason is Reason.DOUBLE_VOTE
        assert (await backend.check_and_record_block(pubkey(9), 1, A))[0].reason is Reason.VALIDATOR_NOT_REGISTERED

    run(scenario, location)


def test_a_batch_is_decided_in_order_and_durable_as_a_whole(location: Location) -> None:
    async def scenario(backend: Backend) -> None:
        await backend.register_validators([pubkey(1), pubkey(2)])
        await backend.check_and_record_attestation(pubkey(2), 3, 4, A)
        decided = await backend.check_and_record_attestations(
            [
                AttestationRequest(pubkey(1), 1, 2, A),
                AttestationRequest(pubkey(2), 2, 5, B),
                AttestationRequest(pubkey(3), 0, 1, A),
            ]
        )
        assert [decision.reason for decision, _ in decided] == [
            Reason.ALLOWED_NEW,
            Reason.SURROUNDS_RECORDED_VOTE,
            Reason.VALIDATOR_NOT_REGISTERED,
        ]
        sequences = [sequence for _, sequence in decided]
        assert sequences == sorted(sequences) and len(set(sequences)) == 3
        assert durable_through(backend) >= sequences[-1]  # refusals too: a batch waits for one commit

    run(scenario, location)


def test_a_durability_failure_raises_the_backend_neutral_error_and_allows_nothing(tmp_path: Path) -> None:
    """Local backend only: a disk fault below its log (PostgreSQL's outages are in tests/postgres)."""
    location = tmp_path / "local"
    fileops = FaultyFileOps()

    async def scenario(backend: Backend) -> None:
        await backend.register_validators([pubkey(1)])
        fileops.fail("fdatasync", errno.EIO)
        with pytest.raises(BackendUnavailableError, match="could not be made durable"):
            await backend.check_and_record_block(pubkey(1), 10, A)
        with pytest.raises(BackendUnavailableError):
            await backend.check_and_record_attestations([AttestationRequest(pubkey(1), 1, 2, A)])
        fileops.heal()
        # The backend heals by itself once the disk does: a retry goes through (the same block: a repeat at
        # worst, since the failed call's record may have been rewritten).
        for _ in range(200):
            try:
                decision, _ = await backend.check_and_record_block(pubkey(1), 10, A)
                break
            except BackendUnavailableError:
                await asyncio.sleep(0.05)
        assert decision.allowed

    run(scenario, location, StoreOptions(fileops=fileops))

    async def after(backend: Backend) -> None:
        # What was acknowledged survived; the failed calls were never answered, so nothing conflicts with them.
        assert (await backend.check_and_record_block(pubkey(1), 10, A))[0].reason is Reason.ALLOWED_REPEAT
        assert (await backend.check_and_record_block(pubkey(1), 10, B))[0].reason is Reason.DOUBLE_PROPOSAL

    run(after, location)


def test_import_export_summary_decisions_and_checkpoint(location: Location) -> None:
    document = {
        "metadata": {"interchange_format_version": "5", "genesis_validators_root": "0x" + GENESIS.hex()},
        "data": [
            {
                "pubkey": "0x" + pubkey(1).hex(),
                "signed_blocks": [{"slot": "7", "signing_root": "0x" + A.hex()}],
                "signed_attestations": [{"source_epoch": "2", "target_epoch": "3"}],
            }
        ],
    }

    async def scenario(backend: Backend) -> bytes:
        progress: list[int] = []
        result = await backend.import_interchange(io.BytesIO(json.dumps(document).encode()), progress.append)
        assert (result.validators, result.imported, progress[-1]) == (1, 1, 1)
        summary = await backend.summary(pubkey(1))
        assert summary is not None
        assert (summary.block_count, summary.slot_floor, summary.target_epoch_floor) == (1, 7, 3)
        assert await backend.summary(pubkey(2)) is None
        await backend.check_and_record_block(pubkey(1), 8, B)
        await backend.check_and_record_block(pubkey(1), 8, A)  # refused
        records = [record async for record in backend.decisions(pubkey(1))]
        assert [(r.slot, r.reason) for r in records] == [(8, Reason.ALLOWED_NEW), (8, Reason.DOUBLE_PROPOSAL)]
        out = io.BytesIO()
        assert await backend.export_interchange(out, [pubkey(1)]) == 1
        with pytest.raises(UnknownValidatorError):
            await backend.export_interchange(io.BytesIO(), [pubkey(2)])
        info = await backend.save_checkpoint()
        assert info.validators == 1 and info.sequence >= records[-1].sequence
        assert backend.last_checkpoint_unix is not None
        return out.getvalue()

    exported = run(scenario, location)
    assert json.loads(exported)["data"][0]["signed_blocks"][-1] == {"slot": "8", "signing_root": "0x" + B.hex()}

    async def reopened(backend: Backend) -> None:
        assert backend.startup.validators == 1
        assert (await backend.check_and_record_block(pubkey(1), 8, B))[0].reason is Reason.ALLOWED_REPEAT
        again = await backend.import_interchange(io.BytesIO(json.dumps(document).encode()))
        assert again.status_counts == {ImportStatus.UNCHANGED: 1}

    run(reopened, location)


def test_close_is_idempotent(location: Location) -> None:
    async def scenario(backend: Backend) -> None:
        await backend.close()

    run(scenario, location)


BEYOND = Reason.AT_OR_BEYOND_HIGH_WATERMARK


def high_watermark_as_stored(backend: Backend) -> HighWatermark | None:
    """The watermark as a restart would find it (the one look below the seam, as `durable_through`): local, the
    log is durable through its last record (a Set or Remove is its last); PostgreSQL, what another session
    reads."""
    if isinstance(backend, LocalBackend):
        log = backend.store.log
        assert log.durable_sequence == log.last_sequence
        return backend.store.high_watermark
    assert isinstance(backend, PostgresBackend)
    with psycopg.connect(backend.url, autocommit=True) as connection:
        row = connection.execute("SELECT slot, epoch FROM high_watermark").fetchone()
    return None if row is None else HighWatermark(row[0], row[1])


def test_the_high_watermark_refuses_what_is_at_or_beyond_it(location: Location) -> None:
    watermark = HighWatermark(3200, 100)

    async def scenario(backend: Backend) -> None:
        assert backend.startup.high_watermark is None and await backend.high_watermark() is None
        await backend.register_validators([pubkey(1), pubkey(2)])
        assert (await backend.check_and_record_block(pubkey(1), 3199, A))[0].reason is Reason.ALLOWED_NEW
        assert await backend.set_high_watermark(3200, 100) == watermark
        assert high_watermark_as_stored(backend) == watermark
        assert await backend.high_watermark() == watermark

        assert (await backend.check_and_record_block(pubkey(1), 3200, A))[0].reason is BEYOND
        assert (await backend.check_and_record_block(pubkey(2), 3201, A))[0].reason is BEYOND
        assert (await backend.check_and_record_block(pubkey(1), 3199, A))[0].reason is Reason.ALLOWED_REPEAT
        assert (await backend.check_and_record_block(pubkey(1), 3199, B))[0].reason is Reason.DOUBLE_PROPOSAL
        assert (await backend.check_and_record_attestation(pubkey(1), 99, 100, A))[0].reason is BEYOND
        assert (await backend.check_and_record_attestation(pubkey(1), 100, 99, A))[0].reason is BEYOND
        assert (await backend.check_and_record_attestation(pubkey(1), 98, 99, A))[0].reason is Reason.ALLOWED_NEW
        # An unregistered key is refused as such first: the order of the checks is the rules'.
        assert (await backend.check_and_record_block(pubkey(9), 5000, A))[
            0
        ].reason is Reason.VALIDATOR_NOT_REGISTERED
        decided = await backend.check_and_record_attestations(
            [AttestationRequest(pubkey(2), 99, 100, A), AttestationRequest(pubkey(9), 200, 201, A)]
        )
        assert [decision.reason for decision, _ in decided] == [BEYOND, Reason.VALIDATOR_NOT_REGISTERED]
        decided = await backend.check_and_record_attestations(
            [AttestationRequest(pubkey(1), 99, 100, B), AttestationRequest(pubkey(2), 98, 99, B)]
        )
        assert [decision.reason for decision, _ in decided] == [BEYOND, Reason.ALLOWED_NEW]
        # Refusals are recorded like every other decision.
        records = [record async for record in backend.decisions(pubkey(1))]
        assert [record.reason for record in records].count(BEYOND) == 4
        summary = await backend.summary(pubkey(1))
        assert summary is not None and summary.highest_slot == 3199 and summary.highest_target_epoch == 99
        # Set replaces the watermark, either way.
        assert await backend.set_high_watermark(1600, 50) == HighWatermark(1600, 50)
        assert (await backend.check_and_record_block(pubkey(2), 3000, A))[0].reason is BEYOND
        assert (await backend.check_and_record_attestation(pubkey(2), 49, 50, A))[0].reason is BEYOND

    run(scenario, location)

    async def reopened(backend: Backend) -> None:
        assert backend.startup.high_watermark == HighWatermark(1600, 50)
        assert await backend.high_watermark() == HighWatermark(1600, 50)
        assert (await backend.check_and_record_block(pubkey(2), 3000, A))[0].reason is BEYOND
        await backend.remove_high_watermark()
        assert high_watermark_as_stored(backend) is None and await backend.high_watermark() is None
        assert (await backend.check_and_record_block(pubkey(2), 3000, A))[0].reason is Reason.ALLOWED_NEW
        assert (await backend.check_and_record_attestation(pubkey(1), 99, 100, A))[0].reason is Reason.ALLOWED_NEW
        await backend.remove_high_watermark()  # nothing to remove is not an error

    run(reopened, location)

    async def removed(backend: Backend) -> None:
        assert backend.startup.high_watermark is None and await backend.high_watermark() is None

    run(removed, location)


def test_a_high_watermark_no_database_can_hold_is_refused_and_changes_nothing(location: Location) -> None:
    refused = [
        (2**63, 0, "slot 9223372036854775808 is out of range"),
        (2**64 - 1, 5, "slot 18446744073709551615 is out of range"),
        (2**63 - 1, 2**63, "epoch 9223372036854775808 is out of range"),
        (-1, 0, "slot -1 is out of range"),
        (31, 32, "slot 31 is below its epoch 32"),
    ]

    async def scenario(backend: Backend) -> None:
        await backend.set_high_watermark(3200, 100)
        for slot, epoch, detail in refused:
            with pytest.raises(InvalidRequestError, match=detail):
                await backend.set_high_watermark(slot, epoch)
            assert await backend.high_watermark() == HighWatermark(3200, 100)
        # The bounds themselves are fine: 0 refuses everything, 2^63 - 1 nothing real.
        assert await backend.set_high_watermark(0, 0) == HighWatermark(0, 0)
        top = 2**63 - 1
        assert await backend.set_high_watermark(top, top) == HighWatermark(top, top)
        assert high_watermark_as_stored(backend) == HighWatermark(top, top)

    run(scenario, location)
