"""Power cuts at random points of a real workload: every acknowledged record survives recovery.

The workload runs appenders (append, then wait until durable: the "acknowledgement"), segment rotation,
checkpoints with log pruning, all through ``PowerLossFileOps``, which cuts the power before a randomly chosen
operation. Recovery then runs exactly as the store's startup does, with a plain ``FileOps`` on what the disk
held, and must find every acknowledged record, under its own sequence number, either in the log or covered
by the checkpoint, with a gapless, clean log after it.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sidecar.storage import (
    DecisionLog,
    FileOps,
    LogUnavailableError,
    StorageError,
    load_newest_valid_checkpoint,
    prune_checkpoints,
    repair_torn_tail,
    scan_log,
    write_checkpoint,
)

from .fakes import PowerLossFileOps

ROOT = bytes(range(32))
WORKERS = 3
RECORDS_PER_WORKER = 40
CHECKPOINT_EVERY = 25


@dataclass
class Outcome:
    appended: dict[int, bytes] = field(default_factory=dict)
    acknowledged: set[int] = field(default_factory=set)
    checkpoints_written: list[int] = field(default_factory=list)
    operations: int = 0


def run_workload(live: Path, fileops: PowerLossFileOps, seed: int) -> Outcome:
    outcome = Outcome()
    lock = threading.Lock()
    rng = random.Random(seed)
    try:
        log = DecisionLog.open(
            live / "log",
            fileops=fileops,
            next_sequence=1,
            segment_bytes=rng.choice((600, 1500)),
            retry_interval=0.005,
        )
    except StorageError:
        return outcome  # the power went before the log was even open

    def appender(worker: int) -> None:
        for n in range(RECORDS_PER_WORKER):
            payload = f"worker {worker} record {n} ".encode() * rng.randint(1, 4)
            try:
                if n % 7 == 3:
                    last = log.append_many([(2, payload), (3, payload[::-1])])
                    with lock:
                        outcome.appended[last - 1] = payload
                        outcome.appended[last] = payload[::-1]
                else:
                    last = log.append(1, payload)
                    with lock:
                        outcome.appended[last] = payload
                log.wait_durable(last)
            except LogUnavailableError:
                return
            with lock:
                outcome.acknowledged.update(s for s in range(last - (1 if n % 7 == 3 else 0), last + 1))

    def checkpointer() -> None:
        done = 0
        while done < 4 and not fileops.crashed.is_set():
            with lock:
                acknowledged = len(outcome.acknowledged)
            if acknowledged < (done + 1) * CHECKPOINT_EVERY:
                if all(not t.is_alive() for t in workers):
                    return
                time.sleep(0.001)
                continue
            try:
                covered = log.sync()
                outcome.checkpoints_written.append(covered)  # attempted: it may reach the disk or not
                write_checkpoint(live / "checkpoints", fileops, covered, ROOT, [covered.to_bytes(8, "little")])
                kept = prune_checkpoints(live / "checkpoints", fileops, keep=2)
                assert kept, "a checkpoint was just written"
                log.delete_segments_through(min(kept), archive_dir=live / "archive" if done % 2 else None)
            except StorageError:
                return
            done += 1

    workers = [threading.Thread(target=appender, args=(w,)) for w in range(WORKERS)]
    checkpoint_thread = threading.Thread(target=checkpointer)
    for thread in [*workers, checkpoint_thread]:
        thread.start()
    for thread in [*workers, checkpoint_thread]:
        thread.join()
    outcome.operations = fileops.operations
    with contextlib.suppress(LogUnavailableError):
        log.close()
    return outcome


def recover_and_check(disk: Path, outcome: Outcome) -> None:
    fileops = FileOps()
    loaded, problems = load_newest_valid_checkpoint(disk / "checkpoints", fileops)
    assert problems == []  # checkpoints are atomic: a crash never leaves a damaged one
    covered = 0
    if loaded is not None:
        covered = loaded.sequence
        assert loaded.body == covered.to_bytes(8, "little") and loaded.genesis_validators_root == ROOT
        assert covered in outcome.checkpoints_written
    scan = scan_log(disk / "log", fileops, after_sequence=covered)
    recovered = {record.sequence: record.payload for record in scan}
    # Every record found is one that was appended, under its own number; none is invented.
    for sequence, payload in recovered.items():
        assert outcome.appended.get(sequence) == payload, sequence
    # The core promise: an acknowledged record is in the log, or covered by the checkpoint.
    missing = sorted(s for s in outcome.acknowledged if s > covered and s not in recovered)
    assert not missing, f"acknowledged records lost: {missing[:10]}"
    if scan.torn_tail is not None:
        repair_torn_tail(scan.torn_tail, fileops)
    with DecisionLog.open(disk / "log", fileops=fileops, next_sequence=scan.next_sequence) as log:
        log.wait_durable(log.append(1, b"after recovery"))
    rescan = scan_log(disk / "log", fileops, after_sequence=covered)
    assert [r.sequence for r in rescan] == list(range(covered + 1, scan.next_sequence + 1))
    assert rescan.torn_tail is None


@pytest.fixture(scope="module")
def operations_in_a_full_run(tmp_path_factory: pytest.TempPathFactory) -> int:
    live = tmp_path_factory.mktemp("baseline")
    outcome = run_workload(live, PowerLossFileOps(live), seed=0)
    assert len(outcome.acknowledged) > WORKERS * RECORDS_PER_WORKER
    assert len(outcome.checkpoints_written) >= 2
    return outcome.operations


@pytest.mark.parametrize("torn_writes", [False, True], ids=["clean-cut", "torn-writes"])
@pytest.mark.parametrize("seed", range(12))
def test_acknowledged_records_survive_a_power_cut(
    tmp_path: Path, operations_in_a_full_run: int, seed: int, torn_writes: bool
) -> None:
    rng = random.Random(seed * 2 + torn_writes)
    crash_at = rng.randint(1, int(operations_in_a_full_run * 1.05))
    live, disk = tmp_path / "live", tmp_path / "disk"
    live.mkdir()
    fileops = PowerLossFileOps(
        live,
        crash_at_operation=crash_at,
        crash_destination=disk,
        torn_writes=random.Random(seed) if torn_writes else None,
    )
    outcome = run_workload(live, fileops, seed)
    if not fileops.crashed.is_set():
        fileops.crash(disk)  # the workload finished first: cut the power at the very end
    recover_and_check(disk, outcome)


def test_power_cut_right_after_the_last_acknowledgement(tmp_path: Path) -> None:
    live, disk = tmp_path / "live", tmp_path / "disk"
    live.mkdir()
    fileops = PowerLossFileOps(live)
    log = DecisionLog.open(live / "log", fileops=fileops, next_sequence=1, segment_bytes=800)
    outcome = Outcome()
    for n in range(1, 60):
        outcome.appended[n] = f"record {n}".encode() * 5
        assert log.append(1, outcome.appended[n]) == n
        if n % 5 == 0:
            log.wait_durable(n)
            outcome.acknowledged.update(range(1, n + 1))
    fileops.crash(disk)  # records 56..59 were appended but never acknowledged
    with contextlib.suppress(LogUnavailableError):
        log.close()
    recover_and_check(disk, outcome)
