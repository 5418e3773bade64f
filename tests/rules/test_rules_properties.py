"""Hypothesis against the brute-force oracle: random imported histories decide exactly as the oracle does,
histories built only from allowed decisions stay free of slashable pairs, and pruning only ever adds refusals.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from sidecar.history import PRUNE_SLACK_EPOCHS, MergeOutcome, ValidatorHistory
from sidecar.rules import Reason, check_attestation, check_block

from .rules_oracle import (
    Attestation,
    Block,
    Floors,
    Recorded,
    attestation_reason,
    block_reason,
    double_proposals,
    slashable_attestation_pairs,
)
from .rules_support import (
    FRESH_ROOT,
    ROOT_A,
    ROOT_B,
    as_stored,
    assert_decides_like_oracle,
    assert_never_allows_more,
    attestation_candidates,
    build_history,
    candidate_sequences,
    floors,
    imported_histories,
    recorded_from,
)

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


# ------------------------------------------------------------------------------ imported histories vs oracle


@PROPERTY_SETTINGS
@given(imported_histories())
def test_imported_history_decides_like_the_oracle(drawn: tuple[Recorded, int]) -> None:
    recorded, floors_after = drawn
    assert_decides_like_oracle(build_history(recorded, floors_after), as_stored(recorded, floors_after))


def test_the_grid_reaches_every_verdict_class() -> None:
    """A witness that the grid is not too coarse: it must contain the one allowed vote between two records."""
    recorded = Recorded(attestations=[Attestation(10, 20, ROOT_A), Attestation(30, 40, ROOT_A)])
    grid = attestation_candidates(recorded)
    allowed = {(s, t) for s, t, root in grid if attestation_reason(recorded, s, t, root) is Reason.ALLOWED_NEW}
    assert {(20, 21), (20, 29), (29, 30), (40, 41), (41, 42)} <= allowed
    assert (42, 41) in {(s, t) for s, t, _ in grid}


# -------------------------------------------------------------------- allowed-only histories stay safe


def decode(step: tuple[str, int, int, bytes], last_slot: int, last_target: int) -> tuple[int, int]:
    kind, first, second, _ = step
    if kind == "block":
        return max(0, last_slot + first), 0
    target = max(0, last_target + second)
    return max(0, target - first), target


@PROPERTY_SETTINGS
@given(candidate_sequences(), floors(max_slot=200, max_epoch=20))
def test_history_of_allowed_decisions_is_never_slashable(
    steps: Sequence[tuple[str, int, int, bytes]], start_floors: Floors
) -> None:
    history = ValidatorHistory()
    history.raise_floors(start_floors.slot, start_floors.source, start_floors.target)
    accepted = Recorded(floors=start_floors)
    last_slot = last_target = 0
    for step in steps:
        kind, root = step[0], step[3]
        first, second = decode(step, last_slot, last_target)
        if kind == "block":
            last_slot = first
            decision = check_block(history, first, root)
            assert decision.reason is block_reason(accepted, first, root)
            if decision.allowed:
                outcome = history.add_block(first, root)
                accepted.blocks.append(Block(first, root))
        else:
            last_target = second
            decision = check_attestation(history, first, second, root)
            assert decision.reason is attestation_reason(accepted, first, second, root)
            if decision.allowed:
                outcome = history.add_attestation(first, second, root)
                accepted.attestations.append(Attestation(first, second, root))
        if decision.allowed:
            expected = MergeOutcome.ADDED if decision.records_new_message else MergeOutcome.UNCHANGED
            assert outcome is expected, f"{step}: {decision.reason.name} recorded as {outcome.name}"

    assert not slashable_attestation_pairs(accepted.attestations)
    assert not double_proposals(accepted.blocks)
    contents = recorded_from(history)
    assert set(contents.attestations) == set(accepted.attestations)
    assert set(contents.blocks) == set(accepted.blocks)
    assert not slashable_attestation_pairs(contents.attestations)
    assert all(a.root is not None for a in contents.attestations)
    assert all(b.root is not None for b in contents.blocks)


def assert_indexes_exact(history: ValidatorHistory) -> None:
    """The search indexes equal a recomputation from the arrays they index (pruning patches them in place)."""
    sources = list(history.sources)
    assert list(history._prefix_max_source) == list(accumulate(sources, max))
    assert list(history._suffix_min_source) == list(accumulate(reversed(sources), min))[::-1]


# -------------------------------------------------------------------------------------------------- pruning

# `prune` after every add, or the half that matches what was added (as the store does on its hot path).
PRUNERS = ["prune", "split"]


def prune_after_add(history: ValidatorHistory, kind: str, window: int, pruner: str) -> bool:
    if pruner == "prune":
        return history.prune(window)
    if kind == "block":
        return history.prune_blocks(window)
    return history.prune_attestations(window)


@PROPERTY_SETTINGS
@given(
    candidate_sequences(min_length=16, max_length=40),
    st.integers(0, 4),
    st.sampled_from(PRUNERS),
)
def test_pruned_history_never_allows_what_the_unpruned_oracle_refuses(
    steps: Sequence[tuple[str, int, int, bytes]], window: int, pruner: str
) -> None:
    """The pruned history decides (as the store would); every decision and the final state are compared with
    the oracle over everything ever recorded."""
    pruned = ValidatorHistory()
    everything = Recorded()
    last_slot = last_target = 0
    pruned_anything = False
    for step in steps:
        kind, root = step[0], step[3]
        first, second = decode(step, last_slot, last_target)
        if kind == "block":
            last_slot = first
            decision = check_block(pruned, first, root)
            if decision.allowed:
                assert block_reason(everything, first, root).allows, f"pruned history allows block {first}"
                pruned.add_block(first, root)
                everything.blocks.append(Block(first, root))
        else:
            last_target = second
            decision = check_attestation(pruned, first, second, root)
            if decision.allowed:
                assert attestation_reason(everything, first, second, root).allows, (
                    f"pruned history allows attestation ({first}, {second})"
                )
                if decision.records_new_message and not pruned.add_attestation_if_newest(first, second, root):
                    pruned.add_attestation(first, second, root)  # as the store records it
                everything.attestations.append(Attestation(first, second, root))
        if decision.allowed:
            pruned_anything |= prune_after_add(pruned, kind, window, pruner)
            assert_indexes_exact(pruned)

    event("pruned" if pruned_anything else "never pruned")
    assert_never_allows_more(pruned, everything, "pruned history")
    # The indexes that survive pruning are exact for what remains.
    assert_decides_like_oracle(pruned, recorded_from(pruned), everything)


def import_pruning_after_each_add(
    recorded: Recorded, floors_after: int, window: int, pruner: str
) -> ValidatorHistory:
    history = ValidatorHistory()
    pruned_anything = False
    for b in recorded.blocks:
        history.add_block(b.slot, b.root)
        pruned_anything |= prune_after_add(history, "block", window, pruner)
    for index, a in enumerate(recorded.attestations):
        if index == floors_after:
            history.raise_floors(recorded.floors.slot, recorded.floors.source, recorded.floors.target)
        history.add_attestation(a.source, a.target, a.root)
        pruned_anything |= prune_after_add(history, "attestation", window, pruner)
    history.raise_floors(recorded.floors.slot, recorded.floors.source, recorded.floors.target)
    event("pruned" if pruned_anything else "never pruned")
    return history


SLASHABLE_IMPORTS = imported_histories(max_records=12, max_epoch=90, max_slot=1500)


@PROPERTY_SETTINGS
@given(SLASHABLE_IMPORTS, st.integers(0, 4), st.sampled_from(PRUNERS))
def test_pruning_while_importing_in_order_never_allows_more(
    drawn: tuple[Recorded, int], window: int, pruner: str
) -> None:
    """A slashable import recorded oldest first, pruned after each add (any order: the next test)."""
    drawn_recorded, floors_after = drawn
    recorded = Recorded(
        sorted(drawn_recorded.blocks, key=lambda b: b.slot),
        sorted(drawn_recorded.attestations, key=lambda a: a.target),
        drawn_recorded.floors,
    )

    pruned = import_pruning_after_each_add(recorded, floors_after, window, pruner)

    assert_never_allows_more(pruned, recorded, "pruned import")
    # The indexes that survive pruning are exact for what remains.
    assert_decides_like_oracle(pruned, recorded_from(pruned), recorded)


PRUNED_THEN_OLDER_IMPORT = (
    "history.py: a record added at or below the floors after pruning (an older file imported later) is kept "
    "with its root, and the rules check repeats before floors, so it becomes a repeat that the unpruned history "
    "refuses as a double vote / double proposal; see test_older_import_after_pruning_is_no_repeat"
)


@PROPERTY_SETTINGS
@example(
    drawn=(
        Recorded(
            attestations=[
                Attestation(0, t, root) for t, root in [(0, ROOT_A), (1, ROOT_B), (17, ROOT_A), (1, ROOT_A)]
            ]
        ),
        0,
    ),
    window=0,
    pruner="prune",
)
@given(SLASHABLE_IMPORTS, st.integers(0, 4), st.sampled_from(PRUNERS))
def test_pruning_while_importing_in_any_order_never_allows_more(
    drawn: tuple[Recorded, int], window: int, pruner: str
) -> None:
    recorded, floors_after = drawn

    pruned = import_pruning_after_each_add(recorded, floors_after, window, pruner)

    assert_never_allows_more(pruned, recorded, "pruned import")


@pytest.mark.parametrize("kind", ["attestation", "block"])
def test_older_import_after_pruning_is_no_repeat(kind: str) -> None:
    """Minimal reproduction, pruning after every add as the store does. Unpruned, the history holds two messages
    at one target (slot) and refuses both."""
    history = ValidatorHistory()
    if kind == "attestation":
        for target, root in [(0, ROOT_A), (1, ROOT_B), (17, ROOT_A)]:
            history.add_attestation(0, target, root)
        assert history.prune(0)  # drops (0, 0, A) and (0, 1, B); floors: source 0, target 1
        history.add_attestation(0, 1, ROOT_A)  # an older interchange file, imported later
        assert not history.prune(0)  # 1 + 0 + PRUNE_SLACK_EPOCHS is not below 17: (0, 1, A) stays
        decision = check_attestation(history, 0, 1, ROOT_A)
    else:
        for slot, root in [(0, ROOT_A), (1, ROOT_B), (513, ROOT_A)]:
            history.add_block(slot, root)
        assert history.prune(0)  # drops slots 0 and 1; slot floor 1
        history.add_block(1, ROOT_A)
        assert not history.prune(0)
        decision = check_block(history, 1, ROOT_A)

    assert not decision.allowed, decision  # got ALLOWED_REPEAT; unpruned: DOUBLE_VOTE / DOUBLE_PROPOSAL


@pytest.mark.parametrize("pruner", PRUNERS)
def test_pruning_drops_old_records_and_raises_floors_to_the_newest_dropped(pruner: str) -> None:
    """A fixed case, so that the properties above are known to exercise pruning at all."""
    history = ValidatorHistory()
    for source, target in [(0, 1), (5, 3), (2, 4), (4, 30), (29, 31)]:  # (5, 3): an imported source > target
        history.add_attestation(source, target, ROOT_A)
    for slot in [1, 40, 2 * 32 + 600]:
        history.add_block(slot, ROOT_A)

    assert prune_after_add(history, "attestation", 2, pruner)
    assert prune_after_add(history, "block", 2, pruner) is (pruner == "split")

    assert [(a.source_epoch, a.target_epoch) for a in history.attestations()] == [(4, 30), (29, 31)]
    assert sorted(history.blocks) == [664]
    assert (history.slot_floor, history.source_epoch_floor, history.target_epoch_floor) == (40, 5, 4)
    assert check_attestation(history, 4, 29, FRESH_ROOT).reason is Reason.SOURCE_EPOCH_BELOW_LOWER_BOUND
    assert check_attestation(history, 29, 32, FRESH_ROOT).reason is Reason.ALLOWED_NEW
    assert check_block(history, 41, FRESH_ROOT).reason is Reason.SLOT_AT_OR_BELOW_LOWER_BOUND
    assert check_block(history, 665, FRESH_ROOT).reason is Reason.ALLOWED_NEW


def test_pruning_waits_for_the_slack() -> None:
    history = ValidatorHistory()
    history.add_attestation(0, 1, ROOT_A)
    history.add_attestation(1, 1 + 1 + PRUNE_SLACK_EPOCHS, ROOT_A)  # exactly window + slack behind: not yet
    assert not history.prune(1)
    history.add_attestation(2, 1 + 1 + PRUNE_SLACK_EPOCHS + 1, ROOT_A)
    assert history.prune(1)
    assert [a.target_epoch for a in history.attestations()] == [18, 19]


def test_a_record_below_the_floors_gets_one_outcome_wherever_it_lands() -> None:
    appended = ValidatorHistory()
    appended.raise_floors(-1, 0, 20)
    inserted = ValidatorHistory()
    inserted.raise_floors(-1, 0, 20)
    inserted.add_attestation(25, 30, ROOT_A)  # unrelated: neither surrounds nor shares a target with (12, 15)

    # got CONFLICT (appended) and ADDED (inserted)
    assert appended.add_attestation(12, 15, ROOT_A) is inserted.add_attestation(12, 15, ROOT_A)
