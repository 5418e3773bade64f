"""The shared backend under what breaks it in production: replicas racing for one key, the database killed
under load, a connection cut between COMMIT and its reply. Real servers, real gRPC clients, a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2

from sidecar.backend import DatabaseLocation, open_backend
from sidecar.errors import BackendUnavailableError
from sidecar.postgres import PostgresBackend
from sidecar.rules import Reason
from sidecar.store import StoreOptions
from slashing_protection.v1 import signing_pb2
from tests.support.history_checker import (
    AttestationMessage,
    BlockMessage,
    History,
    Outcome,
    allowed_in_database,
    outcome_of_error,
)
from tests.support.keys import ZERO_ROOT, pubkey, signing_root
from tests.support.postgres import PostgresServer, wait_until
from tests.support.requests import attestation_request, block_request, register_request
from tests.support.server import Running, running_server
from tests.support.tcp_proxy import TcpProxy

ROOT = ZERO_ROOT
PUBKEY = pubkey(0xB1)
ALLOWED = signing_pb2.VERDICT_ALLOWED


@contextlib.contextmanager
def replicas(url: str, count: int) -> Iterator[list[Running]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(running_server(None, ROOT, database_url=url)) for _ in range(count)]


def block(server: Running, slot: int, root: bytes, timeout: float = 10) -> signing_pb2.SigningDecision:
    response: signing_pb2.CheckAndRecordBlockResponse = server.signing.CheckAndRecordBlock(
        block_request(PUBKEY, slot, root, ROOT), timeout=timeout
    )
    return response.decision


def attestation(server: Running, source: int, target: int, root: bytes) -> signing_pb2.SigningDecision:
    response: signing_pb2.CheckAndRecordAttestationResponse = server.signing.CheckAndRecordAttestation(
        attestation_request(PUBKEY, source, target, root, ROOT), timeout=10
    )
    return response.decision


def serving(server: Running) -> bool:
    try:
        status = server.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
    except grpc.RpcError:
        return False
    return bool(status == health_pb2.HealthCheckResponse.SERVING)


def test_three_replicas_race_and_exactly_one_is_allowed_per_round(postgres_url: str) -> None:
    """Nine conflicting requests per round (a block at one slot with nine roots, then a vote at one target with
    nine roots, then nine votes surrounding each other), spread over three replicas on one database, released
    together: exactly one ALLOWED each round, and the database holds exactly the allowed ones."""
    rounds, contenders = 12, 9
    history = History()
    with replicas(postgres_url, 3) as servers:
        servers[0].admin.RegisterValidators(register_request(PUBKEY))
        allowed_blocks = []
        with ThreadPoolExecutor(contenders) as pool:
            for number in range(1, rounds + 1):
                barrier = threading.Barrier(contenders)

                def contend_block(index: int, slot: int = number, barrier: threading.Barrier = barrier) -> bool:
                    barrier.wait()
                    message = BlockMessage(PUBKEY, slot, signing_root(index + 1))
                    (outcome,) = history.attempt(
                        f"replica-{index % 3}",
                        [message],
                        lambda: [block(servers[index % 3], slot, message.signing_root).verdict == ALLOWED],
                    )
                    return outcome is Outcome.ALLOWED

                verdicts = list(pool.map(contend_block, range(contenders)))
                assert verdicts.count(True) == 1, f"round {number}: {verdicts.count(True)} allowed"
                allowed_blocks.append((number, signing_root(verdicts.index(True) + 1)))

                def contend_vote(
                    index: int, target: int = 2 * number, barrier: threading.Barrier = barrier
                ) -> bool:
                    barrier.wait()
                    # Alternately the same target (double votes) and surrounding spans (surround votes).
                    source = target - 1 if index % 2 else max(0, target - 1 - index)
                    message = AttestationMessage(PUBKEY, source, target + index % 2, signing_root(index + 1))
                    (outcome,) = history.attempt(
                        f"replica-{index % 3}",
                        [message],
                        lambda: [
                            attestation(
                                servers[index % 3], source, message.target_epoch, message.signing_root
                            ).verdict
                            == ALLOWED
                        ],
                    )
                    return outcome is Outcome.ALLOWED

                barrier.reset()
                votes = list(pool.map(contend_vote, range(contenders)))
                assert votes.count(True) >= 1
                # Every pair of allowed votes of the whole run is checked for slashability below.
        with psycopg.connect(postgres_url) as connection:
            held = connection.execute("SELECT slot, signing_root FROM blocks ORDER BY slot").fetchall()
            votes_held = connection.execute("SELECT source_epoch, target_epoch FROM attestations").fetchall()
            allowed = connection.execute(
                "SELECT count(*) FROM decisions WHERE kind = 1 AND reason IN (1, 2)"
            ).fetchone()
        assert [(slot, bytes(root)) for slot, root in held] == allowed_blocks
        assert allowed == (rounds,)
        for i, (s1, t1) in enumerate(votes_held):
            for s2, t2 in votes_held[i + 1 :]:
                assert t1 != t2, "double vote allowed"
                assert not (s1 < s2 and t2 < t1) and not (s2 < s1 and t1 < t2), "surround vote allowed"
    report = history.check(allowed_in_database(postgres_url))
    assert report.indeterminate == 0 and report.violations == [], str(report)


def test_database_killed_under_load_allows_nothing_while_down_loses_nothing_and_recovers(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """`pg_ctl stop -m immediate` while two replicas sign: calls sent while it is down are never ALLOWED,
    health goes NOT_SERVING, every ALLOWED answered is in the database after its crash recovery, and both
    replicas serve again by themselves within seconds of the restart. Each proposal is followed by a double
    proposal of the same slot through the other replica, and the history checker goes over every call."""
    outcomes: list[tuple[float, float, int, str]] = []
    history = History()
    stop = threading.Event()
    with replicas(postgres_url, 2) as servers:
        servers[0].admin.RegisterValidators(register_request(PUBKEY))

        def propose(index: int, slot: int, root: bytes) -> str:
            """One call, recorded; returns "allowed", "refused" or the status's name."""
            sent = time.monotonic()
            try:
                decision = block(servers[index], slot, root, timeout=3)
                outcome = "allowed" if decision.verdict == signing_pb2.VERDICT_ALLOWED else "refused"
                recorded = Outcome.ALLOWED if outcome == "allowed" else Outcome.REFUSED
            except grpc.RpcError as error:
                outcome = error.code().name
                recorded = outcome_of_error(error)
            history.record(BlockMessage(PUBKEY, slot, root), recorded, f"replica-{index}", sent, time.monotonic())
            return outcome

        def load(index: int) -> None:
            slot = index + 1
            while not stop.is_set():
                sent = time.monotonic()
                outcome = propose(index, slot, signing_root(slot))
                outcomes.append((sent, time.monotonic(), slot, outcome))
                # A double proposal through the other replica: refused whenever the first took effect.
                propose(1 - index, slot, signing_root(slot + 10**6))
                slot += 2
                time.sleep(0.01)

        threads = [threading.Thread(target=load, args=(index,)) for index in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        postgres_server.stop("immediate")
        down_from = time.monotonic()
        wait_until(lambda: not any(serving(server) for server in servers), 5, what="NOT_SERVING")
        time.sleep(1.0)
        down_to = time.monotonic()
        postgres_server.start()
        restarted = time.monotonic()
        wait_until(lambda: all(serving(server) for server in servers), 10, what="SERVING again")
        recovered_in = time.monotonic() - restarted
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(15)
        after = [outcome for sent, _, _, outcome in outcomes if sent > restarted + recovered_in]
    assert "allowed" in after, "no decision allowed after recovery"
    while_down = [o for sent, replied, _, o in outcomes if sent > down_from and replied < down_to]
    assert while_down and "allowed" not in while_down
    assert set(while_down) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    allowed_slots = {slot for _, _, slot, outcome in outcomes if outcome == "allowed"}
    with psycopg.connect(postgres_url) as connection:
        held = {slot for (slot,) in connection.execute("SELECT slot FROM blocks").fetchall()}
    assert allowed_slots <= held, f"allowed but lost: {sorted(allowed_slots - held)}"
    assert recovered_in < 10
    report = history.check(allowed_in_database(postgres_url))
    assert report.violations == [], str(report)


def test_a_connection_cut_after_commit_is_never_allowed_and_a_retry_is_a_repeat(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    """The COMMIT reaches the server, its reply never comes back: the call raises (never ALLOWED on a guess);
    the commit did happen, so the same message retried is a repeat and another root a double proposal. The
    proxy also measures the round trips of a decision on a warm cache: two."""
    proxy = TcpProxy(postgres_server.port)
    url = proxy.url(postgres_database)

    async def scenario() -> tuple[int, int]:
        backend = await open_backend(DatabaseLocation(url), ROOT, StoreOptions())
        assert isinstance(backend, PostgresBackend)
        try:
            await backend.register_validators([PUBKEY])
            assert (await backend.check_and_record_block(PUBKEY, 1, signing_root(1)))[
                0
            ].reason is Reason.ALLOWED_NEW
            # Round trips per decision on a warm cache: the fewest over a few decisions (a connection the pool
            # opens meanwhile in the background would add its own).
            costs = []
            for epoch in range(1, 6):
                before = proxy.flights
                await backend.check_and_record_attestation(PUBKEY, epoch, epoch + 1, signing_root(epoch))
                costs.append(proxy.flights - before)
            before = proxy.flights
            await backend.check_and_record_block(PUBKEY, 2, signing_root(2))
            round_trips = min(*costs, proxy.flights - before)
            batch_costs = []
            for epoch in range(6, 9):
                before = proxy.flights
                await backend.check_and_record_attestations(
                    [(PUBKEY, epoch, epoch + 1, signing_root(epoch + 1))]  # type: ignore[list-item]
                )
                batch_costs.append(proxy.flights - before)
            batch_round_trips = min(batch_costs)
            proxy.cut_commit_reply()
            with pytest.raises(BackendUnavailableError):
                await backend.check_and_record_block(PUBKEY, 3, signing_root(3))
            assert proxy.cuts == 1
            deadline = time.monotonic() + 10
            while True:
                try:
                    decision, _ = await backend.check_and_record_block(PUBKEY, 3, signing_root(3))
                    break
                except BackendUnavailableError:
                    assert time.monotonic() < deadline, "no recovery after the cut"
                    await asyncio.sleep(0.1)
            assert decision.reason is Reason.ALLOWED_REPEAT
            assert (await backend.check_and_record_block(PUBKEY, 3, signing_root(4)))[
                0
            ].reason is Reason.DOUBLE_PROPOSAL
            return round_trips, batch_round_trips
        finally:
            await backend.close()

    try:
        round_trips, batch_round_trips = asyncio.run(scenario())
    finally:
        proxy.close()
    assert round_trips == 2
    assert batch_round_trips == 2
