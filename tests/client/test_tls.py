"""TLS and mutual TLS from the client's options, PEM given as bytes or as paths, against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.client import (
    NO_RETRY,
    AsyncSidecarClient,
    ServingStatus,
    SidecarClient,
    SidecarUnavailableError,
    TlsOptions,
)
from sidecar.errors import ConfigurationError
from tests.ops.support import Certificates
from tests.service.helpers import ROOT
from tests.support.keys import pubkey, signing_root
from tests.support.server import Running, running_server


@pytest.fixture
def tls_server(tmp_path: Path, certs: Certificates) -> Iterator[Running]:
    with running_server(
        tmp_path / "db", ROOT, tls_cert=certs.path("server.crt"), tls_key=certs.path("server.key")
    ) as server:
        yield server


@pytest.fixture
def mtls_server(tmp_path: Path, certs: Certificates) -> Iterator[Running]:
    with running_server(
        tmp_path / "db",
        ROOT,
        tls_cert=certs.path("server.crt"),
        tls_key=certs.path("server.key"),
        tls_client_ca=certs.path("ca.crt"),
    ) as server:
        yield server


def test_tls_with_the_ca_as_bytes(tls_server: Running, certs: Certificates) -> None:
    with SidecarClient(
        tls_server.address, genesis_validators_root=ROOT, tls=TlsOptions(ca=certs.ca.cert)
    ) as client:
        assert client.health() is ServingStatus.SERVING
        client.register([pubkey(1)])
        assert client.check_block(pubkey(1), 1, signing_root(1)).allowed


def test_tls_refuses_a_server_the_ca_did_not_sign(tls_server: Running, certs: Certificates) -> None:
    options = TlsOptions(ca=certs.other_ca.cert)
    with (
        SidecarClient(tls_server.address, genesis_validators_root=ROOT, tls=options, retry=NO_RETRY) as client,
        pytest.raises(SidecarUnavailableError),
    ):
        client.health(timeout=5)


def test_plaintext_client_gets_no_answer_from_a_tls_server(tls_server: Running) -> None:
    with SidecarClient(tls_server.address, retry=NO_RETRY) as client, pytest.raises(SidecarUnavailableError):
        client.health(timeout=5)


def test_mutual_tls_with_paths(mtls_server: Running, certs: Certificates) -> None:
    options = TlsOptions(
        ca=certs.path("ca.crt"), client_cert=certs.path("client.crt"), client_key=str(certs.path("client.key"))
    )
    with SidecarClient(mtls_server.address, genesis_validators_root=ROOT, tls=options) as client:
        client.register([pubkey(2)])
        assert client.check_attestation(pubkey(2), 1, 2, signing_root(1)).allowed


def test_mutual_tls_async_with_bytes(mtls_server: Running, certs: Certificates) -> None:
    options = TlsOptions(ca=certs.ca.cert, client_cert=certs.client.cert, client_key=certs.client.key)

    async def ask() -> ServingStatus:
        async with AsyncSidecarClient(mtls_server.address, tls=options) as client:
            return await client.health()

    assert asyncio.run(ask()) is ServingStatus.SERVING


@pytest.mark.parametrize("who", ["no certificate", "a stranger's certificate"])
def test_mutual_tls_refuses_clients_without_a_trusted_certificate(
    mtls_server: Running, certs: Certificates, who: str
) -> None:
    stranger = who == "a stranger's certificate"
    options = TlsOptions(
        ca=certs.ca.cert,
        client_cert=certs.other_client.cert if stranger else None,
        client_key=certs.other_client.key if stranger else None,
    )
    with (
        SidecarClient(mtls_server.address, tls=options, retry=NO_RETRY) as client,
        pytest.raises(SidecarUnavailableError),
    ):
        client.register([pubkey(3)], timeout=5)


def test_tls_configuration_errors(tmp_path: Path, certs: Certificates) -> None:
    with pytest.raises(ConfigurationError, match="go together"):
        SidecarClient("127.0.0.1:1", tls=TlsOptions(client_cert=certs.client.cert))
    with pytest.raises(ConfigurationError, match="cannot read"):
        SidecarClient("127.0.0.1:1", tls=TlsOptions(ca=tmp_path / "missing.crt"))
