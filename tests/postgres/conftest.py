"""The PostgreSQL tier: the fixtures of tests/support/postgres_fixtures.py, and its `slow` tests (longer failover
drills and replica kills) run only when asked for: `pytest -m slow tests/postgres`. Without a `-m` expression they
are skipped, so the default suite keeps its time budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.postgres_fixtures import postgres_database, postgres_server, postgres_url

__all__ = ["postgres_database", "postgres_server", "postgres_url"]

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.option.markexpr:
        return
    skip = pytest.mark.skip(reason="slow: run with `pytest -m slow tests/postgres`")
    for item in items:
        if item.get_closest_marker("slow") is not None and HERE in item.path.parents:
            item.add_marker(skip)
