"""The storage seam: what the servicers, the server and the CLI need from a protection database, and nothing
more.

A backend owns the validators' histories and decides with the pure rules of `sidecar.rules`: the rules are one
source of truth for every backend. What a backend adds is where the histories live, how a decision becomes
durable and how concurrent deciders are kept apart:

* `sidecar.local` (the default): one data directory, one process; decisions under one in-process lock, made
  durable by a group-committed, fsynced append-only log.
* `sidecar.postgres`: one PostgreSQL database shared by several replicas; the database arbitrates (row locks)
  and a decision is durable once committed.

The contract every backend keeps (the servicers rely on it and on nothing else):

* **Durable before allowed.** `check_and_record_*` return only once every ALLOWED decision they return is on
  stable storage. A refusal is recorded too but may become durable a little later (it never lets anything be
  signed, so losing it in a crash is harmless). When durability cannot be reached the call raises
  `BackendUnavailableError` and the caller must not sign.
* **Linearizable per validator**: two concurrent conflicting requests for one key never both get ALLOWED.
* **Fail closed**: any doubt raises; no path answers ALLOWED by default.
* Imports are all or nothing and only ever add protection; floors only rise (see `sidecar.history`).
* **Typed values, checked once**: callers validate at the boundary: sidecar.domain's constructors
  (`valid_pubkey`, `valid_signing_root`, `valid_genesis_validators_root`) make the `Pubkey`, `SigningRoot` and
  `GenesisRoot` every method takes. A backend trusts the type and never checks a size again.
* **One high watermark for the whole database** (`sidecar.rules.HighWatermark`), passed to the rules with every
  decision. Setting or removing it is durable before the call returns, and every decision that starts after it
  has returned sees it, on every process serving the database (no cached copy may be stale). A decision taken
  under the old value is recorded, durably if allowed, before a Set returns, so that an export taken once a Set
  has returned holds every message the old value let through.

Methods are coroutines for the event loop of the gRPC server. A backend runs blocking work (fsync, a database
round trip, an import's parsing) where it does not stall that loop, or bounds how long it may.

Choose a backend in one place: `open_backend` (the server and the CLI call it).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, Protocol

from sidecar.audit import DecisionRecord
from sidecar.domain import SLOTS_PER_EPOCH, GenesisRoot, Pubkey, SigningRoot
from sidecar.errors import InvalidRequestError
from sidecar.rules import Decision, HighWatermark

if TYPE_CHECKING:
    from sidecar.store import StoreOptions

__all__ = [
    "HIGH_WATERMARK_LIMIT",
    "SUMMARY_BOUNDS",
    "SUMMARY_COUNTS",
    "AttestationRequest",
    "Backend",
    "CheckpointInfo",
    "DatabaseLocation",
    "ImportResult",
    "ImportStatus",
    "Registration",
    "StartupReport",
    "Strategy",
    "ValidatorImportOutcome",
    "ValidatorSummary",
    "open_backend",
    "valid_high_watermark",
]


class Strategy(enum.Enum):
    """How imports treat history: keep every record, or only the highest block and attestation."""

    COMPLETE = "complete"
    MINIMAL = "minimal"


class AttestationRequest(NamedTuple):
    """One attestation to decide. Any (pubkey, source_epoch, target_epoch, signing_root) tuple will do: the hot
    path unpacks it positionally."""

    pubkey: Pubkey
    source_epoch: int
    target_epoch: int
    signing_root: SigningRoot


class ImportStatus(enum.IntEnum):
    """Per-key import outcome. Values equal the proto `ImportStatus` numbers."""

    IMPORTED = 1
    MERGED = 2
    MINIFIED = 3
    UNCHANGED = 4
    IMPORTED_SLASHABLE_DATA = 5


@dataclass(frozen=True, slots=True)
class ValidatorImportOutcome:
    pubkey: bytes
    status: ImportStatus
    message: str


@dataclass(slots=True)
class ImportResult:
    validators: int = 0
    imported: int = 0
    results: list[ValidatorImportOutcome] = field(default_factory=list)
    results_omitted: int = 0
    sequence: int = 0
    status_counts: dict[ImportStatus, int] = field(default_factory=dict)


class Registration(NamedTuple):
    """What `register_validators` did, counting each distinct key once; `sequence` is 0 when nothing changed."""

    registered: int
    already_registered: int
    sequence: int


# GetValidatorSummary's fields, in the order operators read them: counts always present, bounds only when set.
SUMMARY_COUNTS = ("block_count", "attestation_count", "allowed_decisions", "refused_decisions")
SUMMARY_BOUNDS = (
    "lowest_slot",
    "highest_slot",
    "lowest_source_epoch",
    "highest_source_epoch",
    "lowest_target_epoch",
    "highest_target_epoch",
    "slot_floor",
    "source_epoch_floor",
    "target_epoch_floor",
)


# A high watermark's slot and epoch stay below 2^63: PostgreSQL's BIGINT is signed, and a watermark compares by
# range (unlike the records, stored with their u64 bits; see sidecar.postgres.schema). Far beyond any real chain.
HIGH_WATERMARK_LIMIT = 2**63


def valid_high_watermark(slot: int, epoch: int) -> HighWatermark:
    """The watermark an operator asked for, once checked; raises InvalidRequestError (naming the value) for one no
    backend can hold or no chain can have. Every backend's `set_high_watermark` calls it, so both refuse alike."""
    for name, value in (("slot", slot), ("epoch", epoch)):
        if not 0 <= value < HIGH_WATERMARK_LIMIT:
            raise InvalidRequestError(
                f"high watermark {name} {value} is out of range: it must be at least 0 and below 2^63 "
                f"({HIGH_WATERMARK_LIMIT - 1} at most)"
            )
    if slot < epoch:
        raise InvalidRequestError(
            f"high watermark slot {slot} is below its epoch {epoch}: every epoch has at least one slot, so the "
            f"first slot of epoch {epoch} is at least {epoch} (slot {epoch * SLOTS_PER_EPOCH} on mainnet)"
        )
    return HighWatermark(slot, epoch)


@dataclass(frozen=True, slots=True)
class ValidatorSummary:
    pubkey: bytes
    block_count: int
    attestation_count: int
    lowest_slot: int | None
    highest_slot: int | None
    lowest_source_epoch: int | None
    highest_source_epoch: int | None
    lowest_target_epoch: int | None
    highest_target_epoch: int | None
    slot_floor: int | None
    source_epoch_floor: int | None
    target_epoch_floor: int | None
    allowed_decisions: int
    refused_decisions: int
    last_decision: DecisionRecord | None


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """A checkpoint (or the backend's equivalent) just taken: what it covers and how long it took."""

    sequence: int
    validators: int
    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class StartupReport:
    """What opening a backend found, for the operator's "ready" line and the metrics."""

    validators: int
    seconds: float
    # Local backend: the checkpoint's sequence and the log records replayed after it.
    checkpoint_sequence: int = 0
    replayed_records: int = 0
    repaired_torn_tail: bool = False
    problems: tuple[str, ...] = ()
    high_watermark: HighWatermark | None = None


class Backend(Protocol):
    """A protection database (see the module doc for the contract)."""

    @property
    def genesis_validators_root(self) -> GenesisRoot:
        """The chain this database protects; every request must name it."""
        ...

    @property
    def startup(self) -> StartupReport: ...

    @property
    def validator_count(self) -> int: ...

    @property
    def last_checkpoint_unix(self) -> float | None:
        """When the newest checkpoint was taken (None: never, or not a notion of this backend)."""
        ...

    async def check_and_record_block(
        self, pubkey: Pubkey, slot: int, signing_root: SigningRoot
    ) -> tuple[Decision, int]:
        """Decides a block proposal and records the decision; returns it with its sequence number once an
        ALLOWED answer is durable. Raises BackendUnavailableError when it cannot be made durable."""
        ...

    async def check_and_record_attestation(
        self, pubkey: Pubkey, source_epoch: int, target_epoch: int, signing_root: SigningRoot
    ) -> tuple[Decision, int]:
        """As `check_and_record_block`, for one attestation."""
        ...

    async def check_and_record_attestations(
        self, requests: Sequence[AttestationRequest]
    ) -> list[tuple[Decision, int]]:
        """Decides each attestation (distinct pubkeys: the contract forbids one key twice in a batch), in order,
        and returns once every decision of the batch is durable, refusals included (a batch waits for one
        commit, and its reply promises the whole batch is on disk)."""
        ...

    async def register_validators(self, pubkeys: Sequence[Pubkey]) -> Registration:
        """Registers keys (durably, when any is new)."""
        ...

    async def import_interchange(
        self, source: BinaryIO, progress: Callable[[int], None] | None = None
    ) -> ImportResult:
        """Imports one EIP-3076 document read from the blocking file `source`, all or nothing, durably.
        `progress` is called with the number of entries read so far (from the reading thread)."""
        ...

    async def export_interchange(
        self, out: BinaryIO, pubkeys: Sequence[Pubkey] | None = None, progress: Callable[[int], None] | None = None
    ) -> int:
        """Writes an EIP-3076 v5 document of the keys (all when None) to the blocking file `out`; returns the
        number of keys. Unknown keys raise UnknownValidatorError before anything is written."""
        ...

    async def summary(self, pubkey: Pubkey) -> ValidatorSummary | None:
        """Counts and bounds of one key; None when it is not registered."""
        ...

    def decisions(self, pubkey: Pubkey | None = None, since_sequence: int = 0) -> AsyncIterator[DecisionRecord]:
        """Every recorded decision still held (the audit trail), oldest first, durable ones only."""
        ...

    async def set_high_watermark(self, slot: int, epoch: int) -> HighWatermark:
        """Sets the global high watermark, replacing any in force (it may move either way); returns it once durable
        (see the module doc). Raises InvalidRequestError, changing nothing, for values `valid_high_watermark`
        refuses."""
        ...

    async def high_watermark(self) -> HighWatermark | None:
        """The high watermark in force; None when there is none."""
        ...

    async def remove_high_watermark(self) -> None:
        """Removes the high watermark (nothing to remove is not an error); returns once durable."""
        ...

    async def save_checkpoint(self) -> CheckpointInfo:
        """Takes a checkpoint now (what restarts recover from); while serving it must not stall deciding."""
        ...

    async def close(self) -> None:
        """Makes everything durable, releases the database. Idempotent."""
        ...


@dataclass(frozen=True, slots=True)
class DatabaseLocation:
    """A shared PostgreSQL database (`--database-url`), as opposed to a data directory (a `Path`)."""

    url: str
    allow_unsafe_database: bool = False


async def open_backend(
    location: Path | DatabaseLocation, genesis_validators_root: GenesisRoot | None, options: StoreOptions
) -> Backend:
    """Opens (and recovers) the protection database the configuration names, ready to decide, for use on the
    running event loop: a data directory (a `Path`) or a shared database (`DatabaseLocation`). The one place a
    backend is chosen: the server and the CLI call it. `genesis_validators_root` is needed to create a database,
    and must match an existing one's when given."""
    if isinstance(location, DatabaseLocation):
        from sidecar.postgres import PostgresBackend

        return await PostgresBackend.open(
            location.url, genesis_validators_root, options, location.allow_unsafe_database
        )
    from sidecar.local import LocalBackend

    return await LocalBackend.open(location, genesis_validators_root, options)
