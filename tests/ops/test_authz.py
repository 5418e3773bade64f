"""Least privilege under mutual TLS: `--tls-signer-identity` and `--tls-admin-identity`.

One real `serve` subprocess, with client certificates of every role made here and driven through real TLS
handshakes: a signer named by its subject CN, an admin named by a DNS SAN, a client named in both roles by a URI
SAN, and a verified client named in neither. The admin identities come from the environment
(`SLASHING_SIDECAR_TLS_ADMIN_IDENTITY`, comma-separated), the signer's from the command line.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from slashing_protection.v1 import admin_pb2, interchange_pb2, interchange_pb2_grpc, signing_pb2
from tests.ops.support import SERVE_OPTIONS, Certificates, Client, Pem, _make_leaf, tls_client
from tests.support.keys import ZERO_ROOT_HEX, pubkey, signing_root
from tests.support.processes import ServerProcess, run_cli, serve_command, serving

pytestmark = pytest.mark.timeout(90)

SIGNER_CN = "signer-7"
ADMIN_DNS = "ops-admin.example"
BOTH_URI = "spiffe://example.org/ops/both"
DENIED = grpc.StatusCode.PERMISSION_DENIED
PERMISSION_LOG = re.compile(r"permission denied: client identity (.+?) called (\S+)")


@dataclass(frozen=True)
class Roles:
    signer: Pem
    admin: Pem
    both: Pem
    neither: Pem


@pytest.fixture(scope="module")
def roles(certs: Certificates) -> Roles:
    ca_key = load_pem_private_key(certs.ca.key, None)
    ca_cert = x509.load_pem_x509_certificate(certs.ca.cert)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH

    def leaf(common_name: str, *san: x509.GeneralName) -> Pem:
        return _make_leaf(common_name, ca_key, ca_cert, usage, list(san) or None)  # type: ignore[arg-type]

    return Roles(
        signer=leaf(SIGNER_CN),
        # The CN is not named anywhere: only the DNS SAN makes it an admin.
        admin=leaf("ops-console", x509.DNSName(ADMIN_DNS)),
        both=leaf("automation", x509.UniformResourceIdentifier(BOTH_URI), x509.DNSName("automation.example")),
        # Verified by the CA, with names of every kind, none of them listed.
        neither=leaf(
            "bystander", x509.DNSName("bystander.example"), x509.UniformResourceIdentifier("spiffe://x/none")
        ),
    )


def tls_args(certs: Certificates) -> list[str]:
    return [
        "--tls-cert",
        str(certs.path("server.crt")),
        "--tls-key",
        str(certs.path("server.key")),
        "--tls-client-ca",
        str(certs.path("ca.crt")),
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, certs: Certificates) -> Iterator[ServerProcess]:
    args = [*tls_args(certs), "--tls-signer-identity", SIGNER_CN, "--tls-signer-identity", BOTH_URI]
    env = {"SLASHING_SIDECAR_TLS_ADMIN_IDENTITY": f"{ADMIN_DNS},{BOTH_URI}"}
    directory = tmp_path_factory.mktemp("authz")
    command = serve_command(*SERVE_OPTIONS, *args, data_dir=directory / "data")
    with serving(command, directory / "serve.log", env) as process:
        yield process


Connect = Callable[[Pem], Client]


@pytest.fixture
def connect(server: ServerProcess, certs: Certificates) -> Iterator[Connect]:
    """Opens a mutual-TLS client presenting the given certificate; all closed at the end of the test."""
    with contextlib.ExitStack() as stack:

        def open_client(pem: Pem) -> Client:
            return stack.enter_context(tls_client(server.address, certs.ca.cert, pem.key, pem.cert))

        yield open_client


def interchange_document(key: bytes, slot: int) -> bytes:
    return json.dumps(
        {
            "metadata": {"interchange_format_version": "5", "genesis_validators_root": ZERO_ROOT_HEX},
            "data": [
                {
                    "pubkey": "0x" + key.hex(),
                    "signed_blocks": [{"slot": str(slot)}],
                    "signed_attestations": [],
                }
            ],
        }
    ).encode()


def import_document(client: Client, document: bytes) -> interchange_pb2.ImportInterchangeResponse:
    stub = interchange_pb2_grpc.InterchangeServiceStub(client.channel)
    response: interchange_pb2.ImportInterchangeResponse = stub.ImportInterchange(
        iter([interchange_pb2.ImportInterchangeRequest(chunk=document)]), timeout=10
    )
    return response


def export_all(client: Client) -> bytes:
    stub = interchange_pb2_grpc.InterchangeServiceStub(client.channel)
    return b"".join(
        part.chunk for part in stub.ExportInterchange(interchange_pb2.ExportInterchangeRequest(), timeout=10)
    )


def summary(client: Client, key: bytes) -> admin_pb2.GetValidatorSummaryResponse:
    response: admin_pb2.GetValidatorSummaryResponse = client.admin.GetValidatorSummary(
        admin_pb2.GetValidatorSummaryRequest(pubkey=key), timeout=10
    )
    return response


def denied(call: object, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        result = call(*args, **kwargs)  # type: ignore[operator]
        if hasattr(result, "__next__"):  # a server stream: the status comes with the first read
            next(result)
    assert caught.value.code() is DENIED, caught.value
    return caught.value


def reflected_services(client: Client) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    answers = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    return {service.name for answer in answers for service in answer.list_services_response.service}


# ---------------------------------------------------------------- each role


def test_startup_line_names_the_identities(server: ServerProcess) -> None:
    line = server.wait_for(re.compile(r"serving on .*")).group(0)
    assert "mutual TLS, access by client identity" in line, line
    assert f"the signing service: {SIGNER_CN}, {BOTH_URI}" in line, line
    assert f"the interchange and admin services: {ADMIN_DNS}, {BOTH_URI}" in line, line


def test_signer_signs_but_cannot_import_register_export_or_administer(connect: Connect, roles: Roles) -> None:
    signer, admin = connect(roles.signer), connect(roles.admin)
    key, stranger = pubkey(40), pubkey(41)
    admin.register(key)
    assert signer.block(key, 1, signing_root(1)).verdict == signing_pb2.VERDICT_ALLOWED

    error = denied(signer.register, stranger)
    assert SIGNER_CN in str(error.details()) and "--tls-admin-identity" in str(error.details())
    denied(import_document, signer, interchange_document(stranger, 100))
    denied(signer.admin.SaveCheckpoint, admin_pb2.SaveCheckpointRequest(), timeout=10)
    denied(summary, signer, key)
    denied(signer.admin.ListDecisions, admin_pb2.ListDecisionsRequest(), timeout=10)
    denied(
        interchange_pb2_grpc.InterchangeServiceStub(signer.channel).ExportInterchange,
        interchange_pb2.ExportInterchangeRequest(),
        timeout=10,
    )
    # Nothing the signer sent reached the store: the stranger is neither registered nor imported.
    assert not summary(admin, stranger).registered
    refused = signer.block(stranger, 200, signing_root(2))
    assert refused.reason == signing_pb2.REASON_VALIDATOR_NOT_REGISTERED


def test_only_an_admin_may_set_show_or_remove_the_high_watermark(connect: Connect, roles: Roles) -> None:
    signer, admin = connect(roles.signer), connect(roles.admin)
    key = pubkey(47)
    admin.register(key)
    error = denied(signer.admin.SetHighWatermark, admin_pb2.SetHighWatermarkRequest(slot=0, epoch=0), timeout=10)
    assert SIGNER_CN in str(error.details()) and "--tls-admin-identity" in str(error.details())
    denied(signer.admin.GetHighWatermark, admin_pb2.GetHighWatermarkRequest(), timeout=10)
    denied(signer.admin.RemoveHighWatermark, admin_pb2.RemoveHighWatermarkRequest(), timeout=10)
    # The denied Set changed nothing: no watermark, and the signer still signs.
    assert not admin.admin.GetHighWatermark(admin_pb2.GetHighWatermarkRequest(), timeout=10).set
    assert signer.block(key, 30, signing_root(9)).verdict == signing_pb2.VERDICT_ALLOWED
    try:
        response = admin.admin.SetHighWatermark(admin_pb2.SetHighWatermarkRequest(slot=31, epoch=0), timeout=10)
        assert (response.set, response.slot, response.epoch) == (True, 31, 0)
        assert signer.block(key, 31, signing_root(9)).reason == signing_pb2.REASON_AT_OR_BEYOND_HIGH_WATERMARK
    finally:
        admin.admin.RemoveHighWatermark(admin_pb2.RemoveHighWatermarkRequest(), timeout=10)


def test_admin_imports_registers_and_exports_but_cannot_sign(connect: Connect, roles: Roles) -> None:
    admin, signer = connect(roles.admin), connect(roles.signer)
    key = pubkey(42)
    response = import_document(admin, interchange_document(key, 10))
    assert (response.validators, response.imported) == (1, 1)
    assert ("0x" + key.hex()).encode() in export_all(admin)
    assert summary(admin, key).registered

    error = denied(admin.block, key, 20, signing_root(3))
    assert ADMIN_DNS in str(error.details()) and "--tls-signer-identity" in str(error.details())
    denied(admin.attestation, key, 1, 2, signing_root(3))
    # The refused call recorded nothing: the signer's different block at that slot is a new message.
    decision = signer.block(key, 20, signing_root(4))
    assert (decision.verdict, decision.reason) == (signing_pb2.VERDICT_ALLOWED, signing_pb2.REASON_ALLOWED_NEW)


def test_a_certificate_named_in_both_roles_may_call_both(connect: Connect, roles: Roles) -> None:
    both = connect(roles.both)
    key = pubkey(43)
    both.register(key)
    assert both.attestation(key, 1, 2, signing_root(5)).verdict == signing_pb2.VERDICT_ALLOWED
    assert summary(both, key).attestation_count == 1
    assert export_all(both).startswith(b"{")


def test_a_verified_client_named_nowhere_gets_only_health_and_reflection(connect: Connect, roles: Roles) -> None:
    bystander = connect(roles.neither)
    assert bystander.health_status() == "SERVING"
    assert "slashing_protection.v1.SlashingProtectionService" in reflected_services(bystander)
    key = pubkey(44)
    denied(bystander.register, key)
    denied(bystander.block, key, 1, signing_root(6))
    denied(import_document, bystander, interchange_document(key, 1))


def test_each_denied_identity_is_logged_once_with_its_names(
    server: ServerProcess,
    connect: Connect,
    roles: Roles,
) -> None:
    bystander = connect(roles.neither)
    for _ in range(5):
        denied(bystander.register, pubkey(45))
    denied(bystander.block, pubkey(45), 1, signing_root(7))
    # The server logs a denial before answering it, and a checkpoint's line after the checkpoint: once the test has
    # read that line from the server's standard error, it has read every denial line before it.
    checkpoint = connect(roles.admin).admin.SaveCheckpoint(admin_pb2.SaveCheckpointRequest(), timeout=10)
    server.wait_for(re.compile(rf"checkpoint {re.escape(checkpoint.file_name)}: "))
    lines = [match for line in server.lines if (match := PERMISSION_LOG.search(line))]
    bystander_lines = [match for match in lines if "bystander" in match.group(1)]
    # Once per identity and service group: one refusal of the admin services, one of the signing service.
    assert len(bystander_lines) == 2, server.stderr
    assert bystander_lines[0].group(1) == "bystander, bystander.example, spiffe://x/none"
    assert {match.group(2).split("/")[1] for match in bystander_lines} == {
        "slashing_protection.v1.AdminService",
        "slashing_protection.v1.SlashingProtectionService",
    }


# ---------------------------------------------------------------- configuration


def test_without_identity_options_any_verified_client_may_call_everything(
    tmp_path: Path, certs: Certificates, roles: Roles
) -> None:
    command = serve_command(*SERVE_OPTIONS, *tls_args(certs), data_dir=tmp_path / "data")
    with serving(command, tmp_path / "serve.log") as open_server:
        line = open_server.wait_for(re.compile(r"serving on .*")).group(0)
        assert "any client with a certificate from the client CA may call every service" in line, line
        with tls_client(open_server.address, certs.ca.cert, roles.neither.key, roles.neither.cert) as client:
            client.register(pubkey(46))
            assert client.block(pubkey(46), 1, signing_root(8)).verdict == signing_pb2.VERDICT_ALLOWED


@pytest.mark.parametrize("option", ["--tls-signer-identity", "--tls-admin-identity"])
def test_identities_without_a_client_ca_are_a_usage_error(
    tmp_path: Path, certs: Certificates, option: str
) -> None:
    data_dir = tmp_path / "data"
    done = run_cli(
        "serve",
        "--data-dir",
        str(data_dir),
        "--genesis-validators-root",
        ZERO_ROOT_HEX,
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(certs.path("server.crt")),
        "--tls-key",
        str(certs.path("server.key")),
        option,
        "signer-7",
    )
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--tls-client-ca" in lines[0], done.stderr
    assert not data_dir.exists()
