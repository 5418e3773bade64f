"""TLS and mutual TLS on the gRPC port, the plaintext-on-loopback-only rule, and the CLI's TLS client options.

Every server here is a real `python -m sidecar serve` subprocess; certificates are generated per session.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from slashing_protection.v1 import signing_pb2
from tests.ops.support import SERVE_OPTIONS, Certificates, Client, insecure_client, tls_client
from tests.support.keys import pubkey, signing_root
from tests.support.processes import ServerProcess, run_cli, serve_command, serving

pytestmark = pytest.mark.timeout(60)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_EMPTY_SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
H2_SETTINGS = 4


def tls_args(certs: Certificates, client_ca: bool) -> list[str]:
    args = ["--tls-cert", str(certs.path("server.crt")), "--tls-key", str(certs.path("server.key"))]
    if client_ca:
        args += ["--tls-client-ca", str(certs.path("ca.crt"))]
    return args


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, certs: Certificates) -> Iterator[ServerProcess]:
    # On every interface: TLS needs no --insecure-listen there.
    directory = tmp_path_factory.mktemp("tls")
    command = serve_command(
        *SERVE_OPTIONS, *tls_args(certs, client_ca=False), data_dir=directory / "data", listen="0.0.0.0:0"
    )
    with serving(command, directory / "serve.log") as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, certs: Certificates) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("mtls")
    command = serve_command(*SERVE_OPTIONS, *tls_args(certs, client_ca=True), data_dir=directory / "data")
    with serving(command, directory / "serve.log") as server:
        yield server


def sign_one(client: Client, tag: int) -> signing_pb2.SigningDecision:
    key = pubkey(tag)
    client.register(key)
    return client.block(key, 1, signing_root(tag))


def assert_refused(client: Client) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        client.health_status(timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, caught.value
    return caught.value


def first_h2_bytes(port: int, certs: Certificates, client_cert: str | None) -> bytes:
    """TLS handshake by hand, then the HTTP/2 client preface; returns what the server sends back first.

    A server that accepted the client answers with its SETTINGS frame. One that refused it at the handshake
    closes the connection (TLS 1.3: after the client's Finished) or sends an alert, and never speaks HTTP/2.
    """
    context = ssl.create_default_context(cafile=str(certs.path("ca.crt")))
    context.set_alpn_protocols(["h2"])
    if client_cert is not None:
        context.load_cert_chain(certs.path(f"{client_cert}.crt"), certs.path(f"{client_cert}.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(H2_PREFACE + H2_EMPTY_SETTINGS)
                return tls.recv(9)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b""


# ---------------------------------------------------------------- server TLS


def test_tls_client_trusting_the_ca_signs(tls_server: ServerProcess, certs: Certificates) -> None:
    assert tls_server.host == "0.0.0.0"
    with tls_client(tls_server.address, certs.ca.cert) as client:
        decision = sign_one(client, 1)
    assert decision.verdict == signing_pb2.VERDICT_ALLOWED
    assert decision.reason == signing_pb2.REASON_ALLOWED_NEW


def test_plaintext_client_cannot_talk_to_a_tls_server(tls_server: ServerProcess) -> None:
    with insecure_client(tls_server.address) as client:
        assert_refused(client)


def test_client_not_trusting_the_server_certificate_fails(tls_server: ServerProcess, certs: Certificates) -> None:
    with tls_client(tls_server.address, certs.other_ca.cert) as client:
        assert_refused(client)


def test_cli_health_over_tls(tls_server: ServerProcess, certs: Certificates) -> None:
    done = run_cli("health", "--server", tls_server.address, "--tls-ca", str(certs.path("ca.crt")))
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
    # The same probe in plaintext cannot get an answer and says so with a non-zero exit.
    plain = run_cli("health", "--server", tls_server.address, "--timeout", "5")
    assert plain.returncode == 1, plain
    assert plain.stdout.startswith("UNREACHABLE"), plain
    assert "Traceback" not in plain.stderr


# ---------------------------------------------------------------- mutual TLS


def test_mtls_client_with_a_certificate_from_the_client_ca_signs(
    mtls_server: ServerProcess, certs: Certificates
) -> None:
    with tls_client(mtls_server.address, certs.ca.cert, certs.client.key, certs.client.cert) as client:
        decision = sign_one(client, 2)
    assert decision.verdict == signing_pb2.VERDICT_ALLOWED


@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA"])
def test_mtls_refuses_clients_without_a_trusted_certificate(
    mtls_server: ServerProcess, certs: Certificates, who: str
) -> None:
    chain = certs.other_client if who == "certificate from another CA" else None
    key = pubkey(3_000 + (0 if chain is None else 1))
    client_key, client_cert = (chain.key, chain.cert) if chain is not None else (None, None)
    with tls_client(mtls_server.address, certs.ca.cert, client_key, client_cert) as client:
        assert_refused(client)
        with pytest.raises(grpc.RpcError) as caught:
            client.register(key)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    # Nothing it sent reached the service.
    with tls_client(mtls_server.address, certs.ca.cert, certs.client.key, certs.client.cert) as trusted:
        decision = trusted.block(key, 1, signing_root(3))
    assert decision.reason == signing_pb2.REASON_VALIDATOR_NOT_REGISTERED


@pytest.mark.parametrize("client_cert", [None, "other_client"])
def test_mtls_refusal_happens_at_the_tls_handshake(
    mtls_server: ServerProcess, certs: Certificates, client_cert: str | None
) -> None:
    # Control: a trusted client gets the server's HTTP/2 SETTINGS frame right after the handshake.
    accepted = first_h2_bytes(mtls_server.port, certs, "client")
    assert len(accepted) == 9 and accepted[3] == H2_SETTINGS, accepted
    assert first_h2_bytes(mtls_server.port, certs, client_cert) == b""


def test_cli_health_with_client_certificate(mtls_server: ServerProcess, certs: Certificates) -> None:
    ca = str(certs.path("ca.crt"))
    done = run_cli(
        "health",
        "--server",
        mtls_server.address,
        "--tls-ca",
        ca,
        "--tls-client-cert",
        str(certs.path("client.crt")),
        "--tls-client-key",
        str(certs.path("client.key")),
    )
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
    refused = run_cli("health", "--server", mtls_server.address, "--tls-ca", ca, "--timeout", "5")
    assert refused.returncode == 1, refused
    assert refused.stdout.startswith("UNREACHABLE"), refused


# ---------------------------------------------------------------- plaintext only on loopback


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0"])
def test_plaintext_on_a_non_loopback_address_is_refused(tmp_path: Path, listen: str) -> None:
    data_dir = tmp_path / "data"
    done = run_cli(
        "serve", "--data-dir", str(data_dir), "--genesis-validators-root", "0x" + "00" * 32, "--listen", listen
    )
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "refusing to listen in plaintext" in lines[0]
    assert "--insecure-listen" in lines[0]
    assert not data_dir.exists(), "a refused start must not create the data directory"


def test_insecure_listen_allows_plaintext_on_a_non_loopback_address(tmp_path: Path) -> None:
    command = serve_command(*SERVE_OPTIONS, "--insecure-listen", data_dir=tmp_path / "data", listen="0.0.0.0:0")
    with serving(command, tmp_path / "serve.log") as server:
        assert server.host == "0.0.0.0"
        with insecure_client(server.address) as client:
            assert client.health_status() == "SERVING"
