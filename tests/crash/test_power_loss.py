"""Simulated power loss under the store: every decision whose durability wait returned survives, and recovery
never fails on what a power cut leaves behind.

`PowerLossFileOps` (tests/storage/fakes.py) runs the store on a real directory while modelling what a power cut
would keep: file contents as of their last fsync, directory entries as of their last directory fsync, and (with
``torn_writes``) a random prefix of the un-synced tail, sometimes followed by zeros. Here a subclass cuts the
power on cue: at the N-th operation of any kind, or the N-th one touching a checkpoint, a segment being created
(rotation, with 512-byte segments), a segment being deleted after a checkpoint, or the recovery of an earlier crash
image. N is drawn from a calibration run of the same seeded workload, so every point of the run can be hit.

The workload signs through `Store.check_and_record_*`, waits with `store.log.wait_durable(sequence)` and only then
counts a decision as answered; checkpoints run between decisions or, in the fuzzy variant, in a thread of their
own. After the cut, recovery runs on the crash image with plain FileOps and must hold every answered decision:
re-sent, an allowed message is ALLOWED as a repeat and a conflicting one is refused; with archived segments, the
audit trail holds every answered record, unchanged.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sidecar.domain import valid_pubkey, valid_signing_root
from sidecar.rules import Decision, Reason
from sidecar.storage import FileOps, StorageError, list_segments, read_records
from sidecar.storage.framing import encode_record
from sidecar.store import AttestationRequest, Store, StoreOptions
from sidecar.verify import verify_data_dir
from tests.storage.fakes import PowerLossFileOps
from tests.support.keys import pubkey, root_for

from .ledger import Attestation, Block, attestation_conflicts, block_conflicts
from .load import conflicting_attestation, conflicting_block

GENESIS_VALIDATORS_ROOT = root_for("power-loss genesis")
VALIDATORS = [pubkey(index) for index in range(6)]
SEGMENT_BYTES = 512
STEPS = 80  # bursts of one to four decisions
CHECKPOINT_EVERY = 8


def _touches_checkpoint(operation: str, path: Path | None) -> bool:
    return path is not None and "checkpoint" in str(path)


def _touches_new_segment(operation: str, path: Path | None) -> bool:
    # _start_segment: create and write the temporary file, fsync it, rename it, fsync the log directory.
    return path is not None and (
        path.name.endswith(".log.tmp") or (operation == "fsync_dir" and path.name == "log")
    )


def _deletes_segment(operation: str, path: Path | None) -> bool:
    return operation in ("unlink", "rename") and path is not None and path.name.endswith(".log")


def _group_commit_fsync(operation: str, path: Path | None) -> bool:
    # Just after the flusher's write: the un-synced tail is what a torn write tears.
    return operation == "fdatasync" and path is not None and path.name.endswith(".log")


CUES: dict[str, Callable[[str, Path | None], bool] | None] = {
    "any-operation": None,
    "group-commit": _group_commit_fsync,
    "checkpoint": _touches_checkpoint,
    "rotation": _touches_new_segment,
    "segment-deletion": _deletes_segment,
}


class CuedPowerLoss(PowerLossFileOps):
    """Cuts the power just before the `crash_at_cue`-th operation for which `cue(operation, path)` is true
    (descriptor operations are judged by the path the descriptor was opened with), or, with no cue, before the
    `crash_at_cue`-th operation of any kind. Counts in `cued` (or the base class's `operations`), so a run
    without a crash calibrates the next one."""

    def __init__(
        self,
        root: Path,
        cue: Callable[[str, Path | None], bool] | None,
        *,
        crash_at_cue: int | None,
        crash_destination: Path,
        torn_writes: random.Random | None,
    ) -> None:
        super().__init__(
            root,
            crash_at_operation=crash_at_cue if cue is None else None,
            crash_destination=crash_destination,
            torn_writes=torn_writes,
        )
        self.cue = cue
        self.cued = 0
        self._crash_at_cue = crash_at_cue
        self._destination = crash_destination
        self._cue_lock = threading.Lock()

    @property
    def count(self) -> int:
        return self.operations if self.cue is None else self.cued

    def _on(self, operation: str, path: Path | None) -> None:
        if self.cue is None or self.crashed.is_set() or not self.cue(operation, path):
            return
        with self._cue_lock:
            self.cued += 1
            if self.cued == self._crash_at_cue:
                self.crash(self._destination)  # the operation itself then fails: the machine is off

    def create_exclusive(self, path: Path) -> int:
        self._on("create_exclusive", path)
        return super().create_exclusive(path)

    def open_append(self, path: Path) -> int:
        self._on("open_append", path)
        return super().open_append(path)

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        self._on("write", self.path_of(fd))
        super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._on("fsync", self.path_of(fd))
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._on("fdatasync", self.path_of(fd))
        super().fdatasync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        self._on("ftruncate", self.path_of(fd))
        super().ftruncate(fd, length)

    def rename(self, source: Path, destination: Path) -> None:
        self._on("rename", source)
        super().rename(source, destination)

    def unlink(self, path: Path) -> None:
        self._on("unlink", path)
        super().unlink(path)

    def fsync_dir(self, path: Path) -> None:
        self._on("fsync_dir", Path(path))
        super().fsync_dir(path)


@dataclass
class Answered:
    """Decisions whose durability wait returned: what a validator client was told."""

    attestations: set[Attestation] = field(default_factory=set)
    blocks: set[Block] = field(default_factory=set)
    # sequence -> (kind, pubkey, slot or (source, target), root, reason) for every answered record
    records: dict[int, tuple[object, ...]] = field(default_factory=dict)
    highest_sequence: int = 0

    def copy(self) -> Answered:
        return Answered(set(self.attestations), set(self.blocks), dict(self.records), self.highest_sequence)


_Pending = tuple[int, tuple[object, ...], Attestation | Block, Decision]


class Workload:
    """A seeded single-threaded signer over a small message space (so conflicts are frequent)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def attestation(self) -> Attestation:
        pubkey = self.rng.choice(VALIDATORS)
        target = self.rng.randrange(1, 30)
        source = max(0, target - self.rng.choice((1, 1, 2, 3)))
        return Attestation(
            pubkey, source, target, root_for("att", pubkey.hex(), source, target, self.rng.randrange(2))
        )

    def block(self) -> Block:
        pubkey = self.rng.choice(VALIDATORS)
        slot = self.rng.randrange(1, 60)
        return Block(pubkey, slot, root_for("block", pubkey.hex(), slot, self.rng.randrange(2)))


def _record_key_attestation(a: Attestation, reason: Reason) -> tuple[object, ...]:
    return ("attestation", a.pubkey, a.source_epoch, a.target_epoch, a.signing_root, reason)


def _record_key_block(b: Block, reason: Reason) -> tuple[object, ...]:
    return ("block", b.pubkey, b.slot, b.signing_root, reason)


def run_workload(
    store: Store, workload: Workload, answered: Answered, steps: int, *, checkpoints: str, crashed: threading.Event
) -> None:
    """Signs `steps` decisions (stopping early at a power cut). `checkpoints` is "between" (every few decisions,
    in this thread) or "fuzzy" (as fast as possible in another thread, while signing goes on)."""
    checkpoint_errors: list[BaseException] = []
    stop = threading.Event()

    def checkpoint_loop() -> None:
        while not stop.is_set() and not crashed.is_set():
            try:
                store.save_checkpoint()
            except StorageError:
                if not crashed.is_set():
                    checkpoint_errors.append(AssertionError("a checkpoint failed without a power cut"))
                return
            except BaseException as error:
                checkpoint_errors.append(error)
                return
            stop.wait(0.002)

    pending: list[_Pending] = []
    thread = threading.Thread(target=checkpoint_loop, daemon=True) if checkpoints == "fuzzy" else None
    if thread is not None:
        thread.start()
    try:
        for step in range(steps):
            if crashed.is_set():
                return
            try:
                _one_burst(store, workload, answered, pending)
                if thread is None and step % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1:
                    store.save_checkpoint()
            except StorageError:
                if crashed.is_set():
                    return
                raise
    finally:
        stop.set()
        if thread is not None:
            thread.join(30)
    if checkpoint_errors:
        raise checkpoint_errors[0]


def _one_burst(store: Store, workload: Workload, answered: Answered, pending: list[_Pending]) -> None:
    """One to four decisions taken back to back, as concurrent clients would, then one durability wait if any
    was allowed (as the server does: refusals are not waited for, they ride the next flush). Every record up to
    the waited-for sequence is then known durable: allowed ones are answered, refused ones recorded for sure."""
    for _ in range(workload.rng.randint(1, 4)):
        kind = workload.rng.random()
        if kind < 0.5:
            attestation = workload.attestation()
            ((decision, sequence),) = store.check_and_record_attestations([_request(attestation)])
            pending.append(
                (sequence, _record_key_attestation(attestation, decision.reason), attestation, decision)
            )
        elif kind < 0.75:
            # A batch: distinct keys, one run of sequence numbers.
            batch = list({a.pubkey: a for a in (workload.attestation() for _ in range(3))}.values())
            decided = store.check_and_record_attestations([_request(a) for a in batch])
            pending.extend(
                (sequence, _record_key_attestation(a, decision.reason), a, decision)
                for a, (decision, sequence) in zip(batch, decided, strict=True)
            )
        else:
            block = workload.block()
            decision, sequence = _decide_block(store, block)
            pending.append((sequence, _record_key_block(block, decision.reason), block, decision))
    allowed = [sequence for sequence, _, _, decision in pending if decision.allowed]
    if not allowed:
        return
    waited = max(allowed)
    store.log.wait_durable(waited)
    for sequence, key, message, decision in pending:
        answered.records[sequence] = key
        answered.highest_sequence = max(answered.highest_sequence, sequence)
        if decision.allowed:
            if isinstance(message, Attestation):
                answered.attestations.add(message)
            else:
                answered.blocks.add(message)
    pending.clear()


def _request(attestation: Attestation) -> AttestationRequest:
    return AttestationRequest(
        valid_pubkey(attestation.pubkey),
        attestation.source_epoch,
        attestation.target_epoch,
        valid_signing_root(attestation.signing_root),
    )


def _decide_block(store: Store, block: Block) -> tuple[Decision, int]:
    return store.check_and_record_block(
        valid_pubkey(block.pubkey), block.slot, valid_signing_root(block.signing_root)
    )


def open_store(data_dir: Path, fileops: FileOps, *, archive: bool) -> Store:
    return Store.open_or_create(
        data_dir,
        GENESIS_VALIDATORS_ROOT,
        StoreOptions(fileops=fileops, segment_bytes=SEGMENT_BYTES, checkpoint_keep=2, archive_segments=archive),
    )


def start(store: Store, answered: Answered) -> None:
    _, _, sequence = store.register_validators(VALIDATORS)
    store.log.wait_durable(sequence)
    answered.records[sequence] = ("register",)
    answered.highest_sequence = max(answered.highest_sequence, sequence)


def close_quietly(store: Store | None) -> None:
    """Lets go of a store whose machine lost power: its log cannot flush, and saying so is expected."""
    if store is not None:
        with contextlib.suppress(StorageError):
            store.close(final_checkpoint=False)


def life_under_power_loss(
    live: Path, fileops: CuedPowerLoss, seed: int, answered: Answered, *, checkpoints: str, archive: bool
) -> None:
    """Creates the store, registers, signs; stops at the power cut (if it comes)."""
    store = None
    try:
        store = open_store(live / "data", fileops, archive=archive)
        start(store, answered)
        run_workload(store, Workload(seed), answered, STEPS, checkpoints=checkpoints, crashed=fileops.crashed)
    except StorageError:
        if not fileops.crashed.is_set():
            raise
    finally:
        close_quietly(store)


def assert_recovered(data_dir: Path, answered: Answered, context: str, *, archive: bool) -> None:
    """Recovery with plain FileOps succeeds and holds every answered decision; then the store runs on, closes
    cleanly and verifies clean."""
    store = open_store(data_dir, FileOps(), archive=archive)
    try:
        assert store.log.last_sequence >= answered.highest_sequence, (
            f"{context}: the log restarts at {store.log.last_sequence + 1} though sequence "
            f"{answered.highest_sequence} was durable"
        )
        if archive:
            assert_audit_trail(store, answered, context)
        problems = []
        for attestation in sorted(answered.attestations):
            ((repeat, _),) = store.check_and_record_attestations([_request(attestation)])
            ((conflict, _),) = store.check_and_record_attestations(
                [_request(conflicting_attestation(attestation))]
            )
            if repeat.reason is not Reason.ALLOWED_REPEAT or conflict.reason is not Reason.DOUBLE_VOTE:
                problems.append(f"{attestation}: re-sent {repeat.reason.name}, conflicting {conflict.reason.name}")
        for block in sorted(answered.blocks):
            repeat, _ = _decide_block(store, block)
            conflict, _ = _decide_block(store, conflicting_block(block))
            if repeat.reason is not Reason.ALLOWED_REPEAT or conflict.reason is not Reason.DOUBLE_PROPOSAL:
                problems.append(f"{block}: re-sent {repeat.reason.name}, conflicting {conflict.reason.name}")
        assert not problems, f"{context}: answered decisions lost in recovery:\n" + "\n".join(problems[:20])
        # The recovered store keeps working: more decisions, a checkpoint, a clean close.
        run_workload(store, Workload(-1), Answered(), 40, checkpoints="between", crashed=threading.Event())
        store.log.sync()
    finally:
        store.close()
    report = verify_data_dir(data_dir)
    assert report.ok, f"{context}: verify after recovery and a clean close:\n" + "\n".join(report.lines)


def assert_audit_trail(store: Store, answered: Answered, context: str) -> None:
    recorded: dict[int, tuple[object, ...]] = {}
    for record in store.decisions():
        if record.kind == "block":
            recorded[record.sequence] = ("block", record.pubkey, record.slot, record.signing_root, record.reason)
        else:
            recorded[record.sequence] = (
                "attestation",
                record.pubkey,
                record.source_epoch,
                record.target_epoch,
                record.signing_root,
                record.reason,
            )
    missing = [
        f"sequence {sequence}: answered {key}, recorded {recorded.get(sequence)}"
        for sequence, key in sorted(answered.records.items())
        if key != ("register",) and recorded.get(sequence) != key
    ]
    assert not missing, f"{context}: the audit trail lost answered records:\n" + "\n".join(missing[:20])


@contextlib.contextmanager
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A directory for the live files and crash images. In memory when /dev/shm exists: what survives a cut is
    decided by the model, not by the disk, so real fsyncs (milliseconds each) would only slow the tests down."""
    shm = Path("/dev/shm")
    if shm.is_dir():
        directory = Path(tempfile.mkdtemp(prefix="crash-power-", dir=shm))
        try:
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    else:
        yield tmp_path


def calibrate(root: Path, seed: int, cue_name: str, *, checkpoints: str, archive: bool) -> int:
    """How many cued operations (or operations in all) the seeded run makes without a power cut."""
    live = root / "calibration"
    live.mkdir()
    fileops = CuedPowerLoss(
        live, CUES[cue_name], crash_at_cue=None, crash_destination=root / "unused", torn_writes=None
    )
    life_under_power_loss(live, fileops, seed, Answered(), checkpoints=checkpoints, archive=archive)
    shutil.rmtree(live)
    return fileops.count


def one_power_cut(
    root: Path,
    seed: int,
    cue_name: str,
    crash_at: int,
    *,
    torn: random.Random | None,
    checkpoints: str,
    archive: bool,
) -> Answered:
    """Runs the seeded life, cutting the power at the chosen point (keeping a random part of un-synced appends
    when `torn` is given); returns what was answered. The crash image is left in `root / "image"`."""
    live = root / "live"
    live.mkdir()
    image = root / "image"
    fileops = CuedPowerLoss(live, CUES[cue_name], crash_at_cue=crash_at, crash_destination=image, torn_writes=torn)
    answered = Answered()
    life_under_power_loss(live, fileops, seed, answered, checkpoints=checkpoints, archive=archive)
    if not fileops.crashed.is_set():  # the cue was never reached this time (threads): cut at the end instead
        fileops.crash(image)
    shutil.rmtree(live)
    image.mkdir(exist_ok=True)
    return answered


POWER_CUT_CASES = [
    pytest.param(
        seed, cue, checkpoints, archive, id=f"seed-{seed}-{cue}-{checkpoints}{'-archive' if archive else ''}"
    )
    for seed, (cue, checkpoints, archive) in enumerate(
        [
            (cue, checkpoints, archive)
            for cue in CUES
            for checkpoints, archive in (("between", False), ("fuzzy", False), ("between", True))
        ],
        start=1,
    )
]


@pytest.mark.parametrize(("seed", "cue", "checkpoints", "archive"), POWER_CUT_CASES)
def test_power_cut_keeps_every_answered_decision(
    tmp_path: Path, seed: int, cue: str, checkpoints: str, archive: bool
) -> None:
    with scratch(tmp_path) as root:
        total = calibrate(root, seed, cue, checkpoints=checkpoints, archive=archive)
        assert total > 0, f"seed {seed}: the workload never reached the cue {cue!r}; the test would prove nothing"
        rng = random.Random(seed)
        for attempt in range(3):
            crash_at = rng.randint(1, total)
            context = (
                f"seed {seed}, cue {cue}, cut before cued operation {crash_at} of {total} (attempt {attempt})"
            )
            # Two cuts in three keep a random part of the un-synced bytes (torn writes); the third keeps none.
            torn = random.Random(seed * 7919 + crash_at) if attempt != 2 else None
            answered = one_power_cut(
                root, seed, cue, crash_at, torn=torn, checkpoints=checkpoints, archive=archive
            )
            assert not attestation_conflicts(answered.attestations) and not block_conflicts(answered.blocks)
            assert_recovered(root / "image" / "data", answered, context, archive=archive)
            shutil.rmtree(root / "image")


@pytest.mark.parametrize("seed", range(1, 7), ids=lambda seed: f"seed-{seed}")
def test_power_cut_during_recovery_of_a_crash_image(tmp_path: Path, seed: int) -> None:
    """A second cut while recovering from the first (repairing a torn tail, removing temporary files, opening the
    log) must leave an image that still recovers with everything the first life answered."""
    with scratch(tmp_path) as root:
        total = calibrate(root, seed, "group-commit", checkpoints="between", archive=False)
        rng = random.Random(seed)
        answered = one_power_cut(
            root,
            seed,
            "group-commit",
            rng.randint(total // 2, total),
            torn=random.Random(seed),
            checkpoints="between",
            archive=False,
        )
        first = root / "first-image"
        (root / "image").rename(first)
        # Count the operations of a recovery (plus a few decisions) of a copy of the first image.
        calibration = root / "calibration-recovery"
        shutil.copytree(first, calibration)
        counter = CuedPowerLoss(
            calibration, None, crash_at_cue=None, crash_destination=root / "x", torn_writes=None
        )
        recovered = open_store(calibration / "data", counter, archive=False)
        run_workload(recovered, Workload(seed + 1), Answered(), 10, checkpoints="between", crashed=counter.crashed)
        recovered.close()
        recovery_operations = counter.count
        shutil.rmtree(calibration)
        for attempt in range(4):
            second = root / "second-life"
            shutil.copytree(first, second)
            crash_at = rng.randint(1, recovery_operations)
            context = (
                f"seed {seed}: second cut before operation {crash_at} of {recovery_operations} (attempt {attempt})"
            )
            fileops = CuedPowerLoss(
                second,
                None,
                crash_at_cue=crash_at,
                crash_destination=root / "image",
                torn_writes=random.Random(seed * 31 + attempt),
            )
            store = None
            try:
                store = open_store(second / "data", fileops, archive=False)
                run_workload(
                    store, Workload(seed + 1), Answered(), 10, checkpoints="between", crashed=fileops.crashed
                )
            except StorageError:
                assert fileops.crashed.is_set(), context
            finally:
                close_quietly(store)
            if not fileops.crashed.is_set():
                fileops.crash(root / "image")
            (root / "image").mkdir(exist_ok=True)
            assert_recovered(root / "image" / "data", answered, context, archive=False)
            shutil.rmtree(root / "image")
            shutil.rmtree(second)


class _BetweenArchiveAndLogFsync:
    """Cue: the log directory's fsync that follows an fsync of the archive directory, i.e. the moment in
    `delete_segments_through(archive_dir=...)` when the moved segments are durable in the archive and still
    durable in the log too."""

    def __init__(self) -> None:
        self.archived = False

    def __call__(self, operation: str, path: Path | None) -> bool:
        if operation != "fsync_dir" or path is None:
            return False
        if path.name == "archive":
            self.archived = True
            return False
        return self.archived and path.name == "log"


def test_power_cut_while_archiving_leaves_an_audit_trail_without_duplicates(tmp_path: Path) -> None:
    with scratch(tmp_path) as root:
        live = root / "live"
        live.mkdir()
        image = root / "image"
        fileops = CuedPowerLoss(
            live, _BetweenArchiveAndLogFsync(), crash_at_cue=1, crash_destination=image, torn_writes=None
        )
        answered = Answered()
        life_under_power_loss(live, fileops, 15, answered, checkpoints="between", archive=True)
        assert fileops.crashed.is_set(), "the workload never archived a segment"
        store = open_store(image / "data", FileOps(), archive=True)
        try:
            assert_audit_trail(store, answered, "power cut while archiving")  # nothing lost: that part holds
            sequences = [record.sequence for record in store.decisions()]
        finally:
            store.close(final_checkpoint=False)
        repeated = sorted({sequence for sequence in sequences if sequences.count(sequence) > 1})
        assert not repeated, f"the audit trail lists {len(repeated)} decisions twice: sequences {repeated[:10]}..."
        assert sequences == sorted(sequences), "the audit trail is not in sequence order"


class _AfterRepairTruncation:
    """Cue: the log directory's fsync that ends `repair_torn_tail`, once the segment's truncation is durable."""

    def __init__(self) -> None:
        self.truncated = False

    def __call__(self, operation: str, path: Path | None) -> bool:
        if operation == "ftruncate" and path is not None and path.name.endswith(".log"):
            self.truncated = True
            return False
        return self.truncated and operation == "fsync_dir" and path is not None and path.name == "log"


def test_power_cut_while_repairing_a_torn_tail_keeps_the_broken_copy(tmp_path: Path) -> None:
    with scratch(tmp_path) as root:
        live = root / "live"
        data_dir = live / "data"
        answered = Answered()
        store = open_store(data_dir, FileOps(), archive=False)
        start(store, answered)
        run_workload(store, Workload(3), answered, 20, checkpoints="between", crashed=threading.Event())
        store.close(final_checkpoint=False)
        # A torn write at the end of the last segment: the first 20 bytes of the next record's frame.
        last = list_segments(data_dir / "log", FileOps())[-1].path
        torn_bytes = encode_record(answered.highest_sequence + 1, 1, b"x" * 100)[:20]
        with last.open("ab") as segment:
            segment.write(torn_bytes)
        original = last.read_bytes()
        assert read_records(data_dir / "log", FileOps()).consume().torn_tail is not None

        image = root / "image"
        fileops = CuedPowerLoss(
            live, _AfterRepairTruncation(), crash_at_cue=1, crash_destination=image, torn_writes=None
        )
        with pytest.raises(StorageError):
            open_store(data_dir, fileops, archive=False)
        assert fileops.crashed.is_set(), "recovery never repaired the torn tail"
        log_dir = image / "data" / "log"
        surviving = sorted(path.name for path in log_dir.iterdir())
        copies = [(log_dir / name).read_bytes() for name in surviving if name.startswith(last.name + ".broken")]
        segment_now = (log_dir / last.name).read_bytes()
        # What matters for safety holds: the image recovers with every answered decision.
        shutil.copytree(image, root / "recovered")
        assert_recovered(
            root / "recovered" / "data", answered, "power cut while repairing a torn tail", archive=False
        )
        # The forensic copy of the torn bytes does not.
        assert segment_now == original or original in copies, (
            f"the torn bytes are gone: the segment was truncated to {len(segment_now)} of {len(original)} bytes "
            f"and the log directory holds no .broken copy ({surviving})"
        )
