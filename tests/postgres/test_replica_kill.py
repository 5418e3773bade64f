"""`kill -9` of one sidecar replica under load, while two others serve from the same PostgreSQL database.

The replica is caught in the middle of a decision: it is frozen (SIGSTOP) at moments until one of its database
sessions is found inside a decision's transaction, holding validators' row locks and waiting for the replica's
second round trip; then it is killed (SIGKILL). The kernel closes its sockets, PostgreSQL ends those sessions
and their locks go with them: the validators it held are signed for through the other replicas within seconds.
Meanwhile every call to the other replicas is answered, nothing acknowledged ALLOWED is lost, and the history
checker finds nothing slashable over every call made.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import psycopg
import pytest

from tests.support.history_checker import BlockMessage, History, Outcome, allowed_in_database
from tests.support.keys import pubkey
from tests.support.postgres import wait_until
from tests.support.signing_load import Replica, SigningLoad, ask, replica_processes, tcp_ports_of

ROOT = bytes.fromhex("4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95")
VALIDATORS = 48
RELEASE_TIMEOUT = 10.0  # generous: PostgreSQL ends a session whose socket closed at once
FRESH_SLOT = 10**6  # far above any slot of the load


def freeze_holding_row_locks(victim: Replica, url: str) -> tuple[list[int], set[bytes]]:
    """SIGSTOPs `victim` at a moment one of its sessions holds row locks inside a decision's transaction ('idle in
    transaction': it sent round trip 1 and waits for round trip 2, which the frozen replica will never send).
    Returns those sessions' backend pids and the validators they hold locked (rows whose xmax is their
    transaction's). Tries again, thawing the replica in between, until it catches one."""
    pid = victim.process.process.pid
    rng = random.Random(0)
    with psycopg.connect(url, autocommit=True) as connection:
        for _ in range(500):
            os.kill(pid, signal.SIGSTOP)
            rows = connection.execute(
                "SELECT pid, backend_xid::text FROM pg_stat_activity WHERE client_port = ANY(%s) "
                "AND state = 'idle in transaction' AND backend_xid IS NOT NULL",
                (sorted(tcp_ports_of(pid)),),
            ).fetchall()
            if rows:
                locked = connection.execute(
                    "SELECT pubkey FROM validators WHERE xmax::text = ANY(%s)", ([xid for _, xid in rows],)
                ).fetchall()
                if locked:
                    return [backend for backend, _ in rows], {bytes(pubkey) for (pubkey,) in locked}
            os.kill(pid, signal.SIGCONT)
            time.sleep(rng.uniform(0.005, 0.05))
    raise AssertionError("never caught the replica holding row locks in 500 tries")


def run_replica_kill(tmp_path: Path, url: str, seconds_before: float, seconds_after: float) -> None:
    history = History()
    validators = [pubkey(index) for index in range(VALIDATORS)]
    with replica_processes(url, 3, ROOT, tmp_path) as replicas:
        victim, survivors = replicas[0], replicas[1:]
        victim.client.register(validators)
        with SigningLoad(replicas, history, validators, seed=3) as load:
            wait_until(lambda: len(history.allowed()) >= 100, 120, what="100 ALLOWED answers")
            time.sleep(seconds_before)
            backends, locked = freeze_holding_row_locks(victim, url)
            killed = time.monotonic()
            victim.process.kill()
            load.leave_out(victim)
            with psycopg.connect(url, autocommit=True) as connection:

                def released() -> bool:
                    query = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)"
                    return connection.execute(query, (backends,)).fetchone() == (0,)

                wait_until(released, RELEASE_TIMEOUT, what="the killed replica's sessions to end")
            sessions_ended = time.monotonic() - killed
            # The validators it held, signed for through the others while the load goes on.
            for index, key in enumerate(sorted(locked)):
                message = BlockMessage(key, FRESH_SLOT + index, bytes([index + 1]) * 32)
                (outcome,) = ask(survivors[index % 2], history, [message], timeout=RELEASE_TIMEOUT)
                assert outcome is Outcome.ALLOWED, f"{message} via a surviving replica: {outcome}"
            locked_signed = time.monotonic() - killed
            time.sleep(seconds_after)
    survivor_names = {replica.name for replica in survivors}
    calls = history.calls
    unanswered = [c for c in calls if c.replica in survivor_names and c.outcome.indeterminate]
    in_flight = {c.message.pubkey for c in calls if c.replica == victim.name and c.started < killed < c.ended}
    report = history.check(allowed_in_database(url))
    print(
        f"\nreplica kill: caught holding the row locks of {len(locked)} validators; its sessions ended "
        f"{sessions_ended:.2f} s after the kill and those validators were signed for through the other replicas "
        f"{locked_signed:.2f} s after it; {len(in_flight)} validators had a call in flight on it; "
        f"{len(unanswered)} calls to the other replicas went unanswered; history: {report}"
    )
    assert unanswered == [], [f"{c.replica}: {c.message}: {c.outcome.value} {c.detail}" for c in unanswered[:5]]
    assert report.violations == [], str(report)


def test_a_replica_killed_under_load_loses_nothing_and_its_locks_are_released(
    tmp_path: Path, postgres_url: str
) -> None:
    run_replica_kill(tmp_path, postgres_url, seconds_before=1.0, seconds_after=1.0)


@pytest.mark.slow
def test_a_replica_killed_under_a_longer_load(tmp_path: Path, postgres_url: str) -> None:
    run_replica_kill(tmp_path, postgres_url, seconds_before=20.0, seconds_after=20.0)
