"""Races through the real server: 16 threads, each on its own channel, released together by a barrier, send
conflicting messages for one validator. Exactly one may be allowed, and what is recorded is the winner's."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar.domain import Pubkey
from slashing_protection.v1 import signing_pb2, signing_pb2_grpc
from tests.service.helpers import ROOT, export_document, register, summary
from tests.support.keys import hex0x, pubkey, signing_root
from tests.support.requests import attestation_request, batch_request, block_request
from tests.support.server import Running, running_server

THREADS = 16
ROUNDS = 10
R = signing_pb2

Call = Callable[[signing_pb2_grpc.SlashingProtectionServiceStub, int], list[signing_pb2.SigningDecision]]


class Racers:
    """THREADS client threads with a channel each; `race` runs one call per thread, all released at once."""

    def __init__(self, address: str) -> None:
        self.channels = [grpc.insecure_channel(address) for _ in range(THREADS)]
        self.stubs = [signing_pb2_grpc.SlashingProtectionServiceStub(channel) for channel in self.channels]
        for channel in self.channels:
            grpc.channel_ready_future(channel).result(timeout=10)
        self.pool = ThreadPoolExecutor(max_workers=THREADS)

    def race(self, call: Call) -> list[list[signing_pb2.SigningDecision]]:
        barrier = threading.Barrier(THREADS, timeout=10)

        def run(index: int) -> list[signing_pb2.SigningDecision]:
            barrier.wait()
            return call(self.stubs[index], index)

        return list(self.pool.map(run, range(THREADS)))

    def close(self) -> None:
        self.pool.shutdown()
        for channel in self.channels:
            channel.close()


@pytest.fixture(scope="module")
def racing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Racers]]:
    directory: Path = tmp_path_factory.mktemp("race") / "db"
    with running_server(directory, ROOT) as server:
        racers = Racers(server.address)
        try:
            yield server, racers
        finally:
            racers.close()


_next_key = iter(range(1, 100_000))


def fresh_keys(server: Running, count: int) -> list[Pubkey]:
    keys = [pubkey(next(_next_key)) for _ in range(count)]
    register(server, *keys)
    return keys


def fresh_key(server: Running) -> bytes:
    return fresh_keys(server, 1)[0]


def only(decisions: list[signing_pb2.SigningDecision]) -> signing_pb2.SigningDecision:
    (decision,) = decisions
    return decision


def allowed_indexes(results: list[signing_pb2.SigningDecision]) -> list[int]:
    return [index for index, decision in enumerate(results) if decision.verdict == R.VERDICT_ALLOWED]


def check_one_winner(results: list[signing_pb2.SigningDecision], losing_reasons: set[int]) -> int:
    winners = allowed_indexes(results)
    assert len(winners) == 1, [R.Reason.Name(d.reason) for d in results]
    (winner,) = winners
    assert results[winner].reason == R.REASON_ALLOWED_NEW
    losers = [d for i, d in enumerate(results) if i != winner]
    assert {d.reason for d in losers} <= losing_reasons, [R.Reason.Name(d.reason) for d in losers]
    assert all(d.message for d in results)
    assert len({d.sequence for d in results}) == THREADS
    return winner


@pytest.mark.parametrize("round_number", range(ROUNDS))
def test_double_proposal_race(racing: tuple[Running, Racers], round_number: int) -> None:
    server, racers = racing
    key = fresh_key(server)

    def propose(stub: Any, index: int) -> list[signing_pb2.SigningDecision]:
        return [
            stub.CheckAndRecordBlock(block_request(key, 100 + round_number, signing_root(index), ROOT)).decision
        ]

    results = [only(r) for r in racers.race(propose)]

    winner = check_one_winner(results, {R.REASON_DOUBLE_PROPOSAL})
    assert summary(server, key).block_count == 1
    assert hex0x(signing_root(winner)) in export_document(server, [key]).decode()


@pytest.mark.parametrize("round_number", range(ROUNDS))
def test_double_vote_race(racing: tuple[Running, Racers], round_number: int) -> None:
    server, racers = racing
    key = fresh_key(server)
    target = 10 + round_number

    def vote(stub: Any, index: int) -> list[signing_pb2.SigningDecision]:
        request = attestation_request(key, target - 1, target, signing_root(index), ROOT)
        return [stub.CheckAndRecordAttestation(request).decision]

    results = [only(r) for r in racers.race(vote)]

    winner = check_one_winner(results, {R.REASON_DOUBLE_VOTE})
    assert summary(server, key).attestation_count == 1
    assert hex0x(signing_root(winner)) in export_document(server, [key]).decode()


@pytest.mark.parametrize("round_number", range(ROUNDS))
def test_surround_vote_race(racing: tuple[Running, Racers], round_number: int) -> None:
    """Thread i votes (i, 100 - i): every pair is nested, so any two votes surround one another."""
    server, racers = racing
    key = fresh_key(server)
    base = 1000 * round_number

    def vote(stub: Any, index: int) -> list[signing_pb2.SigningDecision]:
        request = attestation_request(key, base + index, base + 100 - index, signing_root(index), ROOT)
        return [stub.CheckAndRecordAttestation(request).decision]

    results = [only(r) for r in racers.race(vote)]

    winner = check_one_winner(results, {R.REASON_SURROUNDS_RECORDED_VOTE, R.REASON_SURROUNDED_BY_RECORDED_VOTE})
    state = summary(server, key)
    assert state.attestation_count == 1
    assert (state.lowest_source_epoch, state.highest_target_epoch) == (base + winner, base + 100 - winner)


@pytest.mark.parametrize("round_number", range(ROUNDS))
def test_double_vote_race_inside_batches(racing: tuple[Running, Racers], round_number: int) -> None:
    """Each thread's batch holds a vote of its own (always allowed) and the contested one."""
    server, racers = racing
    contested, *own = fresh_keys(server, THREADS + 1)

    def batch(stub: Any, index: int) -> list[signing_pb2.SigningDecision]:
        request = batch_request(
            [(own[index], 1, 2, signing_root(index)), (contested, 1, 2, signing_root(index))], ROOT
        )
        return list(stub.CheckAndRecordAttestations(request).decisions)

    results = racers.race(batch)

    assert all(pair[0].reason == R.REASON_ALLOWED_NEW for pair in results)
    contested_results = [pair[1] for pair in results]
    winner = check_one_winner(contested_results, {R.REASON_DOUBLE_VOTE})
    for pair in results:
        assert pair[1].sequence == pair[0].sequence + 1  # a batch takes one run of sequence numbers
    assert summary(server, contested).attestation_count == 1
    assert hex0x(signing_root(winner)) in export_document(server, [contested]).decode()
