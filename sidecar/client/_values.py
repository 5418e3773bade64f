"""The client's typed values, and their one translation from and to the protos (shared by both flavours).

Reading a decision fails closed: `allowed` is True only for `VERDICT_ALLOWED` together with a reason that
allows (`ALLOWED_NEW`, `ALLOWED_REPEAT`). Any other combination (an unknown or unspecified verdict or reason, a
verdict that contradicts its reason, a missing decision) reads as not allowed, with `reason` None.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.client._errors import SidecarProtocolError, SidecarRefusedRequestError
from sidecar.rules import HighWatermark, Reason
from sidecar.vocabulary import ATTESTATION, BLOCK
from slashing_protection.v1 import admin_pb2, interchange_pb2, signing_pb2

__all__ = [
    "MAX_BATCH_SIZE",
    "Attestation",
    "Checkpoint",
    "DecisionRecord",
    "HighWatermark",
    "ImportReport",
    "ImportStatus",
    "Reason",
    "Registration",
    "ServingStatus",
    "SigningDecision",
    "ValidatorImportResult",
    "ValidatorSummary",
]

# Must equal `sidecar.service.MAX_BATCH_SIZE` (the server's cap; tests/client checks they agree). Written out
# here because importing the service would import the store, which `health`, a frequent exec probe, must not.
MAX_BATCH_SIZE = 10_000
PUBKEY_SIZE = 48  # the contract's sizes
ROOT_SIZE = 32
_UINT64_MAX = 2**64 - 1


class ImportStatus(enum.IntEnum):
    """Per-key outcome of an import. Values equal the proto `ImportStatus` numbers (and the store's)."""

    IMPORTED = 1
    MERGED = 2
    MINIFIED = 3
    UNCHANGED = 4
    IMPORTED_SLASHABLE_DATA = 5


class ServingStatus(enum.IntEnum):
    """`grpc.health.v1` serving status. Only SERVING means the sidecar is ready to decide."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3


@dataclass(frozen=True, slots=True)
class SigningDecision:
    """The answer to "may I sign this?": sign only when `allowed`. `reason` is None when the server's answer was
    not one this client recognises (then `allowed` is False); `sequence` numbers the decision's log record."""

    allowed: bool
    reason: Reason | None
    message: str
    sequence: int


@dataclass(frozen=True, slots=True)
class Attestation:
    """One attestation to check, as `check_attestations` takes them."""

    pubkey: bytes
    source_epoch: int
    target_epoch: int
    signing_root: bytes


@dataclass(frozen=True, slots=True)
class Registration:
    registered: int  # newly registered
    already_registered: int
    sequence: int  # log record of the registration (0 if nothing was new)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    sequence: int  # every record up to and including this one is in the checkpoint
    validators: int
    file_name: str


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One recorded decision of the audit trail. `kind` is "block" (with `slot`) or "attestation" (with
    `source_epoch` and `target_epoch`); the fields of the other kind are None."""

    sequence: int
    kind: str
    pubkey: bytes
    slot: int | None
    source_epoch: int | None
    target_epoch: int | None
    signing_root: bytes
    reason: Reason
    recorded_at_unix_nanos: int

    @property
    def allowed(self) -> bool:
        return self.reason.allows


@dataclass(frozen=True, slots=True)
class ValidatorSummary:
    """Counts and bounds of one key's history (see `GetValidatorSummaryResponse`); a bound is None when the
    key has no record (or no floor) of that kind. Every field but `pubkey` is zero/None when not registered."""

    pubkey: bytes
    registered: bool
    block_count: int
    attestation_count: int
    allowed_decisions: int
    refused_decisions: int
    lowest_slot: int | None
    highest_slot: int | None
    lowest_source_epoch: int | None
    highest_source_epoch: int | None
    lowest_target_epoch: int | None
    highest_target_epoch: int | None
    slot_floor: int | None
    source_epoch_floor: int | None
    target_epoch_floor: int | None
    last_decision: DecisionRecord | None


@dataclass(frozen=True, slots=True)
class ValidatorImportResult:
    pubkey: bytes
    status: ImportStatus
    message: str


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import did: `validators` distinct keys in the document, `imported` of them cleanly; `results`
    lists every other key's outcome, up to the server's cap (`results_omitted` more were left out)."""

    validators: int
    imported: int
    results: tuple[ValidatorImportResult, ...]
    results_omitted: int
    sequence: int


# ------------------------------------------------------------------------------------------------ requests


def _bytes(target: str, value: bytes, size: int, name: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview) or len(value) != size:
        length = len(value) if isinstance(value, bytes | bytearray | memoryview) else type(value).__name__
        raise SidecarRefusedRequestError(target, None, f"{name} must be {size} bytes, got {length} (not sent)")
    return bytes(value)


def _uint64(target: str, value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT64_MAX:
        raise SidecarRefusedRequestError(
            target, None, f"{name} must be an integer in [0, 2**64), got {value!r} (not sent)"
        )
    return value


def pubkey_bytes(target: str, value: bytes) -> bytes:
    return _bytes(target, value, PUBKEY_SIZE, "pubkey")


def root_bytes(target: str, value: bytes | None) -> bytes:
    if value is None:
        raise SidecarRefusedRequestError(
            target, None, "no genesis_validators_root: give it to the client (genesis_validators_root=...)"
        )
    return _bytes(target, value, ROOT_SIZE, "genesis_validators_root")


def block_request(
    target: str, root: bytes | None, pubkey: bytes, slot: int, signing_root: bytes
) -> signing_pb2.CheckAndRecordBlockRequest:
    return signing_pb2.CheckAndRecordBlockRequest(
        pubkey=pubkey_bytes(target, pubkey),
        slot=_uint64(target, slot, "slot"),
        signing_root=_bytes(target, signing_root, ROOT_SIZE, "signing_root"),
        genesis_validators_root=root_bytes(target, root),
    )


def attestation_request(
    target: str, root: bytes | None, pubkey: bytes, source_epoch: int, target_epoch: int, signing_root: bytes
) -> signing_pb2.CheckAndRecordAttestationRequest:
    return signing_pb2.CheckAndRecordAttestationRequest(
        pubkey=pubkey_bytes(target, pubkey),
        source_epoch=_uint64(target, source_epoch, "source_epoch"),
        target_epoch=_uint64(target, target_epoch, "target_epoch"),
        signing_root=_bytes(target, signing_root, ROOT_SIZE, "signing_root"),
        genesis_validators_root=root_bytes(target, root),
    )


def batch_requests(
    target: str, root: bytes | None, items: Iterable[Attestation], batch_size: int
) -> list[signing_pb2.CheckAndRecordAttestationsRequest]:
    """The batches for `check_attestations`, in order, each at most `batch_size` items. A pubkey named twice in
    one call is refused here, before anything is sent: the server refuses a batch naming a key twice, and
    splitting a call must not make the same call's fate depend on where the batches happen to be cut."""
    requests: list[signing_pb2.CheckAndRecordAttestationRequest] = []
    seen: dict[bytes, int] = {}
    for index, item in enumerate(items):
        request = attestation_request(
            target, root, item.pubkey, item.source_epoch, item.target_epoch, item.signing_root
        )
        first = seen.setdefault(request.pubkey, index)
        if first != index:
            raise SidecarRefusedRequestError(
                target,
                None,
                f"pubkey 0x{request.pubkey.hex()} is named twice in one batch (items {first} and {index}); "
                "check a key's second attestation in another call (not sent)",
            )
        requests.append(request)
    return [
        signing_pb2.CheckAndRecordAttestationsRequest(attestations=requests[start : start + batch_size])
        for start in range(0, len(requests), batch_size)
    ]


def set_high_watermark_request(target: str, slot: int, epoch: int) -> admin_pb2.SetHighWatermarkRequest:
    """The values the proto can carry; which of them a database accepts is the server's to say (INVALID_ARGUMENT,
    naming the value)."""
    return admin_pb2.SetHighWatermarkRequest(
        slot=_uint64(target, slot, "slot"), epoch=_uint64(target, epoch, "epoch")
    )


def check_batch_size(batch_size: int) -> int:
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE} (the server's cap), got {batch_size}")
    return batch_size


# ------------------------------------------------------------------------------------------------ responses


def _reason(value: int) -> Reason | None:
    try:
        return Reason(value)
    except ValueError:
        return None


def _enum_name(enum_type: Any, value: int) -> str:
    try:
        return str(enum_type.Name(value))
    except ValueError:
        return str(value)


def decision_from_proto(decision: signing_pb2.SigningDecision) -> SigningDecision:
    """The typed decision, failing closed on anything unexpected (see the module docstring)."""
    reason = _reason(decision.reason)
    if reason is not None:
        if decision.verdict == signing_pb2.VERDICT_ALLOWED and reason.allows:
            return SigningDecision(True, reason, decision.message, decision.sequence)
        if decision.verdict == signing_pb2.VERDICT_REFUSED and not reason.allows:
            return SigningDecision(False, reason, decision.message, decision.sequence)
    verdict_name = _enum_name(signing_pb2.Verdict, decision.verdict)
    reason_name = _enum_name(signing_pb2.Reason, decision.reason)
    message = f"do not sign: unexpected decision from the server (verdict {verdict_name}, reason {reason_name})"
    if decision.message:
        message += f": {decision.message}"
    return SigningDecision(False, None, message, decision.sequence)


def decisions_from_batch(
    target: str,
    request: signing_pb2.CheckAndRecordAttestationsRequest,
    response: signing_pb2.CheckAndRecordAttestationsResponse,
) -> list[SigningDecision]:
    sent, answered = len(request.attestations), len(response.decisions)
    if answered != sent:
        raise SidecarProtocolError(target, None, f"a batch of {sent} attestations got {answered} decisions")
    return [decision_from_proto(decision) for decision in response.decisions]


def record_from_proto(target: str, message: admin_pb2.DecisionRecord) -> DecisionRecord:
    reason = _reason(message.reason)
    if reason is None:
        raise SidecarProtocolError(target, None, f"decision record {message.sequence} has reason {message.reason}")
    if message.kind == admin_pb2.DECISION_KIND_BLOCK:
        kind, slot, source, target_epoch = BLOCK, message.slot, None, None
    elif message.kind == admin_pb2.DECISION_KIND_ATTESTATION:
        kind, slot, source, target_epoch = ATTESTATION, None, message.source_epoch, message.target_epoch
    else:
        raise SidecarProtocolError(target, None, f"decision record {message.sequence} has kind {message.kind}")
    return DecisionRecord(
        sequence=message.sequence,
        kind=kind,
        pubkey=message.pubkey,
        slot=slot,
        source_epoch=source,
        target_epoch=target_epoch,
        signing_root=message.signing_root,
        reason=reason,
        recorded_at_unix_nanos=message.recorded_at_unix_nanos,
    )


_BOUNDS: Sequence[str] = (
    "lowest_slot",
    "highest_slot",
    "lowest_source_epoch",
    "highest_source_epoch",
    "lowest_target_epoch",
    "highest_target_epoch",
    "slot_floor",
    "source_epoch_floor",
    "target_epoch_floor",
)


def summary_from_proto(
    target: str, pubkey: bytes, response: admin_pb2.GetValidatorSummaryResponse
) -> ValidatorSummary:
    bounds: dict[str, int | None] = {
        name: getattr(response, name) if response.HasField(name) else None for name in _BOUNDS
    }
    last = response.last_decision if response.HasField("last_decision") else None
    return ValidatorSummary(
        pubkey=pubkey,
        registered=response.registered,
        block_count=response.block_count,
        attestation_count=response.attestation_count,
        allowed_decisions=response.allowed_decisions,
        refused_decisions=response.refused_decisions,
        last_decision=None if last is None else record_from_proto(target, last),
        **bounds,
    )


def import_report_from_proto(target: str, response: interchange_pb2.ImportInterchangeResponse) -> ImportReport:
    results = []
    for result in response.results:
        try:
            status = ImportStatus(result.status)
        except ValueError:
            raise SidecarProtocolError(
                target, None, f"import result for 0x{result.pubkey.hex()} has status {result.status}"
            ) from None
        results.append(ValidatorImportResult(result.pubkey, status, result.message))
    return ImportReport(
        validators=response.validators,
        imported=response.imported,
        results=tuple(results),
        results_omitted=response.results_omitted,
        sequence=response.sequence,
    )


def high_watermark_from_proto(target: str, response: admin_pb2.HighWatermarkResponse) -> HighWatermark | None:
    """The watermark in force (None: none); a response that says none but carries values breaks the contract."""
    if response.set:
        return HighWatermark(response.slot, response.epoch)
    if response.slot or response.epoch:
        raise SidecarProtocolError(
            target, None, f"a high watermark response without a watermark carries slot {response.slot}"
        )
    return None


def serving_status(value: int) -> ServingStatus:
    try:
        return ServingStatus(value)
    except ValueError:
        return ServingStatus.UNKNOWN
