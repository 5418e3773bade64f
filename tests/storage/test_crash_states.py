"""Every crash state of a store workload starts by itself and keeps every acknowledged ALLOWED.

A workload (registration, signing decisions alone and in batches, log rotation every few records, a checkpoint,
an import, more decisions, a closing checkpoint) runs once through ``RecordingFileOps``. At every write, fsync,
rename and directory-fsync boundary of its trace, ``crash_states`` builds the disks a power cut may leave (see
``tests/storage/crash_states.py``), and each distinct one is recovered by opening the store on it with a plain
``FileOps``, as the sidecar does at start.

Every state loses or scrambles only data that was never synced, so every one must open without an operator (no
``repair``) and refuse a conflicting message for every answer acknowledged before the crash. That includes the
holed states (every ``hole-*`` state, and a ``random`` one where a skipped write reads as zeros before a later
one that landed): the final write's pages written back out of order, a zeroed sector before intact records of
the same write. Segment format 2 marks the first record of every write, and the reader cuts such a hole off as
a torn tail because no later write begins after it (``sidecar.storage.reader`` has the argument). Before every
start, ``verify`` must agree: no corruption, and a torn tail exactly when the start then cuts one.

The small workload is enumerated exhaustively; a bigger one is sampled behind ``slow``.

The other side: when bytes that were synced are damaged (a flipped byte, or a zeroed sector with the intact start
of a later write after it), the store refuses to start, naming file and offset.
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sidecar.domain import SigningRoot, valid_pubkey, valid_signing_root
from sidecar.rules import Reason
from sidecar.storage import FileOps, LogCorruptionError, list_segments
from sidecar.storage.framing import RECORD_HEADER_SIZE
from sidecar.store import Store, StoreOptions
from sidecar.verify import verify_data_dir

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
from .damage import first_of_write_flags, flip_byte, record_offsets, zero_range

GENESIS = bytes(range(32))
SEGMENT_BYTES = 600
NOW_NS = 1_700_000_000 * 10**9
KEYS = [valid_pubkey(bytes([0xA0 + n]) * 48) for n in range(4)]
IMPORTED = KEYS[3]
# Registered in one record and then decided on in one batch: writes that span several 4 KiB pages.
BULK_KEYS = [valid_pubkey(n.to_bytes(2, "big") * 24) for n in range(1, 91)]
HOLE_KINDS = frozenset({"hole-512", "hole-4096", "hole-random"})


def _options(fileops: FileOps) -> StoreOptions:
    return StoreOptions(segment_bytes=SEGMENT_BYTES, fileops=fileops, clock_ns=lambda: NOW_NS, checkpoint_keep=2)


def _root(*parts: int) -> SigningRoot:
    return valid_signing_root(bytes(parts) + bytes(32 - len(parts)))


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


def check_recovery(disk: Path, acknowledged: list[tuple[Any, ...]]) -> bool:
    """Open the store on ``disk`` as the sidecar does at start; every acknowledged answer must hold. Returns
    whether the start cut a torn tail off."""
    store = Store.open_or_create(disk / "data", GENESIS, _options(FileOps()))
    try:
        other = _root(0xEE)
        for answer in acknowledged:
            kind, key, *rest = answer
            if kind == "registered":
                for registered in (key, *rest):
                    assert store.summary(registered) is not None, answer
            elif kind == "block":
                decision, _ = store.check_and_record_block(key, rest[0], other)
                assert decision.reason is Reason.DOUBLE_PROPOSAL, (answer, decision)
            else:
                source, target, _ = rest
                ((decision, _),) = store.check_and_record_attestations([(key, source, target, other)])
                assert decision.reason is Reason.DOUBLE_VOTE, (answer, decision)
        return store.recovery.repaired_torn_tail
    finally:
        store.close(final_checkpoint=False)


def verify_finds_torn_tail(disk: Path) -> bool:
    """``verify`` on ``disk`` before any start: no damage to the log, but perhaps a torn tail, which it says the
    next start repairs; returns whether it found one."""
    if not (disk / "data" / "IDENTITY.json").exists():
        return False  # not a data directory yet: the start creates it
    report = verify_data_dir(disk / "data")
    assert not any("decision log corrupted" in line for line in report.lines), report.lines
    torn = [line for line in report.lines if line.startswith("DAMAGE: torn tail in ")]
    assert all("(repaired automatically at the next start)" in line for line in torn), torn
    assert len(torn) <= 1, torn
    return bool(torn)


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
CUT = "opened by itself, torn tail cut"


def recover(disk: Path, crash: CrashState, acknowledged: list[tuple[Any, ...]]) -> str:
    """Recover one state (see the module docstring); returns the outcome, ``OPENED`` or ``CUT``."""
    write_state(crash.state, disk)
    verified_torn = verify_finds_torn_tail(disk)
    cut = check_recovery(disk, acknowledged)
    assert cut == verified_torn, f"verify found a torn tail: {verified_torn}; the start cut one: {cut}"
    return CUT if cut else OPENED


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
        + "\n".join(f"  {kind:18} {outcome:32} {count}" for (kind, outcome), count in sorted(outcomes.items()))
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
    # Holes in the log were reached and cut off by the start, not only holes in other files.
    assert all(outcomes[kind, CUT] for kind in HOLE_KINDS), outcomes
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


@pytest.mark.parametrize("zeroed", ["whole sector", "from a record to the sector's end"])
def test_a_zeroed_sector_of_synced_records_before_a_later_write_refuses_to_start(
    tmp_path: Path, zeroed: str
) -> None:
    """The signature of a sector that never reached the disk, but with the intact start of a later write after it:
    that write was issued only once the damaged one was synced, so this is damage, not a torn write."""
    data = tmp_path / "data"
    store = Store.open_or_create(data, GENESIS, StoreOptions(fileops=FileOps(), clock_ns=lambda: NOW_NS))
    try:
        _, _, sequence = store.register_validators(KEYS[:1])
        store.log.wait_durable(sequence)
        for slot in range(1, 40):
            decision, sequence = store.check_and_record_block(KEYS[0], slot, _root(8, slot))
            assert decision.allowed
            store.log.wait_durable(sequence)  # one write per decision
    finally:
        store.close(final_checkpoint=False)
    (segment,) = list_segments(data / "log", FileOps())
    assert all(first_of_write_flags(segment.path))
    records = record_offsets(segment.path)
    if zeroed == "whole sector":
        start, end = 1024, 1536
    else:
        # A record that starts inside a sector and ends past it: zeros from its start to the boundary.
        start = next(offset for _, offset, length in records if offset % 512 + length > 512 and offset > 512)
        end = start + 512 - start % 512
    damaged = next(offset for _, offset, length in records if offset + length > start)
    assert any(offset >= end for _, offset, _ in records), "the start of a later write after the zeros"
    zero_range(segment.path, start, end - start)
    with pytest.raises(LogCorruptionError) as refused:
        Store.open_or_create(data, GENESIS, _options(FileOps()))
    assert refused.value.file == segment.path
    assert refused.value.offset == damaged
    assert "later write" in str(refused.value)
    report = verify_data_dir(data)
    assert not report.ok and any(f"byte offset {damaged}" in line for line in report.lines), report.lines
