from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.helpers import ROOT
from tests.support.server import Running, running_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Running]:
    """A fresh, recovered server on its own data directory (genesis validators root `ROOT`)."""
    with running_server(tmp_path / "db", ROOT) as running:
        yield running
