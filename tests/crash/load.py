"""Concurrent signing load over gRPC, and the after-restart check that every ALLOWED answer is still recorded.

The message space is deliberately small and shared by every thread, so threads race each other on one validator:
double votes (one target, two roots or two sources), surround votes (sources one to three epochs back) and double
proposals (one slot, two roots). Every ALLOWED answer goes into the :class:`~tests.crash.ledger.Ledger`.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import grpc

from slashing_protection.v1 import signing_pb2, signing_pb2_grpc
from tests.support.keys import root_for
from tests.support.requests import attestation_request, batch_request, block_request

from .ledger import Attestation, Block, Ledger

ALLOWED = signing_pb2.VERDICT_ALLOWED
REFUSED = signing_pb2.VERDICT_REFUSED
CALL_TIMEOUT = 10.0


@dataclass(frozen=True)
class MessageSpace:
    """The messages one load phase draws from: targets and slots in a window that moves on between phases."""

    pubkeys: tuple[bytes, ...]
    first_target: int
    target_count: int
    first_slot: int
    slot_count: int

    def attestation(self, rng: random.Random, pubkey: bytes) -> Attestation:
        target = self.first_target + rng.randrange(self.target_count)
        source = max(0, target - rng.choice((1, 1, 1, 2, 3)))
        return Attestation(
            pubkey, source, target, root_for("attestation", pubkey.hex(), source, target, rng.randrange(2))
        )

    def block(self, rng: random.Random, pubkey: bytes) -> Block:
        slot = self.first_slot + rng.randrange(self.slot_count)
        return Block(pubkey, slot, root_for("block", pubkey.hex(), slot, rng.randrange(2)))


def conflicting_attestation(attestation: Attestation) -> Attestation:
    """Same source and target, a root no load phase ever uses: a double vote against ``attestation``."""
    return Attestation(
        attestation.pubkey,
        attestation.source_epoch,
        attestation.target_epoch,
        root_for("conflict", attestation.signing_root.hex()),
    )


def conflicting_block(block: Block) -> Block:
    """Same slot, a root no load phase ever uses: a double proposal against ``block``."""
    return Block(block.pubkey, block.slot, root_for("conflict", block.signing_root.hex()))


class SigningLoad:
    """Threads that sign as fast as they can until :meth:`stop`; unary and batched calls, attestations and
    blocks. Calls that fail (the server died, or refuses with UNAVAILABLE) are counted, never retried: a real
    validator client does not sign without an answer."""

    def __init__(
        self,
        stub: signing_pb2_grpc.SlashingProtectionServiceStub,
        genesis_validators_root: bytes,
        space: MessageSpace,
        ledger: Ledger,
        seed: int,
        *,
        unary_threads: int = 2,
        batch_threads: int = 2,
        batch_size: int = 8,
    ) -> None:
        self._stub = stub
        self._root = genesis_validators_root
        self._space = space
        self._ledger = ledger
        self._batch_size = batch_size
        self._stopping = threading.Event()
        self.errors: list[BaseException] = []
        unary: list[Callable[[random.Random], None]] = [self._unary] * unary_threads
        batched: list[Callable[[random.Random], None]] = [self._batched] * batch_threads
        workers = unary + batched
        self._threads = [
            threading.Thread(target=self._run, args=(worker, random.Random(seed * 1000 + index)), daemon=True)
            for index, worker in enumerate(workers)
        ]

    def start(self) -> SigningLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(CALL_TIMEOUT + 5)
        if self.errors:
            raise AssertionError(f"a load thread failed: {self.errors[0]!r}") from self.errors[0]

    def _run(self, worker: Callable[[random.Random], None], rng: random.Random) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    worker(rng)
                except grpc.RpcError as error:
                    self._ledger.count(f"rpc {error.code().name}")
                    # The server is gone (killed) or refusing: back off a little instead of spinning.
                    self._stopping.wait(0.005)
        except BaseException as error:  # reported by stop(): an assertion in a thread must fail the test
            self.errors.append(error)

    def _unary(self, rng: random.Random) -> None:
        pubkey = rng.choice(self._space.pubkeys)
        if rng.random() < 0.7:
            attestation = self._space.attestation(rng, pubkey)
            response = self._stub.CheckAndRecordAttestation(
                attestation_request(*attestation.item, self._root), timeout=CALL_TIMEOUT
            )
            self._record_attestation(attestation, response.decision)
        else:
            block = self._space.block(rng, pubkey)
            response = self._stub.CheckAndRecordBlock(block_request(*block.item, self._root), timeout=CALL_TIMEOUT)
            self._record_block(block, response.decision)

    def _batched(self, rng: random.Random) -> None:
        pubkeys = rng.sample(self._space.pubkeys, min(self._batch_size, len(self._space.pubkeys)))
        batch = [self._space.attestation(rng, pubkey) for pubkey in pubkeys]
        response = self._stub.CheckAndRecordAttestations(
            batch_request([a.item for a in batch], self._root), timeout=CALL_TIMEOUT
        )
        assert len(response.decisions) == len(batch), "one decision per attestation in a batch"
        for attestation, decision in zip(batch, response.decisions, strict=True):
            self._record_attestation(attestation, decision)

    def _record_attestation(self, attestation: Attestation, decision: signing_pb2.SigningDecision) -> None:
        if decision.verdict == ALLOWED:
            self._ledger.allowed_attestation(attestation)
        else:
            assert decision.verdict == REFUSED, f"a decision is ALLOWED or REFUSED, got {decision}"
            self._ledger.count("refused")

    def _record_block(self, block: Block, decision: signing_pb2.SigningDecision) -> None:
        if decision.verdict == ALLOWED:
            self._ledger.allowed_block(block)
        else:
            assert decision.verdict == REFUSED, f"a decision is ALLOWED or REFUSED, got {decision}"
            self._ledger.count("refused")


def _rounds(attestations: Iterable[Attestation]) -> Iterator[list[Attestation]]:
    """Batches in which no pubkey appears twice (the contract forbids it)."""
    by_key: dict[bytes, list[Attestation]] = defaultdict(list)
    for attestation in sorted(attestations):
        by_key[attestation.pubkey].append(attestation)
    while by_key:
        yield [queue.pop() for queue in by_key.values()]
        by_key = {key: queue for key, queue in by_key.items() if queue}


BOUND_REFUSALS = {
    (REFUSED, signing_pb2.REASON_SOURCE_EPOCH_BELOW_LOWER_BOUND),
    (REFUSED, signing_pb2.REASON_TARGET_EPOCH_AT_OR_BELOW_LOWER_BOUND),
    (REFUSED, signing_pb2.REASON_SLOT_AT_OR_BELOW_LOWER_BOUND),
}


def check_everything_recorded(
    stub: signing_pb2_grpc.SlashingProtectionServiceStub,
    genesis_validators_root: bytes,
    ledger: Ledger,
    prunable: Callable[[Attestation | Block], bool] = lambda message: False,
) -> list[str]:
    """Re-sends every message ever answered ALLOWED (must be ALLOWED as a repeat) and, for each, a conflicting
    one at the same target or slot (must be REFUSED as a double vote or proposal). Returns what went wrong.

    A message for which `prunable` is true may have dropped out of the history window: it may instead be refused
    by a lower bound (the floors pruning raised), never allowed as new."""
    problems: list[str] = []
    attestations, blocks = ledger.snapshot()

    def judge(
        message: Attestation | Block, decision: signing_pb2.SigningDecision, wanted: tuple[int, int]
    ) -> None:
        outcome = (decision.verdict, decision.reason)
        if outcome == wanted or (prunable(message) and outcome in BOUND_REFUSALS):
            if decision.verdict == ALLOWED:
                if isinstance(message, Attestation):
                    ledger.allowed_attestation(message)
                else:
                    ledger.allowed_block(message)
        else:
            problems.append(_mismatch(message, wanted, decision))

    for batch in _rounds(attestations):
        for messages, wanted in (
            (batch, (ALLOWED, signing_pb2.REASON_ALLOWED_REPEAT)),
            ([conflicting_attestation(a) for a in batch], (REFUSED, signing_pb2.REASON_DOUBLE_VOTE)),
        ):
            response = stub.CheckAndRecordAttestations(
                batch_request([a.item for a in messages], genesis_validators_root), timeout=CALL_TIMEOUT
            )
            for attestation, decision in zip(messages, response.decisions, strict=True):
                judge(attestation, decision, wanted)
    for chunk_start in range(0, len(blocks), 64):
        chunk = blocks[chunk_start : chunk_start + 64]
        for block_messages, wanted in (
            (chunk, (ALLOWED, signing_pb2.REASON_ALLOWED_REPEAT)),
            ([conflicting_block(b) for b in chunk], (REFUSED, signing_pb2.REASON_DOUBLE_PROPOSAL)),
        ):
            futures = [
                stub.CheckAndRecordBlock.future(
                    block_request(*b.item, genesis_validators_root), timeout=CALL_TIMEOUT
                )
                for b in block_messages
            ]
            for block, future in zip(block_messages, futures, strict=True):
                judge(block, future.result().decision, wanted)
    return problems


def _mismatch(message: Attestation | Block, wanted: tuple[int, int], decision: signing_pb2.SigningDecision) -> str:
    wanted_text = f"{signing_pb2.Verdict.Name(wanted[0])}/{signing_pb2.Reason.Name(wanted[1])}"
    got_text = f"{signing_pb2.Verdict.Name(decision.verdict)}/{signing_pb2.Reason.Name(decision.reason)}"
    return f"{message}: wanted {wanted_text}, got {got_text} ({decision.message})"
