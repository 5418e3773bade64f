"""Exhaustive agreement with the brute-force oracle over small epoch ranges, as Lighthouse's slashing tests do.

Histories are built through `add_attestation` and may be slashable (source > target, two votes at one target),
as imported data can be. Each is checked against every candidate in the range, with a root that matches the
recorded one and one that does not.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import combinations_with_replacement

import pytest

from sidecar.history import ValidatorHistory
from sidecar.rules import check_attestation, check_block

from .rules_oracle import Attestation, Block, Floors, Recorded, attestation_reason, block_reason
from .rules_support import FRESH_ROOT, ROOT_A, ROOT_B, ZERO_ROOT

EPOCHS = range(8)
# Every (source, target) in range, source > target included, ordered by target so that a history recorded in
# combination order grows by appends and one recorded in reverse grows by inserts at the front.
PAIRS = [(source, target) for target in EPOCHS for source in EPOCHS]
# Roots of the records, chosen per history in rotation: all known and equal (identical duplicates merge), and
# mixes of known, other and unknown (duplicates at one (source, target) become unknown).
ROOT_PATTERNS = [(ROOT_A, ROOT_A, ROOT_A), (ROOT_A, None, ROOT_B), (None, ROOT_B, ROOT_A)]
# Insertion orders, also in rotation: as enumerated (appends), reversed (front inserts), middle last.
ORDERS = [(0, 1, 2), (2, 1, 0), (0, 2, 1)]
CANDIDATES = [(source, target, root) for source in EPOCHS for target in EPOCHS for root in (ROOT_A, ROOT_B)]


def histories(size: int) -> Iterator[list[Attestation]]:
    for index, pairs in enumerate(combinations_with_replacement(PAIRS, size)):
        roots = ROOT_PATTERNS[index % len(ROOT_PATTERNS)]
        order = [i for i in ORDERS[index // len(ROOT_PATTERNS) % len(ORDERS)] if i < size]
        yield [Attestation(*pairs[i], roots[i]) for i in order]


def record(attestations: Sequence[Attestation]) -> ValidatorHistory:
    history = ValidatorHistory()
    for a in attestations:
        history.add_attestation(a.source, a.target, a.root)
    return history


@pytest.mark.parametrize("size", [0, 1, 2, 3])
def test_every_small_history_against_every_candidate(size: int) -> None:
    mismatches = []
    count = 0
    for attestations in histories(size):
        count += 1
        history = record(attestations)
        recorded = Recorded(attestations=attestations)
        for source, target, root in CANDIDATES:
            got = check_attestation(history, source, target, root).reason
            expected = attestation_reason(recorded, source, target, root)
            if got is not expected:
                mismatches.append((attestations, (source, target, root[:1]), expected.name, got.name))
        if len(mismatches) >= 10:
            break
    assert not mismatches, "\n".join(map(str, mismatches))
    assert count == len(list(combinations_with_replacement(PAIRS, size)))


# Every root variant at once is affordable on a smaller range: records over epochs 0..3 with a known, a zero or an
# unknown root, against candidates with each of those known roots and a fresh one.
SMALL_EPOCHS = range(4)
SMALL_RECORDS = [
    Attestation(source, target, root)
    for source in SMALL_EPOCHS
    for target in SMALL_EPOCHS
    for root in (ROOT_A, ZERO_ROOT, None)
]
SMALL_CANDIDATES = [
    (source, target, root)
    for source in SMALL_EPOCHS
    for target in SMALL_EPOCHS
    for root in (ROOT_A, ZERO_ROOT, FRESH_ROOT)
]


def test_every_root_combination_on_small_epochs() -> None:
    mismatches = []
    for size in range(4):
        for index, combination in enumerate(combinations_with_replacement(SMALL_RECORDS, size)):
            attestations = list(combination) if index % 2 else list(reversed(combination))
            history = record(attestations)
            recorded = Recorded(attestations=attestations)
            for source, target, root in SMALL_CANDIDATES:
                got = check_attestation(history, source, target, root).reason
                expected = attestation_reason(recorded, source, target, root)
                if got is not expected:
                    mismatches.append((attestations, (source, target, root[:1]), expected.name, got.name))
    assert not mismatches[:10], "\n".join(map(str, mismatches[:10]))


SLOTS = range(6)
BLOCK_RECORDS = [Block(slot, root) for slot in SLOTS for root in (ROOT_A, ZERO_ROOT, None)]
BLOCK_CANDIDATES = [(slot, root) for slot in range(7) for root in (ROOT_A, ZERO_ROOT, FRESH_ROOT)]


@pytest.mark.parametrize("slot_floor", [-1, 0, 3])
def test_every_small_block_history_against_every_candidate(slot_floor: int) -> None:
    mismatches = []
    for size in range(4):
        for combination in combinations_with_replacement(BLOCK_RECORDS, size):
            history = ValidatorHistory()
            for b in reversed(combination):
                history.add_block(b.slot, b.root)
            history.raise_floors(slot_floor, 0, -1)
            recorded = Recorded(blocks=list(combination), floors=Floors(slot=slot_floor))
            for slot, root in BLOCK_CANDIDATES:
                got = check_block(history, slot, root).reason
                expected = block_reason(recorded, slot, root)
                if got is not expected:
                    mismatches.append((combination, (slot, root[:1]), expected.name, got.name))
    assert not mismatches[:10], "\n".join(map(str, mismatches[:10]))
