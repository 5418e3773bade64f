"""`AsyncSidecarClient`: the asyncio flavour, over `grpc.aio`. Same methods, options and errors as
`SidecarClient`, as coroutines (`decisions` is an async iterator)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, BinaryIO, TypeVar

import grpc
from grpc import aio
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

__all__ = ["AsyncSidecarClient"]

_Response = TypeVar("_Response")


class AsyncSidecarClient(ClientBase):
    """The asyncio twin of `SidecarClient` (same constructor). Create and use it inside one running event loop;
    `async with` closes it."""

    def _connect(self) -> None:
        if self._credentials is not None:
            self._channel = aio.secure_channel(self.target, self._credentials, options=self._channel_options)
        else:
            self._channel = aio.insecure_channel(self.target, options=self._channel_options)
        self._signing = signing_pb2_grpc.SlashingProtectionServiceStub(self._channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._interchange = interchange_pb2_grpc.InterchangeServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncSidecarClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------------ signing

    async def check_block(
        self, pubkey: bytes, slot: int, signing_root: bytes, *, timeout: float | None = None
    ) -> SigningDecision:
        request = block_request(self.target, self.genesis_validators_root, pubkey, slot, signing_root)
        deadline = self._deadline(timeout, self.timeouts.signing)
        response = await self._call(self._signing.CheckAndRecordBlock, request, deadline)
        return decision_from_proto(response.decision)

    async def check_attestation(
        self,
        pubkey: bytes,
        source_epoch: int,
        target_epoch: int,
        signing_root: bytes,
        *,
        timeout: float | None = None,
    ) -> SigningDecision:
        request = attestation_request(
            self.target, self.genesis_validators_root, pubkey, source_epoch, target_epoch, signing_root
        )
        deadline = self._deadline(timeout, self.timeouts.signing)
        response = await self._call(self._signing.CheckAndRecordAttestation, request, deadline)
        return decision_from_proto(response.decision)

    async def check_attestations(
        self, items: Iterable[Attestation], *, timeout: float | None = None
    ) -> list[SigningDecision]:
        requests = batch_requests(self.target, self.genesis_validators_root, items, self.batch_size)
        deadline = self._deadline(timeout, self.timeouts.batch)
        decisions: list[SigningDecision] = []
        for request in requests:
            response = await self._call(self._signing.CheckAndRecordAttestations, request, deadline)
            decisions.extend(decisions_from_batch(self.target, request, response))
        return decisions

    # ------------------------------------------------------------------------------------------ admin

    async def register(self, pubkeys: Iterable[bytes], *, timeout: float | None = None) -> Registration:
        request = admin_pb2.RegisterValidatorsRequest(pubkeys=[pubkey_bytes(self.target, p) for p in pubkeys])
        deadline = self._deadline(timeout, self.timeouts.admin)
        response = await self._call(self._admin.RegisterValidators, request, deadline)
        return Registration(response.registered, response.already_registered, response.sequence)

    async def summary(self, pubkey: bytes, *, timeout: float | None = None) -> ValidatorSummary:
        request = admin_pb2.GetValidatorSummaryRequest(pubkey=pubkey_bytes(self.target, pubkey))
        deadline = self._deadline(timeout, self.timeouts.admin)
        response = await self._call(self._admin.GetValidatorSummary, request, deadline)
        return summary_from_proto(self.target, request.pubkey, response)

    async def checkpoint(self, *, timeout: float | None = None) -> Checkpoint:
        deadline = self._deadline(timeout, self.timeouts.checkpoint)
        response = await self._call(self._admin.SaveCheckpoint, admin_pb2.SaveCheckpointRequest(), deadline)
        return Checkpoint(response.sequence, response.validators, response.file_name)

    async def set_high_watermark(self, slot: int, epoch: int, *, timeout: float | None = None) -> HighWatermark:
        request = set_high_watermark_request(self.target, slot, epoch)
        deadline = self._deadline(timeout, self.timeouts.admin)
        response = await self._call(self._admin.SetHighWatermark, request, deadline)
        high_watermark = high_watermark_from_proto(self.target, response)
        if high_watermark is None:
            raise SidecarProtocolError(self.target, None, "SetHighWatermark answered that no watermark is set")
        return high_watermark

    async def high_watermark(self, *, timeout: float | None = None) -> HighWatermark | None:
        deadline = self._deadline(timeout, self.timeouts.admin)
        response = await self._call(self._admin.GetHighWatermark, admin_pb2.GetHighWatermarkRequest(), deadline)
        return high_watermark_from_proto(self.target, response)

    async def remove_high_watermark(self, *, timeout: float | None = None) -> None:
        deadline = self._deadline(timeout, self.timeouts.admin)
        request = admin_pb2.RemoveHighWatermarkRequest()
        response = await self._call(self._admin.RemoveHighWatermark, request, deadline)
        if high_watermark_from_proto(self.target, response) is not None:
            raise SidecarProtocolError(self.target, None, "RemoveHighWatermark answered that one is still set")

    async def decisions(
        self, pubkey: bytes | None = None, since_sequence: int = 0, *, timeout: float | None = None
    ) -> AsyncIterator[DecisionRecord]:
        request = admin_pb2.ListDecisionsRequest(
            pubkey=b"" if pubkey is None else pubkey_bytes(self.target, pubkey), since_sequence=since_sequence
        )
        deadline = self._deadline(timeout, self.timeouts.streams)
        async for message in self._stream(self._admin.ListDecisions, request, deadline):
            yield record_from_proto(self.target, message)

    # ------------------------------------------------------------------------------------------ interchange

    async def import_interchange(
        self,
        source: bytes | str | os.PathLike[str] | BinaryIO,
        *,
        chunk_size: int = IMPORT_CHUNK_BYTES,
        timeout: float | None = None,
    ) -> ImportReport:
        """As `SidecarClient.import_interchange`; the document is read in a worker thread."""
        deadline = self._deadline(timeout, self.timeouts.streams)
        with contextlib.ExitStack() as stack:
            if isinstance(source, str | os.PathLike):
                source = stack.enter_context(open(source, "rb"))
            chunks = ChunkReader(source, chunk_size)

            async def requests() -> AsyncIterator[interchange_pb2.ImportInterchangeRequest]:
                iterator = chunks.requests()
                while (request := await asyncio.to_thread(next, iterator, None)) is not None:
                    yield request

            try:
                response = await self._interchange.ImportInterchange(
                    requests(), timeout=deadline.attempt_timeout(self.target)
                )
            except grpc.RpcError as error:
                chunks.raise_read_error()
                raise self._error(error, 1) from None
        deadline.check_answer_in_time(self.target)
        return import_report_from_proto(self.target, response)

    async def export_interchange(
        self,
        destination: str | os.PathLike[str] | BinaryIO,
        pubkeys: Iterable[bytes] = (),
        *,
        timeout: float | None = None,
    ) -> int:
        """As `SidecarClient.export_interchange` (the chunks are written from the event loop's thread)."""
        request = interchange_pb2.ExportInterchangeRequest(pubkeys=[pubkey_bytes(self.target, p) for p in pubkeys])
        deadline = self._deadline(timeout, self.timeouts.streams)
        with output_file(destination) as out:
            written = 0
            async for message in self._stream(self._interchange.ExportInterchange, request, deadline):
                out.write(message.chunk)
                written += len(message.chunk)
        return written

    # ------------------------------------------------------------------------------------------ health

    async def health(self, service: str = "", *, timeout: float | None = None) -> ServingStatus:
        deadline = self._deadline(timeout, self.timeouts.health)
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._call(self._health.Check, request, deadline, retry=False)
        return serving_status(response.status)

    # ------------------------------------------------------------------------------------------ calls

    async def _call(
        self, method: Callable[..., Awaitable[_Response]], request: Any, deadline: Deadline, retry: bool = True
    ) -> _Response:
        attempt = 1
        while True:
            try:
                response = await method(request, timeout=deadline.attempt_timeout(self.target))
            except grpc.RpcError as error:
                pause = self._retry_pause(error, attempt, deadline) if retry else None
                if pause is None:
                    raise self._error(error, attempt) from None
                await asyncio.sleep(pause)
                attempt += 1
                continue
            deadline.check_answer_in_time(self.target)
            return response

    async def _stream(self, method: Callable[..., Any], request: Any, deadline: Deadline) -> AsyncIterator[Any]:
        """As `SidecarClient._stream`: UNAVAILABLE retried only before the first message."""
        attempt = 1
        while True:
            call = method(request, timeout=deadline.attempt_timeout(self.target))
            try:
                message = await call.read()
            except grpc.RpcError as error:
                pause = self._retry_pause(error, attempt, deadline)
                if pause is None:
                    raise self._error(error, attempt) from None
                await asyncio.sleep(pause)
                attempt += 1
                continue
            break
        try:
            while message is not aio.EOF:
                yield message
                message = await call.read()
        except grpc.RpcError as error:
            raise self._error(error, attempt) from None
        finally:
            call.cancel()
