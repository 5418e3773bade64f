"""`repair`: the operator's way out of real damage, offline (the directory's lock is taken; no server may run).

Keeps the newest checkpoint that verifies and every log record before the first damage, raises every
validator's floors to the bounds the operator gives, writes a checkpoint of the result, and only then moves the
rest (every log segment and every older checkpoint) into DIR/damaged-<time>/: nothing is deleted. A crash
before the move leaves a directory whose start refuses on the same damage, and running repair again finishes.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from sidecar.errors import DataDirError, InvalidRequestError
from sidecar.local.checkpoints import CheckpointBody
from sidecar.local.layout import DataDirLayout, read_identity
from sidecar.local.options import StoreOptions
from sidecar.local.recovery import load_checkpoint, replay
from sidecar.storage import DataDirLock, FileOps, LogCorruptionError, scan_log, write_checkpoint

__all__ = ["repair_data_dir"]


def repair_data_dir(
    data_dir: Path, min_slot: int, min_epoch: int, options: StoreOptions | None = None
) -> list[str]:
    """Repairs DIR (see the module doc); returns the sentences saying exactly what was done.

    Afterwards blocks need a slot above `min_slot` and attestations a source epoch at or above `min_epoch` and a
    target epoch above it, for every validator: nothing that might have been signed in the discarded part can
    be signed again, provided the bounds are above it.
    """
    if min_slot < 0 or min_epoch < 0:
        raise InvalidRequestError("--min-slot and --min-epoch must not be negative")
    options = options or StoreOptions()
    fileops = options.fileops
    layout = DataDirLayout(data_dir)
    report: list[str] = []
    dir_lock = DataDirLock.acquire(data_dir, fileops=fileops)
    try:
        root = read_identity(layout, fileops)
        recovered = load_checkpoint(layout, fileops, root, options.history_window_epochs)
        report.extend(f"skipped damaged checkpoint: {problem}" for problem in recovered.problems)
        covered = recovered.checkpoint_sequence
        loaded = recovered.checkpoint
        report.append(
            f"kept checkpoint {loaded.path.name} (sequence {covered})"
            if loaded is not None
            else "no checkpoint verifies: starting from an empty state"
        )
        replayed = 0
        try:
            scan = scan_log(layout.log_dir, fileops, after_sequence=covered)
            replay(recovered, scan.batches())
            replayed = recovered.replayed
            if scan.torn_tail is not None:
                tail = scan.torn_tail
                report.append(f"torn tail in {tail.path} at byte {tail.offset}: {tail.detail}")
            else:
                report.append("no damage found in the log")
        except (LogCorruptionError, DataDirError) as error:
            report.append(f"damage: {error}")
        through = recovered.through
        report.append(f"kept {replayed} log records after the checkpoint, through sequence {through}")
        validators = recovered.state.validators
        for history in validators.values():
            history.raise_floors(min_slot, min_epoch, min_epoch)
        report.append(
            f"raised the lower bounds of {len(validators)} validators: blocks need a slot above "
            f"{min_slot}; attestations need a source epoch of at least {min_epoch} and a target epoch above "
            f"{min_epoch}"
        )
        high_watermark = recovered.state.high_watermark
        report.append(
            "no high watermark is set"
            if high_watermark is None
            else f"kept the high watermark: slot {high_watermark.slot}, epoch {high_watermark.epoch}"
        )
        # The new checkpoint goes to disk before anything is moved: a crash in between leaves a directory whose
        # start refuses on the same damage, and running repair again finishes the job.
        body = CheckpointBody(validators, list(validators), contextlib.nullcontext(), through, high_watermark)
        path = write_checkpoint(layout.checkpoint_dir, fileops, through, root, body.chunks())
        report.append(f"wrote {path.name}")
        quarantine = layout.damaged_dir(time.gmtime())
        moved = _quarantine_files(layout, fileops, quarantine, keep=path)
        if moved:
            report.append(
                f"moved {moved} log segments and older checkpoints to {quarantine} (nothing deleted); "
                f"records after sequence {through} are discarded"
            )
        report.append(f"the log continues at sequence {through + 1}")
    finally:
        dir_lock.release()
    return report


def _quarantine_files(layout: DataDirLayout, fileops: FileOps, quarantine: Path, keep: Path) -> int:
    """Moves every log segment and every checkpoint but `keep` into `quarantine`; returns how many moved."""
    moved = 0
    for directory in (layout.log_dir, layout.checkpoint_dir):
        if not fileops.is_dir(directory):
            continue
        names = sorted(name for name in fileops.listdir(directory) if directory / name != keep)
        if not names:
            continue
        target = quarantine / directory.name
        fileops.makedirs(target)
        for name in names:
            fileops.rename(directory / name, target / name)
        fileops.fsync_dir(target)
        fileops.fsync_dir(directory)
        moved += len(names)
    return moved
