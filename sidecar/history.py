"""One validator's signing history, held in memory and indexed for the rules.

A `ValidatorHistory` is plain data plus the operations that change it. It knows nothing of files, locks or
time; the store owns it and changes it only inside its critical section.

Blocks are a dict slot -> signing root (`None` = unknown). Attestations are parallel arrays sorted by
(target epoch, source epoch), with two derived indexes that answer the surround questions by binary search:

* `prefix_max_source[i]` = the highest source epoch among entries 0..i. A candidate (s, t) surrounds a recorded
  vote iff some entry with target < t has source > s, i.e. iff `prefix_max_source[lo - 1] > s` where `lo` is the
  first entry with target >= t.
* `suffix_min_source[i]` = the lowest source epoch among entries i..n-1. A candidate is surrounded by a recorded
  vote iff some entry with target > t has source < s, i.e. iff `suffix_min_source[hi] < s` where `hi` is the first
  entry with target > t.

In a history the rules built, sources never decrease along targets (a decrease *is* a surround), so appends
touch O(1) index entries. Imported data in the complete strategy may be slashable (two votes at one target, a
surround); it is kept as it is, which only ever refuses more, and the indexes stay exact.

Floors are lower bounds (their defaults refuse nothing): a block needs slot > `slot_floor`; an attestation needs
source >= `source_epoch_floor` and target > `target_epoch_floor`. A repeat of a recorded message with a known root
is allowed whatever the floors (the rules look for it first). Floors only ever rise, and four things raise them:

* **every import, to that document's own minima for the key** (EIP-3076 conditions 2, 4 and 5 apply per imported
  file: after importing a file, refuse slot <= its lowest block slot, source < its lowest source epoch and target
  <= its lowest target epoch). The minima of the merged history are not enough: two files leave a gap between the
  older file's records and the newer file's lowest ones, where the key may have signed on the client that
  exported the newer file and then pruned it ("Advice for Complete Databases": an area of unknown signing
  activity). `StagedHistory.finish` computes the floors, the import's log record carries them, `absorb` raises
  them, checkpoints keep them and exports encode them as records;
* pruning, to the highest slot, source and target it dropped (below);
* `minify` (the minimal strategy), to the records it keeps;
* `repair`, to the bounds the operator gives.

Records below a floor are kept (until pruning drops them): they still make repeats of known roots allowed, which
is safe (an identical message adds no slashable evidence), and they stay in exports and the audit trail. A record
*added* at or below a floor keeps no root: the floor may stand for records no longer held, and a known root would
let a repeat through that conflicts with one of them.

Pruning (see `prune`) drops records older than a window and raises the floors to the highest pruned slot, source
and target. That only ever adds refusals: a candidate that passes the raised floors has source >= every pruned
source (so it cannot surround a pruned vote, which needs a smaller source), target > every pruned target (so it
can neither double-vote with nor be surrounded by a pruned vote, which need a target at or above it), and slot >
every pruned slot. Every rule that refused it against the pruned record refuses it against the floor.
"""

from __future__ import annotations

import enum
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate, islice
from operator import eq, le

from sidecar.domain import ROOT_SIZE, SLOTS_PER_EPOCH
from sidecar.rules import vote_conflict

__all__ = [
    "EPOCH_FLOOR_NONE",
    "SLOT_FLOOR_NONE",
    "SOURCE_FLOOR_NONE",
    "MergeOutcome",
    "StagedHistory",
    "ValidatorHistory",
]

_ZERO_ROOT = bytes(ROOT_SIZE)

# Floor values that refuse nothing (slots and epochs are unsigned).
SLOT_FLOOR_NONE = -1
EPOCH_FLOOR_NONE = -1  # target floor: refuse target <= floor
SOURCE_FLOOR_NONE = 0  # source floor: refuse source < floor

# Pruning runs when the oldest record is this many epochs older than the window allows, so that it happens once
# per PRUNE_SLACK_EPOCHS appends rather than on every one.
PRUNE_SLACK_EPOCHS = 16
# Above every u64: the minimum of no record at all.
_NO_MINIMUM = 1 << 64


class MergeOutcome(enum.IntEnum):
    """What adding one record to a history did."""

    UNCHANGED = 0  # the identical record was already there
    ADDED = 1  # the history changed (a new record, or a root that became unknown), with no slashable evidence
    # Recorded, and provably slashable against the history: a double proposal or double vote (two known, different
    # roots, or two sources at one target), a surround, or source above target. A record merely below a floor, or
    # one whose copy without a root made a known root unknown, is not evidence of a slashing and is ADDED.
    CONFLICT = 2


@dataclass(frozen=True, slots=True)
class ExportedAttestation:
    source_epoch: int
    target_epoch: int
    signing_root: bytes | None


# Why this class is longer than the house's ~300 lines: it is one index (the blocks map; attestations as parallel
# arrays sorted by (target, source) with prefix maxima and suffix minima of sources; the floors) and every method
# either answers from those invariants or keeps them through an add, a merge, a prune or a minify. Split, each part
# would reach into the others' arrays. Its bookkeeping fields (applied sequence, counters, the last decision's
# record) belong to the store rather than to the index; they sit here because the checkpoint body stores them with
# each validator's history, and moving them is a change to both backends' state, left for its own change.
class ValidatorHistory:
    """Blocks and attestations of one validator, with floors and decision counters."""

    __slots__ = (
        "_lowest_slot",
        "_prefix_max_source",
        "_root_known",
        "_roots",
        "_suffix_min_source",
        "allowed_count",
        "applied_sequence",
        "blocks",
        "last_decision",
        "last_decision_sequence",
        "refused_count",
        "slot_floor",
        "source_epoch_floor",
        "sources",
        "target_epoch_floor",
        "targets",
    )

    def __init__(self) -> None:
        self.blocks: dict[int, bytes | None] = {}
        self._lowest_slot: int | None = None
        self.targets: array[int] = array("Q")
        self.sources: array[int] = array("Q")
        self._prefix_max_source: array[int] = array("Q")
        self._suffix_min_source: array[int] = array("Q")
        self._roots = bytearray()
        self._root_known = bytearray()
        self.slot_floor = SLOT_FLOOR_NONE
        self.source_epoch_floor = SOURCE_FLOOR_NONE
        self.target_epoch_floor = EPOCH_FLOOR_NONE
        self.allowed_count = 0
        self.refused_count = 0
        # Sequence number of the newest log record applied to this history; replay skips records at or below it,
        # which is what lets a checkpoint be taken validator by validator while signing goes on.
        self.applied_sequence = 0
        # The payload of the newest decision record (opaque to this module), for the operator's summary.
        self.last_decision: bytes | None = None
        self.last_decision_sequence = 0

    # ---------------------------------------------------------------- queries used by the rules

    def slot_lower_bound(self) -> int | None:
        """Highest slot that may not be signed anew, or None when any slot may."""
        bound = self.slot_floor
        if self._lowest_slot is not None and self._lowest_slot > bound:
            bound = self._lowest_slot
        return None if bound == SLOT_FLOOR_NONE else bound

    def source_epoch_lower_bound(self) -> int | None:
        """Lowest source epoch that may be signed, or None when there is no bound."""
        bound = self.source_epoch_floor
        if self.targets and self._suffix_min_source[0] > bound:
            bound = self._suffix_min_source[0]
        return None if bound == SOURCE_FLOOR_NONE else bound

    def target_epoch_lower_bound(self) -> int | None:
        """Highest target epoch that may not be signed anew, or None when there is no bound."""
        bound = self.target_epoch_floor
        if self.targets and self.targets[0] > bound:
            bound = self.targets[0]
        return None if bound == EPOCH_FLOOR_NONE else bound

    def lower_bounds(self) -> tuple[int | None, int | None, int | None]:
        """(slot, source epoch, target epoch) lower bounds, as the three methods above give them."""
        return self.slot_lower_bound(), self.source_epoch_lower_bound(), self.target_epoch_lower_bound()

    def attestations_at_target(self, target_epoch: int) -> list[tuple[int, bytes | None]]:
        """(source epoch, signing root) of every recorded attestation with this target epoch."""
        targets = self.targets
        if not targets or target_epoch > targets[-1]:
            return []
        lo = bisect_left(targets, target_epoch)
        hi = bisect_right(targets, target_epoch, lo)
        return [(self.sources[i], self._root_at(i)) for i in range(lo, hi)]

    def recorded_vote_surrounded_by(self, source_epoch: int, target_epoch: int) -> tuple[int, int] | None:
        """A recorded (source, target) that the candidate would surround, if there is one."""
        targets = self.targets
        lo = len(targets) if not targets or target_epoch > targets[-1] else bisect_left(targets, target_epoch)
        if lo == 0 or self._prefix_max_source[lo - 1] <= source_epoch:
            return None
        # prefix maxima never decrease, so the first entry whose prefix maximum exceeds the source is an entry
        # whose own source does.
        i = bisect_right(self._prefix_max_source, source_epoch, 0, lo)
        return self.sources[i], targets[i]

    def recorded_vote_surrounding(self, source_epoch: int, target_epoch: int) -> tuple[int, int] | None:
        """A recorded (source, target) that would surround the candidate, if there is one."""
        targets = self.targets
        if not targets or target_epoch >= targets[-1]:
            return None
        hi = bisect_right(targets, target_epoch)
        if self._suffix_min_source[hi] >= source_epoch:
            return None
        # suffix minima never decrease either: the last entry whose suffix minimum is below the source holds it.
        i = bisect_left(self._suffix_min_source, source_epoch, hi) - 1
        return self.sources[i], targets[i]

    def _root_at(self, index: int) -> bytes | None:
        if not self._root_known[index]:
            return None
        offset = index * ROOT_SIZE
        return bytes(self._roots[offset : offset + ROOT_SIZE])

    # ---------------------------------------------------------------- facts for summaries and export

    @property
    def attestation_count(self) -> int:
        return len(self.targets)

    @property
    def lowest_slot(self) -> int | None:
        return self._lowest_slot

    @property
    def highest_slot(self) -> int | None:
        return max(self.blocks) if self.blocks else None

    @property
    def highest_source_epoch(self) -> int | None:
        return self._prefix_max_source[-1] if self.targets else None

    @property
    def lowest_source_epoch(self) -> int | None:
        return self._suffix_min_source[0] if self.targets else None

    def attestations(self) -> list[ExportedAttestation]:
        """Every recorded attestation, ordered by (target, source)."""
        return [
            ExportedAttestation(self.sources[i], self.targets[i], self._root_at(i))
            for i in range(len(self.targets))
        ]

    def root_arrays(self) -> tuple[bytearray, bytearray]:
        """Attestation roots (32 bytes each) and their known flags, aligned with `targets` (for checkpoints)."""
        return self._roots, self._root_known

    def fingerprint(self) -> tuple[object, ...]:
        """A value equal for equal records and floors: tells whether an operation changed anything."""
        return (
            tuple(sorted(self.blocks.items())),
            self.targets.tobytes(),
            self.sources.tobytes(),
            bytes(self._roots),
            bytes(self._root_known),
            self.slot_floor,
            self.source_epoch_floor,
            self.target_epoch_floor,
        )

    # ---------------------------------------------------------------- changes

    def load_attestation_arrays(
        self, targets: array[int], sources: array[int], roots: bytearray, root_known: bytearray
    ) -> None:
        """Replaces the attestations with arrays read from a checkpoint and rebuilds the indexes.

        Raises ValueError when the arrays are not aligned or not ordered by (target, source): a checkpoint that
        passed its checksum but breaks the invariants the rules rely on must not be served.
        """
        n = len(targets)
        if len(sources) != n or len(root_known) != n or len(roots) != n * ROOT_SIZE:
            raise ValueError("attestation arrays of different lengths")
        # Checked at C speed (a checkpoint holds millions of entries); sorting a sorted list is one pass.
        target_list = targets.tolist()
        source_list = sources.tolist()
        if target_list == sorted(target_list) and source_list == sorted(source_list):
            # Sources that never decrease (every history the rules built) are their own prefix maxima and
            # suffix minima.
            prefix = sources[:]
            suffix = sources[:]
        else:
            # Targets never decrease, and where two entries share a target (imported slashable data only)
            # their sources do not decrease either.
            if not all(map(le, targets, islice(targets, 1, None))):
                raise ValueError("attestations out of order")
            if any(map(eq, targets, islice(targets, 1, None))):
                for i in range(1, n):
                    if targets[i - 1] == targets[i] and sources[i - 1] > sources[i]:
                        raise ValueError(f"attestations out of order at index {i}")
            prefix = array("Q", accumulate(sources, max))
            suffix = array("Q", accumulate(reversed(sources), min))
            suffix.reverse()
        self.targets = targets
        self.sources = sources
        self._roots = roots
        self._root_known = root_known
        self._prefix_max_source = prefix
        self._suffix_min_source = suffix

    def add_block(self, slot: int, signing_root: bytes | None) -> MergeOutcome:
        """Records a block. A second, different block at a recorded slot makes that slot's root unknown."""
        blocks = self.blocks
        if slot in blocks:
            recorded = blocks[slot]
            if recorded is not None and recorded == signing_root:
                return MergeOutcome.UNCHANGED
            if recorded is None:
                # Already unknown: nothing at this slot can be signed again, whatever we add.
                return MergeOutcome.UNCHANGED
            blocks[slot] = None
            # Two known roots at one slot are a double proposal; a copy without a root only hides which it was.
            return MergeOutcome.ADDED if signing_root is None else MergeOutcome.CONFLICT
        # A record added at or below the floor keeps no root: the floor already refuses its slot, and a known root
        # would make a repeat of it allowed, which the pruned or minified history it stands in for may not.
        blocks[slot] = None if slot <= self.slot_floor else signing_root
        if self._lowest_slot is None or slot < self._lowest_slot:
            self._lowest_slot = slot
        return MergeOutcome.ADDED

    def add_attestation(self, source_epoch: int, target_epoch: int, signing_root: bytes | None) -> MergeOutcome:
        """Records an attestation, keeping the indexes exact.

        An identical record (same source, target and known root) changes nothing, at or below the floors too.
        A record at a recorded (source, target) with another or unknown root makes that entry's root unknown. A
        record at a recorded target with another source is kept beside it, so every later vote at that target is
        a double vote. A new record at or below the floors keeps no root (see the module doc).
        """
        targets = self.targets
        n = len(targets)
        if n == 0 or target_epoch > targets[-1]:
            root = self._root_above_floors(source_epoch, target_epoch, signing_root)
            self._append_attestation(source_epoch, target_epoch, root)
            if source_epoch > target_epoch or (n and self._prefix_max_source[n - 1] > source_epoch):
                # `sidecar.rules.vote_conflict` where the target is above every recorded one (no vote shares it,
                # none can surround it), in O(1) for the append path of imports: source above target, or a
                # surround of an earlier vote. tests/rules/test_history_fast_paths.py checks the two agree.
                return MergeOutcome.CONFLICT
            return MergeOutcome.ADDED
        lo = bisect_left(targets, target_epoch)
        hi = bisect_right(targets, target_epoch, lo)
        for i in range(lo, hi):
            if self.sources[i] == source_epoch:
                if not self._root_known[i]:
                    return MergeOutcome.UNCHANGED
                if signing_root is not None and self._root_at(i) == signing_root:
                    return MergeOutcome.UNCHANGED
                self._root_known[i] = 0
                # An unknown root's bytes are zeros, whichever way it became unknown, so that equal histories
                # have equal arrays (and checkpoints).
                self._roots[i * ROOT_SIZE : (i + 1) * ROOT_SIZE] = _ZERO_ROOT
                # As for blocks: two known roots are a double vote, a copy without a root is not evidence.
                return MergeOutcome.ADDED if signing_root is None else MergeOutcome.CONFLICT
        signing_root = self._root_above_floors(source_epoch, target_epoch, signing_root)
        conflict = vote_conflict(self, source_epoch, target_epoch) is not None
        # Keep entries ordered by (target, source) so exports are canonical.
        index = lo + bisect_left(self.sources[lo:hi], source_epoch) if hi > lo else lo
        self._insert_attestation(index, source_epoch, target_epoch, signing_root)
        if conflict:
            return MergeOutcome.CONFLICT
        return MergeOutcome.ADDED

    def is_next_honest_vote(self, source_epoch: int, target_epoch: int) -> bool:
        """Whether the vote is the kind an honest history grows by: a target above every recorded target and
        the target floor, a source at or above every recorded source and the source floor, and not above its
        target. Such a vote conflicts with nothing recorded and is within every bound (the rules' fast path)."""
        targets = self.targets
        if targets and (target_epoch <= targets[-1] or source_epoch < self._prefix_max_source[-1]):
            return False
        return self.source_epoch_floor <= source_epoch <= target_epoch and target_epoch > self.target_epoch_floor

    def add_attestation_if_newest(self, source_epoch: int, target_epoch: int, signing_root: bytes) -> bool:
        """`add_attestation` for the one kind of vote an honest history grows by, in O(1); False, changing
        nothing, for any other (the caller then uses `add_attestation`).

        That kind: a known root, a target above every recorded target and above the target floor, a source at
        or above every recorded source and the source floor and not above its target. `add_attestation` appends
        such a vote (ADDED) and leaves every earlier index entry as it was: the suffix minimum before it is at
        most the previous last source, which is at most this source. Replay of the log is nearly all this case.
        """
        if not self.is_next_honest_vote(source_epoch, target_epoch):
            return False
        self.targets.append(target_epoch)
        self.sources.append(source_epoch)
        self._prefix_max_source.append(source_epoch)
        self._suffix_min_source.append(source_epoch)
        self._roots += signing_root
        self._root_known.append(1)
        return True

    def _root_above_floors(self, source_epoch: int, target_epoch: int, signing_root: bytes | None) -> bytes | None:
        """The root a new record keeps: none at or below the floors (see the module doc)."""
        if source_epoch < self.source_epoch_floor or target_epoch <= self.target_epoch_floor:
            return None
        return signing_root

    def _append_attestation(self, source_epoch: int, target_epoch: int, signing_root: bytes | None) -> None:
        prefix = self._prefix_max_source
        suffix = self._suffix_min_source
        self.targets.append(target_epoch)
        self.sources.append(source_epoch)
        prefix.append(source_epoch if not prefix or prefix[-1] < source_epoch else prefix[-1])
        suffix.append(source_epoch)
        # Suffix minima before the new entry drop to its source where they were higher (a surround); in a history
        # the rules built this loop exits at once.
        j = len(suffix) - 2
        while j >= 0 and suffix[j] > source_epoch:
            suffix[j] = source_epoch
            j -= 1
        self._roots += _ZERO_ROOT if signing_root is None else signing_root
        self._root_known.append(0 if signing_root is None else 1)

    def _insert_attestation(
        self, index: int, source_epoch: int, target_epoch: int, signing_root: bytes | None
    ) -> None:
        prefix = self._prefix_max_source
        suffix = self._suffix_min_source
        self.targets.insert(index, target_epoch)
        self.sources.insert(index, source_epoch)
        before = prefix[index - 1] if index > 0 else source_epoch
        maximum = before if before > source_epoch else source_epoch
        prefix.insert(index, maximum)
        j = index + 1
        while j < len(prefix) and prefix[j] < maximum:
            prefix[j] = maximum
            j += 1
        after = suffix[index] if index < len(suffix) else source_epoch
        minimum = after if after < source_epoch else source_epoch
        suffix.insert(index, minimum)
        j = index - 1
        while j >= 0 and suffix[j] > minimum:
            suffix[j] = minimum
            j -= 1
        offset = index * ROOT_SIZE
        self._roots[offset:offset] = _ZERO_ROOT if signing_root is None else signing_root
        self._root_known.insert(index, 0 if signing_root is None else 1)

    def absorb(self, imported: ValidatorHistory) -> MergeOutcome:
        """Adds every record of `imported` exactly as `add_block` / `add_attestation` would, then raises the floors
        to `imported`'s; `imported` is spent (its arrays may now be this history's). Records first, floors after,
        so that only this history's own floors clear roots, as when each record is added one by one: an import's
        floors stand for records it no longer holds, which they refuse whatever roots the kept ones have.

        Returns CONFLICT if a record conflicted with this history (see add_*), UNCHANGED if neither records nor
        floors changed, else ADDED. An empty history without floors takes `imported`'s records over whole (the
        same result as adding them in order: nothing to clear, nothing to conflict with); conflicts among
        `imported`'s own records are then not looked for, so whoever built it says (StagedHistory.slashable).
        """
        if (
            not self.blocks
            and not self.targets
            and self.slot_floor == SLOT_FLOOR_NONE
            and self.source_epoch_floor == SOURCE_FLOOR_NONE
            and self.target_epoch_floor == EPOCH_FLOOR_NONE
        ):
            # Taken, not copied: for an import of new keys this is most of the state, and a copy would briefly
            # double it.
            self.blocks, imported.blocks = imported.blocks, {}
            self._lowest_slot, imported._lowest_slot = imported._lowest_slot, None
            self.targets, self.sources = imported.targets, imported.sources
            self._prefix_max_source = imported._prefix_max_source
            self._suffix_min_source = imported._suffix_min_source
            self._roots, self._root_known = imported._roots, imported._root_known
            imported.load_attestation_arrays(array("Q"), array("Q"), bytearray(), bytearray())
            outcome = MergeOutcome.ADDED if self.blocks or self.targets else MergeOutcome.UNCHANGED
        else:
            outcome = MergeOutcome.UNCHANGED
            for slot, root in imported.blocks.items():
                outcome = max(outcome, self.add_block(slot, root))
            for index in range(len(imported.targets)):
                added = self.add_attestation(
                    imported.sources[index], imported.targets[index], imported._root_at(index)
                )
                outcome = max(outcome, added)
        bounds = self.lower_bounds()
        self.raise_floors(imported.slot_floor, imported.source_epoch_floor, imported.target_epoch_floor)
        if bounds != self.lower_bounds():
            # Floors that only restate what the records already bound (a re-import) change no decision.
            outcome = max(outcome, MergeOutcome.ADDED)
        return MergeOutcome(outcome)

    def compact(self) -> None:
        """Gives back the spare capacity that appends and pruning leave in the arrays (a bytearray keeps the
        space of what was deleted from its front until it next grows): for histories that will not grow soon."""
        self.targets = array("Q", self.targets)
        self.sources = array("Q", self.sources)
        self._prefix_max_source = array("Q", self._prefix_max_source)
        self._suffix_min_source = array("Q", self._suffix_min_source)
        self._roots = bytearray(self._roots)
        self._root_known = bytearray(self._root_known)

    def raise_floors(self, slot_floor: int, source_epoch_floor: int, target_epoch_floor: int) -> None:
        """Raises the floors (never lowers them): used by pruning, repair and checkpoint loading."""
        self.slot_floor = max(self.slot_floor, slot_floor)
        self.source_epoch_floor = max(self.source_epoch_floor, source_epoch_floor)
        self.target_epoch_floor = max(self.target_epoch_floor, target_epoch_floor)

    def prune(self, window_epochs: int, slack_epochs: int = PRUNE_SLACK_EPOCHS) -> bool:
        """Drops records more than `window_epochs` behind the newest one, raising the floors (see module doc).

        Returns whether anything was dropped. With `slack_epochs` 0 the result depends only on the records and
        the window, not on when pruning ran: imports prune that way, so that a document read in parts ends as if
        it had been read whole.
        """
        pruned_attestations = self.prune_attestations(window_epochs, slack_epochs)
        return self.prune_blocks(window_epochs, slack_epochs) or pruned_attestations

    def prune_attestations(self, window_epochs: int, slack_epochs: int = PRUNE_SLACK_EPOCHS) -> bool:
        """Attestation half of `prune`. Cheap enough to call after every append: it does nothing until the
        oldest record is `slack_epochs` beyond the window, so the work is amortized.
        """
        targets = self.targets
        if not targets or targets[0] + window_epochs + slack_epochs >= targets[-1]:
            return False
        source, target = self.drop_attestations_below(targets[-1] - window_epochs)
        self.raise_floors(SLOT_FLOOR_NONE, source, target)
        return True

    def prune_blocks(self, window_epochs: int, slack_epochs: int = PRUNE_SLACK_EPOCHS) -> bool:
        """Block half of `prune`, with the same slack."""
        lowest = self._lowest_slot
        if lowest is None:
            return False
        highest = max(self.blocks)
        window_slots = window_epochs * SLOTS_PER_EPOCH
        if lowest + window_slots + slack_epochs * SLOTS_PER_EPOCH >= highest:
            return False
        slot = self.drop_blocks_below(highest - window_slots)
        self.raise_floors(slot, SOURCE_FLOOR_NONE, EPOCH_FLOOR_NONE)
        return True

    def drop_attestations_below(self, target_epoch: int) -> tuple[int, int]:
        """Removes every attestation whose target is below `target_epoch`, leaving the floors alone; returns the
        highest source and the highest target removed (the floors that would cover them), or the no-floor values
        when nothing was below."""
        targets = self.targets
        cut = bisect_left(targets, target_epoch)
        if cut == 0:
            return SOURCE_FLOOR_NONE, EPOCH_FLOOR_NONE
        prefix = self._prefix_max_source
        dropped_maximum = prefix[cut - 1]
        dropped = dropped_maximum, targets[cut - 1]
        # A kept prefix maximum above the dropped records' maximum came from a kept record and stays right; only
        # the leading stretch that still equals the dropped maximum must be recomputed (usually empty, as
        # sources rise with targets: pruning on the hot path and at replay then copies nothing).
        stale_end = bisect_right(prefix, dropped_maximum, cut)
        recomputed = array("Q", accumulate(self.sources[cut:stale_end], max))
        self._prefix_max_source = recomputed + prefix[stale_end:]
        del targets[:cut]
        del self.sources[:cut]
        del self._suffix_min_source[:cut]
        del self._roots[: cut * ROOT_SIZE]
        del self._root_known[:cut]
        return dropped

    def drop_blocks_below(self, slot: int) -> int:
        """Removes every block at a slot below `slot`, leaving the floor alone; returns the highest slot removed,
        or the no-floor value when nothing was below."""
        dropped = [recorded for recorded in self.blocks if recorded < slot]
        if not dropped:
            return SLOT_FLOOR_NONE
        for recorded in dropped:
            del self.blocks[recorded]
        self._lowest_slot = min(self.blocks) if self.blocks else None
        return max(dropped)

    def minify(self) -> None:
        """Reduces the history to one block at the highest slot and one attestation at the highest source and
        target, all with unknown roots: the "minimal" strategy. Refuses at least everything the full history did.
        """
        # The floors take the minified records' place too, so that older records added later (an import in the
        # complete strategy) cannot lower the bounds below what the full history refused.
        if self.blocks:
            highest = max(self.blocks)
            self.blocks = {highest: None}
            self._lowest_slot = highest
            self.raise_floors(highest, SOURCE_FLOOR_NONE, EPOCH_FLOOR_NONE)
        if self.targets:
            source = self._prefix_max_source[-1]
            target = self.targets[-1]
            self.raise_floors(SLOT_FLOOR_NONE, source, target)
            self.targets = array("Q", [target])
            self.sources = array("Q", [source])
            self._prefix_max_source = array("Q", [source])
            self._suffix_min_source = array("Q", [source])
            self._roots = bytearray(_ZERO_ROOT)
            self._root_known = bytearray(1)

    # ---------------------------------------------------------------- interchange export

    def export_blocks(self) -> list[tuple[int, bytes | None]]:
        """Blocks for an EIP-3076 export, sorted by slot, carrying the slot floor.

        Records below the floor are dropped and the lowest exported block stands at the floor (the record there,
        with its root, or one with an unknown root), so that an importer derives exactly our lower bound and
        allows exactly our repeats. A record kept at the floor keeps its root: an import's floor is its lowest
        record, which re-imports must still see as a repeat.
        """
        floor = self.slot_floor
        if floor == SLOT_FLOOR_NONE or (self._lowest_slot is not None and self._lowest_slot > floor):
            return sorted(self.blocks.items())
        kept = sorted((slot, root) for slot, root in self.blocks.items() if slot >= floor)
        return kept if kept and kept[0][0] == floor else [(floor, None), *kept]

    def export_attestations(self) -> tuple[list[ExportedAttestation], bool]:
        """Attestations for an EIP-3076 export, and whether they had to be minified to carry the floors.

        EIP-3076 has no field for a floor: an importer derives its bounds from the records. Records at or below
        both floors protect nothing beyond them and are dropped. The rest are kept if they lie at or above both
        floors (at the target floor only when alone at that target, as an import's lowest vote is: a second vote
        there makes every vote at it a double vote, which the importer would not see), led by one vote at the
        floors with an unknown root unless a kept vote stands at the target floor; the importer's bounds then
        equal ours. Otherwise (a record older than one floor but not the other) the only safe encoding is one
        attestation at the highest source and target with an unknown root.
        """
        source_floor = self.source_epoch_floor
        target_floor = self.target_epoch_floor
        records = self.attestations()
        if source_floor == SOURCE_FLOOR_NONE and target_floor == EPOCH_FLOOR_NONE:
            return records, False
        alone_at_floor = len(self.attestations_at_target(target_floor)) == 1
        kept = []
        for record in records:
            if record.source_epoch >= source_floor and (
                record.target_epoch > target_floor or (record.target_epoch == target_floor and alone_at_floor)
            ):
                kept.append(record)
            elif not (record.target_epoch <= target_floor and record.source_epoch <= source_floor):
                highest_source = max(source_floor, self._prefix_max_source[-1])
                highest_target = max(target_floor, self.targets[-1])
                return [ExportedAttestation(highest_source, highest_target, None)], True
        if kept and (
            kept[0].target_epoch == target_floor
            # The vote at the floors would lower a bound that a record sets above its floor, or cannot exist:
            # without it the importer's bounds are ours or a little higher.
            or self.targets[0] > target_floor
            or self._suffix_min_source[0] > source_floor
            or source_floor > target_floor
        ):
            return kept, False
        return [ExportedAttestation(max(source_floor, 0), max(target_floor, 0), None), *kept], False


class StagedHistory:
    """One validator's records read from an import document, before anything is applied, pruned to the history
    window while they arrive: a complete history of any length is held as about a window of records.

    What makes it safe is an equivalence, held by tests/rules against the simple path: staging records in any
    order and in any number of pieces (`add_*`, `absorb`), then `finish`, then `ValidatorHistory.absorb` into a
    history and `prune(window, slack_epochs=0)`, gives exactly the history that adding every record to that
    history and pruning it once, the same way, gives. Because:

    * a record is dropped only when its target (slot) is more than the window below the highest one seen so far;
      the highest only grows, so the final prune would drop it too (imports prune without slack for this reason);
    * what is dropped is remembered as the highest source, target and slot dropped, which are the floors the
      final prune would raise for it;
    * kept records combine as `add_*` combine them (a root stays known only if every copy had it), which does
      not depend on order, and a drop never separates copies of one message: they share a target (slot);
    * the dropped maxima become floors only at `finish`. As floors during staging they would clear the roots of
      kept records below them (`add_*` does that below floors), which pruning once does not.

    `finish` also raises the floors to the document's own minima for the key (lowest slot, source and target of
    every record it held, dropped ones included): EIP-3076's conditions hold per imported file (see the module
    doc). Those floors are at or below every record of the document, so they clear no root of it, and where
    something was dropped the dropped maxima are at least as high. Either way the floors are part of what
    `finish` returns, so the import's log record carries them and every merge raises them.

    The "minimal" strategy keeps only the highest slot, source and target (all `minify` keeps), without roots.
    """

    __slots__ = (
        "_attestations_seen",
        "_blocks_seen",
        "_dropped_since_settle",
        "_dropped_slot",
        "_dropped_source",
        "_dropped_target",
        "_finished",
        "_highest_slot",
        "_highest_source",
        "_highest_target",
        "_lowest_slot",
        "_lowest_source",
        "_lowest_target",
        "_roots_seen",
        "history",
        "minimal",
        "slashable",
        "window_epochs",
    )

    def __init__(self, window_epochs: int | None, minimal: bool) -> None:
        # Complete strategy: the kept records, without floors until `finish` (see the class doc). Minimal: empty
        # until `finish`, which records the highest slot, source and target.
        self.history = ValidatorHistory()
        self.window_epochs = window_epochs
        self.minimal = minimal
        # Whether kept records conflicted among themselves (double or surround votes, double proposals, source
        # above target). Records older than the window are folded into floors without that check.
        self.slashable = False
        self._dropped_slot = SLOT_FLOOR_NONE
        self._dropped_source = SOURCE_FLOOR_NONE
        self._dropped_target = EPOCH_FLOOR_NONE
        self._highest_slot = SLOT_FLOOR_NONE
        self._highest_source = -1
        self._highest_target = -1
        # The document's minima for this key (complete strategy), over every record staged, dropped or kept.
        self._lowest_slot = _NO_MINIMUM
        self._lowest_source = _NO_MINIMUM
        self._lowest_target = _NO_MINIMUM
        self._blocks_seen = 0
        self._attestations_seen = 0
        self._roots_seen = False
        self._dropped_since_settle = False
        self._finished = False

    @property
    def held_records(self) -> int:
        """Blocks and attestations held right now: what this validator's staging costs in memory."""
        return len(self.history.blocks) + len(self.history.targets)

    @property
    def reduced(self) -> bool:
        """Minimal strategy: whether keeping only the highest records, without roots, left anything out."""
        return self.minimal and (self._blocks_seen > 1 or self._attestations_seen > 1 or self._roots_seen)

    def add_blocks(self, blocks: Iterable[tuple[int, bytes | None]]) -> None:
        """Stages blocks given as (slot, signing root or None)."""
        assert not self._finished, "staged history used after finish"
        history = self.history
        window = None if self.minimal else self.window_epochs
        lowest_slot = self._lowest_slot
        for slot, root in blocks:
            self._blocks_seen += 1
            if self.minimal:
                self._roots_seen = self._roots_seen or root is not None
                self._highest_slot = max(self._highest_slot, slot)
                continue
            if slot < lowest_slot:
                lowest_slot = self._lowest_slot = slot
            if window is not None and slot < self._highest_slot - window * SLOTS_PER_EPOCH:
                # Older than the window below the newest block: the final prune drops it; only its floor stays.
                self._dropped_slot = max(self._dropped_slot, slot)
                continue
            if history.add_block(slot, root) is MergeOutcome.CONFLICT:
                self.slashable = True
            if slot > self._highest_slot:
                self._highest_slot = slot
                if window is not None:
                    self._drop_blocks(window, PRUNE_SLACK_EPOCHS)

    def add_attestations(self, attestations: Iterable[tuple[int, int, bytes | None]]) -> None:
        """Stages attestations given as (source epoch, target epoch, signing root or None)."""
        assert not self._finished, "staged history used after finish"
        history = self.history
        targets = history.targets  # changed in place by add_attestation and drop_attestations_below
        window = None if self.minimal else self.window_epochs
        lowest_source = self._lowest_source
        lowest_target = self._lowest_target
        for source, target, root in attestations:
            self._attestations_seen += 1
            if self.minimal:
                self._roots_seen = self._roots_seen or root is not None
                self._highest_source = max(self._highest_source, source)
                self._highest_target = max(self._highest_target, target)
                continue
            if source < lowest_source:
                lowest_source = self._lowest_source = source
            if target < lowest_target:
                lowest_target = self._lowest_target = target
            if window is not None and targets and target < targets[-1] - window:
                # As for blocks: the final prune drops it, and these are the floors it raises for it.
                self._dropped_source = max(self._dropped_source, source)
                self._dropped_target = max(self._dropped_target, target)
                continue
            # The usual record (an honest next vote) appends in O(1); the general path finds any conflict.
            if (root is None or not history.add_attestation_if_newest(source, target, root)) and (
                history.add_attestation(source, target, root) is MergeOutcome.CONFLICT
            ):
                self.slashable = True
            if window is not None and targets[0] + window + PRUNE_SLACK_EPOCHS < targets[-1]:
                self._drop_attestations(window)

    def absorb(self, other: StagedHistory) -> None:
        """Stages everything `other` staged (the same key in another entry of the document); `other` is spent."""
        assert not self._finished and not other._finished, "staged history used after finish"
        assert self.minimal == other.minimal and self.window_epochs == other.window_epochs
        kept = other.history
        self.add_blocks(kept.blocks.items())
        self.add_attestations(
            (kept.sources[i], kept.targets[i], kept._root_at(i)) for i in range(len(kept.targets))
        )
        # What `other` saw, not only what it kept, counts (the add_* calls above counted its kept records again).
        self._blocks_seen += other._blocks_seen - len(kept.blocks)
        self._attestations_seen += other._attestations_seen - len(kept.targets)
        self._roots_seen = self._roots_seen or other._roots_seen
        self.slashable = self.slashable or other.slashable
        self._highest_slot = max(self._highest_slot, other._highest_slot)
        self._highest_source = max(self._highest_source, other._highest_source)
        self._highest_target = max(self._highest_target, other._highest_target)
        self._dropped_slot = max(self._dropped_slot, other._dropped_slot)
        self._dropped_source = max(self._dropped_source, other._dropped_source)
        self._dropped_target = max(self._dropped_target, other._dropped_target)
        self._lowest_slot = min(self._lowest_slot, other._lowest_slot)
        self._lowest_source = min(self._lowest_source, other._lowest_source)
        self._lowest_target = min(self._lowest_target, other._lowest_target)
        if not self.minimal and self.window_epochs is not None:
            self._drop_blocks(self.window_epochs, PRUNE_SLACK_EPOCHS)

    def settle(self) -> None:
        """Drops exactly what is beyond the window now (the slack only spares work while records arrive) and
        gives back spare capacity: for when the entry being read has ended. Staging may go on afterwards."""
        if self.minimal or self._finished:
            return
        if self.window_epochs is not None:
            self._drop_blocks(self.window_epochs, 0)
            self._drop_attestations(self.window_epochs)
        if self._dropped_since_settle:  # only dropping leaves much spare capacity behind
            self._dropped_since_settle = False
            self.history.compact()

    def finish(self) -> ValidatorHistory:
        """Prunes to exactly the window and turns what was dropped into floors; returns the history to merge
        (records and floors). Nothing may be staged afterwards."""
        if self._finished:
            return self.history
        history = self.history
        if self.minimal:
            if self._blocks_seen:
                history.add_block(self._highest_slot, None)
            if self._attestations_seen:
                history.add_attestation(self._highest_source, self._highest_target, None)
        else:
            if self.window_epochs is not None:
                # Exactly to the window; capacity was given back when each entry ended (DocumentStaging).
                self._drop_blocks(self.window_epochs, 0)
                self._drop_attestations(self.window_epochs)
            history.raise_floors(self._dropped_slot, self._dropped_source, self._dropped_target)
            # EIP-3076 conditions 2, 4 and 5 for this document (see the class doc). A minimum stays "none" when
            # the document holds no record of that kind for the key.
            history.raise_floors(
                self._lowest_slot if self._lowest_slot != _NO_MINIMUM else SLOT_FLOOR_NONE,
                self._lowest_source if self._lowest_source != _NO_MINIMUM else SOURCE_FLOOR_NONE,
                self._lowest_target if self._lowest_target != _NO_MINIMUM else EPOCH_FLOOR_NONE,
            )
        self._finished = True
        return history

    def _drop_blocks(self, window_epochs: int, slack_epochs: int) -> None:
        lowest = self.history.lowest_slot
        window_slots = window_epochs * SLOTS_PER_EPOCH
        if lowest is not None and lowest + window_slots + slack_epochs * SLOTS_PER_EPOCH < self._highest_slot:
            dropped = self.history.drop_blocks_below(self._highest_slot - window_slots)
            self._dropped_slot = max(self._dropped_slot, dropped)
            self._dropped_since_settle = True

    def _drop_attestations(self, window_epochs: int) -> None:
        targets = self.history.targets
        if targets and targets[0] < targets[-1] - window_epochs:
            source, target = self.history.drop_attestations_below(targets[-1] - window_epochs)
            self._dropped_source = max(self._dropped_source, source)
            self._dropped_target = max(self._dropped_target, target)
            self._dropped_since_settle = True
