"""Injected I/O failures under a real in-process server: while the log cannot make records durable, nothing is
ALLOWED, signing calls get UNAVAILABLE and health says NOT_SERVING; once the disk heals the server comes back by
itself, and a restart finds a clean, gapless log holding every decision answered ALLOWED.

`FaultyFileOps` (tests/storage/fakes.py) is injected through `ServeConfig.fileops`. Segments are archived rather
than deleted, so the restart can read the whole audit trail and compare it with every ALLOWED answer's sequence.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from sidecar.local import LocalBackend
from sidecar.server import HEALTH_SERVICES
from sidecar.storage import FileOps, read_records
from sidecar.verify import verify_data_dir
from slashing_protection.v1 import admin_pb2, signing_pb2
from tests.storage.fakes import FaultyFileOps
from tests.support.keys import pubkey, root_for
from tests.support.requests import attestation_request, batch_request, block_request, register_request
from tests.support.server import Running, running_server

from .ledger import Attestation, Block, attestation_conflicts, block_conflicts
from .load import ALLOWED, REFUSED, conflicting_attestation, conflicting_block

GENESIS_VALIDATORS_ROOT = root_for("io-fault genesis")
VALIDATORS = [pubkey(index) for index in range(8)]
SERVER_OPTIONS: dict[str, Any] = {"segment_bytes": 4096, "archive_segments": True, "checkpoint_interval": 0}
HEALTH_TIMEOUT = 10.0  # the log retries once a second


@dataclass
class Signer:
    """Fresh, never-conflicting messages (each a validator's next target or slot), plus what was answered.
    Epochs advance per validator, so no history reaches the 64-epoch pruning window."""

    server: Running
    epochs: dict[bytes, int] = field(default_factory=dict)
    slots: dict[bytes, int] = field(default_factory=dict)
    allowed: dict[Attestation | Block, int] = field(default_factory=dict)  # message -> latest answer's sequence
    answers: list[tuple[Attestation | Block, int]] = field(default_factory=list)  # every ALLOWED answer

    def fresh_attestation(self, pubkey: bytes) -> Attestation:
        target = self.epochs[pubkey] = self.epochs.get(pubkey, 0) + 1
        return Attestation(pubkey, target - 1, target, root_for("io", pubkey.hex(), target))

    def fresh_block(self, pubkey: bytes) -> Block:
        slot = self.slots[pubkey] = self.slots.get(pubkey, 0) + 1
        return Block(pubkey, slot, root_for("io-block", pubkey.hex(), slot))

    def sign(self, message: Attestation | Block) -> signing_pb2.SigningDecision:
        """One unary call; raises grpc.RpcError as the client would see it."""
        decision: signing_pb2.SigningDecision
        if isinstance(message, Attestation):
            call = self.server.signing.CheckAndRecordAttestation
            decision = call(attestation_request(*message.item, GENESIS_VALIDATORS_ROOT), timeout=10).decision
        else:
            call = self.server.signing.CheckAndRecordBlock
            decision = call(block_request(*message.item, GENESIS_VALIDATORS_ROOT), timeout=10).decision
        if decision.verdict == ALLOWED:
            self.allowed[message] = decision.sequence
            self.answers.append((message, decision.sequence))
        return decision

    def sign_batch(self, attestations: list[Attestation]) -> list[signing_pb2.SigningDecision]:
        response = self.server.signing.CheckAndRecordAttestations(
            batch_request([a.item for a in attestations], GENESIS_VALIDATORS_ROOT), timeout=10
        )
        for attestation, decision in zip(attestations, response.decisions, strict=True):
            if decision.verdict == ALLOWED:
                self.allowed[attestation] = decision.sequence
                self.answers.append((attestation, decision.sequence))
        return list(response.decisions)

    def sign_some(self, rounds: int) -> None:
        """Unary attestations and blocks and a batch per round; every one must be ALLOWED (nothing conflicts)."""
        for _ in range(rounds):
            for key in VALIDATORS[:2]:
                assert self.sign(self.fresh_attestation(key)).verdict == ALLOWED
                assert self.sign(self.fresh_block(key)).verdict == ALLOWED
            decisions = self.sign_batch([self.fresh_attestation(pubkey) for pubkey in VALIDATORS[2:]])
            assert all(d.verdict == ALLOWED for d in decisions), decisions


def health(server: Running) -> set[int]:
    return {
        server.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        for service in HEALTH_SERVICES
    }


def wait_for_health(server: Running, status: int, while_waiting: Callable[[], None] = lambda: None) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT
    while health(server) != {status}:
        assert time.monotonic() < deadline, f"health stayed {health(server)}, wanted {status}"
        while_waiting()
        time.sleep(0.02)


def register(server: Running) -> None:
    server.admin.RegisterValidators(register_request(*VALIDATORS), timeout=10)


def assert_unavailable(call: Callable[[], object], what: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        outcome = call()
        raise AssertionError(f"{what} was answered during the fault: {outcome}")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, f"{what}: {caught.value}"


def refused_or_unavailable(call: Callable[[], signing_pb2.SigningDecision], what: str) -> None:
    """A conflicting message may be refused at once (refusals do not wait for the disk) or get UNAVAILABLE."""
    try:
        decision = call()
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, f"{what}: {error}"
    else:
        assert decision.verdict == REFUSED, f"{what} was ALLOWED during the fault: {decision}"


@dataclass(frozen=True)
class Fault:
    operation: str
    errno: int
    path_contains: str | None = None
    partial: bool = False
    # A fault that strikes only when the log rotates: calls succeed until the segment fills up.
    lazy: bool = False

    def inject(self, fileops: FaultyFileOps) -> None:
        fileops.fail(self.operation, self.errno, path_contains=self.path_contains, partial=self.partial)
        if self.operation == "fdatasync":
            # The flusher's recovery rewrites with fsync; fail it too, or the fault would heal on the first retry.
            fileops.fail("fsync", self.errno, path_contains=self.path_contains)


FAULTS = [
    pytest.param(Fault("fdatasync", errno.EIO), id="fdatasync-EIO"),
    pytest.param(Fault("fdatasync", errno.ENOSPC), id="fdatasync-ENOSPC"),
    pytest.param(Fault("write", errno.ENOSPC, partial=True), id="half-written-ENOSPC"),
    pytest.param(Fault("write", errno.EIO), id="write-EIO"),
    pytest.param(
        Fault("create_exclusive", errno.ENOSPC, path_contains=".log.tmp", lazy=True), id="rotation-ENOSPC"
    ),
    pytest.param(Fault("fsync_dir", errno.EIO, path_contains="data/log", lazy=True), id="rotation-dir-fsync-EIO"),
]


@pytest.mark.parametrize("fault", FAULTS)
def test_io_failure_refuses_until_healed_and_loses_nothing(tmp_path: Path, fault: Fault) -> None:
    data_dir = tmp_path / "data"
    fileops = FaultyFileOps()
    with running_server(data_dir, GENESIS_VALIDATORS_ROOT, fileops=fileops, **SERVER_OPTIONS) as server:
        register(server)
        signer = Signer(server)
        signer.sign_some(rounds=5)
        before_fault = dict(signer.allowed)
        assert health(server) == {health_pb2.HealthCheckResponse.SERVING}

        fault.inject(fileops)
        if fault.lazy:
            # Fill the segment until the rotation fails; answers before that are genuine (their batch was durable).
            for attempt in range(500):
                try:
                    signer.sign(signer.fresh_attestation(VALIDATORS[attempt % len(VALIDATORS)]))
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                    break
            else:
                raise AssertionError(f"{fault}: 500 calls and the fault never struck")
        allowed_before_outage = len(signer.allowed)

        # The outage: fresh messages get UNAVAILABLE, conflicting ones are refused or UNAVAILABLE, until health
        # says NOT_SERVING and after.
        def during_outage() -> None:
            assert_unavailable(lambda: signer.sign(signer.fresh_attestation(VALIDATORS[1])), "an attestation")
            assert_unavailable(lambda: signer.sign(signer.fresh_block(VALIDATORS[1])), "a block")
            assert_unavailable(
                lambda: signer.sign_batch([signer.fresh_attestation(pubkey) for pubkey in VALIDATORS[2:5]]),
                "a batch",
            )
            some_attestation = next(m for m in before_fault if isinstance(m, Attestation))
            some_block = next(m for m in before_fault if isinstance(m, Block))
            refused_or_unavailable(lambda: signer.sign(conflicting_attestation(some_attestation)), "a double vote")
            refused_or_unavailable(lambda: signer.sign(conflicting_block(some_block)), "a double proposal")

        during_outage()
        wait_for_health(server, health_pb2.HealthCheckResponse.NOT_SERVING, while_waiting=during_outage)
        for _ in range(3):
            during_outage()
        assert_unavailable(
            lambda: server.admin.SaveCheckpoint(admin_pb2.SaveCheckpointRequest(), timeout=10), "a checkpoint"
        )
        assert len(signer.allowed) == allowed_before_outage, "something was ALLOWED while the log was failed"
        assert fileops.failures[fault.operation] > 0

        fileops.heal()
        wait_for_health(server, health_pb2.HealthCheckResponse.SERVING)
        signer.sign_some(rounds=3)
        for message in before_fault:
            decision = signer.sign(message)
            assert (decision.verdict, decision.reason) == (ALLOWED, signing_pb2.REASON_ALLOWED_REPEAT), message
        server.admin.SaveCheckpoint(admin_pb2.SaveCheckpointRequest(), timeout=10)
        answers = list(signer.answers)

    assert_clean_restart(data_dir, answers)


def assert_clean_restart(data_dir: Path, answers: list[tuple[Attestation | Block, int]]) -> None:
    """Verify, the whole audit trail, and every ALLOWED answer still allowed as a repeat after a restart."""
    report = verify_data_dir(data_dir)
    assert report.ok and not any("torn" in line for line in report.lines), "\n".join(report.lines)
    sequences: list[int] = []
    for directory in (data_dir / "archive", data_dir / "log"):
        scan = read_records(directory, FileOps())
        sequences.extend(record.sequence for record in scan)
        assert scan.torn_tail is None, scan.torn_tail
    assert sequences == list(range(1, len(sequences) + 1)), "the log (archive, then log) is not gapless from 1"
    attestations = [m for m, _ in answers if isinstance(m, Attestation)]
    blocks = [m for m, _ in answers if isinstance(m, Block)]
    assert not attestation_conflicts(attestations) and not block_conflicts(blocks)
    with running_server(data_dir, GENESIS_VALIDATORS_ROOT, **SERVER_OPTIONS) as server:
        backend = server.server.holder.require()
        assert isinstance(backend, LocalBackend)
        recorded = {record.sequence: record for record in backend.store.decisions()}
        signer = Signer(server)
        for message, sequence in answers:
            record = recorded.get(sequence)
            assert record is not None and record.pubkey == message.pubkey and record.reason.allows, (
                f"answered ALLOWED as sequence {sequence}, the audit trail has {record}"
            )
            assert record.signing_root == message.signing_root, (message, record)
        for message in {m for m, _ in answers}:
            decision = signer.sign(message)
            assert (decision.verdict, decision.reason) == (ALLOWED, signing_pb2.REASON_ALLOWED_REPEAT), message
            other = (
                conflicting_attestation(message)
                if isinstance(message, Attestation)
                else conflicting_block(message)
            )
            assert signer.sign(other).verdict == REFUSED, other


def test_checkpoint_failure_leaves_signing_alone(tmp_path: Path) -> None:
    """A checkpoint that cannot be written is an operator's problem, not a reason to stop signing: the log still
    holds everything. Signing stays SERVING and ALLOWED; the checkpoint call fails; after healing it works."""
    data_dir = tmp_path / "data"
    fileops = FaultyFileOps()
    with running_server(data_dir, GENESIS_VALIDATORS_ROOT, fileops=fileops, **SERVER_OPTIONS) as server:
        register(server)
        signer = Signer(server)
        signer.sign_some(rounds=2)
        fileops.fail("fsync", errno.ENOSPC, path_contains="/checkpoints/checkpoint-")
        assert_unavailable(
            lambda: server.admin.SaveCheckpoint(admin_pb2.SaveCheckpointRequest(), timeout=10), "a checkpoint"
        )
        assert fileops.failures["fsync"] > 0
        signer.sign_some(rounds=2)
        assert health(server) == {health_pb2.HealthCheckResponse.SERVING}
        fileops.heal()
        server.admin.SaveCheckpoint(admin_pb2.SaveCheckpointRequest(), timeout=10)
        signer.sign_some(rounds=1)
        answers = list(signer.answers)
    assert_clean_restart(data_dir, answers)


def test_fdatasync_failing_alone_never_lets_an_allowed_answer_out(tmp_path: Path) -> None:
    """fdatasync fails for good while fsync works: the log's recovery (which rewrites with fsync) succeeds every
    second, so health flaps, but every group commit fails again and no answer may be ALLOWED meanwhile."""
    data_dir = tmp_path / "data"
    fileops = FaultyFileOps()
    with running_server(data_dir, GENESIS_VALIDATORS_ROOT, fileops=fileops, **SERVER_OPTIONS) as server:
        register(server)
        signer = Signer(server)
        signer.sign_some(rounds=2)
        allowed_before = len(signer.answers)
        fileops.fail("fdatasync", errno.EIO)
        deadline = time.monotonic() + 3.0  # three of the log's retries
        calls = 0
        while time.monotonic() < deadline:
            calls += 1
            pubkey = VALIDATORS[calls % len(VALIDATORS)]

            def attempt(pubkey: bytes = pubkey) -> signing_pb2.SigningDecision:
                return signer.sign(signer.fresh_attestation(pubkey))

            assert_unavailable(attempt, "an attestation")
            time.sleep(0.05)
        assert len(signer.answers) == allowed_before, "an answer was ALLOWED although no fdatasync succeeded"
        assert fileops.failures["fdatasync"] >= 2 and fileops.calls["fsync"] > 0, "the log never retried"
        fileops.heal()
        wait_for_health(server, health_pb2.HealthCheckResponse.SERVING)
        signer.sign_some(rounds=1)
        answers = list(signer.answers)
    assert_clean_restart(data_dir, answers)
