"""The words operators read: how a decision's reason, verdict and kind are spelled outside the proto.

One table, `REASONS`, gives every `Reason` its one spelling (lowercase snake case, e.g. `double_vote`). That
spelling is the `reason` label of `slashing_sidecar_decisions_total`, the `reason` field of JSON log lines and of
the CLI's `decisions` and `summary` output, and the word the docs and alert rules use. The only other form is
the proto enum name (`REASON_DOUBLE_VOTE`), which is the gRPC contract's. The table is written out rather than
derived from the enum's member names, so renaming a member can never silently change what dashboards, alert
rules and log queries match on.

The table also says which message kinds a reason can occur for, so the decision counter can expose every
possible `(kind, verdict, reason)` series at 0 from the start (see `sidecar.metrics`).

`describe_high_watermark` is the one sentence for the global high watermark, which the CLI prints and the server
logs.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.rules import HighWatermark, Reason
from slashing_protection.v1 import signing_pb2

__all__ = [
    "ATTESTATION",
    "BLOCK",
    "KINDS",
    "REASONS",
    "SLASHABLE_REASONS",
    "ReasonWords",
    "decision_series",
    "describe_high_watermark",
    "proto_name",
    "spelling",
    "verdict",
]

BLOCK = "block"
ATTESTATION = "attestation"
KINDS = (BLOCK, ATTESTATION)
ALLOWED = "allowed"
REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class ReasonWords:
    spelling: str
    kinds: tuple[str, ...]
    slashable: bool = False  # signing it would be a slashable offence: the alert that pages


REASONS: dict[Reason, ReasonWords] = {
    Reason.ALLOWED_NEW: ReasonWords("allowed_new", KINDS),
    Reason.ALLOWED_REPEAT: ReasonWords("allowed_repeat", KINDS),
    Reason.DOUBLE_PROPOSAL: ReasonWords("double_proposal", (BLOCK,), slashable=True),
    Reason.DOUBLE_VOTE: ReasonWords("double_vote", (ATTESTATION,), slashable=True),
    Reason.SURROUNDS_RECORDED_VOTE: ReasonWords("surrounds_recorded_vote", (ATTESTATION,), slashable=True),
    Reason.SURROUNDED_BY_RECORDED_VOTE: ReasonWords("surrounded_by_recorded_vote", (ATTESTATION,), slashable=True),
    Reason.SLOT_AT_OR_BELOW_LOWER_BOUND: ReasonWords("slot_at_or_below_lower_bound", (BLOCK,)),
    Reason.SOURCE_EPOCH_BELOW_LOWER_BOUND: ReasonWords("source_epoch_below_lower_bound", (ATTESTATION,)),
    Reason.TARGET_EPOCH_AT_OR_BELOW_LOWER_BOUND: ReasonWords(
        "target_epoch_at_or_below_lower_bound", (ATTESTATION,)
    ),
    Reason.SOURCE_EPOCH_GREATER_THAN_TARGET_EPOCH: ReasonWords(
        "source_epoch_greater_than_target_epoch", (ATTESTATION,)
    ),
    Reason.VALIDATOR_NOT_REGISTERED: ReasonWords("validator_not_registered", KINDS),
    Reason.AT_OR_BEYOND_HIGH_WATERMARK: ReasonWords("at_or_beyond_high_watermark", KINDS),
}

SLASHABLE_REASONS = tuple(words.spelling for words in REASONS.values() if words.slashable)


def spelling(reason: Reason) -> str:
    """The reason as operators read it everywhere but in the proto: `double_vote`."""
    return REASONS[reason].spelling


def proto_name(reason: Reason) -> str:
    """The reason as the gRPC contract names it: `REASON_DOUBLE_VOTE`."""
    return signing_pb2.Reason.Name(int(reason))


def verdict(reason: Reason) -> str:
    return ALLOWED if reason.allows else REFUSED


def decision_series() -> list[tuple[str, Reason]]:
    """Every (kind, reason) a decision can have, in a stable order."""
    return [(kind, reason) for reason, words in REASONS.items() for kind in words.kinds]


def describe_high_watermark(high_watermark: HighWatermark | None) -> str:
    """The watermark in force as one sentence saying what it stops."""
    if high_watermark is None:
        return "no high watermark is set"
    slot, epoch = high_watermark.slot, high_watermark.epoch
    return (
        f"high watermark at slot {slot}, epoch {epoch}: no block at slot {slot} or later and no attestation with "
        f"a source or target epoch of {epoch} or later is signed"
    )
