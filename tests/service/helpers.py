"""Shared pieces of the service tier: one-line RPC helpers, a fingerprint of everything a client can observe, and a
file layer that remembers what each fsync covered. Keys, roots and request messages come from `tests.support`
(`keys`, `requests`), as for every tier.

Everything here talks to a real server through real gRPC stubs (`tests.support.server.Running`); nothing
reaches into the server's internals except `DurableImageFileOps`, which is the storage seam the server is built
to take (`ServeConfig.fileops`).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from sidecar.storage.errors import StorageIOError
from sidecar.storage.fileio import FileOps
from slashing_protection.v1 import admin_pb2, interchange_pb2, signing_pb2
from tests.support.keys import hex0x, pubkey, signing_root
from tests.support.requests import (
    AttestationItem,
    attestation_request,
    batch_request,
    block_request,
    register_request,
)
from tests.support.server import Running

# Holesky's and mainnet's genesis validators roots: servers under test use ROOT; OTHER_ROOT is another network.
ROOT = bytes.fromhex("9143aa7c615a7f7115e2b6aac319c03529df8242ae705fba9df39b79c59fa8b1")
OTHER_ROOT = bytes.fromhex("4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95")

ALLOWED = signing_pb2.VERDICT_ALLOWED
REFUSED = signing_pb2.VERDICT_REFUSED
ALLOWING_REASONS = {signing_pb2.REASON_ALLOWED_NEW, signing_pb2.REASON_ALLOWED_REPEAT}

# ------------------------------------------------------------------------------------------------ calls


def sign_block(server: Running, key: bytes, slot: int, root: bytes) -> signing_pb2.SigningDecision:
    decision: signing_pb2.SigningDecision = server.signing.CheckAndRecordBlock(
        block_request(key, slot, root, ROOT)
    ).decision
    return decision


def sign_attestation(
    server: Running, key: bytes, source_epoch: int, target_epoch: int, root: bytes
) -> signing_pb2.SigningDecision:
    decision: signing_pb2.SigningDecision = server.signing.CheckAndRecordAttestation(
        attestation_request(key, source_epoch, target_epoch, root, ROOT)
    ).decision
    return decision


def sign_batch(server: Running, items: Sequence[AttestationItem]) -> list[signing_pb2.SigningDecision]:
    return list(server.signing.CheckAndRecordAttestations(batch_request(items, ROOT)).decisions)


def register(server: Running, *keys: bytes) -> admin_pb2.RegisterValidatorsResponse:
    response: admin_pb2.RegisterValidatorsResponse = server.admin.RegisterValidators(register_request(*keys))
    return response


def summary(server: Running, key: bytes) -> admin_pb2.GetValidatorSummaryResponse:
    response: admin_pb2.GetValidatorSummaryResponse = server.admin.GetValidatorSummary(
        admin_pb2.GetValidatorSummaryRequest(pubkey=key)
    )
    return response


def decisions(server: Running, key: bytes = b"", since_sequence: int = 0) -> list[admin_pb2.DecisionRecord]:
    return list(
        server.admin.ListDecisions(admin_pb2.ListDecisionsRequest(pubkey=key, since_sequence=since_sequence))
    )


def settled_decisions(
    server: Running, key: bytes = b"", since_sequence: int = 0, count: int = 1, timeout: float = 5.0
) -> list[admin_pb2.DecisionRecord]:
    """The audit trail once it holds at least `count` records: a refusal may ride the next flush (contract), and
    ListDecisions reads what has reached the log file."""
    deadline = time.monotonic() + timeout
    while True:
        records = decisions(server, key, since_sequence)
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.005)


def export_document(server: Running, keys: Sequence[bytes] = ()) -> bytes:
    stream = server.interchange.ExportInterchange(interchange_pb2.ExportInterchangeRequest(pubkeys=list(keys)))
    return b"".join(response.chunk for response in stream)


def import_chunks(server: Running, chunks: Iterable[bytes]) -> interchange_pb2.ImportInterchangeResponse:
    response: interchange_pb2.ImportInterchangeResponse = server.interchange.ImportInterchange(
        interchange_pb2.ImportInterchangeRequest(chunk=chunk) for chunk in chunks
    )
    return response


def import_document(
    server: Running, document: bytes, chunk_size: int = 7919
) -> interchange_pb2.ImportInterchangeResponse:
    """Imports `document` in chunks of an odd size, so chunk boundaries fall inside tokens."""
    return import_chunks(server, (document[i : i + chunk_size] for i in range(0, len(document), chunk_size)))


def rpc_error(call: Any, request: Any, **kwargs: Any) -> grpc.RpcError:
    """The error a call ends with; fails the test if the call succeeds."""
    try:
        response = call(request, **kwargs)
        if hasattr(response, "__next__"):  # server streams fail when read
            response = list(response)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"expected an error status, got a response: {response!r}")


# ------------------------------------------------------------------------------------------------ assertions


def assert_decision(decision: signing_pb2.SigningDecision, reason: int) -> None:
    """The verdict follows the reason, the message says something, and the decision names its log record."""
    expected_verdict = ALLOWED if reason in ALLOWING_REASONS else REFUSED
    assert signing_pb2.Reason.Name(decision.reason) == signing_pb2.Reason.Name(reason), decision.message
    assert decision.verdict == expected_verdict, decision
    assert decision.message.strip(), decision
    assert decision.sequence > 0, decision


# ------------------------------------------------------------------------------------------------ documents


@dataclass(frozen=True)
class Entry:
    """One element of an interchange document's `data`; a root of None leaves `signing_root` out."""

    key: bytes
    blocks: tuple[tuple[int, bytes | None], ...] = ()
    attestations: tuple[tuple[int, int, bytes | None], ...] = ()

    def to_json(self) -> dict[str, Any]:
        def with_root(record: dict[str, Any], root: bytes | None) -> dict[str, Any]:
            if root is not None:
                record["signing_root"] = hex0x(root)
            return record

        return {
            "pubkey": hex0x(self.key),
            "signed_blocks": [with_root({"slot": str(slot)}, root) for slot, root in self.blocks],
            "signed_attestations": [
                with_root({"source_epoch": str(source), "target_epoch": str(target)}, root)
                for source, target, root in self.attestations
            ],
        }


def interchange_json(
    entries: Iterable[Entry], genesis_validators_root: bytes = ROOT, version: Any = "5"
) -> dict[str, Any]:
    return {
        "metadata": {
            "interchange_format_version": version,
            "genesis_validators_root": hex0x(genesis_validators_root),
        },
        "data": [entry.to_json() for entry in entries],
    }


def interchange_document(
    entries: Iterable[Entry], genesis_validators_root: bytes = ROOT, version: Any = "5"
) -> bytes:
    return json.dumps(interchange_json(entries, genesis_validators_root, version)).encode()


# ------------------------------------------------------------------------------------------------ no change


@dataclass(frozen=True)
class Fingerprint:
    """Everything a client can see of the server's state: the export, each watched key's summary, the audit
    trail. Two equal fingerprints mean no observable change.

    The probe key's refusals are left out of the audit trail: a refusal may ride the next flush (contract), and
    ListDecisions reads what has reached the log file, so the probe taken just before a fingerprint may or may
    not be in it yet. `probe_sequence` accounts for the log instead."""

    export: bytes
    summaries: tuple[bytes, ...]
    decisions: tuple[bytes, ...]


def fingerprint(server: Running, keys: Iterable[bytes]) -> Fingerprint:
    return Fingerprint(
        export=export_document(server),
        summaries=tuple(summary(server, key).SerializeToString(deterministic=True) for key in keys),
        decisions=tuple(
            record.SerializeToString(deterministic=True)
            for record in decisions(server)
            if record.pubkey != PROBE_KEY
        ),
    )


PROBE_KEY = pubkey(0xFFFF_FFFF)


def probe_sequence(server: Running) -> int:
    """Records one refusal for a never-registered key and returns its sequence number.

    Two probes around an operation have consecutive sequence numbers iff the operation appended nothing to the
    log (registrations and imports take sequence numbers too, and are not in the audit trail)."""
    decision = sign_block(server, PROBE_KEY, 1, signing_root(1))
    assert decision.reason == signing_pb2.REASON_VALIDATOR_NOT_REGISTERED, decision
    return decision.sequence


# ------------------------------------------------------------------------------------------------ power loss


class DurableImageFileOps(FileOps):
    """Real file operations that also remember, per file, how many bytes the last completed fsync covered.

    `durable_image` copies the data directory as a power cut at that instant would leave it: log segments cut
    back to what was fsynced, never-fsynced files gone. `sync_delay` holds every fsync back before it starts, so
    a server that answered before the fsync finished would be caught with the record missing from the image.
    `fail_syncs` makes every fsync fail with EIO (a dying disk) until cleared.
    """

    def __init__(self, sync_delay: float = 0.0) -> None:
        super().__init__()
        self.sync_delay = sync_delay
        self.fail_syncs = False
        self._synced: dict[Path, int] = {}
        self._synced_lock = threading.Lock()

    def _sync(self, fd: int, operation: str, sync: Any) -> None:
        path = self.path_of(fd)
        size = self.fstat_size(fd)  # what the sync is guaranteed to cover: everything written before it began
        if self.sync_delay:
            time.sleep(self.sync_delay)
        if self.fail_syncs:
            raise StorageIOError(operation, path, 5, "injected I/O error")
        sync(fd)
        if path is not None:
            with self._synced_lock:
                self._synced[Path(path)] = size

    def fsync(self, fd: int) -> None:
        self._sync(fd, "fsync", super().fsync)

    def fdatasync(self, fd: int) -> None:
        self._sync(fd, "fdatasync", super().fdatasync)

    def rename(self, source: Path, destination: Path) -> None:
        super().rename(source, destination)
        with self._synced_lock:
            if Path(source) in self._synced:
                self._synced[Path(destination)] = self._synced.pop(Path(source))

    def unlink(self, path: Path) -> None:
        super().unlink(path)
        with self._synced_lock:
            self._synced.pop(Path(path), None)

    def durable_image(self, data_dir: Path, destination: Path) -> Path:
        """The data directory as a power cut now would leave it (log segments are append-only; identity and
        checkpoints are written under a temporary name, fsynced and renamed, so they are whole or absent)."""
        with self._synced_lock:
            synced = dict(self._synced)
        for source in sorted(data_dir.rglob("*")):
            relative = source.relative_to(data_dir)
            target = destination / relative
            if source.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if source.name == "LOCK" or source.name.endswith(".tmp"):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if relative.parts[0] == "log":
                size = synced.get(source)
                if size is None:
                    continue
                with source.open("rb") as file:
                    target.write_bytes(file.read(size))
            else:
                shutil.copyfile(source, target)
        return destination
