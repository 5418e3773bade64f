"""A PostgreSQL server for the benchmark tests: the harness's own (benchmarks/postgres_server.py), once per
session, each test taking a database of its own."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import postgres_server

# Under the repository's work directory, not /tmp: its parents must be traversable by the postgres user.
WORK_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "tmp"


@pytest.fixture(scope="session")
def benchmark_postgres() -> Iterator[postgres_server.PostgresServer]:
    """A running server; skips outside CI, fails in CI, when it cannot start."""
    reason = postgres_server.unavailable_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run this test")
        pytest.skip(reason)
    directory = WORK_DIR / f"test-pg-{os.getpid()}"
    server = postgres_server.start_postgres(directory)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
