"""Writing checkpoints of the in-memory state while signing goes on.

Checkpoints are fuzzy: validators are copied in chunks, the store's lock taken for one chunk at a time, so a
decision never waits long behind a checkpoint. Each validator carries the sequence number of the newest record
applied to it, and replay skips records at or below it, so a checkpoint may cover some of the records after its
own sequence. The file is published (renamed into place) only once every record it includes is durable in the
log, so it never holds a decision the log could still lose. The file format is `sidecar.storage.checkpoint`'s;
the body's is `sidecar.records`'s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from sidecar import records as codec
from sidecar.history import ValidatorHistory
from sidecar.local.layout import DataDirLayout
from sidecar.local.state import ValidatorStates
from sidecar.rules import HighWatermark
from sidecar.storage import DecisionLog, FileOps, prune_checkpoints, write_checkpoint

__all__ = ["SNAPSHOT_CHUNK", "CheckpointBody", "CheckpointInfo", "save_checkpoint"]

# Validators copied per lock hold while taking a checkpoint or an export: about a millisecond of encoding with
# a full history window, so a decision never waits long behind a checkpoint.
SNAPSHOT_CHUNK = 50
CHECKPOINT_PAUSE_SECONDS = 0.001


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    sequence: int
    validators: int
    path: Path
    seconds: float


class CheckpointBody:
    """The body of one checkpoint of `pubkeys`, encoded a chunk at a time under `lock`. `newest` follows the
    newest record included: at least `covered`, more when a validator moved on while the body was encoded.
    `high_watermark` is the one in force at `covered`, read under the lock together with it: replay applies the
    watermark records after `covered` to it, in order."""

    def __init__(
        self,
        validators: dict[bytes, ValidatorHistory],
        pubkeys: list[bytes],
        lock: AbstractContextManager[object],
        covered: int,
        high_watermark: HighWatermark | None = None,
    ) -> None:
        self._validators = validators
        self._pubkeys = pubkeys
        self._lock = lock
        self._high_watermark = high_watermark
        self.newest = covered

    def chunks(self, pause: bool = False) -> Iterator[bytes]:
        """Header, then each validator encoded under the lock, a chunk at a time, so signing goes on between
        chunks; `pause` also sleeps between them (see `save_checkpoint`)."""
        pubkeys = self._pubkeys
        yield codec.encode_checkpoint_header(len(pubkeys), self._high_watermark)
        encode = codec.encode_checkpoint_validator
        for start in range(0, len(pubkeys), SNAPSHOT_CHUNK):
            encoded = []
            with self._lock:
                for pubkey in pubkeys[start : start + SNAPSHOT_CHUNK]:
                    history = self._validators[pubkey]
                    encoded.append(encode(pubkey, history))
                    self.newest = max(self.newest, history.applied_sequence)
            yield b"".join(encoded)
            if pause:
                # A real pause, not just a yield: the signing path needs the GIL, not only the lock, and a
                # checkpoint can afford to take a little longer.
                time.sleep(CHECKPOINT_PAUSE_SECONDS)

    def chunks_then_durable(self, log: DecisionLog, pause: bool) -> Iterator[bytes]:
        """The body, streamed to the file as it is encoded (never held whole: it is about the size of the state).
        Its end waits until everything it includes is durable in the log; the writer publishes the file (rename)
        only after the body has ended, so a checkpoint never holds a record the log could still lose."""
        yield from self.chunks(pause=pause)
        log.wait_durable(self.newest)


def save_checkpoint(
    *,
    layout: DataDirLayout,
    fileops: FileOps,
    log: DecisionLog,
    genesis_validators_root: bytes,
    state: ValidatorStates,
    lock: threading.Lock,
    keep: int,
    archive_segments: bool,
    pause: bool,
) -> CheckpointInfo:
    """Writes a checkpoint of every validator and the high watermark, prunes old ones and the log segments they
    cover. The caller holds the store's checkpoint lock (one checkpoint or import at a time), not `lock`, the
    state lock."""
    started = time.monotonic()
    validators = state.validators
    with lock:
        covered = log.last_sequence
        pubkeys = list(validators)
        high_watermark = state.high_watermark
    checkpoint_dir = layout.checkpoint_dir
    body = CheckpointBody(validators, pubkeys, lock, covered, high_watermark)
    path = write_checkpoint(
        checkpoint_dir, fileops, covered, genesis_validators_root, body.chunks_then_durable(log, pause)
    )
    kept = prune_checkpoints(checkpoint_dir, fileops, keep=keep)
    # Only log segments every kept checkpoint covers may go; if none verifies (the one just written was damaged
    # on its way to disk), the log is the only copy and stays whole.
    if kept:
        log.delete_segments_through(min(kept), archive_dir=layout.archive_dir if archive_segments else None)
    return CheckpointInfo(covered, len(pubkeys), path, time.monotonic() - started)
