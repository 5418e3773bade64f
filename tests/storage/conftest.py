"""The storage tier's `slow` tests (a bigger workload's crash states, sampled) run only when asked for:
`pytest -m slow tests/storage`. Without a `-m` expression they are skipped; the default suite still enumerates
every crash state of the small workload (tests/storage/test_crash_states.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.option.markexpr:
        return
    skip = pytest.mark.skip(reason="slow: run with `pytest -m slow tests/storage`")
    for item in items:
        if item.get_closest_marker("slow") is not None and HERE in item.path.parents:
            item.add_marker(skip)
