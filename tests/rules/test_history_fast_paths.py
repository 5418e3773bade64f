"""The history's fast paths against its general ones: the same state, field by field, derived indexes included.

Three shortcuts serve restart time: `add_attestation_if_newest` (the O(1) append replay takes for nearly every
record), the prefix maxima kept across `prune_attestations` instead of recomputed, and `load_attestation_arrays`
deriving the indexes of a checkpoint by copy when sources never decrease. Each is checked against the general
computation on honest histories (where the shortcut fires) and on slashable imported ones (where it must not).
"""

from __future__ import annotations

import copy
from array import array
from itertools import accumulate

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from sidecar.domain import SLOTS_PER_EPOCH
from sidecar.history import MergeOutcome, ValidatorHistory
from sidecar.rules import vote_conflict
from tests.support.history_state import full_state

from .rules_oracle import Recorded
from .rules_support import ROOT_A, ROOT_B, build_history, imported_histories

SETTINGS = settings(max_examples=300, deadline=None)


def assert_indexes_exact(history: ValidatorHistory) -> None:
    sources = history.sources.tolist()
    prefix = list(accumulate(sources, max))
    suffix = list(accumulate(reversed(sources), min))[::-1]
    assert history._prefix_max_source.tolist() == prefix
    assert history._suffix_min_source.tolist() == suffix


@st.composite
def honest_histories(draw: st.DrawFn) -> ValidatorHistory:
    """Histories grown the way the rules grow them: targets rising, sources never falling, roots known."""
    history = ValidatorHistory()
    history.raise_floors(-1, draw(st.integers(0, 5)), draw(st.integers(-1, 5)))
    source = draw(st.integers(0, 10))
    target = source
    for _ in range(draw(st.integers(0, 30))):
        source += draw(st.integers(0, 2))
        target = max(target + 1, source) + draw(st.integers(0, 2))
        history.add_attestation(source, target, draw(st.sampled_from([ROOT_A, ROOT_B])))
    return history


any_histories = st.one_of(
    honest_histories(),
    imported_histories(max_records=12).map(lambda drawn: build_history(*drawn)),
)
candidates = st.tuples(st.integers(0, 50), st.integers(0, 50), st.sampled_from([ROOT_A, ROOT_B]))


# ------------------------------------------------------------------------------ add_attestation_if_newest


@SETTINGS
@given(any_histories, candidates)
def test_add_attestation_if_newest_is_add_attestation_or_nothing(
    history: ValidatorHistory, candidate: tuple[int, int, bytes]
) -> None:
    source, target, root = candidate
    general = copy.deepcopy(history)
    before = full_state(history)
    if history.add_attestation_if_newest(source, target, root):
        event("fast path")
        assert general.add_attestation(source, target, root) is MergeOutcome.ADDED
        assert full_state(history) == full_state(general)
        assert_indexes_exact(history)
    else:
        event("declined")
        assert full_state(history) == before


def test_add_attestation_if_newest_takes_the_honest_next_vote_and_declines_the_rest() -> None:
    history = ValidatorHistory()
    assert history.add_attestation_if_newest(3, 4, ROOT_A)
    assert history.add_attestation_if_newest(4, 5, ROOT_A)
    assert history.add_attestation_if_newest(4, 9, ROOT_B)  # a skipped epoch, same source
    declined = [
        (4, 9, ROOT_A),  # same target: a repeat or a double vote
        (5, 8, ROOT_A),  # below the newest target
        (3, 10, ROOT_A),  # surrounds a recorded vote
        (11, 10, ROOT_A),  # source above target
    ]
    for source, target, root in declined:
        assert not history.add_attestation_if_newest(source, target, root), (source, target)
    floored = ValidatorHistory()
    floored.raise_floors(-1, 6, 7)
    assert not floored.add_attestation_if_newest(5, 9, ROOT_A)  # source below the source floor
    assert not floored.add_attestation_if_newest(6, 7, ROOT_A)  # target at the target floor
    assert floored.add_attestation_if_newest(6, 8, ROOT_A)


# ------------------------------------------------------------------------------ pruning keeps the indexes exact


@SETTINGS
@given(
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60), st.sampled_from([ROOT_A, None])), max_size=60),
    st.integers(0, 6),
    st.booleans(),
)
def test_indexes_stay_exact_through_pruning(
    votes: list[tuple[int, int, bytes | None]], window: int, honest: bool
) -> None:
    history = ValidatorHistory()
    if honest:
        # Rising sources and targets: the case where pruning keeps the prefix maxima it has.
        votes = sorted(((min(s, t), max(s, t), root) for s, t, root in votes), key=lambda vote: vote[:2])
    for source, target, root in votes:
        history.add_attestation(source, target, root)
        if history.prune_attestations(window):
            event("pruned")
        assert_indexes_exact(history)


def test_pruning_recomputes_prefix_maxima_a_dropped_vote_had_set() -> None:
    history = ValidatorHistory()
    history.add_attestation(30, 31, ROOT_A)  # a high source, imported (it surrounds nothing yet)
    for target in range(32, 60):
        history.add_attestation(2, target, ROOT_A)
    assert history._prefix_max_source[-1] == 30
    assert history.prune_attestations(4)
    assert history.targets[0] > 31
    assert history._prefix_max_source.tolist() == [2] * len(history.targets)
    assert history.source_epoch_floor == 30


# ------------------------------------------------------------------------------ loading arrays from a checkpoint


def reloaded(history: ValidatorHistory) -> ValidatorHistory:
    roots, known = history.root_arrays()
    fresh = ValidatorHistory()
    fresh.load_attestation_arrays(array("Q", history.targets), array("Q", history.sources), roots[:], known[:])
    return fresh


@SETTINGS
@given(any_histories)
def test_loaded_arrays_rebuild_the_same_indexes(history: ValidatorHistory) -> None:
    fresh = reloaded(history)
    event("sources never decrease" if history.sources.tolist() == sorted(history.sources) else "sources decrease")
    for name in ("targets", "sources", "_prefix_max_source", "_suffix_min_source", "_roots", "_root_known"):
        assert full_state(fresh)[name] == full_state(history)[name], name
    assert_indexes_exact(fresh)
    # The copies are the history's own: growing one index does not grow another.
    if fresh.targets:
        fresh._prefix_max_source.append(99)
        assert len(fresh.sources) == len(fresh._suffix_min_source) == len(fresh.targets)


@pytest.mark.parametrize(
    ("targets", "sources", "message"),
    [
        ([5, 4], [1, 2], "attestations out of order"),  # sources sorted, targets not
        ([5, 4], [2, 1], "attestations out of order"),
        ([4, 4, 6], [3, 2, 5], "attestations out of order at index 1"),  # one target, sources falling
        ([5, 5, 5], [1, 3, 2], r"attestations out of order at index 2$"),
    ],
)
def test_loading_refuses_arrays_out_of_order(targets: list[int], sources: list[int], message: str) -> None:
    history = ValidatorHistory()
    n = len(targets)
    with pytest.raises(ValueError, match=message):
        history.load_attestation_arrays(array("Q", targets), array("Q", sources), bytearray(32 * n), bytearray(n))
    assert full_state(history) == full_state(ValidatorHistory())


def test_loading_keeps_slashable_imports_with_exact_indexes() -> None:
    # Two votes at one target and a surround: kept as they are, indexes by the general computation.
    history = ValidatorHistory()
    history.load_attestation_arrays(
        array("Q", [4, 4, 9, 10]), array("Q", [1, 3, 8, 2]), bytearray(32 * 4), bytearray(4)
    )
    assert history._prefix_max_source.tolist() == [1, 3, 8, 8]
    assert history._suffix_min_source.tolist() == [1, 2, 2, 2]


@st.composite
def merges(draw: st.DrawFn) -> tuple[tuple[Recorded, int], int, int, bytes | None]:
    """A history an import may produce and a record to merge into it, its epochs drawn near the history's own
    (equal, one off) as often as anywhere, where the boundaries of the conditions are."""
    imported = draw(imported_histories())
    near = sorted({epoch for a in imported[0].attestations for epoch in (a.source, a.target)}) or [0]

    def epoch() -> int:
        close = max(draw(st.sampled_from(near)) + draw(st.integers(-1, 1)), 0)
        return draw(st.one_of(st.integers(0, 45), st.just(close)))

    return imported, epoch(), epoch(), draw(st.sampled_from([ROOT_A, ROOT_B, None]))


@settings(max_examples=1000, deadline=None)
@given(merges())
def test_the_merge_marks_as_conflict_exactly_what_the_shared_predicate_refuses(
    merge: tuple[tuple[Recorded, int], int, int, bytes | None],
) -> None:
    """`add_attestation` (its O(1) append branch included) calls a new record slashable evidence exactly when
    `sidecar.rules.vote_conflict`, the rules' own predicate, would refuse it against the history it joins. A
    record at a recorded (source, target) is the one case the predicate leaves to its callers (a repeat, or a
    root made unknown)."""
    imported, source, target, root = merge
    history = build_history(*imported)
    if (source, target) in zip(history.sources, history.targets, strict=True):
        return
    expected = vote_conflict(history, source, target) is not None
    appended = not history.targets or target > history.targets[-1]
    event("append branch" if appended else "general branch")
    outcome = history.add_attestation(source, target, root)
    assert (outcome is MergeOutcome.CONFLICT) == expected, (source, target, outcome)


def test_compacting_keeps_unsigned_64_bit_epochs() -> None:
    history = ValidatorHistory()
    history.add_attestation(2**63, 2**64 - 1, ROOT_A)
    before = full_state(history)
    history.compact()
    assert full_state(history) == before


@pytest.mark.parametrize(
    ("sources", "roots", "root_known"),
    [([1], bytes(64), bytes(2)), ([1, 2], bytes(32), bytes(2)), ([1, 2], bytes(64), bytes(1))],
    ids=["sources", "roots", "root flags"],
)
def test_loading_refuses_arrays_of_different_lengths(sources: list[int], roots: bytes, root_known: bytes) -> None:
    with pytest.raises(ValueError, match=r"^attestation arrays of different lengths$"):
        ValidatorHistory().load_attestation_arrays(
            array("Q", [2, 3]), array("Q", sources), bytearray(roots), bytearray(root_known)
        )


def test_a_minified_history_holds_one_vote_with_an_unknown_root_at_u64_epochs() -> None:
    history = ValidatorHistory()
    history.add_attestation(2**63, 2**63 + 5, ROOT_A)
    history.add_attestation(2**63 + 1, 2**64 - 1, ROOT_B)
    history.minify()
    assert (history.sources.tolist(), history.targets.tolist()) == ([2**63 + 1], [2**64 - 1])
    assert history.root_arrays() == (bytearray(32), bytearray(1))
    assert_indexes_exact(history)


# ------------------------------------------------------------------------------ absorb: the fast take-over


@pytest.mark.parametrize(
    ("floors", "expected_roots"),
    [((10, 0, -1), [None, ROOT_A]), ((-1, 3, -1), [ROOT_A, None]), ((-1, 0, 4), [ROOT_A, None])],
    ids=["slot floor", "source floor", "target floor"],
)
def test_absorbing_into_a_history_with_a_floor_clears_roots_at_or_below_it(
    floors: tuple[int, int, int], expected_roots: list[bytes | None]
) -> None:
    """Only an empty history without floors may take the imported records over whole: any floor of its own
    clears the roots of records at or below it, as adding them one by one does."""
    history = ValidatorHistory()
    history.raise_floors(*floors)
    imported = ValidatorHistory()
    imported.add_block(5, ROOT_A)
    imported.add_attestation(2, 4, ROOT_A)
    history.absorb(imported)
    [vote] = history.attestations()
    assert [history.blocks[5], vote.signing_root] == expected_roots


@pytest.mark.parametrize(
    ("blocks", "votes", "outcome"),
    [
        ([], [], MergeOutcome.UNCHANGED),
        ([(5, ROOT_A)], [], MergeOutcome.ADDED),
        ([], [(1, 2)], MergeOutcome.ADDED),
    ],
)
def test_absorbing_into_an_empty_history_says_whether_it_added_anything(blocks, votes, outcome) -> None:
    imported = ValidatorHistory()
    for slot, root in blocks:
        imported.add_block(slot, root)
    for source, target in votes:
        imported.add_attestation(source, target, ROOT_A)
    assert ValidatorHistory().absorb(imported) is outcome


def test_absorbing_what_is_already_there_changes_nothing_and_a_new_floor_does() -> None:
    history = ValidatorHistory()
    history.add_block(5, ROOT_A)
    again = ValidatorHistory()
    again.add_block(5, ROOT_A)
    assert history.absorb(again) is MergeOutcome.UNCHANGED
    floor_only = ValidatorHistory()
    floor_only.raise_floors(9, 0, -1)
    assert history.absorb(floor_only) is MergeOutcome.ADDED


def test_a_history_without_records_or_floors_has_no_lower_bounds() -> None:
    history = ValidatorHistory()
    assert history.lower_bounds() == (None, None, None)
    history.add_block(0, ROOT_A)
    history.add_attestation(0, 0, ROOT_A)
    assert history.lower_bounds() == (0, None, 0)  # slot 0 and target 0 are bounds; source 0 refuses nothing


def test_pruning_drops_exactly_what_is_more_than_a_window_below_the_newest() -> None:
    window_slots = 2 * SLOTS_PER_EPOCH
    history = ValidatorHistory()
    for slot in (0, 50):
        history.add_block(slot, ROOT_A)
    for source, target in ((0, 15), (5, 20), (29, 30)):
        history.add_attestation(source, target, ROOT_A)
    assert history.prune_blocks(2, slack_epochs=0) is False  # 50 is within the window of 2 epochs
    # The default slack (16 epochs) waits until the oldest vote is that far beyond the window; without slack,
    # everything more than the window below the newest vote goes.
    assert history.prune(2) is False and history.targets.tolist() == [15, 20, 30]
    assert history.prune(2, slack_epochs=0) is True and history.targets.tolist() == [30]
    assert (history.source_epoch_floor, history.target_epoch_floor) == (5, 20)
    history.add_block(window_slots + 40, ROOT_A)
    assert history.prune(2) is False and sorted(history.blocks) == [0, 50, window_slots + 40]
    assert history.prune(2, slack_epochs=0) is True and sorted(history.blocks) == [50, window_slots + 40]
    assert history.slot_floor == 0
    # Below means strictly below; the highest block removed is returned, and none left means no lowest slot.
    assert history.drop_blocks_below(50) == -1 and sorted(history.blocks) == [50, window_slots + 40]
    assert history.drop_blocks_below(window_slots + 41) == window_slots + 40
    assert (history.blocks, history.lowest_slot) == ({}, None)


def test_a_copy_without_a_root_of_a_recorded_message_is_not_evidence() -> None:
    """The same (source, target), or slot, again without its root makes the root unknown (ADDED); with another
    known root it is a double vote or proposal (CONFLICT): only two known, different roots prove a slashing."""
    history = ValidatorHistory()
    history.add_attestation(3, 4, ROOT_A)
    assert history.add_attestation(3, 4, None) is MergeOutcome.ADDED
    other = ValidatorHistory()
    other.add_attestation(3, 4, ROOT_A)
    assert other.add_attestation(3, 4, ROOT_B) is MergeOutcome.CONFLICT
    blocks = ValidatorHistory()
    blocks.add_block(7, ROOT_A)
    assert blocks.add_block(7, None) is MergeOutcome.ADDED
    assert blocks.add_block(7, ROOT_B) is MergeOutcome.UNCHANGED  # already unknown: nothing more to learn
    proposals = ValidatorHistory()
    proposals.add_block(7, ROOT_A)
    assert proposals.add_block(7, ROOT_B) is MergeOutcome.CONFLICT
