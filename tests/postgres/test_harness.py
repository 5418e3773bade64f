"""The test harness itself: a private server starts as an unprivileged user, serves a fresh database per test,
survives `pg_ctl stop -m immediate` and comes back on the same port; a standby streams, synchronously when named,
and is promoted after its primary crashed."""

from __future__ import annotations

import psycopg

from tests.support.postgres import PostgresServer, multi_host_url, private_server, wait_until


def test_a_fresh_database_per_test_on_a_private_server(postgres_server: PostgresServer, postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        user, fsync = connection.execute("SELECT current_user, current_setting('fsync')").fetchone() or ("", "")
        assert (user, fsync) == ("postgres", "on")
        owner = connection.execute(
            "SELECT usename FROM pg_stat_activity WHERE backend_type = 'checkpointer'"
        ).fetchone()
        assert owner is not None
        count = connection.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert count == (0,)


def test_immediate_stop_and_restart_keep_committed(postgres_server: PostgresServer, postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE t (x BIGINT)")
        connection.execute("INSERT INTO t VALUES (1)")
    postgres_server.stop("immediate")
    assert not postgres_server.running
    postgres_server.start()
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        assert connection.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_a_synchronous_standby_has_every_commit_after_a_crash_and_promotion() -> None:
    """The failover drill's harness: a standby streams under its application name (so the primary can name it
    synchronous), `crash()` leaves no server process behind, and once promoted the standby holds every commit
    the primary acknowledged and takes writes (it waits for no standby of its own)."""
    with private_server() as primary:
        standby = primary.create_standby("standby")
        try:
            wait_until(lambda: primary.replication_state() == ("streaming", "async"), 30, what="streaming")
            primary.set_setting("synchronous_standby_names", "'standby'")
            wait_until(lambda: primary.replication_state() == ("streaming", "sync"), 30, what="synchronous")
            with psycopg.connect(primary.url(), autocommit=True) as connection:
                connection.execute("CREATE TABLE t (x BIGINT)")
                for x in range(100):
                    connection.execute("INSERT INTO t VALUES (%s)", (x,))
            primary.crash()  # returns once the postmaster and every backend are gone
            assert not primary.running
            standby.promote()
            with psycopg.connect(multi_host_url([primary, standby], "postgres"), autocommit=True) as connection:
                assert connection.execute("SELECT count(*) FROM t").fetchone() == (100,)
                connection.execute("INSERT INTO t VALUES (100)")
        finally:
            standby.destroy()
