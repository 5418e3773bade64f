"""`SidecarClient`: the blocking flavour, over `grpc`."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, BinaryIO, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.client._base import IMPORT_CHUNK_BYTES, ChunkReader, ClientBase, output_file
from sidecar.client._errors import SidecarProtocolError
from sidecar.client._transport import Deadline
from sidecar.client._values import (
    Attestation,
    Checkpoint,
    DecisionRecord,
    HighWatermark,
    ImportReport,
    Registration,
    ServingStatus,
    SigningDecision,
    ValidatorSummary,
    attestation_request,
    batch_requests,
    block_request,
    decision_from_proto,
    decisions_from_batch,
    high_watermark_from_proto,
    import_report_from_proto,
    pubkey_bytes,
    record_from_proto,
    serving_status,
    set_high_watermark_request,
    summary_from_proto,
)
from slashing_protection.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    interchange_pb2,
    interchange_pb2_grpc,
    signing_pb2_grpc,
)

__all__ = ["SidecarClient"]

_Response = TypeVar("_Response")
_END = object()


class SidecarClient(ClientBase):
    """A blocking client of one sidecar; use it as a context manager (or call `close`). Thread-safe: one client
    (one HTTP/2 connection) serves every thread of a signer.

    `target` is `HOST:PORT`. `genesis_validators_root` (32 bytes) is sent with every check; the signing calls
    refuse to run without it. `tls` turns on TLS (and mutual TLS); without it the channel is plaintext.
    `timeouts` gives each kind of call its default deadline; `retry` says how UNAVAILABLE is retried
    (`NO_RETRY`: never); `batch_size` caps the items `check_attestations` sends per call (at most the server's
    cap, `MAX_BATCH_SIZE`); `channel_options` are passed to gRPC after the client's own.
    """

    def _connect(self) -> None:
        if self._credentials is not None:
            self._channel = grpc.secure_channel(self.target, self._credentials, options=self._channel_options)
        else:
            self._channel = grpc.insecure_channel(self.target, options=self._channel_options)
        self._signing = signing_pb2_grpc.SlashingProtectionServiceStub(self._channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._interchange = interchange_pb2_grpc.InterchangeServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SidecarClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ signing

    def check_block(
        self, pubkey: bytes, slot: int, signing_root: bytes, *, timeout: float | None = None
    ) -> SigningDecision:
        """Checks a block proposal and records the decision. Sign only if the result is `allowed`; every error
        raised means "do not sign"."""
        request = block_request(self.target, self.genesis_validators_root, pubkey, slot, signing_root)
        deadline = self._deadline(timeout, self.timeouts.signing)
        response = self._call(self._signing.CheckAndRecordBlock, request, deadline)
        return decision_from_proto(response.decision)

    def check_attestation(
        self,
        pubkey: bytes,
        source_epoch: int,
        target_epoch: int,
        signing_root: bytes,
        *,
        timeout: float | None = None,
    ) -> SigningDecision:
        """Checks an attestation and records the decision (see `check_block`)."""
        request = attestation_request(
            self.target, self.genesis_validators_root, pubkey, source_epoch, target_epoch, signing_root
        )
        deadline = self._deadline(timeout, self.timeouts.signing)
        response = self._call(self._signing.CheckAndRecordAttestation, request, deadline)
        return decision_from_proto(response.decision)

    def check_attestations(
        self, items: Iterable[Attestation], *, timeout: float | None = None
    ) -> list[SigningDecision]:
        """Checks many attestations, one decision per item in the same order, sent in batches of at most
        `batch_size`, one after the other, all within one deadline. Each key at most once per call (refused
        before anything is sent otherwise). If a batch fails, the call raises; the batches before it are
        decided and recorded, and asking again for the same items answers them as repeats."""
        requests = batch_requests(self.target, self.genesis_validators_root, items, self.batch_size)
        deadline = self._deadline(timeout, self.timeouts.batch)
        decisions: list[SigningDecision] = []
        for request in requests:
            response = self._call(self._signing.CheckAndRecordAttestations, request, deadline)
            decisions.extend(decisions_from_batch(self.target, request, response))
        return decisions

    # ------------------------------------------------------------------------------------------ admin

    def register(self, pubkeys: Iterable[bytes], *, timeout: float | None = None) -> Registration:
        """Registers keys so that they may sign; registering a known key is not an error."""
        request = admin_pb2.RegisterValidatorsRequest(pubkeys=[pubkey_bytes(self.target, p) for p in pubkeys])
        response = self._call(
            self._admin.RegisterValidators, request, self._deadline(timeout, self.timeouts.admin)
        )
        return Registration(response.registered, response.already_registered, response.sequence)

    def summary(self, pubkey: bytes, *, timeout: float | None = None) -> ValidatorSummary:
        request = admin_pb2.GetValidatorSummaryRequest(pubkey=pubkey_bytes(self.target, pubkey))
        response = self._call(
            self._admin.GetValidatorSummary, request, self._deadline(timeout, self.timeouts.admin)
        )
        return summary_from_proto(self.target, request.pubkey, response)

    def checkpoint(self, *, timeout: float | None = None) -> Checkpoint:
        """Asks the server to write a checkpoint now."""
        deadline = self._deadline(timeout, self.timeouts.checkpoint)
        response = self._call(self._admin.SaveCheckpoint, admin_pb2.SaveCheckpointRequest(), deadline)
        return Checkpoint(response.sequence, response.validators, response.file_name)

    def set_high_watermark(self, slot: int, epoch: int, *, timeout: float | None = None) -> HighWatermark:
        """Sets the global high watermark (replacing any): from when this returns, no key signs a block at or
        beyond `slot`, nor an attestation with a source or target epoch at or beyond `epoch`. Returns it as the
        server holds it. Values the server refuses (slot below epoch, 2^63 or more) raise
        `SidecarRefusedRequestError` and change nothing."""
        request = set_high_watermark_request(self.target, slot, epoch)
        response = self._call(self._admin.SetHighWatermark, request, self._deadline(timeout, self.timeouts.admin))
        high_watermark = high_watermark_from_proto(self.target, response)
        if high_watermark is None:
            raise SidecarProtocolError(self.target, None, "SetHighWatermark answered that no watermark is set")
        return high_watermark

    def high_watermark(self, *, timeout: float | None = None) -> HighWatermark | None:
        """The global high watermark in force; None when there is none."""
        request = admin_pb2.GetHighWatermarkRequest()
        response = self._call(self._admin.GetHighWatermark, request, self._deadline(timeout, self.timeouts.admin))
        return high_watermark_from_proto(self.target, response)

    def remove_high_watermark(self, *, timeout: float | None = None) -> None:
        """Removes the global high watermark (none set is not an error)."""
        request = admin_pb2.RemoveHighWatermarkRequest()
        response = self._call(
            self._admin.RemoveHighWatermark, request, self._deadline(timeout, self.timeouts.admin)
        )
        if high_watermark_from_proto(self.target, response) is not None:
            raise SidecarProtocolError(self.target, None, "RemoveHighWatermark answered that one is still set")

    def decisions(
        self, pubkey: bytes | None = None, since_sequence: int = 0, *, timeout: float | None = None
    ) -> Iterator[DecisionRecord]:
        """The audit trail, oldest first: every recorded decision (of `pubkey` only, if given) with a sequence
        number above `since_sequence`. Lazy: the call starts when iteration does."""
        request = admin_pb2.ListDecisionsRequest(
            pubkey=b"" if pubkey is None else pubkey_bytes(self.target, pubkey), since_sequence=since_sequence
        )
        deadline = self._deadline(timeout, self.timeouts.streams)
        for message in self._stream(self._admin.ListDecisions, request, deadline):
            yield record_from_proto(self.target, message)

    # ------------------------------------------------------------------------------------------ interchange

    def import_interchange(
        self,
        source: bytes | str | os.PathLike[str] | BinaryIO,
        *,
        chunk_size: int = IMPORT_CHUNK_BYTES,
        timeout: float | None = None,
    ) -> ImportReport:
        """Imports one EIP-3076 document (bytes, a file's path, or a binary file object read to its end),
        streamed in chunks. Atomic on the server: a refused document changes nothing. Not retried: the document
        is read once, and an import repeated after an unseen success would report its keys as unchanged."""
        deadline = self._deadline(timeout, self.timeouts.streams)
        with contextlib.ExitStack() as stack:
            if isinstance(source, str | os.PathLike):
                source = stack.enter_context(open(source, "rb"))
            chunks = ChunkReader(source, chunk_size)
            try:
                response = self._interchange.ImportInterchange(
                    chunks.requests(), timeout=deadline.attempt_timeout(self.target)
                )
            except grpc.RpcError as error:
                chunks.raise_read_error()
                raise self._error(error, 1) from None
        deadline.check_answer_in_time(self.target)
        return import_report_from_proto(self.target, response)

    def export_interchange(
        self,
        destination: str | os.PathLike[str] | BinaryIO,
        pubkeys: Iterable[bytes] = (),
        *,
        timeout: float | None = None,
    ) -> int:
        """Writes an EIP-3076 v5 document of `pubkeys` (none: every registered key) to a binary file object, or
        to a path (written under a temporary name, fsynced, then renamed: whole or absent). Returns the bytes
        written."""
        request = interchange_pb2.ExportInterchangeRequest(pubkeys=[pubkey_bytes(self.target, p) for p in pubkeys])
        deadline = self._deadline(timeout, self.timeouts.streams)
        with output_file(destination) as out:
            written = 0
            for message in self._stream(self._interchange.ExportInterchange, request, deadline):
                out.write(message.chunk)
                written += len(message.chunk)
        return written

    # ------------------------------------------------------------------------------------------ health

    def health(self, service: str = "", *, timeout: float | None = None) -> ServingStatus:
        """The server's health ("" = the whole server). Not retried: a probe reports the state now."""
        deadline = self._deadline(timeout, self.timeouts.health)
        request = health_pb2.HealthCheckRequest(service=service)
        response = self._call(self._health.Check, request, deadline, retry=False)
        return serving_status(response.status)

    # ------------------------------------------------------------------------------------------ calls

    def _call(
        self, method: Callable[..., _Response], request: Any, deadline: Deadline, retry: bool = True
    ) -> _Response:
        """One unary call, UNAVAILABLE retried per the policy within `deadline`; every failure translated."""
        attempt = 1
        while True:
            try:
                response = method(request, timeout=deadline.attempt_timeout(self.target))
            except grpc.RpcError as error:
                pause = self._retry_pause(error, attempt, deadline) if retry else None
                if pause is None:
                    raise self._error(error, attempt) from None
                time.sleep(pause)
                attempt += 1
                continue
            deadline.check_answer_in_time(self.target)
            return response

    def _stream(self, method: Callable[..., Any], request: Any, deadline: Deadline) -> Iterator[Any]:
        """A server stream's messages. UNAVAILABLE is retried only until the first message has arrived: after
        that, starting again would repeat what the caller has already been given."""
        attempt = 1
        while True:
            stream = method(request, timeout=deadline.attempt_timeout(self.target))
            try:
                first = next(stream, _END)
            except grpc.RpcError as error:
                pause = self._retry_pause(error, attempt, deadline)
                if pause is None:
                    raise self._error(error, attempt) from None
                time.sleep(pause)
                attempt += 1
                continue
            break
        try:
            if first is _END:
                return
            yield first
            yield from stream
        except grpc.RpcError as error:
            raise self._error(error, attempt) from None
        finally:
            stream.cancel()
