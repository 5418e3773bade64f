"""Checkpoints through the store: the body is streamed to its file, and the file is published (renamed into
place) only once every record it includes is durable in the log."""

from __future__ import annotations

import threading
from pathlib import Path

from sidecar.local.options import StoreOptions
from sidecar.local.store import Store
from sidecar.storage import list_checkpoints
from tests.storage.fakes import GatedFileOps
from tests.support.keys import pubkey, signing_root

ROOT = bytes(32)


def test_a_checkpoint_is_published_only_after_what_it_holds_is_durable(tmp_path: Path) -> None:
    fileops = GatedFileOps()
    store = Store.open_or_create(tmp_path / "data", ROOT, StoreOptions(fileops=fileops))
    try:
        store.register_validators([pubkey(1)])
        store.log.sync()
        fileops.gate.clear()  # the next group commit hangs inside fdatasync
        decision, sequence = store.check_and_record_attestations([(pubkey(1), 0, 1, signing_root(0))])[0]
        assert decision.allowed
        assert fileops.in_fdatasync.wait(5)
        saved: list[object] = []
        writer = threading.Thread(target=lambda: saved.append(store.save_checkpoint(while_serving=False)))
        writer.start()
        writer.join(0.5)
        # The body (which includes the decision) is written, but the file is not published while the record
        # is not durable.
        assert writer.is_alive()
        assert [c.sequence for c in list_checkpoints(tmp_path / "data" / "checkpoints", fileops)] == []
        fileops.gate.set()
        writer.join(10)
        assert not writer.is_alive()
        assert store.log.durable_sequence >= sequence
        assert [c.sequence for c in list_checkpoints(tmp_path / "data" / "checkpoints", fileops)] == [sequence]
    finally:
        fileops.gate.set()
        store.close(final_checkpoint=False)
