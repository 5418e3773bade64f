"""The global high watermark on a shared database: every replica sees a Set the moment it has returned (no cache
to go stale), a Set waits for the decisions in flight and a decision waiting behind a Set reads what it wrote,
a decision still costs two round trips with a watermark set, and a schema-1 database is migrated to 2.
Real replicas, real gRPC clients, a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import psycopg

from sidecar.backend import DatabaseLocation, open_backend
from sidecar.postgres import PostgresBackend
from sidecar.postgres.backend import HIGH_WATERMARK_LOCK_KEY
from sidecar.postgres.schema import META_TABLE, MIGRATIONS, SCHEMA_VERSION
from sidecar.rules import HighWatermark, Reason
from sidecar.store import StoreOptions
from slashing_protection.v1 import admin_pb2, signing_pb2
from tests.postgres.test_resilience import PUBKEY, ROOT, attestation, block, replicas
from tests.support.keys import signing_root
from tests.support.postgres import PostgresServer
from tests.support.requests import register_request
from tests.support.tcp_proxy import TcpProxy

BEYOND = signing_pb2.REASON_AT_OR_BEYOND_HIGH_WATERMARK


def test_a_set_is_seen_by_every_replica_as_soon_as_it_returns(postgres_url: str) -> None:
    with replicas(postgres_url, 2) as (first, second):
        first.admin.RegisterValidators(register_request(PUBKEY))
        # The second replica decides first, so it holds a cached history of the key.
        assert block(second, 99, signing_root(1)).reason == signing_pb2.REASON_ALLOWED_NEW
        assert attestation(second, 2, 3, signing_root(2)).reason == signing_pb2.REASON_ALLOWED_NEW
        response = first.admin.SetHighWatermark(admin_pb2.SetHighWatermarkRequest(slot=100, epoch=4), timeout=10)
        assert (response.set, response.slot, response.epoch) == (True, 100, 4)
        assert block(second, 100, signing_root(3)).reason == BEYOND
        assert attestation(second, 3, 4, signing_root(4)).reason == BEYOND
        got = second.admin.GetHighWatermark(admin_pb2.GetHighWatermarkRequest(), timeout=10)
        assert (got.set, got.slot, got.epoch) == (True, 100, 4)
        # Moved up on the second replica: the first one signs up to it at once.
        second.admin.SetHighWatermark(admin_pb2.SetHighWatermarkRequest(slot=200, epoch=6), timeout=10)
        assert block(first, 100, signing_root(5)).reason == signing_pb2.REASON_ALLOWED_NEW
        assert block(first, 200, signing_root(6)).reason == BEYOND
        removed = first.admin.RemoveHighWatermark(admin_pb2.RemoveHighWatermarkRequest(), timeout=10)
        assert (removed.set, removed.slot, removed.epoch) == (False, 0, 0)
        assert block(second, 200, signing_root(6)).reason == signing_pb2.REASON_ALLOWED_NEW


def test_a_set_waits_for_decisions_in_flight_and_a_decision_behind_it_reads_what_it_wrote(
    postgres_url: str,
) -> None:
    """A session stands in for each side: holding the lock shared, it is a decision in flight (the Set waits for
    it); holding it alone while it writes a watermark, it is a Set in progress (a decision waits, then decides
    under the new value, which only a snapshot taken after the wait can see)."""

    async def scenario() -> None:
        backend = await open_backend(DatabaseLocation(postgres_url), ROOT, StoreOptions())
        assert isinstance(backend, PostgresBackend)
        try:
            await backend.register_validators([PUBKEY])
            with psycopg.connect(postgres_url, autocommit=True) as in_flight:
                in_flight.execute("BEGIN")
                in_flight.execute("SELECT pg_advisory_xact_lock_shared(%s)", (HIGH_WATERMARK_LOCK_KEY,))
                setting = asyncio.ensure_future(backend.set_high_watermark(3200, 100))
                await asyncio.sleep(0.5)
                assert not setting.done(), "the Set returned while a decision that read the old value was open"
                in_flight.execute("COMMIT")
                assert await asyncio.wait_for(setting, 5) == HighWatermark(3200, 100)
            await backend.remove_high_watermark()

            with psycopg.connect(postgres_url, autocommit=True) as setter:
                setter.execute("BEGIN")
                setter.execute("SELECT pg_advisory_xact_lock(%s)", (HIGH_WATERMARK_LOCK_KEY,))
                setter.execute("INSERT INTO high_watermark (slot, epoch) VALUES (10, 1)")
                deciding = asyncio.ensure_future(backend.check_and_record_block(PUBKEY, 100, signing_root(1)))
                await asyncio.sleep(0.5)
                assert not deciding.done(), "a decision went ahead while a Set held the watermark lock"
                setter.execute("COMMIT")
                decision, _ = await asyncio.wait_for(deciding, 5)
            assert decision.reason is Reason.AT_OR_BEYOND_HIGH_WATERMARK
        finally:
            await backend.close()

    asyncio.run(scenario())


def test_a_decision_costs_two_round_trips_with_a_watermark_set(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    proxy = TcpProxy(postgres_server.port)

    async def scenario() -> tuple[int, int]:
        backend = await open_backend(DatabaseLocation(proxy.url(postgres_database)), ROOT, StoreOptions())
        try:
            await backend.register_validators([PUBKEY])
            await backend.set_high_watermark(3200, 100)
            assert (await backend.check_and_record_block(PUBKEY, 1, signing_root(1)))[
                0
            ].reason is Reason.ALLOWED_NEW
            costs = []
            for epoch in range(1, 6):
                before = proxy.flights
                decision, _ = await backend.check_and_record_attestation(
                    PUBKEY, epoch, epoch + 1, signing_root(epoch)
                )
                assert decision.reason is Reason.ALLOWED_NEW
                costs.append(proxy.flights - before)
            before = proxy.flights
            decision, _ = await backend.check_and_record_block(PUBKEY, 3200, signing_root(2))
            assert decision.reason is Reason.AT_OR_BEYOND_HIGH_WATERMARK
            refused = proxy.flights - before
            return min(costs), refused
        finally:
            await backend.close()

    try:
        allowed, refused = asyncio.run(scenario())
    finally:
        proxy.close()
    assert (allowed, refused) == (2, 2)


def test_a_schema_1_database_is_migrated_and_keeps_its_history(postgres_url: str) -> None:
    assert SCHEMA_VERSION == 2
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        # What 0.2.0 created: schema 1, with a key registered.
        connection.execute(META_TABLE)
        version_1 = dict(MIGRATIONS)[1]
        for statement in version_1:
            connection.execute(statement)
        connection.execute(
            "INSERT INTO sidecar_meta (schema_version, genesis_validators_root) VALUES (1, %s)", (ROOT,)
        )
        connection.execute("INSERT INTO validators (pubkey, registered_sequence) VALUES (%s, 1)", (PUBKEY,))

    async def scenario() -> None:
        backend = await open_backend(DatabaseLocation(postgres_url), None, StoreOptions())
        try:
            assert backend.startup.validators == 1 and backend.startup.high_watermark is None
            assert await backend.high_watermark() is None
            await backend.set_high_watermark(64, 2)
            assert (await backend.check_and_record_block(PUBKEY, 63, signing_root(1)))[
                0
            ].reason is Reason.ALLOWED_NEW
            assert (await backend.check_and_record_block(PUBKEY, 64, signing_root(2)))[0].reason is (
                Reason.AT_OR_BEYOND_HIGH_WATERMARK
            )
        finally:
            await backend.close()

    started = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - started < 30
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        row = connection.execute("SELECT schema_version FROM sidecar_meta").fetchone()
        assert row is not None and row[0] == 2
        assert connection.execute("SELECT slot, epoch FROM high_watermark").fetchall() == [(64, 2)]
        # The table's checks are the backstop behind the seam's: no row a sidecar could not read back.
        for values in ((-1, 0), (5, 6)):
            with connection.transaction(), connection.cursor() as cursor:
                try:
                    cursor.execute("UPDATE high_watermark SET slot = %s, epoch = %s", values)
                except psycopg.errors.CheckViolation:
                    pass
                else:
                    raise AssertionError(f"the table took {values}")
