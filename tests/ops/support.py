"""Helpers for the ops tier: a real `python -m sidecar serve` subprocess, test certificates, small clients."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import signal
import subprocess
import sys
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

REPO = Path(__file__).resolve().parents[2]
ZERO_ROOT = bytes(32)
ZERO_ROOT_HEX = "0x" + ZERO_ROOT.hex()
SERVING_ON = re.compile(r"serving on (\S+):(\d+)")
METRICS_ON = re.compile(r"metrics on http://(\S+):(\d+)/metrics")
READY = re.compile(r"ready: version ")
START_TIMEOUT = 30.0


def pubkey(tag: int, index: int = 0) -> bytes:
    """A distinct 48-byte key per (tag, index); tags keep the keys of different tests apart."""
    return bytes([0xA0, tag]) + index.to_bytes(4, "big") + bytes(42)


def root(value: int) -> bytes:
    return value.to_bytes(32, "big")


def sidecar_env(**extra: str) -> dict[str, str]:
    """The test's environment without the SLASHING_SIDECAR_* options or gRPC log settings a developer may have
    exported: the server sees what an operator's process sees by default."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SLASHING_SIDECAR_") and key not in ("GRPC_VERBOSITY", "GRPC_TRACE")
    }
    env.update(extra)
    return env


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        cwd=REPO,
        env=sidecar_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class ServeProcess:
    """`python -m sidecar serve ... --listen HOST:0`, its stderr collected line by line in a thread."""

    def __init__(
        self,
        data_dir: Path,
        *args: str,
        listen: str = "127.0.0.1:0",
        root_hex: str | None = ZERO_ROOT_HEX,
        env: dict[str, str] | None = None,
    ):
        command = [sys.executable, "-m", "sidecar", "serve", "--data-dir", str(data_dir), "--listen", listen]
        if root_hex is not None:
            command += ["--genesis-validators-root", root_hex]
        command += ["--checkpoint-interval", "0", *args]
        self.command = command
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env=sidecar_env(**(env or {})),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._stdout: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.host = ""
        self.port = 0

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        self._stdout.extend(self.process.stdout)

    @property
    def stderr(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = START_TIMEOUT) -> re.Match[str]:
        """The first stderr line matching `pattern`; fails if the process exits or time runs out first."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    match = pattern.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                if self.process.poll() is not None and not self._readers[0].is_alive():
                    raise AssertionError(
                        f"serve exited with {self.process.returncode} before {pattern.pattern!r}:\n{self.stderr}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {pattern.pattern!r} within {timeout} s:\n{self.stderr}")
                self._changed.wait(min(remaining, 0.2))

    def start(self) -> ServeProcess:
        """Waits for the bound address, then for recovery to finish (the startup line)."""
        match = self.wait_for(SERVING_ON)
        self.host, self.port = match.group(1), int(match.group(2))
        assert self.port != 0
        self.wait_for(READY)
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metrics_port(self) -> int:
        return int(self.wait_for(METRICS_ON).group(2))

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout)
        self._close()
        return code

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Waits for the process to end by itself (no signal sent)."""
        code = self.process.wait(timeout)
        self._close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._close()

    def _close(self) -> None:
        for reader in self._readers:
            reader.join(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def serving(data_dir: Path, *args: str, **kwargs: object) -> Iterator[ServeProcess]:
    """A started `serve` subprocess; killed at the end if the test did not stop it."""
    process = ServeProcess(data_dir, *args, **kwargs)  # type: ignore[arg-type]
    try:
        yield process.start()
    finally:
        process.kill()


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
        self.admin.RegisterValidators(admin_pb2.RegisterValidatorsRequest(pubkeys=list(pubkeys)), timeout=10)

    def block(
        self, key: bytes, slot: int, signing_root: bytes, timeout: float = 10
    ) -> signing_pb2.SigningDecision:
        request = signing_pb2.CheckAndRecordBlockRequest(
            pubkey=key, slot=slot, signing_root=signing_root, genesis_validators_root=ZERO_ROOT
        )
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


def attestation_request(
    key: bytes, source: int, target: int, signing_root: bytes
) -> signing_pb2.CheckAndRecordAttestationRequest:
    return signing_pb2.CheckAndRecordAttestationRequest(
        pubkey=key,
        source_epoch=source,
        target_epoch=target,
        signing_root=signing_root,
        genesis_validators_root=ZERO_ROOT,
    )


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
