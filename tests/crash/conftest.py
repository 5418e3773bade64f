"""The crash tier's `slow` tests (more kills, more seeds) run only when asked for: `pytest -m slow tests/crash`.

Without a `-m` expression they are skipped, so the default suite keeps its time budget; it still kills a server at
least 28 times (tests/crash/test_kill9.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.option.markexpr:
        return
    skip = pytest.mark.skip(reason="slow: run with `pytest -m slow tests/crash`")
    for item in items:
        if item.get_closest_marker("slow") is not None and HERE in item.path.parents:
            item.add_marker(skip)
