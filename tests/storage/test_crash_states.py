"""Every crash state of a store workload keeps every acknowledged ALLOWED: by itself, or fails closed.

A workload (registration, signing decisions alone and in batches, log rotation every few records, a checkpoint,
an import, more decisions, a closing checkpoint) runs once through ``RecordingFileOps``. At every write, fsync,
rename and directory-fsync boundary of its trace, ``crash_states`` builds the disks a power cut may leave (see
``tests/storage/crash_states.py``), and each distinct one is recovered by opening the store on it with a plain
``FileOps``, as the sidecar does at start.

* A state with no zeroed stretch before intact data (unsynced bytes dropped, everything kept, directory changes
  reverted, the last write torn) must open without an operator (no ``repair``) and refuse a conflicting message
  for every answer acknowledged before the crash.
* A holed state (every ``hole-*`` state, and a ``random`` one where a skipped write reads as zeros before a
  later one that landed) may do that, or refuse to start with ``LogCorruptionError`` naming the segment and a
  byte offset: the reader cannot tell a hole in a write that was never synced from a synced sector the disk
  zeroed later, and fails closed (see ``sidecar.storage.reader``). Then ``repair`` with bounds above the workload
  must let it open, refusing a conflicting message for every acknowledged answer.

The small workload is enumerated exhaustively; a bigger one is sampled behind ``slow``.

The other side: when bytes that were synced are damaged, the store refuses to start, naming file and offset.
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sidecar.rules import Reason
from sidecar.storage import FileOps, LogCorruptionError, list_segments
from sidecar.storage.framing import RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE
from sidecar.store import Store, StoreOptions

from .crash_states import (
    CrashState,
    RecordingFileOps,
    Trace,
    boundaries,
    build_model,
    crash_states,
    fingerprint,
    write_state,
)
from .damage import flip_byte, record_offsets

GENESIS = bytes(range(32))
SEGMENT_BYTES = 600
NOW_NS = 1_700_000_000 * 10**9
KEYS = [bytes([0xA0 + n]) * 48 for n in range(4)]
IMPORTED = KEYS[3]
# Registered in one record and then decided on in one batch: writes that span several 4 KiB pages.
BULK_KEYS = [n.to_bytes(2, "big") * 24 for n in range(1, 91)]
# Above every slot and epoch the workload signs at: the bounds a repair is given.
REPAIR_BOUND = 1_000_000
HOLE_KINDS = frozenset({"hole-512", "hole-4096", "hole-random"})


def _options(fileops: FileOps) -> StoreOptions:
    return StoreOptions(segment_bytes=SEGMENT_BYTES, fileops=fileops, clock_ns=lambda: NOW_NS, checkpoint_keep=2)


def _root(*parts: int) -> bytes:
    return bytes(parts) + bytes(32 - len(parts))


def _import_document() -> bytes:
    def hex_(data: bytes) -> str:
        return "0x" + data.hex()

    return json.dumps(
        {
            "metadata": {"interchange_format_version": "5", "genesis_validators_root": hex_(GENESIS)},
            "data": [
                {
                    "pubkey": hex_(IMPORTED),
                    "signed_blocks": [{"slot": "500", "signing_root": hex_(_root(5, 0, 0))}],
                    "signed_attestations": [
                        {"source_epoch": "10", "target_epoch": "11", "signing_root": hex_(_root(5, 1, 1))}
                    ],
                },
                {
                    "pubkey": hex_(KEYS[0]),
                    "signed_blocks": [{"slot": "1", "signing_root": hex_(_root(9, 9))}],
                    "signed_attestations": [],
                },
            ],
        }
    ).encode()


def run_workload(live: Path, decisions: int) -> Trace:
    """Run the workload on ``live`` and return its trace, acknowledgements included."""
    fileops = RecordingFileOps(live)
    store = Store.open_or_create(live / "data", GENESIS, _options(fileops))
    try:
        _, _, sequence = store.register_validators(KEYS[:3])
        store.log.wait_durable(sequence)
        fileops.acknowledge("registered", *KEYS[:3])
        _, _, sequence = store.register_validators(BULK_KEYS)
        store.log.wait_durable(sequence)
        fileops.acknowledge("registered", *BULK_KEYS)
        bulk = [(key, 1, 2, _root(6, n)) for n, key in enumerate(BULK_KEYS)]
        decided = store.check_and_record_attestations(bulk)
        store.log.wait_durable(decided[-1][1])
        for attestation, (decision, _) in zip(bulk, decided, strict=True):
            assert decision.allowed
            fileops.acknowledge("attestation", *attestation)

        def decide(step: int) -> None:
            key = KEYS[step % 3]
            if step % 4 == 0:
                slot, root = 100 + step, _root(1, step)
                decision, sequence = store.check_and_record_block(key, slot, root)
                assert decision.allowed
                store.log.wait_durable(sequence)
                fileops.acknowledge("block", key, slot, root)
            elif step % 4 == 1:
                # A batch of three, one per key: one group commit.
                batch = [(k, step, step + 1, _root(2, step, n)) for n, k in enumerate(KEYS[:3])]
                decided = store.check_and_record_attestations(batch)
                store.log.wait_durable(decided[-1][1])
                for (k, source, target, root), (decision, _) in zip(batch, decided, strict=True):
                    assert decision.allowed
                    fileops.acknowledge("attestation", k, source, target, root)
            elif step % 4 == 2:
                # Refused (a double proposal of the slot decided two steps ago): recorded, never acknowledged.
                decision, _ = store.check_and_record_block(KEYS[(step - 2) % 3], 100 + step - 2, _root(7))
                assert not decision.allowed
            else:
                source, target, root = step, step + 2, _root(3, step)
                ((decision, sequence),) = store.check_and_record_attestations([(key, source, target, root)])
                store.log.wait_durable(sequence)
                assert decision.allowed
                fileops.acknowledge("attestation", key, source, target, root)

        half = decisions // 2
        for step in range(half):
            decide(step)
        store.save_checkpoint(while_serving=False)
        result = store.import_interchange(io.BytesIO(_import_document()))
        assert result.validators == 2
        fileops.acknowledge("block", IMPORTED, 500, _root(5, 0, 0))
        fileops.acknowledge("attestation", IMPORTED, 10, 11, _root(5, 1, 1))
        for step in range(half, decisions):
            decide(step)
    finally:
        store.close()
    return fileops.trace


def check_recovery(disk: Path, acknowledged: list[tuple[Any, ...]], *, repaired: bool = False) -> None:
    """Open the store on ``disk`` as the sidecar does at start; every acknowledged answer must hold.

    After a ``repair`` (``repaired``), records after the damage are gone and the raised bounds stand in for
    them: a conflicting message for every acknowledged answer must still be refused, for whatever reason."""
    store = Store.open_or_create(disk / "data", GENESIS, _options(FileOps()))
    try:
        other = _root(0xEE)
        for answer in acknowledged:
            kind, key, *rest = answer
            if kind == "registered":
                if not repaired:
                    for registered in (key, *rest):
                        assert store.summary(registered) is not None, answer
            elif kind == "block":
                decision, _ = store.check_and_record_block(key, rest[0], other)
                if repaired:
                    assert not decision.allowed, (answer, decision)
                else:
                    assert decision.reason is Reason.DOUBLE_PROPOSAL, (answer, decision)
            else:
                source, target, _ = rest
                ((decision, _),) = store.check_and_record_attestations([(key, source, target, other)])
                if repaired:
                    assert not decision.allowed, (answer, decision)
                else:
                    assert decision.reason is Reason.DOUBLE_VOTE, (answer, decision)
    finally:
        store.close(final_checkpoint=False)


def check_refusal(disk: Path, refused: LogCorruptionError) -> None:
    """The refusal names a segment of the log and a byte offset inside it, and says so in its message."""
    segments = {segment.path for segment in list_segments(disk / "data" / "log", FileOps())}
    assert refused.file in segments, (refused.file, segments)
    assert SEGMENT_HEADER_SIZE <= refused.offset < refused.file.stat().st_size, refused
    assert str(refused.file) in str(refused), refused
    assert f"byte offset {refused.offset}" in str(refused), refused


def enumerate_states(
    trace: Trace, points: list[int], seed: int, random_draws: int = 3
) -> list[tuple[int, CrashState, list[Any]]]:
    """Distinct crash states at ``points``, each with the point and what was acknowledged there."""
    rng = random.Random(seed)
    seen: set[tuple[str, int]] = set()
    found = []
    for point in points:
        model = build_model(trace, point)
        for crash in crash_states(model, rng, random_draws):
            # The same disk with fewer acknowledgements checks nothing new; with more it does.
            key = (fingerprint(crash.state), len(model.acknowledged))
            if key in seen:
                continue
            seen.add(key)
            found.append((point, crash, list(model.acknowledged)))
    return found


OPENED = "opened by itself"
REFUSED = "refused, then repaired"


def recover(disk: Path, crash: CrashState, acknowledged: list[tuple[Any, ...]]) -> str:
    """Recover one state (see the module docstring); returns the outcome, ``OPENED`` or ``REFUSED``."""
    write_state(crash.state, disk)
    if crash.kind not in HOLE_KINDS and not crash.holed:
        check_recovery(disk, acknowledged)
        return OPENED
    try:
        check_recovery(disk, acknowledged)
    except LogCorruptionError as refused:
        check_refusal(disk, refused)
        Store.repair(disk / "data", REPAIR_BOUND, REPAIR_BOUND, _options(FileOps()))
        check_recovery(disk, acknowledged, repaired=True)
        return REFUSED
    return OPENED


def recover_all(tmp_path: Path, states: list[tuple[int, CrashState, list[Any]]]) -> Counter[tuple[str, str]]:
    """Recover every state; counts of (kind, outcome), holed ``random`` states counted as ``random (holed)``."""
    outcomes: Counter[tuple[str, str]] = Counter()
    for number, (point, crash, acknowledged) in enumerate(states):
        try:
            outcome = recover(tmp_path / f"state-{number}", crash, acknowledged)
        except BaseException as error:
            raise AssertionError(
                f"crash state {crash.kind} (holed: {crash.holed}) after operation {point} ({len(acknowledged)} "
                f"answers acknowledged) failed to recover: {error!r}; files: {sorted(crash.state)}"
            ) from error
        kind = crash.kind if crash.kind in HOLE_KINDS or not crash.holed else f"{crash.kind} (holed)"
        outcomes[kind, outcome] += 1
    print(
        "\ncrash states by kind and outcome:\n"
        + "\n".join(f"  {kind:18} {outcome:24} {count}" for (kind, outcome), count in sorted(outcomes.items()))
    )
    return outcomes


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory: pytest.TempPathFactory) -> Trace:
    live = tmp_path_factory.mktemp("live")
    return run_workload(live, decisions=12)


def test_the_small_workload_exercises_rotation_checkpoints_and_an_import(small_trace: Trace) -> None:
    operations = Counter(operation[0] for operation in small_trace)
    renamed = [operation[4] for operation in small_trace if operation[0] == "rename"]
    assert sum(name.endswith(".log") for name in renamed) >= 4, renamed  # segments rotated
    assert sum(name.endswith(".ckpt") for name in renamed) == 2, renamed  # a checkpoint, and the closing one
    assert operations["unlink"] >= 1  # segments covered by a checkpoint were deleted
    assert operations["ack"] >= 100
    assert max(len(operation[3]) for operation in small_trace if operation[0] == "write") > 3 * 4096


def test_every_crash_state_of_the_small_workload_recovers_with_every_acknowledged_answer(
    tmp_path: Path, small_trace: Trace
) -> None:
    states = enumerate_states(small_trace, boundaries(small_trace), seed=12)
    outcomes = recover_all(tmp_path, states)
    assert sum(outcomes.values()) >= 150, outcomes
    # Every kind of crash state was reached somewhere in the workload.
    kinds = {crash.kind for _, crash, _ in states}
    # Only a hole may fail closed: the holed states are the hole kinds (each of them) and perhaps random ones.
    assert all(crash.holed for _, crash, _ in states if crash.kind in HOLE_KINDS)
    assert {crash.kind for _, crash, _ in states if crash.holed} <= HOLE_KINDS | {"random"}
    assert {kind for kind, outcome in outcomes if outcome == REFUSED} <= HOLE_KINDS | {"random (holed)"}
    assert kinds == {
        "dropped",
        "kept",
        "dirs-reverted",
        "torn-512-short",
        "torn-512-zero",
        "torn-4096-short",
        "torn-4096-zero",
        "hole-512",
        "hole-4096",
        "hole-random",
        "random",
    }, kinds


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_sampled_crash_states_of_a_bigger_workload_recover(tmp_path: Path, seed: int) -> None:
    (tmp_path / "live").mkdir()
    trace = run_workload(tmp_path / "live", decisions=60)
    points = boundaries(trace)
    sample = sorted(random.Random(seed).sample(points, min(len(points), 150)))
    recover_all(tmp_path, enumerate_states(trace, sample, seed=seed))


# -- the other side: damage to bytes that were synced refuses to start, naming file and offset ----------------


def _closed_store(tmp_path: Path) -> list[Path]:
    (tmp_path / "live").mkdir()
    trace = run_workload(tmp_path / "live", decisions=12)
    del trace
    data = tmp_path / "live" / "data"
    # Reopened without a closing checkpoint and then decided on, so the log holds synced records to damage.
    store = Store.open_or_create(data, GENESIS, _options(FileOps()))
    try:
        for step in range(12):
            decision, sequence = store.check_and_record_block(KEYS[0], 1000 + step, _root(4, step))
            assert decision.allowed
            store.log.wait_durable(sequence)
    finally:
        store.close(final_checkpoint=False)
    return [segment.path for segment in list_segments(data / "log", FileOps())]


@pytest.mark.parametrize("where", ["last segment", "earlier segment"])
def test_damage_to_synced_records_refuses_to_start_naming_file_and_offset(tmp_path: Path, where: str) -> None:
    segments = [path for path in _closed_store(tmp_path) if record_offsets(path)]
    assert len(segments) >= 2
    segment = segments[-1] if where == "last segment" else segments[-2]
    records = record_offsets(segment)
    assert len(records) >= 2, "a record after the damaged one proves the damage is not a torn write"
    _, offset, _ = records[0]
    flip_byte(segment, offset + RECORD_HEADER_SIZE + 1)
    with pytest.raises(LogCorruptionError) as refused:
        Store.open_or_create(tmp_path / "live" / "data", GENESIS, _options(FileOps()))
    assert refused.value.file == segment
    assert refused.value.offset == offset
