"""Several imports for one key, with signing in between, against EIP-3076 as written: its conditions hold per
imported file (`rules_oracle.Protection`), not for the minima of the merged history.

Three oracles, each independent of `ValidatorHistory`:

* the scenario of the bug that taught us this (a gap between two imports was signable);
* exhaustive sequences of two and three small files, with signing in between, decided exactly like
  `Protection` in both strategies;
* Hypothesis over the security property itself: a key signed an honest history on several clients in turn, each
  client pruned its oldest records before exporting, and the files are imported in any order. Whatever the
  sidecar then allows must not be slashable against anything the key really signed, including the messages no
  file holds any more (the gap). This oracle does not even know the rules' bounds: only the slashing conditions.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import product

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interchange import SignedAttestation, SignedBlock, ValidatorEntryEnd, ValidatorRecordsPart
from sidecar.history import ValidatorHistory
from sidecar.import_staging import DocumentStaging
from sidecar.rules import Reason, check_attestation, check_block

from .rules_oracle import Attestation, Block, Protection, Recorded
from .rules_support import (
    FRESH_ROOT,
    ROOT_A,
    ROOT_B,
    attestation_candidates,
    block_candidates,
    recorded_from,
    reimport,
)

PUBKEY = bytes(range(48))
NO_LIMIT = 10**9


def import_file(history: ValidatorHistory, file: Recorded, window: int | None, minimal: bool) -> None:
    """One document's records for the key, through the import path: staged (`DocumentStaging`), then merged,
    minified and pruned as the store merges it."""
    staging = DocumentStaging(window, minimal, NO_LIMIT)
    staging.add(
        ValidatorRecordsPart(
            0,
            tuple(SignedBlock(b.slot, b.root) for b in file.blocks),
            tuple(SignedAttestation(a.source, a.target, a.root) for a in file.attestations),
        )
    )
    staging.add(ValidatorEntryEnd(0, PUBKEY))
    [(_, staged)] = staging.finish()
    history.absorb(staged.history)
    if minimal:
        history.minify()
    if window is not None:
        history.prune(window, slack_epochs=0)


def sign_block(history: ValidatorHistory, slot: int, root: bytes) -> Reason:
    reason = check_block(history, slot, root).reason
    if reason is Reason.ALLOWED_NEW:
        history.add_block(slot, root)
    return reason


def sign_attestation(history: ValidatorHistory, source: int, target: int, root: bytes) -> Reason:
    reason = check_attestation(history, source, target, root).reason
    if reason is Reason.ALLOWED_NEW:
        history.add_attestation(source, target, root)
    return reason


def grids(history: ValidatorHistory, protection: Protection) -> tuple[Recorded, ...]:
    return (*protection.files, protection.signed, recorded_from(history))


def disagree(got: Reason, expected: Reason) -> bool:
    """Whether the sidecar's verdict differs from EIP-3076's. Refusals may name another reason (a slot both below
    a file's minimum and taken by an unknown root is one or the other). One difference is by design: a record
    that an import adds below floors another import raised keeps no root (the floors may stand for messages no
    file holds), so the sidecar may refuse the repeat of an old message that EIP-3076 would allow. Refusing more
    is safe; the reverse never is."""
    if got.allows or expected.allows:
        return got is not expected and not (expected is Reason.ALLOWED_REPEAT and not got.allows)
    return False


def mismatches(history: ValidatorHistory, protection: Protection) -> Iterator[str]:
    for slot, root in block_candidates(*grids(history, protection)):
        got, expected = check_block(history, slot, root).reason, protection.block_reason(slot, root)
        if disagree(got, expected):
            yield f"block ({slot}, {root[:1]!r}): got {got.name}, not {expected.name}"
    for source, target, root in attestation_candidates(*grids(history, protection)):
        got = check_attestation(history, source, target, root).reason
        expected = protection.attestation_reason(source, target, root)
        if disagree(got, expected):
            yield f"attestation ({source}, {target}, {root[:1]!r}): got {got.name}, not {expected.name}"


def allowed_beyond(subject: ValidatorHistory, protection: Protection, reference: ValidatorHistory) -> list[str]:
    """Candidates `subject` allows that the oracle refuses (grid from both histories)."""
    found = []
    every = (*grids(reference, protection), recorded_from(subject))
    for slot, root in block_candidates(*every):
        if check_block(subject, slot, root).allowed and not protection.block_reason(slot, root).allows:
            found.append(f"block ({slot}, {root[:1]!r})")
    for source, target, root in attestation_candidates(*every):
        if (
            check_attestation(subject, source, target, root).allowed
            and not protection.attestation_reason(source, target, root).allows
        ):
            found.append(f"attestation ({source}, {target}, {root[:1]!r})")
    return found


# ------------------------------------------------------------------------------------------- the reported bug

LAST_YEAR = Recorded(blocks=[Block(5701, None)], attestations=[Attestation(100, 102, None)])
SINCE = Recorded(blocks=[Block(6739, None)], attestations=[Attestation(126, 127, None)])


@pytest.mark.parametrize("minimal", [False, True])
@pytest.mark.parametrize("window", [None, 64])
@pytest.mark.parametrize("order", ["oldest first", "newest first"])
def test_the_gap_between_two_imports_is_refused(order: str, window: int | None, minimal: bool) -> None:
    history = ValidatorHistory()
    for file in (LAST_YEAR, SINCE) if order == "oldest first" else (SINCE, LAST_YEAR):
        import_file(history, file, window, minimal)

    # Inside the gap: the key may have signed these on the second client before it pruned them.
    assert check_block(history, 5838, FRESH_ROOT).reason is Reason.SLOT_AT_OR_BELOW_LOWER_BOUND
    assert check_attestation(history, 119, 124, FRESH_ROOT).reason is Reason.SOURCE_EPOCH_BELOW_LOWER_BOUND
    assert check_attestation(history, 126, 127, FRESH_ROOT).reason is Reason.DOUBLE_VOTE
    assert check_attestation(history, 126, 126, FRESH_ROOT).reason is Reason.TARGET_EPOCH_AT_OR_BELOW_LOWER_BOUND
    # Above every import: allowed.
    assert check_block(history, 6740, FRESH_ROOT).reason is Reason.ALLOWED_NEW
    assert check_attestation(history, 127, 128, FRESH_ROOT).reason is Reason.ALLOWED_NEW
    assert check_attestation(history, 126, 128, FRESH_ROOT).reason is Reason.ALLOWED_NEW
    # The floors are the newest file's minima and show in what an operator reads.
    assert (history.slot_floor, history.source_epoch_floor, history.target_epoch_floor) == (6739, 126, 127)
    # And they survive an export into a fresh database.
    assert check_block(reimport(history), 5838, FRESH_ROOT).reason is Reason.SLOT_AT_OR_BELOW_LOWER_BOUND
    assert not check_attestation(reimport(history), 119, 124, FRESH_ROOT).allowed


def test_a_repeat_of_a_known_root_stays_allowed_below_the_raised_floors() -> None:
    history = ValidatorHistory()
    import_file(history, Recorded([Block(5701, ROOT_A)], [Attestation(100, 102, ROOT_A)]), None, False)
    import_file(history, Recorded([Block(6739, ROOT_B)], [Attestation(126, 127, ROOT_B)]), None, False)

    assert check_block(history, 5701, ROOT_A).reason is Reason.ALLOWED_REPEAT
    assert check_block(history, 6739, ROOT_B).reason is Reason.ALLOWED_REPEAT
    assert check_attestation(history, 100, 102, ROOT_A).reason is Reason.ALLOWED_REPEAT
    assert check_attestation(history, 126, 127, ROOT_B).reason is Reason.ALLOWED_REPEAT
    assert check_block(history, 5701, ROOT_B).reason is Reason.DOUBLE_PROPOSAL


def test_reimporting_a_file_changes_nothing_but_a_newer_one_raises_the_floors() -> None:
    history = ValidatorHistory()
    first = Recorded([Block(10, ROOT_A)], [Attestation(3, 4, ROOT_A)])
    import_file(history, first, None, False)
    before = history.fingerprint()

    import_file(history, first, None, False)

    assert history.fingerprint() == before  # idempotent: the repeat keeps its root, nothing is raised
    assert check_attestation(history, 3, 4, ROOT_A).reason is Reason.ALLOWED_REPEAT


# ---------------------------------------------------------------------------------------- exhaustive sequences

BLOCK_FILES = [
    Recorded(),
    Recorded(blocks=[Block(1, ROOT_A)]),
    Recorded(blocks=[Block(3, ROOT_A)]),
    Recorded(blocks=[Block(3, None)]),
    Recorded(blocks=[Block(5, ROOT_B)]),
    Recorded(blocks=[Block(2, ROOT_A), Block(4, ROOT_B)]),
]
BLOCK_SIGNINGS = [None, (2, ROOT_B), (4, ROOT_A), (6, ROOT_A)]
ATTESTATION_FILES = [
    Recorded(),
    *(
        Recorded(attestations=[Attestation(source, target, root)])
        for source, target in product(range(4), range(4))
        if source <= target
        for root in (ROOT_A, None)
    ),
    Recorded(attestations=[Attestation(0, 1, ROOT_A), Attestation(2, 3, ROOT_B)]),
    Recorded(attestations=[Attestation(1, 2, ROOT_B), Attestation(1, 3, None)]),
]
ATTESTATION_SIGNINGS = [None, (1, 2, ROOT_B), (2, 4, ROOT_A), (0, 3, ROOT_A), (3, 4, ROOT_B)]


def run_sequence(files: tuple[Recorded, ...], signings: list[object], minimal: bool) -> list[str]:
    """Imports `files` in order, signing `signings[i]` after file i (through both the history and the oracle),
    and returns where they disagree: at each signing and on the whole grid at the end."""
    history, protection = ValidatorHistory(), Protection(minimal=minimal)
    found = []
    for file, signing in zip(files, signings, strict=True):
        import_file(history, file, None, minimal)
        protection.import_file(file)
        if isinstance(signing, tuple) and len(signing) == 2:
            got, expected = sign_block(history, *signing), protection.sign_block(*signing)
        elif isinstance(signing, tuple):
            got, expected = sign_attestation(history, *signing), protection.sign_attestation(*signing)
        else:
            continue
        if disagree(got, expected):
            found.append(f"signing {signing}: got {got.name}, not {expected.name}")
    found.extend(mismatches(history, protection))
    return found


@pytest.mark.parametrize("minimal", [False, True])
@pytest.mark.parametrize("imports", [2, 3])
def test_every_sequence_of_block_files(imports: int, minimal: bool) -> None:
    failures: list[str] = []
    for index, files in enumerate(product(BLOCK_FILES, repeat=imports)):
        signings: list[object] = [BLOCK_SIGNINGS[(index + i) % len(BLOCK_SIGNINGS)] for i in range(imports)]
        failures.extend(f"{files} {signings}: {m}" for m in run_sequence(files, signings, minimal))
        if len(failures) >= 10:
            break
    assert not failures, "\n".join(failures[:10])


@pytest.mark.parametrize("minimal", [False, True])
@pytest.mark.parametrize("imports", [2, 3])
def test_every_sequence_of_attestation_files(imports: int, minimal: bool) -> None:
    failures: list[str] = []
    count = 0
    for index, files in enumerate(product(ATTESTATION_FILES, repeat=imports)):
        count += 1
        signings: list[object] = [
            ATTESTATION_SIGNINGS[(index + i) % len(ATTESTATION_SIGNINGS)] for i in range(imports)
        ]
        failures.extend(f"{files} {signings}: {m}" for m in run_sequence(files, signings, minimal))
        if len(failures) >= 10:
            break
    assert not failures, "\n".join(failures[:10])
    assert count == len(ATTESTATION_FILES) ** imports


# ------------------------------------------------------------------------- the security property, with pruning


@st.composite
def client_stints(draw: st.DrawFn) -> tuple[list[Recorded], list[Recorded]]:
    """What a key really signed, on 1 to 3 clients in turn (an honest history: slots and targets rise, sources
    never fall), and what each client exported: its stint's records from a prune point on (with or without
    roots). Returns (what each client signed, what each client exported)."""
    clients = draw(st.integers(1, 3))
    signed: list[Recorded] = []
    exported: list[Recorded] = []
    slot, source, target = draw(st.integers(0, 5)), draw(st.integers(0, 3)), 0
    target = source + draw(st.integers(0, 2))
    for client in range(clients):
        stint = Recorded()
        for _ in range(draw(st.integers(1, 6))):
            slot += draw(st.integers(1, 40))
            stint.blocks.append(Block(slot, bytes([client + 1, slot % 251]) * 16))
        for _ in range(draw(st.integers(1, 6))):
            target += draw(st.integers(1, 3))
            source = draw(st.integers(source, target))
            stint.attestations.append(Attestation(source, target, bytes([client + 1, target % 251]) * 16))
        signed.append(stint)
        with_roots = draw(st.booleans())
        kept_blocks = stint.blocks[draw(st.integers(0, len(stint.blocks) - 1)) :]
        kept_attestations = stint.attestations[draw(st.integers(0, len(stint.attestations) - 1)) :]
        exported.append(
            Recorded(
                [Block(b.slot, b.root if with_roots else None) for b in kept_blocks],
                [Attestation(a.source, a.target, a.root if with_roots else None) for a in kept_attestations],
            )
        )
    return signed, exported


def slashable_block(candidate: Block, signed: list[Block]) -> bool:
    return any(b.slot == candidate.slot and b.root != candidate.root for b in signed)


def slashable_attestation(candidate: Attestation, signed: list[Attestation]) -> bool:
    c = candidate
    return any(
        (a.target == c.target and (a.source, a.root) != (c.source, c.root))
        or (c.source < a.source and a.target < c.target)
        or (a.source < c.source and c.target < a.target)
        for a in signed
    )


@settings(max_examples=300, deadline=None)
@given(
    stints=client_stints(),
    order=st.randoms(use_true_random=False),
    window=st.sampled_from([None, 2, 64]),
    minimal=st.booleans(),
)
def test_nothing_allowed_after_importing_pruned_exports_is_slashable(
    stints: tuple[list[Recorded], list[Recorded]], order: object, window: int | None, minimal: bool
) -> None:
    signed, exported = stints
    files = list(exported)
    order.shuffle(files)  # type: ignore[attr-defined]
    history = ValidatorHistory()
    for file in files:
        import_file(history, file, window, minimal)
    really_signed_blocks = [b for stint in signed for b in stint.blocks]
    really_signed_attestations = [a for stint in signed for a in stint.attestations]
    everything = Recorded(really_signed_blocks, really_signed_attestations)

    for slot, root in block_candidates(everything, recorded_from(history)):
        if sign_block(history, slot, root).allows:
            candidate = Block(slot, root)
            assert not slashable_block(candidate, really_signed_blocks), f"allowed slashable block {candidate}"
            really_signed_blocks.append(candidate)
    for source, target, root in attestation_candidates(everything, recorded_from(history)):
        if sign_attestation(history, source, target, root).allows:
            vote = Attestation(source, target, root)
            assert not slashable_attestation(vote, really_signed_attestations), (
                f"allowed slashable attestation {vote}"
            )
            really_signed_attestations.append(vote)


@settings(max_examples=200, deadline=None)
@given(stints=client_stints(), window=st.sampled_from([None, 2]), minimal=st.booleans())
def test_multi_import_histories_decide_like_eip_3076_and_export_never_allows_more(
    stints: tuple[list[Recorded], list[Recorded]], window: int | None, minimal: bool
) -> None:
    _, files = stints
    history, protection = ValidatorHistory(), Protection(minimal=minimal)
    for file in files:
        import_file(history, file, window, minimal)
        protection.import_file(file)

    if window is None:
        assert list(mismatches(history, protection)) == []
    # Pruning and the round trip through an EIP-3076 export may refuse more, never less.
    assert allowed_beyond(history, protection, history) == []
    assert allowed_beyond(reimport(history), protection, history) == []
