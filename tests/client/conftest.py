from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.client import SidecarClient
from tests.ops.support import Certificates, make_certificates
from tests.service.helpers import ROOT
from tests.support.server import Running, running_server

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Running]:
    """A fresh, recovered server on its own data directory (genesis validators root `ROOT`)."""
    with running_server(tmp_path / "db", ROOT) as running:
        yield running


@pytest.fixture
def client(server: Running) -> Iterator[SidecarClient]:
    with SidecarClient(server.address, genesis_validators_root=ROOT) as sidecar:
        yield sidecar


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))
