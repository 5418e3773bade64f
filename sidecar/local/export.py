"""EIP-3076 export of a data directory's histories, streamed while signing goes on.

The keys are chosen under the store's lock, then copied a chunk at a time (`SNAPSHOT_CHUNK` validators per lock
hold) and written as they are copied, so a large export neither holds the state whole nor stalls decisions.
Floors raised by pruning or repair are carried as records (see ValidatorHistory.export_*), so an importer refuses
at least what we refuse.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

from interchange import ValidatorRecords, write_interchange
from sidecar.errors import UnknownValidatorError
from sidecar.history import ValidatorHistory
from sidecar.import_merge import interchange_records
from sidecar.local.checkpoints import SNAPSHOT_CHUNK

__all__ = ["export_interchange"]

log = logging.getLogger("sidecar.store")


def export_interchange(
    out: BinaryIO,
    genesis_validators_root: bytes,
    validators: dict[bytes, ValidatorHistory],
    lock: threading.Lock,
    pubkeys: Sequence[bytes] | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Writes an EIP-3076 v5 document for the given keys (all when None); returns the number of keys. Unknown
    keys raise UnknownValidatorError before anything is written. Takes `lock`, the state lock, chunk by chunk."""
    with lock:
        if pubkeys is None:
            selected = sorted(validators)
        else:
            missing = [pk for pk in pubkeys if pk not in validators]
            if missing:
                raise UnknownValidatorError(f"validator 0x{missing[0].hex()} is not registered")
            selected = sorted(set(pubkeys))
    write_interchange(out, genesis_validators_root, _records(validators, lock, selected, progress))
    if progress is not None:
        progress(len(selected))
    return len(selected)


def _records(
    validators: dict[bytes, ValidatorHistory],
    lock: threading.Lock,
    pubkeys: list[bytes],
    progress: Callable[[int], None] | None,
) -> Iterator[ValidatorRecords]:
    for start in range(0, len(pubkeys), SNAPSHOT_CHUNK):
        if progress is not None and start and not start % 1000:
            progress(start)
        chunk = []
        with lock:
            for pubkey in pubkeys[start : start + SNAPSHOT_CHUNK]:
                chunk.append(interchange_records(pubkey, validators[pubkey]))
        yield from chunk
