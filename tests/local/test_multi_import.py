"""The gap between two imports, through the real store: offline import of real documents, both strategies, with
and without the history window, after a restart (from the checkpoint and from the log alone) and after an export
into a fresh directory. And the security property over random histories of clients that pruned before exporting
(see tests/rules/test_rules_multi_import.py): nothing the store allows is slashable against what the key really
signed, including the messages no file holds any more.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.backend import ImportStatus, Strategy
from sidecar.domain import valid_pubkey, valid_signing_root
from sidecar.local.options import StoreOptions
from sidecar.local.store import Store
from sidecar.rules import Reason
from tests.rules.rules_oracle import Attestation, Block, Recorded
from tests.rules.rules_support import eip3076_document
from tests.rules.test_rules_multi_import import client_stints, slashable_attestation, slashable_block

GENESIS = bytes(32)
KEY = valid_pubkey(bytes([0xA1]) * 48)
FRESH = valid_signing_root(bytes([0xFF]) * 32)
ROOT_A = valid_signing_root(bytes([0xAA]) * 32)


def document(files: Recorded, key: bytes = KEY) -> bytes:
    return eip3076_document({key: files}, GENESIS)


def open_store(path: Path, window: int | None, strategy: Strategy) -> Store:
    return Store.open_or_create(path, GENESIS, StoreOptions(strategy=strategy, history_window_epochs=window))


def block(store: Store, slot: int, root: bytes = FRESH) -> Reason:
    return store.check_and_record_block(KEY, slot, valid_signing_root(root))[0].reason


def attestation(store: Store, source: int, target: int, root: bytes = FRESH) -> Reason:
    [(decision, _)] = store.check_and_record_attestations([(KEY, source, target, valid_signing_root(root))])
    return decision.reason


# The reproduction: the export of last year's client, then the export of the client since, which pruned.
LAST_YEAR = Recorded(blocks=[Block(5701, None)], attestations=[Attestation(100, 102, None)])
SINCE = Recorded(blocks=[Block(6739, None)], attestations=[Attestation(126, 127, None)])


def assert_gap_refused(store: Store) -> None:
    assert block(store, 5838) is Reason.SLOT_AT_OR_BELOW_LOWER_BOUND
    assert attestation(store, 119, 124) is Reason.SOURCE_EPOCH_BELOW_LOWER_BOUND
    assert attestation(store, 126, 126) is Reason.TARGET_EPOCH_AT_OR_BELOW_LOWER_BOUND
    summary = store.summary(KEY)
    assert summary is not None
    assert (summary.slot_floor, summary.source_epoch_floor, summary.target_epoch_floor) == (6739, 126, 127)


@pytest.mark.parametrize("strategy", [Strategy.COMPLETE, Strategy.MINIMAL])
@pytest.mark.parametrize("window", [None, 64])
@pytest.mark.parametrize("order", ["oldest first", "newest first"])
def test_the_gap_stays_refused_across_restart_replay_and_export(
    tmp_path: Path, strategy: Strategy, window: int | None, order: str
) -> None:
    files = (LAST_YEAR, SINCE) if order == "oldest first" else (SINCE, LAST_YEAR)
    store = open_store(tmp_path / "dir", window, strategy)
    try:
        for file in files:
            store.import_interchange(io.BytesIO(document(file)))
        assert_gap_refused(store)
    finally:
        store.close(final_checkpoint=False)  # the imports and the refusals replay from the log alone
    store = open_store(tmp_path / "dir", window, strategy)
    try:
        assert_gap_refused(store)
        exported = io.BytesIO()
        store.export_interchange(exported)
    finally:
        store.close()  # and from the checkpoint
    store = open_store(tmp_path / "dir", window, strategy)
    try:
        assert_gap_refused(store)
        # Above every import the key signs on.
        assert block(store, 6740) is Reason.ALLOWED_NEW
        assert attestation(store, 127, 128) is Reason.ALLOWED_NEW
    finally:
        store.close()
    fresh = open_store(tmp_path / "fresh", window, strategy)
    try:
        fresh.import_interchange(io.BytesIO(exported.getvalue()))
        assert block(fresh, 5838) is Reason.SLOT_AT_OR_BELOW_LOWER_BOUND
        assert not attestation(fresh, 119, 124).allows
        assert not attestation(fresh, 126, 126).allows
    finally:
        fresh.close()


def test_a_merged_key_reports_the_floors_its_import_raised(tmp_path: Path) -> None:
    store = open_store(tmp_path / "dir", 64, Strategy.COMPLETE)
    try:
        store.import_interchange(io.BytesIO(document(LAST_YEAR)))
        result = store.import_interchange(io.BytesIO(document(SINCE)))
        [outcome] = result.results
        assert outcome.status is ImportStatus.MERGED
        assert outcome.message == (
            "merged with the history already recorded; raised the lower bounds: slot 6739 (was 5701), "
            "source epoch 126 (was 100), target epoch 127 (was 102)"
        )
        # The same file again raises nothing and changes nothing.
        [again] = store.import_interchange(io.BytesIO(document(SINCE))).results
        assert (again.status, again.message) == (
            ImportStatus.UNCHANGED,
            "every record was already known; nothing changed",
        )
    finally:
        store.close()


def test_a_root_lost_on_merge_is_not_reported_as_slashable(tmp_path: Path) -> None:
    """The same block and vote exported by a client that keeps no signing roots: their roots become unknown, which
    refuses their repeats, but nothing in the file is slashable and the status must not alarm the operator."""
    store = open_store(tmp_path / "dir", 64, Strategy.COMPLETE)
    try:
        store.register_validators([KEY])
        assert block(store, 10, bytes(32)) is Reason.ALLOWED_NEW  # an all-zero root is a root like any other
        assert attestation(store, 3, 4, bytes(32)) is Reason.ALLOWED_NEW
        without_roots = Recorded(blocks=[Block(10, None)], attestations=[Attestation(3, 4, None)])

        [outcome] = store.import_interchange(io.BytesIO(document(without_roots))).results

        assert outcome.status is ImportStatus.MERGED, outcome.message
        assert block(store, 10, bytes(32)) is Reason.DOUBLE_PROPOSAL  # the repeat is no longer provable
        # A file that really holds a double vote is still reported.
        double = Recorded(attestations=[Attestation(2, 4, ROOT_A)])
        [slashable] = store.import_interchange(io.BytesIO(document(double))).results
        assert slashable.status is ImportStatus.IMPORTED_SLASHABLE_DATA
    finally:
        store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stints=client_stints(),
    seed=st.integers(0, 2**32 - 1),
    window=st.sampled_from([None, 2, 64]),
    strategy=st.sampled_from(list(Strategy)),
)
def test_nothing_the_store_allows_after_pruned_imports_is_slashable(
    tmp_path_factory: pytest.TempPathFactory,
    stints: tuple[list[Recorded], list[Recorded]],
    seed: int,
    window: int | None,
    strategy: Strategy,
) -> None:
    signed, exported = stints
    chooser = random.Random(seed)
    files = list(exported)
    chooser.shuffle(files)
    path = tmp_path_factory.mktemp("store")
    really_signed_blocks = [b for stint in signed for b in stint.blocks]
    really_signed_attestations = [a for stint in signed for a in stint.attestations]
    slots = sorted({b.slot + delta for b in really_signed_blocks for delta in (-1, 0, 1)})
    epochs = sorted({e + d for a in really_signed_attestations for e in (a.source, a.target) for d in (-1, 0, 1)})
    store = open_store(path, window, strategy)
    try:
        for file in files:
            store.import_interchange(io.BytesIO(document(file)))
            if chooser.random() < 0.3:  # sometimes a restart between imports, replaying from the log
                store.close(final_checkpoint=chooser.random() < 0.5)
                store = open_store(path, window, strategy)
        for slot in slots:
            root = chooser.choice([FRESH, *(b.root for b in really_signed_blocks if b.root is not None)])
            if block(store, slot, root).allows:
                assert not slashable_block(Block(slot, root), really_signed_blocks), (slot, root)
                really_signed_blocks.append(Block(slot, root))
        for source in epochs:
            for target in epochs:
                if source > target or source < 0:
                    continue
                if attestation(store, source, target).allows:
                    candidate = Attestation(source, target, FRESH)
                    assert not slashable_attestation(candidate, really_signed_attestations), candidate
                    really_signed_attestations.append(candidate)
    finally:
        store.close(final_checkpoint=False)
