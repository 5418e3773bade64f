"""The CLI's side of the gRPC API: the commands that talk to a running sidecar (`--server HOST:PORT`).

Every gRPC failure becomes one `SidecarError` line naming the server and the status, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.errors import ConfigurationError, SidecarError
from slashing_protection.v1 import admin_pb2, admin_pb2_grpc, interchange_pb2, interchange_pb2_grpc

if TYPE_CHECKING:  # the store (and its parsers) is heavy to import; `health` runs as a frequent exec probe
    from sidecar.store import ImportResult

__all__ = [
    "checkpoint_over_grpc",
    "decisions_over_grpc",
    "export_over_grpc",
    "health_status",
    "import_over_grpc",
    "register_over_grpc",
    "summary_over_grpc",
]

IMPORT_CHUNK_BYTES = 1024 * 1024
_MAX_MESSAGE = 64 * 1024 * 1024


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(f"cannot read {path}: {error.strerror}") from error


@contextlib.contextmanager
def _channel(args: argparse.Namespace) -> Iterator[grpc.Channel]:
    target = args.server
    options = [("grpc.max_receive_message_length", _MAX_MESSAGE)]
    if getattr(args, "tls_ca", None) or getattr(args, "tls_client_cert", None):
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(args.tls_ca),
            private_key=_read(args.tls_client_key),
            certificate_chain=_read(args.tls_client_cert),
        )
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    try:
        yield channel
    except grpc.RpcError as error:
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else str(error)
        name = code.name if code is not None else "ERROR"
        raise SidecarError(f"server {target}: {name}: {details}") from None
    finally:
        channel.close()


def _timeout(args: argparse.Namespace) -> float:
    return float(getattr(args, "timeout", 10.0) or 10.0)


def health_status(args: argparse.Namespace) -> str:
    """The server's health status name for the service asked about ("" = the whole server)."""
    with _channel(args) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=_timeout(args))
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return f"UNREACHABLE ({error.code().name})"
            raise
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def import_over_grpc(args: argparse.Namespace, path: Path) -> ImportResult:
    from sidecar.store import ImportResult, ImportStatus, ValidatorImportOutcome

    def chunks() -> Iterator[interchange_pb2.ImportInterchangeRequest]:
        with contextlib.ExitStack() as stack:
            source = sys.stdin.buffer if str(path) == "-" else stack.enter_context(open(path, "rb"))
            while chunk := source.read(IMPORT_CHUNK_BYTES):
                yield interchange_pb2.ImportInterchangeRequest(chunk=chunk)

    if str(path) != "-" and not Path(path).is_file():
        raise ConfigurationError(f"cannot read {path}: no such file")
    with _channel(args) as channel:
        response = interchange_pb2_grpc.InterchangeServiceStub(channel).ImportInterchange(chunks())
    return ImportResult(
        validators=response.validators,
        imported=response.imported,
        results=[ValidatorImportOutcome(r.pubkey, ImportStatus(r.status), r.message) for r in response.results],
        results_omitted=response.results_omitted,
        sequence=response.sequence,
    )


def export_over_grpc(args: argparse.Namespace, pubkeys: list[bytes] | None, out: BinaryIO) -> int:
    with _channel(args) as channel:
        stream = interchange_pb2_grpc.InterchangeServiceStub(channel).ExportInterchange(
            interchange_pb2.ExportInterchangeRequest(pubkeys=pubkeys or [])
        )
        for response in stream:
            out.write(response.chunk)
    return len(pubkeys) if pubkeys else -1


def _record_json(message: admin_pb2.DecisionRecord) -> dict[str, object]:
    """An audit record received over gRPC, as the same JSON the offline commands print."""
    from sidecar.audit import ATTESTATION, BLOCK, DecisionRecord
    from sidecar.rules import Reason

    block = message.kind == admin_pb2.DECISION_KIND_BLOCK
    return DecisionRecord(
        sequence=message.sequence,
        kind=BLOCK if block else ATTESTATION,
        pubkey=message.pubkey,
        slot=message.slot if block else None,
        source_epoch=None if block else message.source_epoch,
        target_epoch=None if block else message.target_epoch,
        signing_root=message.signing_root,
        reason=Reason(message.reason),
        unix_nanos=message.recorded_at_unix_nanos,
    ).to_json()


def decisions_over_grpc(
    args: argparse.Namespace, pubkey: bytes | None, since_sequence: int
) -> Iterator[dict[str, object]]:
    with _channel(args) as channel:
        stream = admin_pb2_grpc.AdminServiceStub(channel).ListDecisions(
            admin_pb2.ListDecisionsRequest(pubkey=pubkey or b"", since_sequence=since_sequence)
        )
        for message in stream:
            yield _record_json(message)


def summary_over_grpc(args: argparse.Namespace, pubkey: bytes) -> dict[str, object]:
    """The same JSON document the offline `summary` prints."""
    from sidecar.store import SUMMARY_BOUNDS, SUMMARY_COUNTS

    with _channel(args) as channel:
        response = admin_pb2_grpc.AdminServiceStub(channel).GetValidatorSummary(
            admin_pb2.GetValidatorSummaryRequest(pubkey=pubkey), timeout=_timeout(args)
        )
    document: dict[str, object] = {"pubkey": "0x" + pubkey.hex(), "registered": response.registered}
    if not response.registered:
        return document
    for name in SUMMARY_COUNTS:
        document[name] = getattr(response, name)
    for name in SUMMARY_BOUNDS:
        document[name] = getattr(response, name) if response.HasField(name) else None
    has_last = response.HasField("last_decision")
    document["last_decision"] = _record_json(response.last_decision) if has_last else None
    return document


def register_over_grpc(args: argparse.Namespace, pubkeys: list[bytes]) -> tuple[int, int]:
    with _channel(args) as channel:
        response = admin_pb2_grpc.AdminServiceStub(channel).RegisterValidators(
            admin_pb2.RegisterValidatorsRequest(pubkeys=pubkeys), timeout=_timeout(args)
        )
    return response.registered, response.already_registered


def checkpoint_over_grpc(args: argparse.Namespace) -> tuple[int, int, str]:
    with _channel(args) as channel:
        response = admin_pb2_grpc.AdminServiceStub(channel).SaveCheckpoint(
            admin_pb2.SaveCheckpointRequest(), timeout=max(_timeout(args), 120.0)
        )
    return response.sequence, response.validators, response.file_name
