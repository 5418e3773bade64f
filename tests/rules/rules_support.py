"""Plumbing shared by the rules tests: roots, building a `ValidatorHistory` from plain records, candidate grids,
and Hypothesis strategies for histories.

Candidate grids rest on one observation: every rule compares a candidate's slot, source or target with a recorded
value or a floor (<, <= or ==), or compares source with target. So the verdict is constant between consecutive
"critical" values, and the values c - 1, c, c + 1 around each critical c, plus 0 and max + 2, reach every
distinct verdict, including both orders of source and target inside one gap. Checking that grid is as good as
checking every epoch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from itertools import product

from hypothesis import strategies as st

from sidecar.history import ValidatorHistory
from sidecar.rules import check_attestation, check_block

from .rules_oracle import Attestation, Block, Floors, Recorded, attestation_reason, block_reason

ROOT_A = bytes([0xAA]) * 32
ROOT_B = bytes([0xBB]) * 32
ZERO_ROOT = bytes(32)
# Never recorded by any test or strategy: a candidate signed with it is never a repeat.
FRESH_ROOT = bytes([0xFF]) * 32

AttestationCandidate = tuple[int, int, bytes]
BlockCandidate = tuple[int, bytes]


def build_history(recorded: Recorded, floors_after: int = 0) -> ValidatorHistory:
    """Records `recorded` through the public `add_*` methods, in list order, raising the floors after the first
    `floors_after` attestations (the rules must not care when floors arrive)."""
    history = ValidatorHistory()
    for block in recorded.blocks:
        history.add_block(block.slot, block.root)
    for index, attestation in enumerate(recorded.attestations):
        if index == floors_after:
            history.raise_floors(recorded.floors.slot, recorded.floors.source, recorded.floors.target)
        history.add_attestation(attestation.source, attestation.target, attestation.root)
    history.raise_floors(recorded.floors.slot, recorded.floors.source, recorded.floors.target)
    return history


def as_stored(recorded: Recorded, floors_after: int = 0) -> Recorded:
    """`recorded` as `build_history` stores it: an attestation added once the floors are up, at or below them,
    keeps no signing root (the floors refuse it anyway, and a known root would make its repeat allowed), unless
    it is the very message already stored with that root, which it leaves as it is."""
    floors = recorded.floors
    attestations: list[Attestation] = []
    for index, a in enumerate(recorded.attestations):
        below = index >= floors_after and (a.source < floors.source or a.target <= floors.target)
        attestations.append(Attestation(a.source, a.target, None) if below and a not in attestations else a)
    return Recorded(list(recorded.blocks), attestations, floors)


def recorded_from(history: ValidatorHistory) -> Recorded:
    """What `history` holds, as plain records (used to build candidate grids and to compare contents)."""
    return Recorded(
        blocks=[Block(slot, root) for slot, root in sorted(history.blocks.items())],
        attestations=[Attestation(a.source_epoch, a.target_epoch, a.signing_root) for a in history.attestations()],
        floors=Floors(history.slot_floor, history.source_epoch_floor, history.target_epoch_floor),
    )


def eip3076_document(entries: Mapping[bytes, Recorded], genesis_validators_root: bytes = bytes(32)) -> bytes:
    """An EIP-3076 v5 document holding each key's records (floors are not part of the format)."""

    def root(value: bytes | None) -> dict[str, str]:
        return {} if value is None else {"signing_root": "0x" + value.hex()}

    return json.dumps(
        {
            "metadata": {
                "interchange_format_version": "5",
                "genesis_validators_root": "0x" + genesis_validators_root.hex(),
            },
            "data": [
                {
                    "pubkey": "0x" + key.hex(),
                    "signed_blocks": [{"slot": str(b.slot), **root(b.root)} for b in records.blocks],
                    "signed_attestations": [
                        {"source_epoch": str(a.source), "target_epoch": str(a.target), **root(a.root)}
                        for a in records.attestations
                    ],
                }
                for key, records in entries.items()
            ],
        }
    ).encode()


def reimport(history: ValidatorHistory) -> ValidatorHistory:
    """A fresh history (no floors) holding what `history` exports in EIP-3076 form."""
    imported = ValidatorHistory()
    for slot, root in history.export_blocks():
        imported.add_block(slot, root)
    for attestation in history.export_attestations()[0]:
        imported.add_attestation(attestation.source_epoch, attestation.target_epoch, attestation.signing_root)
    return imported


def _grid(critical: Iterable[int]) -> list[int]:
    values = {0}
    highest = 0
    for value in critical:
        values.update((value - 1, value, value + 1))
        highest = max(highest, value)
    values.add(highest + 2)
    return sorted(value for value in values if value >= 0)


def attestation_candidates(*histories: Recorded) -> list[AttestationCandidate]:
    """Every distinct attestation verdict class for these histories: each (source, target) on the grid with a
    fresh root, plus each recorded known root at its own (source, target)."""
    epochs = _grid(
        epoch
        for recorded in histories
        for epoch in (
            recorded.floors.source,
            recorded.floors.target,
            *(a.source for a in recorded.attestations),
            *(a.target for a in recorded.attestations),
        )
    )
    known: dict[tuple[int, int], set[bytes]] = {}
    for recorded in histories:
        for a in recorded.attestations:
            if a.root is not None:
                known.setdefault((a.source, a.target), set()).add(a.root)
    return [
        (source, target, root)
        for source, target in product(epochs, epochs)
        for root in (FRESH_ROOT, *sorted(known.get((source, target), ())))
    ]


def block_candidates(*histories: Recorded) -> list[BlockCandidate]:
    slots = _grid(
        slot for recorded in histories for slot in (recorded.floors.slot, *(b.slot for b in recorded.blocks))
    )
    known: dict[int, set[bytes]] = {}
    for recorded in histories:
        for b in recorded.blocks:
            if b.root is not None:
                known.setdefault(b.slot, set()).add(b.root)
    return [(slot, root) for slot in slots for root in (FRESH_ROOT, *sorted(known.get(slot, ())))]


def assert_decides_like_oracle(history: ValidatorHistory, recorded: Recorded, *grid_from: Recorded) -> None:
    """`history` gives the oracle's reason for `recorded` on every candidate of the grid."""
    grids = (recorded, *grid_from)
    for slot, root in block_candidates(*grids):
        got = check_block(history, slot, root).reason
        expected = block_reason(recorded, slot, root)
        assert got is expected, f"block ({slot}, {root[:1]!r}): got {got.name}, not {expected.name}"
    for source, target, root in attestation_candidates(*grids):
        got = check_attestation(history, source, target, root).reason
        expected = attestation_reason(recorded, source, target, root)
        assert got is expected, (
            f"attestation ({source}, {target}, {root[:1]!r}): got {got.name}, not {expected.name}"
        )


def assert_never_allows_more(subject: ValidatorHistory, reference: Recorded, what: str) -> None:
    """Every candidate the oracle refuses for `reference`, `subject` refuses too (it may refuse more)."""
    grids = (reference, recorded_from(subject))
    for slot, root in block_candidates(*grids):
        if not block_reason(reference, slot, root).allows:
            got = check_block(subject, slot, root)
            assert not got.allowed, f"{what} allows block ({slot}, {root[:1]!r}) that the oracle refuses"
    for source, target, root in attestation_candidates(*grids):
        if not attestation_reason(reference, source, target, root).allows:
            got = check_attestation(subject, source, target, root)
            assert not got.allowed, (
                f"{what} allows attestation ({source}, {target}, {root[:1]!r}) that the oracle refuses"
            )


# ---------------------------------------------------------------------------------------------- strategies

recorded_roots = st.sampled_from([ROOT_A, ROOT_B, ZERO_ROOT, None])


def attestations(max_epoch: int = 40) -> st.SearchStrategy[Attestation]:
    """Mostly well-formed votes (source <= target, short spans), some with source > target as imports allow."""
    epochs = st.integers(0, max_epoch)
    well_formed = st.builds(
        lambda source, span, root: Attestation(source, source + span, root),
        epochs,
        st.integers(0, 6),
        recorded_roots,
    )
    anything = st.builds(Attestation, epochs, epochs, recorded_roots)
    return st.one_of(well_formed, well_formed, anything)


def blocks(max_slot: int = 60) -> st.SearchStrategy[Block]:
    return st.builds(Block, st.integers(0, max_slot), recorded_roots)


def floors(max_slot: int = 60, max_epoch: int = 40) -> st.SearchStrategy[Floors]:
    return st.one_of(
        st.just(Floors()),
        st.builds(
            Floors,
            slot=st.integers(-1, max_slot),
            source=st.integers(0, max_epoch),
            target=st.integers(-1, max_epoch),
        ),
    )


@st.composite
def imported_histories(
    draw: st.DrawFn, max_records: int = 8, max_epoch: int = 40, max_slot: int = 60
) -> tuple[Recorded, int]:
    """Any history an import may produce (slashable ones included), in a random insertion order, and where
    in that order the floors are raised."""
    # Small ranges make collisions (same slot, same target, same (source, target)) common.
    recorded = Recorded(
        blocks=draw(st.lists(blocks(max_slot), max_size=max_records)),
        attestations=draw(st.lists(attestations(max_epoch), max_size=max_records)),
        floors=draw(floors(max_slot, max_epoch)),
    )
    return recorded, draw(st.integers(0, len(recorded.attestations)))


def candidate_sequences(
    min_length: int = 0, max_length: int = 40
) -> st.SearchStrategy[Sequence[tuple[str, int, int, bytes]]]:
    """Signing requests that mostly move forward, like a validator's: ("block", slot, 0, root) or
    ("attestation", source, target, root), with offsets relative to the previous request decoded by the test."""
    step = st.one_of(
        st.tuples(st.just("block"), st.integers(-40, 300), st.just(0), st.sampled_from([ROOT_A, ZERO_ROOT])),
        st.tuples(
            st.just("attestation"),
            st.integers(-2, 6),  # target - source
            st.integers(-3, 12),  # target advance
            st.sampled_from([ROOT_A, ROOT_B, ZERO_ROOT]),
        ),
    )
    return st.lists(step, min_size=min_length, max_size=max_length)
