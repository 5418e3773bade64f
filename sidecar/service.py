"""The gRPC servicers (grpc.aio): request -> validated, typed values -> backend -> response.

The servicers know the contract and the seam (`sidecar.backend`), nothing of how a backend stores or makes a
decision durable: a backend's coroutine returns a decision only once it may be answered. Validation, the call
into the backend and building the reply run on the event loop thread.

Domain errors become statuses in exactly one place, `_status_for`; anything unexpected becomes UNAVAILABLE,
i.e. "do not sign".
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, cast

import grpc
from grpc import aio

from sidecar.backend import SUMMARY_BOUNDS, AttestationRequest, Backend, CheckpointInfo
from sidecar.domain import (
    PUBKEY_SIZE,
    ROOT_SIZE,
    Pubkey,
    valid_genesis_validators_root,
    valid_pubkey,
    valid_signing_root,
)
from sidecar.errors import (
    BackendUnavailableError,
    GenesisRootMismatchError,
    ImportRefusedError,
    InvalidRequestError,
    NotReadyError,
    UnknownValidatorError,
)
from sidecar.metrics import Metrics
from sidecar.rules import ALLOWED_NEW, ALLOWED_REPEAT, Decision, HighWatermark, Reason
from sidecar.vocabulary import describe_high_watermark, spelling
from slashing_protection.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    interchange_pb2,
    interchange_pb2_grpc,
    signing_pb2,
    signing_pb2_grpc,
)

__all__ = [
    "MAX_BATCH_SIZE",
    "AdminServicer",
    "BackendHolder",
    "InterchangeServicer",
    "SigningServicer",
    "decision_record_message",
]

log = logging.getLogger("sidecar.service")
refusals = logging.getLogger("sidecar.refusals")

U64_MAX = 2**64 - 1
# Largest batch accepted: a 1,000,000-validator network's slot (31,250 attestations) fits several times over in
# batches, and a batch this size still answers within a few milliseconds.
MAX_BATCH_SIZE = 10_000
EXPORT_CHUNK_BYTES = 256 * 1024


def _proto_reason(reason: int) -> signing_pb2.Reason:
    """Our Reason values are the proto's numbers (see sidecar.rules.Reason)."""
    return cast(signing_pb2.Reason, int(reason))


_VERDICT_ALLOWED = signing_pb2.VERDICT_ALLOWED
_VERDICT_REFUSED = signing_pb2.VERDICT_REFUSED
_SigningDecision = signing_pb2.SigningDecision


class BackendHolder:
    """The backend once opened, and whether the server takes calls. One per server.

    `ready` is False while the backend opens (recovery), while it reports itself unhealthy (it cannot make
    decisions durable) and from the start of shutdown: every call is then refused with UNAVAILABLE.
    """

    def __init__(self) -> None:
        self.backend: Backend | None = None
        self.accepting = False
        self.healthy = True

    @property
    def ready(self) -> bool:
        return self.backend is not None and self.accepting and self.healthy

    def require(self) -> Backend:
        backend = self.backend
        if backend is None:
            raise NotReadyError("not ready: recovery has not finished")
        if not self.accepting:
            raise NotReadyError("not ready: shutting down")
        if not self.healthy:
            raise NotReadyError("not ready: decisions cannot be made durable (disk full, I/O error or database)")
        return backend


def _status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, InvalidRequestError | ImportRefusedError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, GenesisRootMismatchError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(error)
    if isinstance(error, UnknownValidatorError):
        return grpc.StatusCode.NOT_FOUND, str(error)
    if isinstance(error, NotReadyError):
        return grpc.StatusCode.UNAVAILABLE, str(error)
    if isinstance(error, BackendUnavailableError):
        return grpc.StatusCode.UNAVAILABLE, f"do not sign: {error}"
    return grpc.StatusCode.UNAVAILABLE, f"do not sign: internal error ({type(error).__name__})"


async def _abort(context: aio.ServicerContext[Any, Any], error: BaseException) -> NoReturn:
    code, message = _status_for(error)
    if code is grpc.StatusCode.UNAVAILABLE and not isinstance(error, NotReadyError | BackendUnavailableError):
        log.error("refusing a call on an unexpected error", exc_info=error)
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")


def _signing_decision(decision: Decision, sequence: int) -> signing_pb2.SigningDecision:
    """A decision as the contract's message (the batch path builds its items in place, for speed)."""
    return _SigningDecision(
        verdict=_VERDICT_ALLOWED if decision.allowed else _VERDICT_REFUSED,
        reason=_proto_reason(decision.reason),
        message=decision.message,
        sequence=sequence,
    )


# Every allowed decision of a kind says the same (see sidecar.rules): the batch path copies these and sets the
# sequence number.
_ALLOWED_NEW_ITEM = _signing_decision(ALLOWED_NEW, 0)
_ALLOWED_REPEAT_ITEM = _signing_decision(ALLOWED_REPEAT, 0)


def _log_refusal(kind: str, pubkey: bytes, detail: str, decision: Decision) -> None:
    refusals.warning(
        "refused %s for 0x%s (%s): %s",
        kind,
        pubkey.hex(),
        detail,
        decision.message,
        extra={"pubkey": "0x" + pubkey.hex(), "reason": spelling(decision.reason), "kind": kind},
    )


class SigningServicer(signing_pb2_grpc.SlashingProtectionServiceServicer):
    def __init__(self, holder: BackendHolder, metrics: Metrics) -> None:
        self._holder = holder
        self._metrics = metrics
        self._tally = metrics.decision_tally
        self._observe = metrics.decision_seconds.observe

    def _backend_for(self, genesis_validators_root: bytes) -> Backend:
        backend = self._holder.require()
        if valid_genesis_validators_root(genesis_validators_root) != backend.genesis_validators_root:
            raise GenesisRootMismatchError(
                f"genesis_validators_root 0x{genesis_validators_root.hex()} differs from the database's "
                f"0x{backend.genesis_validators_root.hex()}"
            )
        return backend

    @staticmethod
    def _check_deadline(context: aio.ServicerContext[Any, Any]) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            # Decided nothing, recorded nothing: the caller has given up and will not sign.
            raise NotReadyError("deadline expired before a decision was made")

    async def CheckAndRecordBlock(
        self, request: signing_pb2.CheckAndRecordBlockRequest, context: aio.ServicerContext[Any, Any]
    ) -> signing_pb2.CheckAndRecordBlockResponse:
        started = time.perf_counter()
        try:
            pubkey = valid_pubkey(request.pubkey)
            signing_root = valid_signing_root(request.signing_root)
            backend = self._backend_for(request.genesis_validators_root)
            self._check_deadline(context)
            decision, sequence = await backend.check_and_record_block(pubkey, request.slot, signing_root)
            self._tally["block", decision.reason] += 1
            if not decision.allowed:
                _log_refusal("block", pubkey, f"slot {request.slot}", decision)
        except Exception as error:  # every failure is "do not sign"
            await _abort(context, error)
        response = signing_pb2.CheckAndRecordBlockResponse(decision=_signing_decision(decision, sequence))
        self._observe(time.perf_counter() - started)
        return response

    async def CheckAndRecordAttestation(
        self, request: signing_pb2.CheckAndRecordAttestationRequest, context: aio.ServicerContext[Any, Any]
    ) -> signing_pb2.CheckAndRecordAttestationResponse:
        started = time.perf_counter()
        try:
            item = self._attestation(request, "")
            backend = self._backend_for(request.genesis_validators_root)
            self._check_deadline(context)
            decision, sequence = await backend.check_and_record_attestation(*item)
            self._tally["attestation", decision.reason] += 1
            if not decision.allowed:
                _log_refusal(
                    "attestation", item.pubkey, f"source {item.source_epoch}, target {item.target_epoch}", decision
                )
        except Exception as error:
            await _abort(context, error)
        response = signing_pb2.CheckAndRecordAttestationResponse(decision=_signing_decision(decision, sequence))
        self._observe(time.perf_counter() - started)
        return response

    @staticmethod
    def _attestation(request: signing_pb2.CheckAndRecordAttestationRequest, where: str) -> AttestationRequest:
        """The request's values, checked; `where` prefixes the field an error names ("attestations[3].")."""
        return AttestationRequest(
            valid_pubkey(request.pubkey, f"{where}pubkey"),
            request.source_epoch,
            request.target_epoch,
            valid_signing_root(request.signing_root, f"{where}signing_root"),
        )

    async def CheckAndRecordAttestations(
        self, request: signing_pb2.CheckAndRecordAttestationsRequest, context: aio.ServicerContext[Any, Any]
    ) -> signing_pb2.CheckAndRecordAttestationsResponse:
        started = time.perf_counter()
        try:
            items = request.attestations
            count = len(items)
            if count == 0:
                raise InvalidRequestError("attestations must not be empty")
            if count > MAX_BATCH_SIZE:
                raise InvalidRequestError(f"batch of {count} attestations exceeds the cap of {MAX_BATCH_SIZE}")
            backend = self._holder.require()
            root = backend.genesis_validators_root
            batch = [
                (message.pubkey, message.source_epoch, message.target_epoch, message.signing_root)
                for message in items
            ]
            # The boundary's check of every item, column by column at C speed (the sizes `valid_pubkey` and
            # `valid_signing_root` check); the per-item pass through them only runs to name the offending item.
            if set(map(len, [item[0] for item in batch])) != {PUBKEY_SIZE} or set(
                map(len, [item[3] for item in batch])
            ) != {ROOT_SIZE}:
                for index, message in enumerate(items):
                    self._attestation(message, f"attestations[{index}].")
            if [message.genesis_validators_root for message in items].count(root) != count:
                for message in items:
                    self._backend_for(message.genesis_validators_root)
            if len({item[0] for item in batch}) != count:
                raise InvalidRequestError("a batch may not name one pubkey twice")
            self._check_deadline(context)
            # Every item passed the checks above, so each is an AttestationRequest in all but name.
            decided = await backend.check_and_record_attestations(cast(list[AttestationRequest], batch))
        except Exception as error:
            await _abort(context, error)
        response = signing_pb2.CheckAndRecordAttestationsResponse()
        self._answer(response, batch, decided)
        self._observe(time.perf_counter() - started)
        return response

    def _answer(
        self,
        response: signing_pb2.CheckAndRecordAttestationsResponse,
        batch: list[tuple[bytes, int, int, bytes]],
        decided: list[tuple[Decision, int]],
    ) -> None:
        """Fills the batch's decisions in order and counts them. An allowed decision copies a prebuilt message
        and sets its sequence number, which is much cheaper than building it field by field."""
        decisions = response.decisions
        allowed_new = allowed_repeat = 0
        for (pubkey, source, target, _), (decision, sequence) in zip(batch, decided, strict=True):
            item = decisions.add()
            if decision is ALLOWED_NEW:
                allowed_new += 1
                item.CopyFrom(_ALLOWED_NEW_ITEM)
            elif decision is ALLOWED_REPEAT:
                allowed_repeat += 1
                item.CopyFrom(_ALLOWED_REPEAT_ITEM)
            else:
                self._tally["attestation", decision.reason] += 1
                _log_refusal("attestation", pubkey, f"source {source}, target {target}", decision)
                item.CopyFrom(_signing_decision(decision, sequence))
            item.sequence = sequence
        if allowed_new:
            self._tally["attestation", Reason.ALLOWED_NEW] += allowed_new
        if allowed_repeat:
            self._tally["attestation", Reason.ALLOWED_REPEAT] += allowed_repeat


class _StreamReader(io.RawIOBase):
    """A blocking file over a gRPC client stream, for a parser running in its own thread: each read pulls the
    next chunk from the event loop, so the client's pace is the parser's pace and nothing piles up."""

    def __init__(
        self, requests: AsyncIterator[interchange_pb2.ImportInterchangeRequest], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._requests = requests
        self._loop = loop
        # The current chunk and how much of it was read: a chunk is consumed in place, never re-sliced.
        self._buffer = b""
        self._offset = 0
        self._ended = False
        # Set when the call ends: a parser still reading then stops instead of waiting for chunks forever.
        self.cancelled = threading.Event()

    def readable(self) -> bool:
        return True

    async def _next_chunk(self) -> bytes | None:
        try:
            request = await self._requests.__anext__()
        except StopAsyncIteration:
            return None
        return bytes(request.chunk)

    def _fetch(self) -> bytes | None:
        if self.cancelled.is_set():
            raise ConnectionAbortedError("import cancelled: the call ended")
        try:
            future = asyncio.run_coroutine_threadsafe(self._next_chunk(), self._loop)
        except RuntimeError as error:  # the loop is closed
            raise ConnectionAbortedError("import cancelled: the server stopped") from error
        while True:
            try:
                return future.result(timeout=0.5)
            except TimeoutError:
                if self.cancelled.is_set():
                    with contextlib.suppress(RuntimeError):  # the loop may be closed already
                        future.cancel()
                    raise ConnectionAbortedError("import cancelled: the call ended") from None

    def readinto(self, target: Any) -> int:
        while self._offset == len(self._buffer) and not self._ended:
            chunk = self._fetch()
            if chunk is None:
                self._ended = True
            else:
                self._buffer, self._offset = chunk, 0
        size = min(len(target), len(self._buffer) - self._offset)
        target[:size] = memoryview(self._buffer)[self._offset : self._offset + size]
        self._offset += size
        return size


class _StreamWriter(io.RawIOBase):
    """A blocking file whose writes become chunks on an asyncio queue, for an exporter in its own thread.

    The queue is bounded, so a slow client slows the export; once `cancelled` is set (the client went away) every
    write raises, so the exporting thread ends instead of waiting forever on a queue nobody reads.
    """

    def __init__(self, chunks: asyncio.Queue[bytes | None], loop: asyncio.AbstractEventLoop) -> None:
        self._chunks = chunks
        self._loop = loop
        self._pending = bytearray()
        self.cancelled = threading.Event()

    def writable(self) -> bool:
        return True

    def _put(self, item: bytes | None) -> None:
        if self.cancelled.is_set():
            raise ConnectionAbortedError("export cancelled by the client")
        try:
            future = asyncio.run_coroutine_threadsafe(self._chunks.put(item), self._loop)
        except RuntimeError as error:  # the loop is closed
            raise ConnectionAbortedError("export cancelled: the server stopped") from error
        while True:
            if self.cancelled.is_set():
                with contextlib.suppress(RuntimeError):  # the loop may be closed already
                    future.cancel()
                raise ConnectionAbortedError("export cancelled by the client")
            try:
                future.result(timeout=0.5)
                return
            except TimeoutError:
                continue

    def write(self, data: Any) -> int:
        self._pending += data
        if len(self._pending) >= EXPORT_CHUNK_BYTES:
            self._put(bytes(self._pending))
            self._pending.clear()
        return len(data)

    async def finish(self) -> None:
        """On the loop, once the exporter has returned: the last partial chunk, then the end marker."""
        if self._pending:
            await self._chunks.put(bytes(self._pending))
            self._pending.clear()
        await self._chunks.put(None)


class InterchangeServicer(interchange_pb2_grpc.InterchangeServiceServicer):
    def __init__(self, holder: BackendHolder, metrics: Metrics) -> None:
        self._holder = holder
        self._metrics = metrics

    async def ImportInterchange(
        self,
        request_iterator: AsyncIterator[interchange_pb2.ImportInterchangeRequest],
        context: aio.ServicerContext[Any, Any],
    ) -> interchange_pb2.ImportInterchangeResponse:
        metrics = self._metrics
        read_so_far = [0]

        def progress(validators: int) -> None:
            metrics.import_validators.inc(validators - read_so_far[0])
            read_so_far[0] = validators

        reader = _StreamReader(request_iterator, asyncio.get_running_loop())
        try:
            backend = self._holder.require()
            result = await backend.import_interchange(io.BufferedReader(reader), progress=progress)
        except Exception as error:
            metrics.imports.labels("refused").inc()
            await _abort(context, error)
        finally:
            reader.cancelled.set()
        metrics.imports.labels("imported").inc()
        log.info(
            "imported interchange: %d validators, %d imported cleanly, %s",
            result.validators,
            result.imported,
            ", ".join(f"{status.name.lower()}={count}" for status, count in sorted(result.status_counts.items())),
        )
        return interchange_pb2.ImportInterchangeResponse(
            validators=result.validators,
            imported=result.imported,
            results=[
                interchange_pb2.ValidatorImportResult(
                    pubkey=r.pubkey, status=cast(interchange_pb2.ImportStatus, int(r.status)), message=r.message
                )
                for r in result.results
            ],
            results_omitted=result.results_omitted,
            sequence=result.sequence,
        )

    async def ExportInterchange(
        self, request: interchange_pb2.ExportInterchangeRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[interchange_pb2.ExportInterchangeResponse]:
        writer: _StreamWriter | None = None
        next_chunk: asyncio.Future[bytes | None] | None = None
        try:
            backend = self._holder.require()
            pubkeys = [valid_pubkey(pubkey, "pubkeys[]") for pubkey in request.pubkeys] or None
            chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)
            writer = _StreamWriter(chunks, asyncio.get_running_loop())
            stream_writer = writer

            async def run_export() -> None:
                await backend.export_interchange(stream_writer, pubkeys)  # type: ignore[arg-type]
                await stream_writer.finish()

            done = asyncio.ensure_future(run_export())
            while True:
                next_chunk = asyncio.ensure_future(chunks.get())
                await asyncio.wait({next_chunk, done}, return_when=asyncio.FIRST_COMPLETED)
                if not next_chunk.done():
                    next_chunk.cancel()
                    done.result()  # the exporter failed before its end marker: raise its error
                    continue
                item = next_chunk.result()
                if item is None:
                    break
                yield interchange_pb2.ExportInterchangeResponse(chunk=item)
            await done
        except Exception as error:
            await _abort(context, error)
        finally:
            if writer is not None:
                writer.cancelled.set()
            if next_chunk is not None and not next_chunk.done():
                next_chunk.cancel()


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, holder: BackendHolder, save_checkpoint: Callable[[], Awaitable[CheckpointInfo]]) -> None:
        self._holder = holder
        # The server's: it logs and measures every checkpoint, scheduled or asked for.
        self._save_checkpoint = save_checkpoint

    async def RegisterValidators(
        self, request: admin_pb2.RegisterValidatorsRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_pb2.RegisterValidatorsResponse:
        try:
            backend = self._holder.require()
            if not request.pubkeys:
                raise InvalidRequestError("pubkeys must not be empty")
            pubkeys = [valid_pubkey(pubkey, f"pubkeys[{index}]") for index, pubkey in enumerate(request.pubkeys)]
            registered, already, sequence = await backend.register_validators(pubkeys)
        except Exception as error:
            await _abort(context, error)
        return admin_pb2.RegisterValidatorsResponse(
            registered=registered, already_registered=already, sequence=sequence
        )

    async def SaveCheckpoint(
        self, request: admin_pb2.SaveCheckpointRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_pb2.SaveCheckpointResponse:
        try:
            self._holder.require()
            info = await self._save_checkpoint()
        except Exception as error:
            await _abort(context, error)
        return admin_pb2.SaveCheckpointResponse(
            sequence=info.sequence, validators=info.validators, file_name=info.name
        )

    async def GetValidatorSummary(
        self, request: admin_pb2.GetValidatorSummaryRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetValidatorSummaryResponse:
        try:
            backend = self._holder.require()
            summary = await backend.summary(valid_pubkey(request.pubkey))
        except Exception as error:
            await _abort(context, error)
        if summary is None:
            return admin_pb2.GetValidatorSummaryResponse(pubkey=request.pubkey, registered=False)
        response = admin_pb2.GetValidatorSummaryResponse(
            pubkey=request.pubkey,
            registered=True,
            block_count=summary.block_count,
            attestation_count=summary.attestation_count,
            allowed_decisions=summary.allowed_decisions,
            refused_decisions=summary.refused_decisions,
        )
        for name in SUMMARY_BOUNDS:
            value = getattr(summary, name)
            if value is not None:
                setattr(response, name, value)
        if summary.last_decision is not None:
            response.last_decision.CopyFrom(decision_record_message(summary.last_decision))
        return response

    async def SetHighWatermark(
        self, request: admin_pb2.SetHighWatermarkRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_pb2.HighWatermarkResponse:
        try:
            backend = self._holder.require()
            high_watermark = await backend.set_high_watermark(request.slot, request.epoch)
        except Exception as error:
            await _abort(context, error)
        # A warning: it stops every key's signing from that point, which an operator must be able to find later.
        log.warning(
            "set the %s",
            describe_high_watermark(high_watermark),
            extra={"high_watermark": [high_watermark.slot, high_watermark.epoch]},
        )
        return _high_watermark_response(high_watermark)

    async def GetHighWatermark(
        self, request: admin_pb2.GetHighWatermarkRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_pb2.HighWatermarkResponse:
        try:
            backend = self._holder.require()
            high_watermark = await backend.high_watermark()
        except Exception as error:
            await _abort(context, error)
        return _high_watermark_response(high_watermark)

    async def RemoveHighWatermark(
        self, request: admin_pb2.RemoveHighWatermarkRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_pb2.HighWatermarkResponse:
        try:
            backend = self._holder.require()
            await backend.remove_high_watermark()
        except Exception as error:
            await _abort(context, error)
        log.warning(
            "removed the high watermark: signing is no longer stopped at one", extra={"high_watermark": None}
        )
        return _high_watermark_response(None)

    async def ListDecisions(
        self, request: admin_pb2.ListDecisionsRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[admin_pb2.DecisionRecord]:
        try:
            backend = self._holder.require()
            pubkey: Pubkey | None = valid_pubkey(request.pubkey) if request.pubkey else None
            async for record in backend.decisions(pubkey, request.since_sequence):
                yield decision_record_message(record)
        except Exception as error:
            await _abort(context, error)


def _high_watermark_response(high_watermark: HighWatermark | None) -> admin_pb2.HighWatermarkResponse:
    if high_watermark is None:
        return admin_pb2.HighWatermarkResponse(set=False)
    return admin_pb2.HighWatermarkResponse(set=True, slot=high_watermark.slot, epoch=high_watermark.epoch)


def decision_record_message(record: Any) -> admin_pb2.DecisionRecord:
    """An audit record as its proto message."""
    block = record.kind == "block"
    return admin_pb2.DecisionRecord(
        sequence=record.sequence,
        pubkey=record.pubkey,
        kind=admin_pb2.DECISION_KIND_BLOCK if block else admin_pb2.DECISION_KIND_ATTESTATION,
        slot=record.slot or 0,
        source_epoch=record.source_epoch or 0,
        target_epoch=record.target_epoch or 0,
        signing_root=record.signing_root,
        verdict=_VERDICT_ALLOWED if record.reason.allows else _VERDICT_REFUSED,
        reason=_proto_reason(record.reason),
        recorded_at_unix_nanos=record.unix_nanos,
    )
