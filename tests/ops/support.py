"""Helpers for the ops tier: how its servers are started, test certificates, small clients. The servers are real
`python -m sidecar serve` processes (`tests.support.processes`)."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slashing_protection.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    interchange_pb2,
    interchange_pb2_grpc,
    signing_pb2,
    signing_pb2_grpc,
)
from tests.support.keys import ZERO_ROOT_HEX
from tests.support.requests import attestation_request, block_request, register_request

# Every ops server: the zero root, no scheduled checkpoints (a test that wants them gives --checkpoint-interval,
# and a later option wins).
SERVE_OPTIONS = ("--genesis-validators-root", ZERO_ROOT_HEX, "--checkpoint-interval", "0")


# ---------------------------------------------------------------- gRPC clients


@dataclass
class Client:
    channel: grpc.Channel

    @property
    def signing(self) -> signing_pb2_grpc.SlashingProtectionServiceStub:
        return signing_pb2_grpc.SlashingProtectionServiceStub(self.channel)

    @property
    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(self.channel)

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)

    def register(self, *pubkeys: bytes) -> None:
        self.admin.RegisterValidators(register_request(*pubkeys), timeout=10)

    def block(
        self, key: bytes, slot: int, signing_root: bytes, timeout: float = 10
    ) -> signing_pb2.SigningDecision:
        request = block_request(key, slot, signing_root)
        decision: signing_pb2.SigningDecision = self.signing.CheckAndRecordBlock(request, timeout=timeout).decision
        return decision

    def attestation(
        self, key: bytes, source: int, target: int, signing_root: bytes, timeout: float = 10
    ) -> signing_pb2.SigningDecision:
        request = attestation_request(key, source, target, signing_root)
        decision: signing_pb2.SigningDecision = self.signing.CheckAndRecordAttestation(
            request, timeout=timeout
        ).decision
        return decision

    def health_status(self, timeout: float = 10) -> str:
        response = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


@contextlib.contextmanager
def insecure_client(address: str) -> Iterator[Client]:
    with grpc.insecure_channel(address) as channel:
        yield Client(channel)


@contextlib.contextmanager
def tls_client(
    address: str, ca: bytes | None, key: bytes | None = None, chain: bytes | None = None
) -> Iterator[Client]:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=chain)
    with grpc.secure_channel(address, credentials) as channel:
        yield Client(channel)


@contextlib.contextmanager
def watches(address: str, count: int) -> Iterator[None]:
    """`count` health watches held open (each has delivered its first status, so the server is running it)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        streams = [stub.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(count)]
        try:
            for stream in streams:
                assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
            yield
        finally:
            for stream in streams:
                stream.cancel()


@contextlib.contextmanager
def held_calls(address: str, count: int, timeout: float = 20.0) -> Iterator[None]:
    """`count` calls held in flight: import streams that send one chunk and then wait. Yields once the server
    refuses a further counted call with RESOURCE_EXHAUSTED (a read-only summary request, so probing records
    nothing), i.e. once `count` is the server's --max-concurrent-rpcs and all of them are being handled."""
    release = threading.Event()

    def held() -> Iterator[interchange_pb2.ImportInterchangeRequest]:
        yield interchange_pb2.ImportInterchangeRequest(chunk=b"{")
        release.wait(60)

    with grpc.insecure_channel(address) as channel:
        stub = interchange_pb2_grpc.InterchangeServiceStub(channel)
        calls = [stub.ImportInterchange.future(held()) for _ in range(count)]
        try:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    admin.GetValidatorSummary(admin_pb2.GetValidatorSummaryRequest(pubkey=bytes(48)), timeout=5)
                except grpc.RpcError as error:
                    if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                        break
                    raise
                if time.monotonic() > deadline:
                    raise AssertionError(f"{count} held calls did not saturate the server within {timeout} s")
                time.sleep(0.02)
            yield
        finally:
            for call in calls:  # cancelled before the stream ends, so no import is attempted
                call.cancel()
            release.set()


# ---------------------------------------------------------------- HTTP


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


# ---------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


@dataclass(frozen=True)
class Certificates:
    """PEM files on disk: a CA, a server certificate for 127.0.0.1/localhost, a client it signed, and a second
    CA with a client of its own (a stranger to the server)."""

    directory: Path
    ca: Pem
    server: Pem
    client: Pem
    other_ca: Pem
    other_client: Pem

    def path(self, name: str) -> Path:
        return self.directory / name


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    cert = (
        _builder(common_name, _name(common_name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_leaf(
    common_name: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None = None,
) -> Pem:
    key = _key()
    builder = (
        _builder(common_name, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def make_certificates(directory: Path) -> Certificates:
    ca_key, ca_cert = _make_ca("ops-test CA")
    other_key, other_cert = _make_ca("ops-test stranger CA")
    server = _make_leaf(
        "localhost",
        ca_key,
        ca_cert,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = _make_leaf("signer", ca_key, ca_cert, ExtendedKeyUsageOID.CLIENT_AUTH)
    other_client = _make_leaf("intruder", other_key, other_cert, ExtendedKeyUsageOID.CLIENT_AUTH)
    certificates = Certificates(
        directory=directory,
        ca=Pem(ca_cert.public_bytes(serialization.Encoding.PEM), _pem_key(ca_key)),
        server=server,
        client=client,
        other_ca=Pem(other_cert.public_bytes(serialization.Encoding.PEM), _pem_key(other_key)),
        other_client=other_client,
    )
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("ca", "server", "client", "other_ca", "other_client"):
        pem: Pem = getattr(certificates, name)
        (directory / f"{name}.crt").write_bytes(pem.cert)
        (directory / f"{name}.key").write_bytes(pem.key)
        (directory / f"{name}.key").chmod(0o600)
    return certificates
