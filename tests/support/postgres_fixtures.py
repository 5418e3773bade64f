"""Pytest fixtures over `tests.support.postgres`: one private PostgreSQL server per test session (per xdist
worker), a fresh database per test, dropped afterwards. A test directory that needs them imports them in its
conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresServer, require_postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's server (started on first use, stopped at session end). Tests that stop it must start it
    again before they end."""
    server = PostgresServer(require_postgres())
    try:
        server.initdb()
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """The name of a fresh, empty database on the session's server, emptied after the test for the next."""
    name = postgres_server.acquire_database()
    try:
        yield name
    finally:
        if not postgres_server.running:
            postgres_server.start()
        postgres_server.release_database(name)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, postgres_database: str) -> str:
    """A `postgresql://` URL of a fresh, empty database."""
    return postgres_server.url(postgres_database)
