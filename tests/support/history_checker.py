"""The client's side of every signing call a test made, and the two checks a slashing protection must pass over it.

A `History` records each call as it returns: which validator, which message (a block, or an attestation's source,
target and signing root), which replica, and the outcome, one of

* `ALLOWED`: the server answered ALLOWED; a signer would have signed.
* `REFUSED`: the server answered REFUSED.
* `ERROR` / `TIMED_OUT`: no answer to use (a status other than OK, a dead connection, the deadline passed). The
  signer did not sign, but the server may still have decided ALLOWED and committed it (a commit whose reply was
  lost, a call that outlived its client's deadline): the call is POSSIBLY ALLOWED, and from then on the
  protection must act as if it had been signed.

The checks (`History.check`):

1. **Nothing slashable was possibly allowed**: no two possibly-allowed messages of one validator are slashable
   together. An indeterminate call is resolved by what the database holds afterwards when the test gives it
   (`durable`): a message the database recorded as allowed took effect; one it did not record never did (the
   database lost nothing: the durability check below says whether that premise holds). Without `durable`, every
   indeterminate call counts as allowed, the strictest reading. The database's own allowed records are checked
   pairwise too.
2. **Every definitely-ALLOWED is durable**: each message answered ALLOWED is among the database's allowed records.

"Slashable together" is written from the consensus specification's words, not from `sidecar.rules`, so a bug in
the rules cannot hide itself:

* proposer slashing (`process_proposer_slashing`): two block headers of one proposer for the same slot that
  differ. Headers here are their signing roots: one slot, two roots.
* attester slashing (`is_slashable_attestation_data(data_1, data_2)`): `(data_1 != data_2 and
  data_1.target.epoch == data_2.target.epoch)`, a double vote, `or (data_1.source.epoch < data_2.source.epoch and
  data_2.target.epoch < data_1.target.epoch)`, a surround vote (`data_1` surrounds `data_2`), checked both ways
  round. Attestation data are their (source, target, signing root).
"""

from __future__ import annotations

import enum
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import grpc
import psycopg

__all__ = [
    "AttestationMessage",
    "BlockMessage",
    "Call",
    "History",
    "HistoryReport",
    "Message",
    "Outcome",
    "allowed_in_database",
    "outcome_of_error",
    "slashable",
]


@dataclass(frozen=True, slots=True, order=True)
class BlockMessage:
    pubkey: bytes
    slot: int
    signing_root: bytes

    def __str__(self) -> str:
        return f"block 0x{self.pubkey.hex()[:8]} slot {self.slot} root 0x{self.signing_root.hex()[:8]}"


@dataclass(frozen=True, slots=True, order=True)
class AttestationMessage:
    pubkey: bytes
    source_epoch: int
    target_epoch: int
    signing_root: bytes

    def __str__(self) -> str:
        return (
            f"attestation 0x{self.pubkey.hex()[:8]} {self.source_epoch}->{self.target_epoch} "
            f"root 0x{self.signing_root.hex()[:8]}"
        )


Message = BlockMessage | AttestationMessage


class Outcome(enum.Enum):
    ALLOWED = "allowed"
    REFUSED = "refused"
    ERROR = "error"
    TIMED_OUT = "timed out"

    @property
    def indeterminate(self) -> bool:
        """No answer to use: the server may or may not have decided (and committed) ALLOWED."""
        return self in (Outcome.ERROR, Outcome.TIMED_OUT)

    @property
    def possibly_allowed(self) -> bool:
        return self is not Outcome.REFUSED


def outcome_of_error(error: BaseException) -> Outcome:
    """TIMED_OUT for a deadline (a `grpc.RpcError` or a `sidecar.client` error with DEADLINE_EXCEEDED), else
    ERROR."""
    code = getattr(error, "code", None)
    if callable(code):
        code = code()
    return Outcome.TIMED_OUT if code == grpc.StatusCode.DEADLINE_EXCEEDED else Outcome.ERROR


@dataclass(frozen=True, slots=True)
class Call:
    """One message of one call (a batch's items are recorded one by one, each with the batch's times)."""

    message: Message
    outcome: Outcome
    replica: str
    started: float  # time.monotonic() when sent
    ended: float  # ... and when the answer (or the error) came back
    detail: str = ""


def slashable(first: Message, second: Message) -> str | None:
    """Why signing both messages gets their validator slashed (a sentence), or None if it does not. Written
    from the consensus specification (see the module doc)."""
    if first.pubkey != second.pubkey:
        return None
    if isinstance(first, BlockMessage) and isinstance(second, BlockMessage):
        if first.slot == second.slot and first.signing_root != second.signing_root:
            return f"double proposal: {first} and {second}"
        return None
    if isinstance(first, AttestationMessage) and isinstance(second, AttestationMessage):
        if first != second and first.target_epoch == second.target_epoch:
            return f"double vote: {first} and {second}"
        for data_1, data_2 in ((first, second), (second, first)):
            if data_1.source_epoch < data_2.source_epoch and data_2.target_epoch < data_1.target_epoch:
                return f"surround vote: {data_1} surrounds {data_2}"
    return None


def slashable_pairs(messages: Iterable[Message]) -> list[str]:
    """Every slashable pair among `messages`, compared pair by pair within each validator (no index, nothing
    clever: the point is to be obviously right)."""
    by_validator: dict[bytes, set[Message]] = defaultdict(set)
    for message in messages:
        by_validator[message.pubkey].add(message)
    found = []
    for messages_of_one in by_validator.values():
        for first, second in combinations(sorted(messages_of_one, key=repr), 2):
            reason = slashable(first, second)
            if reason is not None:
                found.append(reason)
    return found


@dataclass
class HistoryReport:
    """What `History.check` found: the counts, and the violations of each check (empty when it passed)."""

    calls: int
    allowed: int
    refused: int
    indeterminate: int
    took_effect: int  # indeterminate calls whose message the database records as allowed
    slashable: list[str] = field(default_factory=list)
    lost: list[Message] = field(default_factory=list)

    @property
    def violations(self) -> list[str]:
        lost = [f"acknowledged ALLOWED but not in the database: {message}" for message in self.lost]
        return self.slashable + lost

    def __str__(self) -> str:
        summary = (
            f"{self.calls} calls: {self.allowed} allowed, {self.refused} refused, {self.indeterminate} "
            f"indeterminate ({self.took_effect} of them recorded as allowed in the database)"
        )
        if not self.violations:
            return f"{summary}; no violation"
        shown = "\n  ".join(self.violations[:20])
        more = f"\n  ... and {len(self.violations) - 20} more" if len(self.violations) > 20 else ""
        return f"{summary}; {len(self.violations)} violations:\n  {shown}{more}"


class History:
    """Every call of a test, from any number of threads (see the module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[Call] = []

    def record(
        self,
        message: Message,
        outcome: Outcome,
        replica: str = "",
        started: float | None = None,
        ended: float | None = None,
        detail: str = "",
    ) -> None:
        now = time.monotonic()
        started = now if started is None else started
        call = Call(message, outcome, replica, started, now if ended is None else ended, detail)
        with self._lock:
            self._calls.append(call)

    def attempt(
        self, replica: str, messages: Sequence[Message], call: Callable[[], Sequence[bool]]
    ) -> list[Outcome]:
        """Runs `call`, which asks `replica` about `messages` and returns, for each, whether it was allowed;
        records each message's outcome (an exception: ERROR or TIMED_OUT for every one of them, not raised) and
        returns them."""
        started = time.monotonic()
        try:
            verdicts = list(call())
        except Exception as error:
            outcome = outcome_of_error(error)
            ended = time.monotonic()
            detail = str(error).splitlines()[0] if str(error) else type(error).__name__
            for message in messages:
                self.record(message, outcome, replica, started, ended, detail)
            return [outcome] * len(messages)
        ended = time.monotonic()
        assert len(verdicts) == len(messages), f"{len(verdicts)} verdicts for {len(messages)} messages"
        outcomes = [Outcome.ALLOWED if allowed else Outcome.REFUSED for allowed in verdicts]
        for message, outcome in zip(messages, outcomes, strict=True):
            self.record(message, outcome, replica, started, ended)
        return outcomes

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def messages(self, outcome: Outcome) -> set[Message]:
        return {call.message for call in self.calls if call.outcome is outcome}

    def allowed(self) -> set[Message]:
        return self.messages(Outcome.ALLOWED)

    def possibly_allowed(self, durable: Iterable[Message] | None = None) -> set[Message]:
        """ALLOWED messages, and those of indeterminate calls: all of them, or (given what the database holds
        afterwards) those that took effect."""
        calls = self.calls
        allowed = {call.message for call in calls if call.outcome is Outcome.ALLOWED}
        indeterminate = {call.message for call in calls if call.outcome.indeterminate}
        if durable is not None:
            indeterminate &= set(durable)
        return allowed | indeterminate

    def check(self, durable: Iterable[Message] | None = None) -> HistoryReport:
        """Both checks of the module doc. `durable`: every message the database records as allowed, read
        afterwards; None skips the durability check and counts every indeterminate call as allowed."""
        calls = self.calls
        held = None if durable is None else set(durable)
        report = HistoryReport(
            calls=len(calls),
            allowed=sum(call.outcome is Outcome.ALLOWED for call in calls),
            refused=sum(call.outcome is Outcome.REFUSED for call in calls),
            indeterminate=sum(call.outcome.indeterminate for call in calls),
            took_effect=sum(call.outcome.indeterminate and call.message in (held or ()) for call in calls),
        )
        report.slashable = slashable_pairs(self.possibly_allowed(held) | (held or set()))
        if held is not None:
            report.lost = sorted(self.allowed() - held, key=repr)
        return report


def allowed_in_database(url: str) -> set[Message]:
    """Every message the sidecar's PostgreSQL database records as allowed (its `decisions` table, the audit
    trail, written in the decision's own transaction and never pruned), read directly: the evidence `check`
    wants as `durable`."""
    u64_wrap = 1 << 64  # the schema stores a u64 as the BIGINT with the same bits

    def u64(value: int) -> int:
        return value + u64_wrap if value < 0 else value

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as connection:
        rows = connection.execute(
            "SELECT kind, pubkey, slot, source_epoch, target_epoch, signing_root FROM decisions "
            "WHERE reason IN (1, 2)"  # allowed as new, allowed as a repeat
        ).fetchall()
    held: set[Message] = set()
    for kind, pubkey, slot, source, target, root in rows:
        if kind == 1:
            held.add(BlockMessage(bytes(pubkey), u64(slot), bytes(root)))
        else:
            held.add(AttestationMessage(bytes(pubkey), u64(source), u64(target), bytes(root)))
    return held
