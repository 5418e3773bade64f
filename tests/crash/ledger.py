"""What the crash tests saw: every answer that said ALLOWED, and a brute-force check that none of them conflict.

The ledger is the client's side of the promise. Whatever the server does (killed, powered off, disk full), two
properties must hold for every validator over everything it ever answered ALLOWED, across restarts:

* no double vote: two allowed attestations with one target epoch are the same message (same source, same root);
* no surround: no allowed attestation surrounds another;
* no double proposal: two allowed blocks at one slot have the same root.

The checker compares every pair, with no index and nothing shared with ``sidecar.rules``, so a bug in the rules
or in the history's indexes cannot hide itself.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import combinations


@dataclass(frozen=True, slots=True, order=True)
class Attestation:
    pubkey: bytes
    source_epoch: int
    target_epoch: int
    signing_root: bytes

    @property
    def item(self) -> tuple[bytes, int, int, bytes]:
        """(pubkey, source_epoch, target_epoch, signing_root): what `tests.support.requests` builds from."""
        return self.pubkey, self.source_epoch, self.target_epoch, self.signing_root

    def __str__(self) -> str:
        return (
            f"attestation 0x{self.pubkey.hex()[:8]} ({self.source_epoch}, {self.target_epoch}) "
            f"root 0x{self.signing_root.hex()[:8]}"
        )


@dataclass(frozen=True, slots=True, order=True)
class Block:
    pubkey: bytes
    slot: int
    signing_root: bytes

    @property
    def item(self) -> tuple[bytes, int, bytes]:
        """(pubkey, slot, signing_root): what `tests.support.requests` builds from."""
        return self.pubkey, self.slot, self.signing_root

    def __str__(self) -> str:
        return f"block 0x{self.pubkey.hex()[:8]} slot {self.slot} root 0x{self.signing_root.hex()[:8]}"


def attestation_conflicts(attestations: Iterable[Attestation]) -> list[str]:
    """Every pair of distinct attestations of one validator that could get it slashed, as sentences."""
    by_key: dict[bytes, set[Attestation]] = defaultdict(set)
    for attestation in attestations:
        by_key[attestation.pubkey].add(attestation)
    problems = []
    for _, found in sorted(by_key.items()):
        for a, b in combinations(sorted(found), 2):
            if a.target_epoch == b.target_epoch:
                problems.append(f"double vote: {a} and {b}")
            elif _surrounds(a, b) or _surrounds(b, a):
                outer, inner = (a, b) if _surrounds(a, b) else (b, a)
                problems.append(f"surround vote: {outer} surrounds {inner}")
    return problems


def block_conflicts(blocks: Iterable[Block]) -> list[str]:
    """Every pair of distinct blocks of one validator at one slot, as sentences."""
    by_slot: dict[tuple[bytes, int], set[bytes]] = defaultdict(set)
    for block in blocks:
        by_slot[(block.pubkey, block.slot)].add(block.signing_root)
    return [
        f"0x{pubkey.hex()[:8]}: double proposal at slot {slot}: roots "
        + ", ".join(f"0x{root.hex()[:8]}" for root in sorted(roots))
        for (pubkey, slot), roots in sorted(by_slot.items())
        if len(roots) > 1
    ]


def _surrounds(outer: Attestation, inner: Attestation) -> bool:
    return outer.source_epoch < inner.source_epoch and inner.target_epoch < outer.target_epoch


@dataclass
class Ledger:
    """Thread-safe record of answers. ``allowed_*`` are sets: a repeat answered ALLOWED adds nothing new."""

    allowed_attestations: set[Attestation] = field(default_factory=set)
    allowed_blocks: set[Block] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def allowed_attestation(self, attestation: Attestation) -> None:
        with self._lock:
            self.allowed_attestations.add(attestation)
            self.counts["allowed"] += 1

    def allowed_block(self, block: Block) -> None:
        with self._lock:
            self.allowed_blocks.add(block)
            self.counts["allowed"] += 1

    def count(self, outcome: str, number: int = 1) -> None:
        with self._lock:
            self.counts[outcome] += number

    def snapshot(self) -> tuple[list[Attestation], list[Block]]:
        """The allowed messages so far, sorted (a copy: the ledger may keep growing)."""
        with self._lock:
            return sorted(self.allowed_attestations), sorted(self.allowed_blocks)

    def conflicts(self) -> list[str]:
        with self._lock:
            return attestation_conflicts(self.allowed_attestations) + block_conflicts(self.allowed_blocks)
