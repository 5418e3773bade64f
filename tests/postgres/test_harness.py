"""The test harness itself: a private server starts as an unprivileged user, serves a fresh database per test,
survives `pg_ctl stop -m immediate` and comes back on the same port."""

from __future__ import annotations

import psycopg

from tests.support.postgres import PostgresServer


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
