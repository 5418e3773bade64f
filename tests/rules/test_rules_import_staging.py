"""Imports stage each key's records pruned to the window as they arrive (`StagedHistory`, `DocumentStaging`);
that must change nothing the rules can see.

The simple path is the reference: add every record of the document to the existing history, in document order,
raise the floors to the document's minima, then prune once to exactly the window (`prune(window,
slack_epochs=0)`). The staged path reads the same records in parts of any size, split over several entries of
the same key (a document may name a key more than once), pruning progressively, then merges the result into the
same existing history and prunes it the same way. Both must give the same history (records, roots and floors)
and therefore the same decision for every later
candidate; and neither may allow anything the brute-force oracle refuses for all the records.
"""

from __future__ import annotations

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from interchange import SignedAttestation, SignedBlock, ValidatorEntryEnd, ValidatorRecordsPart
from sidecar.domain import SLOTS_PER_EPOCH
from sidecar.history import PRUNE_SLACK_EPOCHS, StagedHistory, ValidatorHistory
from sidecar.import_staging import DocumentStaging
from sidecar.rules import Reason, check_attestation, check_block

from .rules_oracle import Attestation, Block, Floors, Recorded
from .rules_support import (
    ROOT_A,
    ROOT_B,
    assert_never_allows_more,
    attestation_candidates,
    attestations,
    block_candidates,
    blocks,
    build_history,
    imported_histories,
    recorded_from,
)

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)
PUBKEY = bytes(range(48))
# Epochs and slots well past window + slack, so that staging drops records while it reads.
MAX_EPOCH = 70
MAX_SLOT = 2600
NO_LIMIT = 10**9


def simple_path(existing: ValidatorHistory, records: Recorded, window: int | None, minimal: bool) -> None:
    """What an import without staging does: every record into the history, the floors raised to the document's
    own minima (EIP-3076 conditions 2, 4 and 5 hold per imported file), then prune once."""
    for block in records.blocks:
        existing.add_block(block.slot, block.root)
    for attestation in records.attestations:
        existing.add_attestation(attestation.source, attestation.target, attestation.root)
    existing.raise_floors(
        min((b.slot for b in records.blocks), default=Floors().slot),
        min((a.source for a in records.attestations), default=Floors().source),
        min((a.target for a in records.attestations), default=Floors().target),
    )
    if minimal:
        existing.minify()
    if window is not None:
        existing.prune(window, slack_epochs=0)


def staged_path(
    existing: ValidatorHistory, entries: list[Recorded], part_size: int, window: int | None, minimal: bool
) -> StagedHistory:
    """What the import does: each entry read in parts, entries of one key absorbed, then merged and pruned."""
    staging = DocumentStaging(window, minimal, NO_LIMIT)
    for index, entry in enumerate(entries):
        for start in range(0, len(entry.blocks), part_size):
            chunk = entry.blocks[start : start + part_size]
            staging.add(ValidatorRecordsPart(index, tuple(SignedBlock(b.slot, b.root) for b in chunk), ()))
        for start in range(0, len(entry.attestations), part_size):
            chunk_attestations = entry.attestations[start : start + part_size]
            parts = tuple(SignedAttestation(a.source, a.target, a.root) for a in chunk_attestations)
            staging.add(ValidatorRecordsPart(index, (), parts))
        staging.add(ValidatorEntryEnd(index, PUBKEY))
    [(pubkey, staged)] = staging.finish()
    assert pubkey == PUBKEY
    existing.absorb(staged.history)
    if minimal:
        existing.minify()
    if window is not None:
        existing.prune(window, slack_epochs=0)
    return staged


def assert_same_decisions(got: ValidatorHistory, expected: ValidatorHistory, *grids: Recorded) -> None:
    for slot, root in block_candidates(*grids):
        assert check_block(got, slot, root).reason is check_block(expected, slot, root).reason, (slot, root[:1])
    for source, target, root in attestation_candidates(*grids):
        got_reason = check_attestation(got, source, target, root).reason
        assert got_reason is check_attestation(expected, source, target, root).reason, (source, target, root[:1])


@st.composite
def documents(draw: st.DrawFn) -> tuple[list[Recorded], int]:
    """A document's records for one key, split over 1 to 3 entries, and a part size for reading them."""
    all_blocks = draw(st.lists(blocks(MAX_SLOT), max_size=14))
    all_attestations = draw(st.lists(attestations(MAX_EPOCH), max_size=16))
    entry_count = draw(st.integers(1, 3))
    entries = [Recorded() for _ in range(entry_count)]
    for block in all_blocks:
        entries[draw(st.integers(0, entry_count - 1))].blocks.append(block)
    for attestation in all_attestations:
        entries[draw(st.integers(0, entry_count - 1))].attestations.append(attestation)
    return entries, draw(st.integers(1, 5))


def as_one(entries: list[Recorded]) -> Recorded:
    return Recorded(
        [block for entry in entries for block in entry.blocks],
        [attestation for entry in entries for attestation in entry.attestations],
    )


@PROPERTY_SETTINGS
@example(
    existing=(Recorded(), 0),
    document=([Recorded(attestations=[Attestation(t - 1, t, ROOT_A) for t in range(1, 60)])], 3),
    window=2,
    minimal=False,
)
@example(
    # A kept vote surrounds a dropped one, so it lies below the source floor; it keeps its root, as pruning once
    # keeps it (floors applied while staging would have cleared it).
    existing=(Recorded(), 0),
    document=([Recorded(attestations=[Attestation(10, 11, ROOT_A), Attestation(5, 40, ROOT_B)])], 1),
    window=2,
    minimal=False,
)
@example(
    # Two roots at one vote make it unknown, once merged into a history that has records: the same zeroed
    # bytes whichever path made it unknown.
    existing=(Recorded(blocks=[Block(0, ROOT_A)]), 0),
    document=([Recorded(attestations=[Attestation(0, 0, ROOT_A), Attestation(0, 0, ROOT_B)])], 1),
    window=0,
    minimal=False,
)
@given(
    existing=imported_histories(max_records=6, max_epoch=MAX_EPOCH, max_slot=MAX_SLOT),
    document=documents(),
    window=st.sampled_from([0, 1, 3, None]),
    minimal=st.booleans(),
)
def test_staged_import_equals_importing_everything_then_pruning_once(
    existing: tuple[Recorded, int], document: tuple[list[Recorded], int], window: int | None, minimal: bool
) -> None:
    recorded, floors_after = existing
    entries, part_size = document
    records = as_one(entries)
    expected = build_history(recorded, floors_after)
    got = build_history(recorded, floors_after)

    simple_path(expected, records, window, minimal)
    staged = staged_path(got, entries, part_size, window, minimal)

    floors = (staged.history.slot_floor, staged.history.source_epoch_floor, staged.history.target_epoch_floor)
    event("staging dropped records" if floors != (Floors().slot, Floors().source, Floors().target) else "kept all")
    assert got.fingerprint() == expected.fingerprint()
    assert (got.lowest_slot, got.highest_slot) == (expected.lowest_slot, expected.highest_slot)
    everything = Recorded(recorded.blocks + records.blocks, recorded.attestations + records.attestations)
    assert_same_decisions(got, expected, everything, recorded_from(got))
    # And, since pruning and minifying only ever add refusals, nothing the oracle refuses for every record
    # (the existing history's floors included) is allowed.
    assert_never_allows_more(got, Recorded(everything.blocks, everything.attestations, recorded.floors), "import")


@PROPERTY_SETTINGS
@given(document=documents(), window=st.sampled_from([0, 2, 5]))
def test_staging_holds_about_a_window_of_records_per_key(
    document: tuple[list[Recorded], int], window: int
) -> None:
    """Whatever the document, a staged key holds records within window + slack of the newest one it has seen
    (plus the newest itself), never the rest of its history."""
    entries, part_size = document
    staged = StagedHistory(window, minimal=False)
    highest_slot = highest_target = -1
    for entry in entries:
        for start in range(0, max(len(entry.blocks), len(entry.attestations)), part_size):
            staged.add_blocks((b.slot, b.root) for b in entry.blocks[start : start + part_size])
            staged.add_attestations(
                (a.source, a.target, a.root) for a in entry.attestations[start : start + part_size]
            )
            highest_slot = max([highest_slot, *(b.slot for b in entry.blocks[: start + part_size])])
            highest_target = max([highest_target, *(a.target for a in entry.attestations[: start + part_size])])
            history = staged.history
            assert all(
                slot >= highest_slot - (window + PRUNE_SLACK_EPOCHS) * SLOTS_PER_EPOCH for slot in history.blocks
            )
            assert all(target >= highest_target - window - PRUNE_SLACK_EPOCHS for target in history.targets)
    history = staged.finish()
    assert all(slot >= highest_slot - window * SLOTS_PER_EPOCH for slot in history.blocks)
    assert all(target >= highest_target - window for target in history.targets)


def test_a_complete_history_is_staged_as_a_window_and_floors() -> None:
    """A fixed case: 1,000 epochs of one vote each (and a block every 10 epochs), window 64."""
    staged = StagedHistory(64, minimal=False)
    most_held = 0
    for epoch in range(1, 1001):
        staged.add_attestations([(epoch - 1, epoch, ROOT_A)])
        if epoch % 10 == 0:
            staged.add_blocks([(epoch * SLOTS_PER_EPOCH, ROOT_B)])
        most_held = max(most_held, staged.held_records)
    history = staged.finish()

    # window + slack + the newest epoch of votes, and the blocks of as many epochs.
    assert most_held <= (64 + PRUNE_SLACK_EPOCHS + 1) + (64 + PRUNE_SLACK_EPOCHS) // 10 + 1
    assert [a.target_epoch for a in history.attestations()][:: 64 // 2] == [936, 968, 1000]
    assert (history.slot_floor, history.source_epoch_floor, history.target_epoch_floor) == (29_760, 934, 935)
    assert check_attestation(history, 934, 1001, ROOT_A).reason is Reason.SURROUNDS_RECORDED_VOTE
    assert check_attestation(history, 999, 1001, ROOT_A).reason is Reason.ALLOWED_NEW
    assert check_block(history, 29_760, ROOT_B).reason is Reason.SLOT_AT_OR_BELOW_LOWER_BOUND


@pytest.mark.parametrize("minimal", [False, True])
def test_one_key_in_several_entries_merges_like_one_entry(minimal: bool) -> None:
    """The duplicate-pubkey merge: a surround split over two entries is still slashable data, and the two
    entries' roots combine (a root known in one entry and another in the second is unknown)."""
    first = Recorded(blocks=[Block(5, ROOT_A)], attestations=[Attestation(2, 3, ROOT_A)])
    second = Recorded(blocks=[Block(5, ROOT_B), Block(9, ROOT_A)], attestations=[Attestation(1, 4, ROOT_A)])
    expected = ValidatorHistory()
    simple_path(expected, as_one([first, second]), 64, minimal)
    got = ValidatorHistory()

    staged = staged_path(got, [first, second], 1, 64, minimal)

    assert got.fingerprint() == expected.fingerprint()
    assert staged.slashable is not minimal  # minimal keeps only the highest records: nothing left to conflict
    assert staged.reduced is minimal
    if not minimal:
        assert got.blocks == {5: None, 9: ROOT_A}
        # One document: its minima over both entries are the floors (EIP-3076 conditions 2, 4 and 5).
        assert recorded_from(got).floors == Floors(slot=5, source=1, target=3)


# ------------------------------------------------------------------------------ StagedHistory's edges, one by one


def staged(minimal: bool = False, window: int | None = None, blocks=(), attestations=()) -> StagedHistory:
    staging = StagedHistory(window, minimal)
    staging.add_blocks(blocks)
    staging.add_attestations(attestations)
    return staging


def test_a_staged_history_is_spent_by_finish_and_merges_only_its_own_kind() -> None:
    done = staged()
    done.finish()
    for use in (
        lambda: done.add_blocks([(1, None)]),
        lambda: done.add_attestations([(1, 2, None)]),
        lambda: done.absorb(staged()),
        lambda: staged().absorb(done),
    ):
        with pytest.raises(AssertionError, match=r"^staged history used after finish$"):
            use()
    for other in (staged(minimal=True), staged(window=8)):
        with pytest.raises(AssertionError):
            staged().absorb(other)


@pytest.mark.parametrize(
    ("blocks", "attestations", "reduced"),
    [
        ([(5, None)], [], False),
        ([], [(1, 2, None)], False),
        ([(5, ROOT_A)], [], True),
        ([], [(1, 2, ROOT_A)], True),
        ([(5, None), (6, None)], [], True),
        ([], [(1, 2, None), (2, 3, None)], True),
    ],
)
def test_minimal_staging_is_reduced_when_it_leaves_out_a_record_or_a_root(blocks, attestations, reduced) -> None:
    assert staged(True, None, blocks, attestations).reduced is reduced
    # The same records in two entries of one key.
    first = staged(True, None, blocks[:1], attestations[:1])
    first.absorb(staged(True, None, blocks[1:], attestations[1:]))
    assert first.reduced is reduced
    second = staged(True, None, [], [])
    second.absorb(staged(True, None, blocks, attestations))
    assert second.reduced is reduced


def test_slashable_records_are_noticed_in_whichever_entry_they_are() -> None:
    assert StagedHistory(None, False).slashable is False
    assert not staged(blocks=[(5, ROOT_A), (6, ROOT_B)], attestations=[(1, 2, ROOT_A), (2, 3, ROOT_A)]).slashable
    assert not staged(attestations=[(1, 2, None), (2, 3, None), (2, 3, None)]).slashable
    assert staged(blocks=[(5, ROOT_A), (5, ROOT_B)]).slashable
    assert staged(attestations=[(1, 2, ROOT_A), (1, 2, ROOT_B)]).slashable
    merged = staged(blocks=[(7, ROOT_A)])
    merged.absorb(staged(blocks=[(5, ROOT_A), (5, ROOT_B)]))
    assert merged.slashable is True


def test_a_block_exactly_a_window_below_the_newest_is_kept() -> None:
    window_slots = 2 * SLOTS_PER_EPOCH
    history = staged(
        window=2, blocks=[(200, ROOT_A), (200 - window_slots, ROOT_A), (200 - window_slots - 1, None)]
    )
    finished = history.finish()
    assert sorted(finished.blocks) == [200 - window_slots, 200]
    assert finished.slot_floor == 200 - window_slots - 1


def test_staging_holds_blocks_within_the_window_plus_slack_and_drops_the_rest_at_once() -> None:
    reach = (2 + PRUNE_SLACK_EPOCHS) * SLOTS_PER_EPOCH  # window 2 plus the slack: what staging may hold
    history = staged(window=2, blocks=[(0, ROOT_A), (reach, ROOT_A)])
    assert sorted(history.history.blocks) == [0, reach]
    history.add_blocks([(reach + 1, ROOT_A)])
    assert sorted(history.history.blocks) == [reach, reach + 1]


@pytest.mark.parametrize("minimal", [False, True])
def test_entries_without_a_window_merge(minimal: bool) -> None:
    merged = staged(minimal, None, [(5, ROOT_A)], [(1, 2, ROOT_A)])
    merged.absorb(staged(minimal, None, [(9, ROOT_A)], [(3, 4, ROOT_A)]))
    finished = merged.finish()
    assert max(finished.blocks) == 9 and finished.targets[-1] == 4


def test_a_vote_exactly_a_window_below_the_newest_is_kept() -> None:
    history = staged(window=2, attestations=[(10, 20, ROOT_A), (5, 18, ROOT_A), (4, 17, None)])
    finished = history.finish()
    assert finished.targets.tolist() == [18, 20]
    assert (finished.source_epoch_floor, finished.target_epoch_floor) == (4, 17)


def test_staging_holds_votes_within_the_window_plus_slack() -> None:
    reach = 2 + PRUNE_SLACK_EPOCHS  # window 2 plus the slack, in epochs
    history = staged(window=2, attestations=[(0, 1, ROOT_A), (1, 1 + reach, ROOT_A)])
    assert history.history.targets.tolist() == [1, 1 + reach]
    history.add_attestations([(2, 2 + reach, ROOT_A)])
    assert history.history.targets.tolist() == [1 + reach, 2 + reach]


def test_settle_drops_exactly_what_is_beyond_the_window() -> None:
    history = staged(window=2, blocks=[(0, ROOT_A), (2 * SLOTS_PER_EPOCH + 20, ROOT_A)])
    assert history.held_records == 2  # within the slack
    history.settle()
    assert sorted(history.history.blocks) == [2 * SLOTS_PER_EPOCH + 20]
