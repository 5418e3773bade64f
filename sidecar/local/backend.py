"""`LocalBackend`: the `sidecar.backend.Backend` of one data directory (see the package doc)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, TypeVar

from sidecar.audit import DecisionRecord
from sidecar.backend import (
    AttestationRequest,
    CheckpointInfo,
    ImportResult,
    Registration,
    StartupReport,
    ValidatorSummary,
    valid_high_watermark,
)
from sidecar.domain import GenesisRoot, Pubkey, SigningRoot
from sidecar.errors import BackendUnavailableError
from sidecar.local.durability import Durability, LoneCallDetector
from sidecar.local.options import StoreOptions
from sidecar.local.store import Store
from sidecar.rules import Decision, HighWatermark
from sidecar.storage import LogUnavailableError, StorageError
from sidecar.worker_thread import run_in_own_thread

__all__ = ["LocalBackend"]

T = TypeVar("T")

# Audit records handed from the reading thread to the loop at a time.
DECISIONS_BATCH = 512


def _unavailable(error: StorageError) -> BackendUnavailableError:
    """The storage layer's failure in the seam's words (the servicers know no log and no file)."""
    if isinstance(error, LogUnavailableError):
        return BackendUnavailableError(f"the decision could not be made durable ({error})")
    return BackendUnavailableError(f"storage error ({error})")


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except StorageError as error:
        raise _unavailable(error) from error


class LocalBackend:
    """One data directory behind the seam. Create with `open` on the event loop that will call it; every
    coroutine must run on that loop (the durability bridge and the lone-call rule assume one loop)."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        # Written by this process or read back from its identity file, which only ever holds a valid root.
        self._genesis_validators_root = GenesisRoot(store.genesis_validators_root)
        self._durability = Durability(loop, store.log)
        self._lone = LoneCallDetector()
        recovery = store.recovery
        assert recovery is not None, "store used before recovery"
        self._startup = StartupReport(
            validators=recovery.validators,
            seconds=recovery.seconds,
            checkpoint_sequence=recovery.checkpoint_sequence,
            replayed_records=recovery.replayed_records,
            repaired_torn_tail=recovery.repaired_torn_tail,
            problems=recovery.problems,
            high_watermark=store.high_watermark,
        )

    @classmethod
    async def open(
        cls, data_dir: Path, genesis_validators_root: GenesisRoot | None, options: StoreOptions
    ) -> LocalBackend:
        """Locks and recovers DIR in a worker thread (recovery can take seconds), on the running loop."""
        store = await asyncio.to_thread(Store.open_or_create, data_dir, genesis_validators_root, options)
        return cls(store, asyncio.get_running_loop())

    # ---------------------------------------------------------------- facts

    @property
    def genesis_validators_root(self) -> GenesisRoot:
        return self._genesis_validators_root

    @property
    def startup(self) -> StartupReport:
        return self._startup

    @property
    def validator_count(self) -> int:
        return self.store.validator_count

    @property
    def last_checkpoint_unix(self) -> float | None:
        return self.store.last_checkpoint_unix

    # ---------------------------------------------------------------- the hot path

    async def check_and_record_block(
        self, pubkey: Pubkey, slot: int, signing_root: SigningRoot
    ) -> tuple[Decision, int]:
        lone = self._lone.enter()
        try:
            decision, sequence = self.store.check_and_record_block(pubkey, slot, signing_root)
            await self._settle(decision, sequence, lone)
        except StorageError as error:  # the hot path spells out what _translated does
            raise _unavailable(error) from error
        finally:
            self._lone.leave()
        return decision, sequence

    async def check_and_record_attestation(
        self, pubkey: Pubkey, source_epoch: int, target_epoch: int, signing_root: SigningRoot
    ) -> tuple[Decision, int]:
        lone = self._lone.enter()
        try:
            ((decision, sequence),) = self.store.check_and_record_attestations(
                [(pubkey, source_epoch, target_epoch, signing_root)]
            )
            await self._settle(decision, sequence, lone)
        except StorageError as error:
            raise _unavailable(error) from error
        finally:
            self._lone.leave()
        return decision, sequence

    async def check_and_record_attestations(
        self, requests: Sequence[AttestationRequest]
    ) -> list[tuple[Decision, int]]:
        lone = self._lone.enter()
        try:
            decided = self.store.check_and_record_attestations(requests)
            await self._durability.wait(decided[-1][1], lone=lone)
        except StorageError as error:
            raise _unavailable(error) from error
        finally:
            self._lone.leave()
        return decided

    async def _settle(self, decision: Decision, sequence: int, lone: bool) -> None:
        """An allowed decision waits until durable; a refusal goes to disk with the next group commit."""
        if decision.allowed:
            await self._durability.wait(sequence, lone=lone)
        else:
            self._durability.wake_soon()

    # ---------------------------------------------------------------- operators

    async def register_validators(self, pubkeys: Sequence[Pubkey]) -> Registration:
        with _translated():
            registered, already, sequence = self.store.register_validators(list(pubkeys))
            if sequence:
                await self._durability.wait(sequence)
        return Registration(registered, already, sequence)

    async def import_interchange(
        self, source: BinaryIO, progress: Callable[[int], None] | None = None
    ) -> ImportResult:
        try:
            return await run_in_own_thread(
                lambda: self.store.import_interchange(source, progress=progress), "import"
            )
        except StorageError as error:
            # A failed import is retracted (sidecar.local.imports.commit_or_retract): say that nothing changed.
            raise BackendUnavailableError(
                f"the import was not applied and changed nothing: its records could not be made durable ({error})"
            ) from error

    async def export_interchange(
        self, out: BinaryIO, pubkeys: Sequence[Pubkey] | None = None, progress: Callable[[int], None] | None = None
    ) -> int:
        selected = None if pubkeys is None else list(pubkeys)
        with _translated():
            return await run_in_own_thread(
                lambda: self.store.export_interchange(out, selected, progress=progress), "export"
            )

    async def summary(self, pubkey: Pubkey) -> ValidatorSummary | None:
        return self.store.summary(pubkey)  # a copy under the lock: microseconds

    async def decisions(
        self, pubkey: Pubkey | None = None, since_sequence: int = 0
    ) -> AsyncIterator[DecisionRecord]:
        with _translated():
            # Refusals already answered may still ride the next flush: read only once they are on disk too.
            await self._durability.wait(self.store.log.last_sequence)
            records = self.store.decisions(pubkey, since_sequence)
            while True:
                batch = await asyncio.to_thread(_take, records, DECISIONS_BATCH)
                for record in batch:
                    yield record
                if len(batch) < DECISIONS_BATCH:
                    return

    async def set_high_watermark(self, slot: int, epoch: int) -> HighWatermark:
        high_watermark = valid_high_watermark(slot, epoch)
        with _translated():
            await self._durability.wait(self.store.record_high_watermark(high_watermark))
        return high_watermark

    async def high_watermark(self) -> HighWatermark | None:
        return self.store.high_watermark

    async def remove_high_watermark(self) -> None:
        # Recorded even when none is set: the record is cheap, and its durability is the promise that an earlier
        # removal (another caller's, perhaps not yet durable) is durable too.
        with _translated():
            await self._durability.wait(self.store.record_high_watermark(None))

    async def save_checkpoint(self) -> CheckpointInfo:
        with _translated():
            info = await asyncio.to_thread(self.store.save_checkpoint)
        return CheckpointInfo(info.sequence, info.validators, info.path.name, info.seconds)

    async def close(self) -> None:
        with _translated():
            await asyncio.to_thread(self.store.close)


def _take(records: Iterator[T], count: int) -> list[T]:
    batch = []
    for record in records:
        batch.append(record)
        if len(batch) == count:
            break
    return batch
