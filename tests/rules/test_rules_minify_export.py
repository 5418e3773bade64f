"""`minify` and the EIP-3076 export: both may lose detail, never protection.

A minified history must refuse everything the full one refuses, and decide exactly like the EIP-3076 "minimal"
history (one block at the highest slot, one attestation at the highest source and target, unknown roots). An
exported history, re-imported with no floors, must refuse everything the original refuses, and re-exporting it
must give the same lists.
"""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings

from sidecar.history import ValidatorHistory
from sidecar.rules import Reason, check_attestation, check_block

from .rules_oracle import Attestation, Block, Floors, Recorded, attestation_reason, block_reason
from .rules_support import (
    FRESH_ROOT,
    ROOT_A,
    ROOT_B,
    as_stored,
    assert_decides_like_oracle,
    assert_never_allows_more,
    build_history,
    imported_histories,
    recorded_from,
    reimport,
)

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


def minimal(recorded: Recorded) -> Recorded:
    """The EIP-3076 "minimal" form of a history: only the highest slot, source and target survive."""
    return Recorded(
        blocks=[Block(max(b.slot for b in recorded.blocks), None)] if recorded.blocks else [],
        attestations=(
            [
                Attestation(
                    max(a.source for a in recorded.attestations),
                    max(a.target for a in recorded.attestations),
                    None,
                )
            ]
            if recorded.attestations
            else []
        ),
        floors=recorded.floors,
    )


@PROPERTY_SETTINGS
@given(imported_histories())
def test_minified_history_refuses_everything_the_full_one_refuses(drawn: tuple[Recorded, int]) -> None:
    recorded, floors_after = drawn
    history = build_history(recorded, floors_after)

    history.minify()

    assert_never_allows_more(history, recorded, "minified history")


@PROPERTY_SETTINGS
@given(imported_histories())
def test_minified_history_is_the_eip_3076_minimal_history(drawn: tuple[Recorded, int]) -> None:
    recorded, floors_after = drawn
    history = build_history(recorded, floors_after)

    history.minify()

    stored = as_stored(recorded, floors_after)
    expected = minimal(stored)
    contents = recorded_from(history)
    assert contents.blocks == expected.blocks
    assert contents.attestations == expected.attestations
    # minify raises the floors to the minimal records (so that older records added later cannot lower the
    # bounds); that refuses exactly what those records refuse.
    floors = recorded.floors
    assert contents.floors == Floors(
        max([floors.slot, *(b.slot for b in expected.blocks)]),
        max([floors.source, *(a.source for a in expected.attestations)]),
        max([floors.target, *(a.target for a in expected.attestations)]),
    )
    # Not only the contents: the indexes rebuilt by minify decide exactly like the minimal history.
    assert_decides_like_oracle(history, expected, stored)


def test_minify_on_an_empty_history_changes_nothing() -> None:
    history = ValidatorHistory()
    history.minify()
    assert recorded_from(history) == Recorded()


@pytest.mark.parametrize("kind", ["attestation", "block"])
def test_older_import_after_minify_never_allows_more(kind: str) -> None:
    history = ValidatorHistory()
    if kind == "attestation":
        full = Recorded(
            attestations=[Attestation(1, 3, ROOT_A), Attestation(2, 5, ROOT_A), Attestation(0, 1, ROOT_A)]
        )
        history.add_attestation(1, 3, ROOT_A)
        history.add_attestation(2, 5, ROOT_A)
        history.minify()  # (2, 5, unknown)
        history.add_attestation(0, 1, ROOT_A)
        candidate = (0, 4, FRESH_ROOT)  # surrounds the dropped (1, 3)
        assert attestation_reason(full, *candidate) is Reason.SURROUNDS_RECORDED_VOTE
        decision = check_attestation(history, *candidate)
    else:
        full = Recorded(blocks=[Block(3, ROOT_A), Block(5, ROOT_A), Block(1, ROOT_A)])
        history.add_block(3, ROOT_A)
        history.add_block(5, ROOT_A)
        history.minify()  # slot 5, unknown root
        history.add_block(1, ROOT_A)
        assert block_reason(full, 3, FRESH_ROOT) is Reason.DOUBLE_PROPOSAL
        decision = check_block(history, 3, FRESH_ROOT)

    assert not decision.allowed, decision  # got ALLOWED_NEW


@PROPERTY_SETTINGS
@given(imported_histories())
def test_reimported_export_never_allows_more_and_round_trips(drawn: tuple[Recorded, int]) -> None:
    recorded, floors_after = drawn
    original = build_history(recorded, floors_after)
    exported_blocks = original.export_blocks()
    exported_attestations, minified = original.export_attestations()
    event("attestations minified to carry the floors" if minified else "attestations exported as recorded")

    imported = reimport(original)

    assert_never_allows_more(imported, recorded, "re-imported export")
    assert imported.export_blocks() == exported_blocks
    assert imported.export_attestations() == (exported_attestations, False)
    if recorded.floors == Floors():
        # With nothing to encode beyond the records, the export is lossless.
        assert_decides_like_oracle(imported, recorded)


def test_export_encodes_floors_above_every_record() -> None:
    history = build_history(
        Recorded(
            blocks=[Block(3, ROOT_A)],
            attestations=[Attestation(1, 2, ROOT_A)],
            floors=Floors(slot=10, source=4, target=6),
        )
    )
    blocks = history.export_blocks()
    attestations, minified = history.export_attestations()

    assert blocks == [(10, None)]
    assert [(a.source_epoch, a.target_epoch, a.signing_root) for a in attestations] == [(4, 6, None)]
    assert not minified


def test_export_drops_records_below_the_floors_and_keeps_those_at_them() -> None:
    history = build_history(
        Recorded(
            blocks=[Block(3, ROOT_A), Block(10, ROOT_A), Block(12, ROOT_B)],
            attestations=[Attestation(1, 2, ROOT_A), Attestation(4, 6, ROOT_A), Attestation(5, 8, ROOT_B)],
            floors=Floors(slot=10, source=4, target=6),
        )
    )
    attestations, minified = history.export_attestations()

    # The records at the floors carry them, with the roots they keep (the vote at the floors arrived after them
    # and kept none): an importer's bounds and repeats are exactly ours.
    assert history.export_blocks() == [(10, ROOT_A), (12, ROOT_B)]
    assert [(a.source_epoch, a.target_epoch, a.signing_root) for a in attestations] == [
        (4, 6, None),
        (5, 8, ROOT_B),
    ]
    assert not minified


def test_export_minifies_when_a_record_straddles_the_floors() -> None:
    # (2, 9) has a target above the target floor but a source below the source floor.
    history = build_history(
        Recorded(
            attestations=[Attestation(2, 9, ROOT_A), Attestation(5, 10, ROOT_B)],
            floors=Floors(source=4, target=6),
        )
    )
    attestations, minified = history.export_attestations()

    assert minified
    assert [(a.source_epoch, a.target_epoch, a.signing_root) for a in attestations] == [(5, 10, None)]


def exported(floors: Floors, votes: list[tuple[int, int]]) -> tuple[list[tuple[int, int, bytes | None]], bool]:
    """What `export_attestations` gives for `votes` (root A, recorded before the floors) under `floors`."""
    history = build_history(
        Recorded(attestations=[Attestation(s, t, ROOT_A) for s, t in votes], floors=floors), 99
    )
    records, minified = history.export_attestations()
    return [(r.source_epoch, r.target_epoch, r.signing_root) for r in records], minified


A = ROOT_A
# One row per boundary of the export's choice: keep the records as they are, lead them with a vote at the floors,
# or (a record older than one floor only) fall back to one vote at the highest source and target.
EXPORT_CASES = [
    # A lone vote at the target floor with a source at or above the source floor is an import's lowest vote: kept.
    ("lone vote at the target floor", Floors(-1, 2, 5), [(3, 5)], ([(3, 5, A)], False)),
    ("vote at the source floor", Floors(-1, 2, 5), [(2, 6)], ([(2, 6, A)], False)),
    # Two votes at the target floor are double votes the importer would not see: fall back.
    ("two votes at the target floor", Floors(-1, 2, 5), [(3, 5), (4, 5)], ([(4, 5, None)], True)),
    # Below the source floor at the target floor, or at the source floor below the target floor: protected by
    # both floors, dropped; the vote at the floors leads.
    ("dropped at the target floor", Floors(-1, 3, 5), [(2, 5), (4, 7)], ([(3, 5, None), (4, 7, A)], False)),
    ("dropped at the source floor", Floors(-1, 3, 5), [(3, 4), (4, 7)], ([(3, 5, None), (4, 7, A)], False)),
    ("equal floors", Floors(-1, 4, 4), [(1, 2), (5, 8)], ([(4, 4, None), (5, 8, A)], False)),
    ("no source floor", Floors(-1, 0, 5), [(0, 3), (1, 7)], ([(0, 5, None), (1, 7, A)], False)),
    # A source floor above the target floor (repair, or pruned slashable data) has no vote at the floors.
    ("source floor above target floor", Floors(-1, 5, 3), [(1, 2), (6, 8)], ([(6, 8, A)], False)),
    ("target floor 0 alone", Floors(-1, 0, 0), [], ([(0, 0, None)], False)),
]


@pytest.mark.parametrize(
    ("floors", "votes", "expected"), [c[1:] for c in EXPORT_CASES], ids=[c[0] for c in EXPORT_CASES]
)
def test_export_at_each_floor_boundary(floors: Floors, votes: list[tuple[int, int]], expected: object) -> None:
    assert exported(floors, votes) == expected
    # Whatever the encoding, the re-imported export refuses everything the history refuses.
    recorded = Recorded(attestations=[Attestation(s, t, ROOT_A) for s, t in votes], floors=floors)
    assert_never_allows_more(reimport(build_history(recorded, 99)), recorded, "re-imported export")
